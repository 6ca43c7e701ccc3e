"""Serve a model directory through a real SageMaker serving toolkit, in-process, as its model server does.

Run with the toolkit's own interpreter (scripts/setup-toolkit-venvs.sh makes them), not the project's:
    .venv-hf/bin/python tests/toolkit_driver.py huggingface MODEL_DIR < requests.json
    .venv-pytorch/bin/python tests/toolkit_driver.py pytorch MODEL_DIR < requests.json
The model directory is what model.tar.gz unpacks to (weights + code/inference.py + vendored package).
The handler is loaded by the model server's own loader (MMS's for the Hugging Face image, TorchServe's
for the PyTorch image) and each request goes through `Service.predict` with the server's wire format;
the encoded reply is decoded back. Prints one JSON object per request: status, phrase, content_type, body.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time

HANDLERS = {
    "huggingface": "sagemaker_huggingface_inference_toolkit.handler_service",
    "pytorch": "sagemaker_pytorch_serving_container.handler_service",
}


def load_service(toolkit: str, model_dir: str):
    os.environ.setdefault("SAGEMAKER_PROGRAM", "inference.py")
    if toolkit == "huggingface":
        from mms.model_loader import MmsModelLoader

        return MmsModelLoader().load("model", model_dir, HANDLERS[toolkit], None, 1)
    import ts
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import TsModelLoader

    sys.path.append(os.path.join(model_dir, "code"))  # what the PyTorch container's start-up does
    metrics = MetricsCacheYamlImpl(os.path.join(os.path.dirname(ts.__file__), "configs", "metrics.yaml"))
    metrics.initialize_cache()
    service = TsModelLoader().load("model", model_dir, HANDLERS[toolkit], None, 1, metrics_cache=metrics)
    service.set_cl_socket(None)  # the worker's socket to the frontend; streaming replies only
    return service


def decode_reply(message: bytes) -> dict:
    """One request's reply from the model server's binary response (code, message, then per request)."""
    offset = 0

    def integer() -> int:
        nonlocal offset
        (value,) = struct.unpack_from("!i", message, offset)
        offset += 4
        return value

    def chunk() -> bytes:
        nonlocal offset
        length = integer()
        value = bytes(message[offset : offset + length])
        offset += length
        return value

    integer(), chunk()  # overall code and message
    chunk()  # request id
    content_type = chunk().decode()
    status = integer()
    phrase = chunk().decode()
    for _ in range(integer()):  # response headers
        chunk(), chunk()
    body = chunk()
    return {"status": status, "phrase": phrase, "content_type": content_type, "body": body.decode("utf-8", "replace")}


def main() -> int:
    toolkit, model_dir = sys.argv[1], sys.argv[2]
    started = time.perf_counter()
    service = load_service(toolkit, model_dir)
    print(json.dumps({"loaded_seconds": round(time.perf_counter() - started, 3)}), flush=True)
    for number, request in enumerate(json.load(sys.stdin)):
        headers = [{"name": b"Content-Type", "value": request["content_type"].encode()}]
        if request.get("accept"):
            headers.append({"name": b"Accept", "value": request["accept"].encode()})
        batch = [
            {
                "requestId": f"request-{number}".encode(),
                "parameters": [
                    {"name": "body", "contentType": request["content_type"], "value": request["body"].encode("utf-8", "surrogatepass")}
                ],
                "headers": headers,
            }
        ]
        started = time.perf_counter()
        reply = decode_reply(service.predict(batch))
        reply["seconds"] = round(time.perf_counter() - started, 4)
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
