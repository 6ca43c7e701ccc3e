"""HTTP server speaking the SageMaker container contract: GET /ping, POST /invocations (+ GET /metrics).

Starlette on uvicorn, one process, with dynamic batching. Client mistakes get 4xx with a JSON
`{"error": ...}` body; every request writes one JSON access-log line; SIGTERM drains in-flight work.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bert_classify.errors import ConfigError
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
        if self.request_timeout_s <= 0:
            raise ConfigError(f"--request-timeout-s {self.request_timeout_s}: must be above 0.")


def _json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import Response

    return Response(json.dumps(payload), status_code=status, media_type=codec.JSON, headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    return _json_response(status, {"error": message, "status": status}, headers)


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
            remaining = max(0.001, deadline - time.monotonic())
            try:
                rows = await asyncio.wait_for(batcher.submit(inference_request.texts), timeout=remaining)
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
        seconds = await batcher.warm_up(WARM_UP_TEXTS)
        server_log.info(json.dumps({"event": "warmed_up", "texts": len(WARM_UP_TEXTS), "seconds": round(seconds, 3)}))
        try:
            yield
        finally:
            await batcher.stop()

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

    def run(texts: Sequence[str]) -> np.ndarray:
        # predict_proba sorts the merged texts by length before cutting them into forward passes.
        return classifier.predict_proba(list(texts), batch_size=forward_batch_size)

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
