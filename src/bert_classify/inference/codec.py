"""Request decoding and response encoding shared by the SageMaker handler and the HTTP server.

In: text/csv (one text per line), application/json (`{"inputs": [...], "parameters": {"top_k": k}}`,
a list, or one string), application/jsonlines (a string or `{"inputs"|"text": ...}` per line).
Out: application/json (a list) or application/jsonlines. Client mistakes raise `RequestError`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from bert_classify.errors import BertClassifyError

JSON = "application/json"
JSONLINES = "application/jsonlines"
CSV = "text/csv"
CONTENT_TYPES = (CSV, JSON, JSONLINES)
ACCEPT_TYPES = (JSON, JSONLINES)
_ALIASES = {
    "application/x-jsonlines": JSONLINES,
    "application/jsonl": JSONLINES,
    "application/x-ndjson": JSONLINES,
    "application/json-lines": JSONLINES,
    "text/plain": CSV,  # one text per line, the same as text/csv
}
# SageMaker real-time endpoints refuse payloads above 6 MB; we refuse them the same way locally.
DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024
DEFAULT_MAX_TEXTS = 1000
MAX_TOP_K = 1000


class RequestError(BertClassifyError):
    """A client's mistake in an inference request; `status_code` is the HTTP status to answer with."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass
class InferenceRequest:
    texts: list[str]
    top_k: int = 1


def _media_type(header: str | None) -> tuple[str, dict[str, str]]:
    if not header:
        return "", {}
    media_type, *parameters = header.split(";")
    params = {}
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        params[key.strip().lower()] = value.strip().strip('"').lower()
    media_type = media_type.strip().lower()
    return _ALIASES.get(media_type, media_type), params


def decode_request(
    body: bytes | bytearray | str,
    content_type: str | None,
    *,
    max_texts: int | None = DEFAULT_MAX_TEXTS,
    max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
) -> InferenceRequest:
    """Parse a request body into texts. A missing Content-Type is read as application/json."""
    media_type, params = _media_type(content_type)
    media_type = media_type or JSON
    if media_type not in CONTENT_TYPES:
        raise RequestError(
            415, f"Content-Type '{content_type}' is not supported; send one of {', '.join(CONTENT_TYPES)}."
        )
    charset = params.get("charset", "utf-8")
    if charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
        raise RequestError(415, f"charset '{charset}' is not supported; send UTF-8 text.")
    size = len(body.encode("utf-8")) if isinstance(body, str) else len(body)
    if max_body_bytes is not None and size > max_body_bytes:
        raise RequestError(413, f"request body is {size} bytes, over the limit of {max_body_bytes} bytes.")
    if isinstance(body, str):
        text = body
    else:
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as error:
            raise RequestError(400, f"request body is not valid UTF-8 (byte {error.start}).") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if media_type == CSV:
        request = InferenceRequest(_csv_texts(text))
    elif media_type == JSONLINES:
        request = InferenceRequest(_jsonlines_texts(text))
    else:
        request = _json_request(text)
    if not request.texts:
        raise RequestError(400, "the request holds no texts; send at least one.")
    if max_texts is not None and len(request.texts) > max_texts:
        raise RequestError(
            413, f"the request holds {len(request.texts)} texts, over the limit of {max_texts} per request; split it."
        )
    return request


def _csv_texts(text: str) -> list[str]:
    # One text per line; a text holding newlines or quotes can be written as a quoted CSV field.
    texts = []
    try:
        for row in csv.reader(io.StringIO(text, newline="")):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            texts.append(row[0] if len(row) == 1 else ",".join(row))
    except csv.Error as error:
        raise RequestError(400, f"text/csv body is not valid CSV: {error}.") from None
    return texts


def _text_of(item: Any, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in ("inputs", "text"):
            if isinstance(item.get(key), str):
                return item[key]
    raise RequestError(400, f"{where} must be a string or an object with a string 'inputs' or 'text' field.")


def _jsonlines_texts(text: str) -> list[str]:
    texts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise RequestError(400, f"application/jsonlines line {number} is not valid JSON: {error.msg}.") from None
        texts.append(_text_of(item, f"application/jsonlines line {number}"))
    return texts


def _json_request(text: str) -> InferenceRequest:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(
            400, f"application/json body is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})."
        ) from None
    top_k = 1
    if isinstance(payload, dict):
        if "inputs" not in payload:
            raise RequestError(400, 'application/json object needs an "inputs" field: {"inputs": ["text", ...]}.')
        parameters = payload.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise RequestError(400, '"parameters" must be an object, e.g. {"top_k": 3}.')
        top_k = parameters.get("top_k", 1)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise RequestError(400, f'"parameters.top_k" must be a whole number from 1 to {MAX_TOP_K}, not {top_k!r}.')
        payload = payload["inputs"]
    if isinstance(payload, str):
        return InferenceRequest([payload], top_k)
    if not isinstance(payload, list):
        raise RequestError(400, 'application/json body must be {"inputs": [...]}, a list of strings, or a string.')
    return InferenceRequest([_text_of(item, f"inputs[{index}]") for index, item in enumerate(payload)], top_k)


def choose_accept(accept: str | None) -> str:
    """The response type for an Accept header; missing or */* means application/json."""
    if not accept or not accept.strip():
        return JSON
    candidates = []
    for position, part in enumerate(accept.split(",")):
        media_type, params = _media_type(part)
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 1.0
        if media_type and quality > 0:
            candidates.append((-quality, position, media_type))
    for _, _, media_type in sorted(candidates):
        if media_type in ACCEPT_TYPES:
            return media_type
        if media_type in ("*/*", "application/*"):
            return JSON
    raise RequestError(406, f"Accept '{accept}' is not supported; ask for one of {', '.join(ACCEPT_TYPES)}.")


def encode_response(predictions: list[dict[str, Any]], accept: str | None) -> tuple[bytes, str]:
    """(body, content type) for the predictions, one object per input text in input order."""
    media_type = choose_accept(accept)
    if media_type == JSONLINES:
        body = "".join(json.dumps(prediction, ensure_ascii=False) + "\n" for prediction in predictions)
    else:
        body = json.dumps(predictions, ensure_ascii=False)
    return body.encode("utf-8"), media_type
