"""The server under careless and hostile clients, as a real process over real sockets: a bad request
fails alone (never the batch it would have joined), client mistakes are 4xx with JSON bodies (also
those uvicorn answers itself), slow request headers are cut off, and text/csv means one thing."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from bert_classify.inference.predictor import Classifier
from conftest import make_rows
from test_inference_predictor import fit_head
from test_server import ServerProcess

pytest.importorskip("uvicorn", reason="the serve extra is not installed")

TEXTS = [content for _, _, content in make_rows(60, seed=31)]
HEADER_TIMEOUT_S = 1.0
LONE_SURROGATE_JSON = b'{"inputs": ["x \\ud800 y"]}'  # valid JSON, not valid Unicode
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
LONG_INTEGER_JSON = b'{"inputs": ["a"], "parameters": {"top_k": ' + b"7" * 5000 + b"}}"


@pytest.fixture(scope="module")
def model_dir(tiny_model_no_dropout_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_head(tiny_model_no_dropout_dir, tmp_path_factory.mktemp("hostile-bert"))


@pytest.fixture(scope="module")
def classifier(model_dir: Path) -> Classifier:
    return Classifier.from_pretrained(model_dir, precision="fp32")


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    process = ServerProcess(
        model_dir, tmp_path_factory.mktemp("hostile-log") / "server.log",
        "--max-batch-size", "64", "--max-batch-delay-ms", "50", "--max-body-bytes", "1000000",
        "--header-timeout-s", str(HEADER_TIMEOUT_S), "--precision", "fp32",
    )  # fmt: skip
    yield process
    assert process.stop() == 0, process.log()


def raw_exchange(port: int, data: bytes, *, wait_s: float = 10.0) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it (or `wait_s` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as connection:
        connection.sendall(data)
        return read_until_closed(connection, wait_s)


def read_until_closed(connection: socket.socket, wait_s: float) -> bytes:
    received = b""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            chunk = connection.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        received += chunk
    return received


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def assert_json_error(raw: bytes, status: int) -> dict:
    got, headers, body = parse_response(raw)
    assert got == status, raw[:300]
    assert headers["content-type"].startswith("application/json"), headers
    payload = json.loads(body)
    assert payload["status"] == status and payload["error"]
    return payload


def assert_same_predictions(got: list[dict], expected: list[dict]) -> None:
    assert [item["label"] for item in got] == [item["label"] for item in expected]
    assert [item["score"] for item in got] == pytest.approx([item["score"] for item in expected], abs=1e-5)


def test_bad_requests_mixed_into_batches_fail_alone(server: ServerProcess, classifier: Classifier) -> None:
    expected = dict(zip(TEXTS, classifier.predict(TEXTS)))
    before = server.metrics()["batching"]
    good = [json.dumps({"inputs": [text]}).encode() for text in TEXTS[:48]] + [
        json.dumps({"inputs": TEXTS[48 + index : 50 + index]}).encode() for index in range(0, 12, 2)
    ]
    bad = [
        (LONE_SURROGATE_JSON, "application/json"),
        (b'"ok"\n"x \\udfff"\n', "application/jsonlines"),
        (DEEP_JSON, "application/json"),
        (LONG_INTEGER_JSON, "application/json"),
        (b'{"inputs": ["a", "\\ud83d"]}', "application/json"),
    ] * 3
    requests: list[tuple[bytes, str, list[str] | None]] = [(body, "application/json", json.loads(body)["inputs"]) for body in good]
    for index, (body, content_type) in enumerate(bad):  # spread through the good ones
        requests.insert(index * 4 + 1, (body, content_type, None))

    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(requests))
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/invocations", content=body, headers={"Content-Type": kind}) for body, kind, _ in requests)
            )

    responses = asyncio.run(send_all())
    for (_, _, texts), response in zip(requests, responses):
        if texts is None:
            assert response.status_code == 400, response.text
            assert response.json()["status"] == 400
        else:
            assert response.status_code == 200, response.text
            assert [item["label"] for item in response.json()] == [expected[text]["label"] for text in texts]
            assert [item["score"] for item in response.json()] == pytest.approx(
                [expected[text]["score"] for text in texts], abs=1e-5
            )
    after = server.metrics()["batching"]
    assert after["requests"] - before["requests"] == len(good)  # the bad ones never reached the batcher
    assert after["max_batch_requests"] > 1  # good requests did share batches


@pytest.mark.parametrize(
    "body, content_type, status, words",
    [
        (DEEP_JSON, "application/json", 400, "nested too deeply"),
        (b"[" * 100_000, "application/jsonlines", 400, "line 1"),
        (b"1" * 5000, "application/json", 400, "digits"),
        (LONG_INTEGER_JSON, "application/json", 400, "digits"),
        (LONE_SURROGATE_JSON, "application/json", 400, "surrogate"),
        (b'{"text": "\\udc00"}\n', "application/x-ndjson", 400, "surrogate"),
        (b'["a"]', ";;;=", 415, "not a media type"),
        (b'["a"]', "json", 415, "not a media type"),
        (b'["a"]', "application/json; =x", 415, "not name=value"),
        (b'["a"]', "application/json; charset=latin-1", 415, "charset"),
    ],
)
def test_client_mistakes_are_4xx_with_json_never_500(server, body, content_type, status, words) -> None:
    response = httpx.post(server.url + "/invocations", content=body, headers={"Content-Type": content_type}, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["status"] == status and words in response.json()["error"]


def test_a_200_kb_line_is_accepted_as_text_csv_as_it_is_as_json(server: ServerProcess) -> None:
    text = ("species genus habitat " * 10_000)[:200_000]
    as_csv = httpx.post(server.url + "/invocations", content=text.encode(), headers={"Content-Type": "text/csv"}, timeout=60)
    as_json = httpx.post(server.url + "/invocations", json=[text], timeout=60)
    assert as_csv.status_code == 200, as_csv.text
    assert as_csv.json() == as_json.json()


def test_text_csv_is_one_definition_dbpedia_rows_lose_their_class_index(
    server: ServerProcess, classifier: Classifier
) -> None:
    rows = '3,"Bald eagle",species genus habitat feathers\n1,Acme Corp.,"company founded, shares"\n'
    response = httpx.post(server.url + "/invocations", content=rows, headers={"Content-Type": "text/csv"}, timeout=30)
    assert response.status_code == 200, response.text
    # The texts training would have read from these rows: "Title. Content", no class index.
    texts = ["Bald eagle. species genus habitat feathers", "Acme Corp. company founded, shares"]
    assert_same_predictions(response.json(), classifier.predict(texts))
    # Plain lines: an unquoted comma stays in the text; text/plain takes each line as it is.
    lines = 'painter, singer and album\n"quoted, with a newline\ninside"\n'
    response = httpx.post(server.url + "/invocations", content=lines, headers={"Content-Type": "text/csv"}, timeout=30)
    assert_same_predictions(response.json(), classifier.predict(["painter, singer and album", "quoted, with a newline\ninside"]))
    response = httpx.post(server.url + "/invocations", content=lines, headers={"Content-Type": "text/plain"}, timeout=30)
    assert_same_predictions(
        response.json(), classifier.predict(["painter, singer and album", '"quoted, with a newline', 'inside"'])
    )


def test_slow_request_headers_get_408_and_the_connection_is_closed(server: ServerProcess) -> None:
    started = time.monotonic()
    raw = raw_exchange(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n")
    assert HEADER_TIMEOUT_S * 0.9 <= time.monotonic() - started < HEADER_TIMEOUT_S + 5
    assert "headers did not arrive" in assert_json_error(raw, 408)["error"]

    # A client dripping a byte at a time is not saved by activity: the deadline counts from the start.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        started = time.monotonic()
        answer = b""
        for byte in b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                connection.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            connection.settimeout(0.1)
            try:
                answer += connection.recv(4096)
            except TimeoutError:
                pass
            if answer:
                break
        answer += read_until_closed(connection, 5)
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 5
    assert_json_error(answer, 408)

    # A connection that never sends a byte is closed without a response.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        assert read_until_closed(connection, HEADER_TIMEOUT_S + 5) == b""

    # On a kept-alive connection, the next request's headers have the same deadline.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        first = connection.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT_S * 1.5)  # idle between requests is the keep-alive timeout's business
        connection.sendall(b"GET /ping HTTP/1.1\r\n")
        assert_json_error(read_until_closed(connection, HEADER_TIMEOUT_S + 5), 408)

    assert httpx.get(server.url + "/ping", timeout=5).status_code == 200


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"THIS IS NOT HTTP\r\n\r\n", 400),
        (b"GET /ping HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n", 400),
        (b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000, 431),  # no end: over h11's 16 KiB
        (b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ],
)
def test_malformed_http_gets_a_json_error_from_the_protocol_layer(server, request_bytes, status) -> None:
    assert_json_error(raw_exchange(server.port, request_bytes), status)


def test_no_request_above_produced_a_500(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/ping", timeout=5).status_code == 200
    protocol_errors = [json.loads(line) for line in server.log().splitlines() if '"event": "protocol_error"' in line]
    assert {line["status"] for line in protocol_errors} >= {400, 408, 431, 501}  # logged, though not in the access log
    lines = server.access_lines()
    assert lines and all(line["status"] < 500 for line in lines)
    assert "Traceback" not in server.log()


def test_a_text_the_tokenizer_refuses_fails_only_its_own_request(model_dir: Path, classifier: Classifier) -> None:
    """Each request is tokenised on its own before it joins a batch: a tokenizer that raises on some
    text (here made to, on "poison") costs that request a 400 and no other request anything."""
    import threading

    import uvicorn

    from bert_classify.inference.server import ServerConfig, create_app
    from test_server import free_port

    served = Classifier.from_pretrained(model_dir, precision="fp32")
    real_tokenizer = served.tokenizer

    def refusing_tokenizer(texts, **options):
        if any("poison" in text for text in texts):
            raise RuntimeError("this tokenizer refuses poison")
        return real_tokenizer(texts, **options)

    served.tokenizer = refusing_tokenizer
    port = free_port()
    app = create_app(served, ServerConfig(max_batch_size=64, max_batch_delay_ms=100))
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not uvicorn_server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert uvicorn_server.started
        requests = [[text] for text in TEXTS[:30]]
        for index in range(0, 30, 5):
            requests.insert(index, ["fine text", "poison text"])
        expected = dict(zip(TEXTS, classifier.predict(TEXTS)))

        async def send_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                         limits=httpx.Limits(max_connections=len(requests))) as client:  # fmt: skip
                return await asyncio.gather(*(client.post("/invocations", json=texts) for texts in requests))

        responses = asyncio.run(send_all())
        for texts, response in zip(requests, responses):
            if "poison text" in texts:
                assert response.status_code == 400 and "could not be tokenised" in response.json()["error"]
            else:
                assert response.status_code == 200, response.text
                assert_same_predictions(response.json(), [expected[text] for text in texts])
        stats = app.app.state.batcher.stats
        assert stats.max_batch_requests > 1 and stats.requests == 30
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=30)
