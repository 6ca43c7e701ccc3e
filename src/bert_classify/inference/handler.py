"""SageMaker inference handler: `model_fn`, `input_fn`, `predict_fn`, `output_fn`, `model_warmup_fn`.

One `code/inference.py` (written by `bert-classify package`) serves on both AWS inference images:
- PyTorch image (sagemaker-inference's Transformer under TorchServe): output_fn returns
  (body, content type); a client mistake is raised as the toolkit's error type carrying our status.
- Hugging Face image (sagemaker-huggingface-inference-toolkit under MMS): its `handle` answers every
  exception with 400 and only passes bytes/str through, so under it output_fn returns bytes, and a
  failed request travels to output_fn as a `FailedRequest`, which sets its own status (413, 415, 500...)
  on the MMS context and answers with a JSON error body.
Client mistakes are 4xx, never 500, on both. The model is warmed up when it is loaded (model_fn), so the
first client request does not pay the first forward pass (the Hugging Face toolkit has no warm-up hook).

Environment: BERT_CLASSIFY_RUNTIME (torch|onnx, default torch), BERT_CLASSIFY_ONNX_FILE,
BERT_CLASSIFY_PRECISION (auto|fp32|bf16, default auto),
BERT_CLASSIFY_MAX_TEXTS (per request, default 1000), BERT_CLASSIFY_MAX_BODY_BYTES (default 6 MB),
BERT_CLASSIFY_BATCH_SIZE (default 32), BERT_CLASSIFY_WARMUP (1|0, default 1),
BERT_CLASSIFY_MAX_WINDOWS (windows per text at most, for a model trained with --long-texts chunk; default 64).
Long texts are handled as the model was trained (config.json `long_texts`): truncated, or windows combined per text.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from bert_classify.errors import BertClassifyError
from bert_classify.inference import codec
from bert_classify.inference.codec import InferenceRequest, RequestError
from bert_classify.inference.predictor import DEFAULT_BATCH_SIZE, Classifier
from bert_classify.inference.windows import DEFAULT_MAX_WINDOWS

logger = logging.getLogger(__name__)

HF_TOOLKIT_MODULE = "sagemaker_huggingface_inference_toolkit.handler_service"
# A short and a long text: the first pass of each shape pays for kernel selection and allocation.
WARM_UP_TEXTS = ["warm-up", "a longer warm-up text for the first forward pass " * 6]
_PHRASES = {
    400: "Bad Request",
    406: "Not Acceptable",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
}


@dataclass
class FailedRequest:
    """A request that failed under the Hugging Face toolkit, carried to output_fn to be answered there."""

    status_code: int
    message: str


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise BertClassifyError(f"environment variable {name}='{value}' must be a whole number.") from None


def _under_hf_toolkit() -> bool:
    """True when the Hugging Face inference toolkit is the one calling us (it is imported only there)."""
    return HF_TOOLKIT_MODULE in sys.modules


def _failed(error: RequestError) -> FailedRequest:
    """Answer a client mistake with its status in whichever container runs us (see the module doc)."""
    if _under_hf_toolkit():
        return FailedRequest(error.status_code, error.message)
    try:
        from sagemaker_inference.errors import GenericInferenceToolkitError
    except ImportError:  # outside a container: our own error type
        raise error from None
    raise GenericInferenceToolkitError(error.status_code, error.message, _PHRASES.get(error.status_code)) from None


def model_fn(model_dir: str, context: Any = None) -> Classifier:
    """Load the model from the extracted model.tar.gz (SageMaker passes /opt/ml/model), warmed up."""
    model = Classifier.from_pretrained(
        model_dir,
        runtime=os.environ.get("BERT_CLASSIFY_RUNTIME", "torch"),
        onnx_file=os.environ.get("BERT_CLASSIFY_ONNX_FILE") or None,
        precision=os.environ.get("BERT_CLASSIFY_PRECISION", "auto"),
        max_windows=_env_int("BERT_CLASSIFY_MAX_WINDOWS", DEFAULT_MAX_WINDOWS),
    )
    if os.environ.get("BERT_CLASSIFY_WARMUP", "1") != "0":
        model_warmup_fn(model_dir, model)
    return model


def model_warmup_fn(model_dir: str, model: Classifier, context: Any = None) -> float:
    """Run the warm-up texts through the model once; return the seconds it took (also logged).

    model_fn calls it, so both images warm up; the PyTorch image's toolkit would call it after model_fn
    too, which is why inference.py does not export it (one warm-up, not two).
    """
    started = time.perf_counter()
    model.predict(WARM_UP_TEXTS, batch_size=_env_int("BERT_CLASSIFY_BATCH_SIZE", DEFAULT_BATCH_SIZE))
    seconds = time.perf_counter() - started
    logger.info(json.dumps({"event": "warmed_up", "texts": len(WARM_UP_TEXTS), "seconds": round(seconds, 3)}))
    return seconds


def input_fn(
    request_body: bytes | str, request_content_type: str | None, context: Any = None
) -> InferenceRequest | FailedRequest:
    """Decode text/csv, application/json or application/jsonlines into an InferenceRequest."""
    try:
        request = _decode(request_body, request_content_type)
    except RequestError as error:
        return _failed(error)
    return request


def _decode(request_body: bytes | str, request_content_type: str | None) -> InferenceRequest:
    try:
        request = codec.decode_request(
            request_body,
            request_content_type,
            max_texts=_env_int("BERT_CLASSIFY_MAX_TEXTS", codec.DEFAULT_MAX_TEXTS),
            max_body_bytes=_env_int("BERT_CLASSIFY_MAX_BODY_BYTES", codec.DEFAULT_MAX_BODY_BYTES),
        )
    except RecursionError:
        raise RequestError(400, "the request body is nested too deeply to decode; send a flat list of texts.") from None
    except (ValueError, UnicodeError) as error:  # e.g. an integer of thousands of digits, bad UTF-8
        raise RequestError(400, f"the request body cannot be decoded: {str(error)[:200]}") from None
    for number, text in enumerate(request.texts, start=1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(
                400, f"text {number} holds a lone surrogate (an unpaired \\ud800-\\udfff escape); send valid Unicode."
            ) from None
    return request


def predict_fn(
    input_data: InferenceRequest | FailedRequest, model: Classifier, context: Any = None
) -> list[dict[str, Any]] | FailedRequest:
    """One `{"label", "score"}` per text, in input order (with "top_k" when the request asked)."""
    if isinstance(input_data, FailedRequest):
        return input_data
    try:
        if not isinstance(input_data, InferenceRequest):
            raise RequestError(400, "predict_fn expects the InferenceRequest that input_fn returns.")
        return model.predict(
            input_data.texts,
            top_k=input_data.top_k,
            batch_size=_env_int("BERT_CLASSIFY_BATCH_SIZE", DEFAULT_BATCH_SIZE),
        )
    except RequestError as error:
        return _failed(error)
    except Exception:
        if not _under_hf_toolkit():
            raise  # the PyTorch image's toolkit answers it with 500 itself
        logger.exception("prediction failed")
        return FailedRequest(500, "prediction failed on the server; see the endpoint's log.")


def output_fn(
    prediction: list[dict[str, Any]] | FailedRequest, accept: str | None, context: Any = None
) -> tuple[bytes, str] | bytes:
    """The response: (body, content type) on the PyTorch image, body bytes on the Hugging Face one.

    application/json by default, application/jsonlines when asked.
    """
    if not isinstance(prediction, FailedRequest):
        try:
            body, content_type = codec.encode_response(prediction, accept)
        except RequestError as error:
            prediction = _failed(error)
        else:
            return body if _under_hf_toolkit() else (body, content_type)
    # Only the Hugging Face toolkit gets here: answer with the status on its (MMS) context.
    if context is not None and hasattr(context, "set_response_status"):
        context.set_response_status(prediction.status_code, _PHRASES.get(prediction.status_code, "Error"))
    return json.dumps({"code": prediction.status_code, "message": prediction.message}).encode("utf-8")
