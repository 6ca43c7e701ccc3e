"""SageMaker inference handler: `model_fn`, `input_fn`, `predict_fn`, `output_fn`.

The SageMaker PyTorch inference container imports these through `code/inference.py` (written by
`bert-classify package`). Client mistakes become the toolkit's 4xx errors, never a 500.

Environment: BERT_CLASSIFY_RUNTIME (torch|onnx, default torch), BERT_CLASSIFY_ONNX_FILE,
BERT_CLASSIFY_PRECISION (auto|fp32|bf16, default auto),
BERT_CLASSIFY_MAX_TEXTS (per request, default 1000), BERT_CLASSIFY_MAX_BODY_BYTES (default 6 MB),
BERT_CLASSIFY_BATCH_SIZE (default 32).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

from bert_classify.errors import BertClassifyError
from bert_classify.inference import codec
from bert_classify.inference.codec import InferenceRequest, RequestError
from bert_classify.inference.predictor import DEFAULT_BATCH_SIZE, Classifier

Function = TypeVar("Function", bound=Callable[..., Any])


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise BertClassifyError(f"environment variable {name}='{value}' must be a whole number.") from None


def _container_errors(function: Function) -> Function:
    """Re-raise RequestError as the inference toolkit's error type, which it answers with our status.

    Outside the container (no `sagemaker_inference` installed) RequestError passes through as is.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except RequestError as error:
            try:
                from sagemaker_inference.errors import GenericInferenceToolkitError
            except ImportError:
                raise error from None
            raise GenericInferenceToolkitError(error.status_code, error.message, _PHRASES.get(error.status_code)) from None

    return wrapper  # type: ignore[return-value]


_PHRASES = {
    400: "Bad Request",
    406: "Not Acceptable",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
}


def model_fn(model_dir: str, context: Any = None) -> Classifier:
    """Load the model from the extracted model.tar.gz (SageMaker passes /opt/ml/model)."""
    return Classifier.from_pretrained(
        model_dir,
        runtime=os.environ.get("BERT_CLASSIFY_RUNTIME", "torch"),
        onnx_file=os.environ.get("BERT_CLASSIFY_ONNX_FILE") or None,
        precision=os.environ.get("BERT_CLASSIFY_PRECISION", "auto"),
    )


@_container_errors
def input_fn(request_body: bytes | str, request_content_type: str | None, context: Any = None) -> InferenceRequest:
    """Decode text/csv, application/json or application/jsonlines into an InferenceRequest."""
    return codec.decode_request(
        request_body,
        request_content_type,
        max_texts=_env_int("BERT_CLASSIFY_MAX_TEXTS", codec.DEFAULT_MAX_TEXTS),
        max_body_bytes=_env_int("BERT_CLASSIFY_MAX_BODY_BYTES", codec.DEFAULT_MAX_BODY_BYTES),
    )


@_container_errors
def predict_fn(input_data: InferenceRequest, model: Classifier, context: Any = None) -> list[dict[str, Any]]:
    """One `{"label", "score"}` per text, in input order (with "top_k" when the request asked)."""
    if not isinstance(input_data, InferenceRequest):
        raise RequestError(400, "predict_fn expects the InferenceRequest that input_fn returns.")
    return model.predict(
        input_data.texts,
        top_k=input_data.top_k,
        batch_size=_env_int("BERT_CLASSIFY_BATCH_SIZE", DEFAULT_BATCH_SIZE),
    )


@_container_errors
def output_fn(prediction: list[dict[str, Any]], accept: str | None, context: Any = None) -> tuple[bytes, str]:
    """(body, content type): application/json by default, application/jsonlines when asked."""
    return codec.encode_response(prediction, accept)
