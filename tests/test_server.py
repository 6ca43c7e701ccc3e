"""The HTTP server as a real process on a free port: status codes, concurrency, batching, logs, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from bert_classify.inference.predictor import Classifier
from conftest import make_rows
from test_inference_predictor import fit_head

pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("starlette", reason="the serve extra is not installed")

TEXTS = [content for _, _, content in make_rows(48, seed=21)]
STARTUP_TIMEOUT_S = 120  # importing torch on a busy 2-core machine is slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`bert-classify serve` in a subprocess, its log in a file."""

    def __init__(self, model_dir: Path, log_path: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bert_classify", "serve", "--model", str(model_dir), "--port", str(self.port), *flags],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/ping", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server did not answer /ping within {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def access_lines(self) -> list[dict]:
        lines = []
        for line in self.log().splitlines():
            if line.startswith("{") and '"event": "access"' in line:
                lines.append(json.loads(line))
        return lines

    def metrics(self) -> dict:
        return httpx.get(self.url + "/metrics", timeout=10).json()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def model_dir(tiny_model_no_dropout_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_head(tiny_model_no_dropout_dir, tmp_path_factory.mktemp("server-bert"))


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> dict[str, dict]:
    # fp32 on both sides (the server runs --precision fp32): scores compare to 1e-5 across batchings.
    classifier = Classifier.from_pretrained(model_dir, precision="fp32")
    predictions = classifier.predict(TEXTS)
    assert len({item["label"] for item in predictions}) > 1, "the test model must tell texts apart"
    return dict(zip(TEXTS, predictions))


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log_path = tmp_path_factory.mktemp("server-log") / "server.log"
    process = ServerProcess(
        model_dir, log_path,
        "--max-batch-size", "64", "--max-batch-delay-ms", "50",
        "--max-texts-per-request", "8", "--max-body-bytes", "4096", "--precision", "fp32",
    )  # fmt: skip
    yield process
    assert process.stop() == 0, process.log()


def post(server: ServerProcess, body, content_type: str | None = "application/json", **headers) -> httpx.Response:
    if content_type is not None:
        headers["Content-Type"] = content_type
    return httpx.post(server.url + "/invocations", content=body, headers=headers, timeout=30)


def test_ping(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/ping", timeout=5).status_code == 200


def test_model_warms_up_before_the_server_reports_healthy(server: ServerProcess) -> None:
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith('{"event"')]
    events = [record["event"] for record in records]
    assert events.index("warmed_up") < events.index("access")  # before any request was answered
    warm_up = records[events.index("warmed_up")]
    assert warm_up["texts"] == 2 and warm_up["seconds"] > 0


@pytest.mark.parametrize(
    "body, content_type, accept, response_type",
    [
        (json.dumps({"inputs": TEXTS[:3]}), "application/json", None, "application/json"),
        ("\n".join(TEXTS[:3]) + "\n", "text/csv", "application/json", "application/json"),
        ("".join(json.dumps(text) + "\n" for text in TEXTS[:3]), "application/jsonlines", "*/*", "application/json"),
        (json.dumps(TEXTS[:3]), "application/json", "application/jsonlines", "application/jsonlines"),
    ],
)
def test_invocations_answer_each_content_type(server, expected, body, content_type, accept, response_type) -> None:
    response = post(server, body, content_type, **({"Accept": accept} if accept else {}))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(response_type)
    if response_type == "application/jsonlines":
        predictions = [json.loads(line) for line in response.text.splitlines()]
    else:
        predictions = response.json()
    assert [item["label"] for item in predictions] == [expected[text]["label"] for text in TEXTS[:3]]
    for item, text in zip(predictions, TEXTS[:3]):
        assert item["score"] == pytest.approx(expected[text]["score"], abs=1e-5)


def test_top_k_parameter(server, expected) -> None:
    response = post(server, json.dumps({"inputs": TEXTS[:2], "parameters": {"top_k": 3}}))
    assert response.status_code == 200
    assert [len(item["top_k"]) for item in response.json()] == [3, 3]


@pytest.mark.parametrize(
    "method, path, body, headers, status",
    [
        ("POST", "/invocations", b'{"inputs": [', {"Content-Type": "application/json"}, 400),
        ("POST", "/invocations", b'{"inputs": []}', {"Content-Type": "application/json"}, 400),
        ("POST", "/invocations", b"", {"Content-Type": "text/csv"}, 400),
        ("POST", "/invocations", b"\xff\xfe", {"Content-Type": "text/csv"}, 400),
        ("POST", "/invocations", b'{"inputs": [1]}', {"Content-Type": "application/json"}, 400),
        ("POST", "/invocations", b"<a/>", {"Content-Type": "application/xml"}, 415),
        ("POST", "/invocations", b'["a"]', {"Content-Type": "application/json", "Accept": "text/html"}, 406),
        ("POST", "/invocations", b"x" * 5000, {"Content-Type": "text/csv"}, 413),
        ("POST", "/invocations", b"a\n" * 9, {"Content-Type": "text/csv"}, 413),
        ("GET", "/invocations", None, {}, 405),
        ("POST", "/ping", b"", {}, 405),
        ("GET", "/nowhere", None, {}, 404),
    ],
)
def test_client_mistakes_get_4xx_with_a_json_message(server, method, path, body, headers, status) -> None:
    response = httpx.request(method, server.url + path, content=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["status"] == status and payload["error"]


def test_oversize_body_is_refused_without_reading_it(server) -> None:
    """A body announced over the limit gets 413 straight away, even when it is never sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 99999999\r\n\r\n"
        )
        answer = connection.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, expected) -> None:
    before = server.metrics()["batching"]
    # 48 requests at once: most one text, some several, every answer checked against its own texts.
    requests = [[text] for text in TEXTS[:40]] + [TEXTS[40 + index : 42 + index] for index in range(0, 8, 2)]

    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(requests))
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(client.post("/invocations", json={"inputs": texts}) for texts in requests))

    responses = asyncio.run(send_all())
    assert [response.status_code for response in responses] == [200] * len(requests)
    for texts, response in zip(requests, responses):
        assert [item["label"] for item in response.json()] == [expected[text]["label"] for text in texts]
        assert [item["score"] for item in response.json()] == pytest.approx(
            [expected[text]["score"] for text in texts], abs=1e-5
        )
    after = server.metrics()["batching"]
    merged_requests = after["requests"] - before["requests"]
    merged_batches = after["batches"] - before["batches"]
    assert merged_requests == len(requests)
    assert merged_batches < merged_requests / 2, after  # batching merged them
    assert after["max_batch_requests"] > 1


def test_every_request_writes_a_structured_access_line(server) -> None:
    post(server, json.dumps({"inputs": TEXTS[:2]}))
    httpx.get(server.url + "/nowhere", timeout=5)
    lines = server.access_lines()
    ok = [line for line in lines if line["path"] == "/invocations" and line["status"] == 200]
    assert ok and ok[-1]["texts"] == 2 and ok[-1]["latency_ms"] > 0 and ok[-1]["method"] == "POST"
    assert any(line["status"] == 404 and line["path"] == "/nowhere" for line in lines)
    assert all({"time", "status", "texts", "latency_ms"} <= set(line) for line in lines)
    metrics = server.metrics()
    assert metrics["responses_by_status"]["404"] >= 1
    assert metrics["config"]["precision"] == "fp32" and metrics["config"]["runtime"] == "torch"


def test_no_client_mistake_produced_a_500(server) -> None:
    assert httpx.get(server.url + "/ping", timeout=5).status_code == 200
    assert all(line["status"] < 500 for line in server.access_lines())


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_then_exits(model_dir, expected, tmp_path: Path) -> None:
    # A long batching delay keeps the request in flight when SIGTERM arrives.
    server = ServerProcess(model_dir, tmp_path / "server.log", "--max-batch-delay-ms", "1500", "--precision", "fp32")
    result: dict = {}

    def send() -> None:
        result["response"] = post(server, json.dumps({"inputs": TEXTS[:2]}))

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    sender.join(timeout=30)
    response = result["response"]
    assert response.status_code == 200
    assert [item["label"] for item in response.json()] == [expected[text]["label"] for text in TEXTS[:2]]
    assert server.process.wait(timeout=30) == 0
    server.stop()
    assert '"event": "stopped"' in server.log()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/ping", timeout=2)


@pytest.mark.slow
def test_request_and_body_timeouts(model_dir, tmp_path: Path) -> None:
    server = ServerProcess(
        model_dir, tmp_path / "server.log", "--request-timeout-s", "0.5", "--max-batch-delay-ms", "3000"
    )
    try:
        # Queued past the timeout (the batch waits 3 s): 503 with Retry-After, not a hang.
        response = post(server, json.dumps(["late"]))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        # A body that never finishes arriving: 408.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(
                b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 100\r\n\r\nabc"
            )
            answer = connection.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408")
        assert httpx.get(server.url + "/ping", timeout=5).status_code == 200
    finally:
        assert server.stop() == 0
