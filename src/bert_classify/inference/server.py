"""HTTP server speaking the SageMaker container contract: GET /ping, POST /invocations (+ GET /metrics).

Starlette on uvicorn (its h11 protocol, extended with a request-header deadline and JSON bodies
for the errors it answers itself), one process, with dynamic batching. Each request is decoded and
tokenised on its own before it joins a batch, so a bad request fails alone. Client mistakes get 4xx
with a JSON `{"error": ..., "status": ...}` body; every request writes one JSON access-log line;
SIGTERM drains in-flight work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import http
import json
import logging
import math
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bert_classify.errors import BertClassifyError, ConfigError
from bert_classify.inference import codec
from bert_classify.inference.batching import DynamicBatcher
from bert_classify.inference.codec import RequestError
from bert_classify.inference.predictor import Classifier

access_log = logging.getLogger("bert_classify.access")
server_log = logging.getLogger("bert_classify.server")


@dataclass
class ServerConfig:
    """Limits and batching settings; `validate` names the flag to change."""

    max_batch_size: int = 32
    max_batch_delay_ms: float = 5.0
    max_body_bytes: int = codec.DEFAULT_MAX_BODY_BYTES
    max_texts_per_request: int = codec.DEFAULT_MAX_TEXTS
    request_timeout_s: float = 60.0
    # A connection must deliver a request's complete headers this soon after it opens (or after its
    # first byte, on a kept-alive connection); else 408 and closed. Slow-header clients hold nothing.
    header_timeout_s: float = 10.0
    # Texts per forward pass inside a merged batch (length-sorted). None: 8 on CPU, where short
    # similar-length passes beat one padded pass; the whole merged batch on a GPU.
    forward_batch_size: int | None = None

    def validate(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size {self.max_batch_size}: must be at least 1 (1 turns batching off).")
        if not 0 <= self.max_batch_delay_ms <= 10_000:
            raise ConfigError(f"--max-batch-delay-ms {self.max_batch_delay_ms}: must be between 0 and 10000.")
        if self.max_body_bytes < 1:
            raise ConfigError(f"--max-body-bytes {self.max_body_bytes}: must be at least 1.")
        if self.max_texts_per_request < 1:
            raise ConfigError(f"--max-texts-per-request {self.max_texts_per_request}: must be at least 1.")
        if self.forward_batch_size is not None and self.forward_batch_size < 1:
            raise ConfigError(f"--forward-batch-size {self.forward_batch_size}: must be at least 1.")
        if not (self.request_timeout_s > 0 and math.isfinite(self.request_timeout_s)):
            raise ConfigError(f"--request-timeout-s {self.request_timeout_s}: must be a number of seconds above 0.")
        if not (self.header_timeout_s > 0 and math.isfinite(self.header_timeout_s)):
            raise ConfigError(f"--header-timeout-s {self.header_timeout_s}: must be a number of seconds above 0.")


def _json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import Response

    return Response(json.dumps(payload), status_code=status, media_type=codec.JSON, headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    return _json_response(status, {"error": message, "status": status}, headers)


def _raw_error(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 error response (JSON body, connection closed), for the protocol layer."""
    body = json.dumps({"error": message, "status": status}).encode("utf-8")
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: {codec.JSON}\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _BodyTooLarge(Exception):
    pass


def create_app(classifier: Classifier, config: ServerConfig | None = None) -> Any:
    """The ASGI application (Starlette) serving `classifier`."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response
    from starlette.routing import Route

    config = config or ServerConfig()
    config.validate()
    batcher = DynamicBatcher(
        _runner(classifier, config),
        max_batch_size=config.max_batch_size,
        max_batch_delay_s=config.max_batch_delay_ms / 1000.0,
    )
    status_counts: Counter[int] = Counter()
    started = time.time()
    # Tokenising runs in its own thread: one at a time (a fast tokenizer must not be called from two
    # threads at once), beside the model thread, and never on the event loop.
    tokenizer_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

    async def encode(texts: list[str]) -> list[list[int]]:
        """This request's token ids; a text the tokenizer refuses fails this request only, with 400."""
        try:
            return await asyncio.get_running_loop().run_in_executor(tokenizer_thread, classifier.encode, texts)
        except BertClassifyError as error:
            raise RequestError(400, str(error)) from None
        except Exception as error:  # the tokenizer's own errors are about this request's texts
            server_log.warning(json.dumps({"event": "tokenizer_refused", "error": f"{type(error).__name__}: {error}"}))
            raise RequestError(400, f"the texts could not be tokenised ({type(error).__name__}); check their encoding.") from None

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise _BodyTooLarge(int(declared))
        chunks = bytearray()
        async for chunk in request.stream():
            chunks.extend(chunk)
            if len(chunks) > config.max_body_bytes:
                raise _BodyTooLarge(len(chunks))
        return bytes(chunks)

    async def ping(request: Request) -> Response:
        if not batcher.accepting:
            return _error(503, "shutting down")
        return Response(b"", status_code=200)

    async def metrics(request: Request) -> Response:
        return _json_response(
            200,
            {
                "uptime_s": round(time.time() - started, 3),
                "responses_by_status": {str(code): count for code, count in sorted(status_counts.items())},
                "batching": batcher.stats.to_dict(),
                "config": {
                    "max_batch_size": config.max_batch_size,
                    "max_batch_delay_ms": config.max_batch_delay_ms,
                    "forward_batch_size": config.forward_batch_size,
                    "max_body_bytes": config.max_body_bytes,
                    "max_texts_per_request": config.max_texts_per_request,
                    "request_timeout_s": config.request_timeout_s,
                    "header_timeout_s": config.header_timeout_s,
                    "max_seq_len": classifier.max_length,
                    "long_texts": "truncate" if classifier.windowing is None else "chunk",
                    "max_windows_per_text": None if classifier.windowing is None else classifier.windowing.max_windows,
                    "runtime": classifier.runtime,
                    "device": classifier.device,
                    "precision": classifier.precision,
                },
            },
        )

    async def invocations(request: Request) -> Response:
        deadline = time.monotonic() + config.request_timeout_s
        try:
            # Decide the response type before doing any work: 406 costs nothing.
            codec.choose_accept(request.headers.get("accept"))
            try:
                body = await asyncio.wait_for(read_body(request), timeout=config.request_timeout_s)
            except _BodyTooLarge as error:
                return _error(413, f"request body is {error.args[0]}+ bytes, over the limit of {config.max_body_bytes} bytes.")
            except asyncio.TimeoutError:
                return _error(408, f"the request body did not arrive within {config.request_timeout_s} s.")
            inference_request = codec.decode_request(
                body,
                request.headers.get("content-type"),
                max_texts=config.max_texts_per_request,
                max_body_bytes=config.max_body_bytes,
            )
            request.state.texts = len(inference_request.texts)
            if not batcher.accepting:
                return _error(503, "the server is shutting down; retry on another instance.", {"Retry-After": "1"})
            encoded = await encode(inference_request.texts)
            remaining = max(0.001, deadline - time.monotonic())
            try:
                rows = await asyncio.wait_for(batcher.submit(encoded), timeout=remaining)
            except asyncio.TimeoutError:
                return _error(
                    503,
                    f"the request was not answered within {config.request_timeout_s} s (server overloaded); retry later "
                    "or raise --request-timeout-s.",
                    {"Retry-After": "1"},
                )
            predictions = classifier.format_predictions(rows, inference_request.top_k)
            body_out, media_type = codec.encode_response(predictions, request.headers.get("accept"))
            return Response(body_out, status_code=200, media_type=media_type)
        except RequestError as error:
            return _error(error.status_code, error.message)
        except ClientDisconnect:
            return Response(b"", status_code=499)

    async def http_error(request: Request, error: Exception) -> Response:
        status = getattr(error, "status_code", 500)
        detail = getattr(error, "detail", "") or ""
        return _error(status, f"{detail}: {request.method} {request.url.path}", getattr(error, "headers", None))

    async def server_error(request: Request, error: Exception) -> Response:
        server_log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(error).__name__}); see the server log.")

    async def lifespan(app: Any) -> Any:
        await batcher.start()
        seconds = await batcher.warm_up(await encode(WARM_UP_TEXTS))
        server_log.info(json.dumps({"event": "warmed_up", "texts": len(WARM_UP_TEXTS), "seconds": round(seconds, 3)}))
        try:
            yield
        finally:
            await batcher.stop()
            tokenizer_thread.shutdown(wait=True)

    app = Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=contextlib.asynccontextmanager(lifespan),
    )
    app.state.batcher = batcher
    return _AccessLog(app, status_counts)


CPU_FORWARD_BATCH_SIZE = 8
# Run once at start-up, before /ping answers 200 (a short and a longer text: two shapes).
WARM_UP_TEXTS = ["warm-up", "a longer warm-up text for the first forward pass " * 6]


def _runner(classifier: Classifier, config: ServerConfig) -> Any:
    forward_batch_size = config.forward_batch_size or (
        config.max_batch_size if str(classifier.device).startswith("cuda") else CPU_FORWARD_BATCH_SIZE
    )

    def run(encoded: Sequence[list[int]]) -> np.ndarray:
        # The merged requests' token ids, sorted by length and cut into forward passes.
        return classifier.predict_encoded(encoded, batch_size=forward_batch_size)

    return run


class _AccessLog:
    """ASGI middleware: one JSON line per HTTP request (status, texts, latency) on bert_classify.access."""

    def __init__(self, app: Any, status_counts: Counter[int]) -> None:
        self.app = app
        self.status_counts = status_counts

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        response: dict[str, Any] = {"status": 500, "bytes": 0}

        async def send_and_record(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
            elif message["type"] == "http.response.body":
                response["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.status_counts[response["status"]] += 1
            client = scope.get("client") or ("", 0)
            access_log.info(
                json.dumps(
                    {
                        "event": "access",
                        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": response["status"],
                        "texts": state.get("texts", 0),
                        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                        "bytes_out": response["bytes"],
                        "client": client[0],
                    }
                )
            )


def serve(
    classifier: Classifier,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    config: ServerConfig | None = None,
    access_log_enabled: bool = True,
) -> None:
    """Run the server until SIGTERM/SIGINT; in-flight requests finish before it exits."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("serve needs the server extra: pip install 'bert-classify[serve]'.") from None
    config = config or ServerConfig()
    app = create_app(classifier, config)
    _configure_logging(access_log_enabled)
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,  # ours is structured and carries the text count
        lifespan="on",
        timeout_graceful_shutdown=int(config.request_timeout_s) + 5,
        timeout_keep_alive=75,  # above the 60 s idle timeout of AWS load balancers
        http=http_protocol(config.header_timeout_s),
        ws="none",  # no WebSocket routes: an Upgrade request is answered as plain HTTP
    )
    server_log.info(
        json.dumps(
            {
                "event": "starting",
                "host": host,
                "port": port,
                "runtime": classifier.runtime,
                "device": classifier.device,
                "precision": classifier.precision,
                "classes": len(classifier.class_names),
                "max_batch_size": config.max_batch_size,
                "max_batch_delay_ms": config.max_batch_delay_ms,
            }
        )
    )
    with _clean_exit_after_signals():
        uvicorn.Server(uvicorn_config).run()
    server_log.info(json.dumps({"event": "stopped"}))


def http_protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a deadline on request headers and JSON bodies on its own errors.

    uvicorn times out idle kept-alive connections but not a client that sends its request line and
    headers slowly (or never finishes them): each such connection would be held forever. Here the
    headers of each request must be complete within `header_timeout_s` of the connection opening (or
    of the request's first byte on a kept-alive connection), else the client gets 408 and the
    connection is closed (a connection that sent nothing is just closed). The 400 uvicorn answers to
    malformed HTTP (and h11's 431 for headers over 16 KiB, 501 for an unknown Transfer-Encoding)
    carry `{"error", "status"}` JSON like every other error. Always h11: the same behaviour whether
    or not httptools is installed.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonErrorsH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _received_bytes = False

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self.conn.their_state is h11.IDLE:
                self._arm_header_timer()  # the first bytes of the next request on a kept-alive connection
            self._received_bytes = self._received_bytes or bool(data)
            try:
                super().data_received(data)
            except UnicodeDecodeError:  # a request target with bytes outside ASCII
                self._reply_and_close(400, "the request target (path) is not ASCII; percent-encode it.")
                return
            if self.conn.their_state is not h11.IDLE:
                self._cancel_header_timer()  # the headers are complete

        def send_400_response(self, msg: str) -> None:
            # Called by uvicorn while handling h11's RemoteProtocolError: it says what was wrong.
            error = sys.exc_info()[1]
            status = getattr(error, "error_status_hint", 400) if isinstance(error, h11.RemoteProtocolError) else 400
            detail = str(error) if error is not None and str(error) else msg
            self._reply_and_close(status, f"malformed HTTP/1.1 request: {detail}")

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._received_bytes = False
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if not self._received_bytes:
                self.transport.close()
                return
            self._reply_and_close(
                408, f"the request headers did not arrive within {header_timeout_s} s; send them in one go."
            )

        def _reply_and_close(self, status: int, message: str) -> None:
            self._cancel_header_timer()
            # Answered below the application, so not in the access log: one line of its own.
            client = (self.client or ("", 0))[0]
            server_log.info(json.dumps({"event": "protocol_error", "status": status, "error": message, "client": client}))
            if not self.transport.is_closing():
                self.transport.write(_raw_error(status, message))
                self.transport.close()

    return JsonErrorsH11Protocol


@contextlib.contextmanager
def _clean_exit_after_signals() -> Iterator[None]:
    """Make a drained SIGTERM/SIGINT end the process with status 0.

    uvicorn drains on the signal, restores the handlers it found and raises the signal again; with
    Python's defaults that kills the process (status -15) or prints a KeyboardInterrupt traceback.
    A no-op handler found there turns the re-raise into a normal return.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, lambda *_: None) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _configure_logging(access_log_enabled: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("bert_classify.access", "bert_classify.server", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    if not access_log_enabled:
        logging.getLogger("bert_classify.access").setLevel(logging.WARNING)
