"""Request decoding and response encoding shared by the SageMaker handler and the HTTP server.

In: text/csv (CSV records, see `csv_texts`), text/plain (one text per line), application/json
(`{"inputs": [...], "parameters": {"top_k": k}}`, a list, or one string), application/jsonlines
(a string or `{"inputs"|"text": ...}` per line). Out: application/json (a list) or
application/jsonlines. Every client mistake, however malformed the body or header, raises
`RequestError` with a 4xx status; nothing else escapes `decode_request`.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from typing import Any

from bert_classify.data.readers import dbpedia_text
from bert_classify.errors import BertClassifyError

JSON = "application/json"
JSONLINES = "application/jsonlines"
CSV = "text/csv"
PLAIN = "text/plain"
CONTENT_TYPES = (CSV, PLAIN, JSON, JSONLINES)
ACCEPT_TYPES = (JSON, JSONLINES)
_ALIASES = {
    "application/x-jsonlines": JSONLINES,
    "application/jsonl": JSONLINES,
    "application/x-ndjson": JSONLINES,
    "application/json-lines": JSONLINES,
}
# RFC 9110 media type: type "/" subtype, then "; name=value" parameters (value a token or quoted string).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})\s*")
_PARAMETER = re.compile(rf'\s*({_TOKEN})\s*=\s*({_TOKEN}|"(?:[^"\\]|\\.)*")\s*')
# A CSV field may be as long as a whole body (the csv module's default stops at 128 KiB).
_CSV_FIELD_LIMIT = 64 * 1024 * 1024
# A DBpedia-layout record starts with its class index: 1-9 digits, nothing else.
_CLASS_INDEX = re.compile(r"\s*[0-9]{1,9}\s*")
# DBpedia titles that already end a sentence are joined to the content with a space, not ". "
# (the same join as the training readers, data/readers.py `_read_dbpedia`).
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
    """Lenient parse (for Accept): ('type/subtype' lower-cased, parameters); ('', {}) for nothing."""
    if not header:
        return "", {}
    media_type, *parameters = header.split(";")
    params = {}
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        params[key.strip().lower()] = value.strip().strip('"').lower()
    media_type = media_type.strip().lower()
    return _ALIASES.get(media_type, media_type), params


def _content_type(header: str) -> tuple[str, dict[str, str]]:
    """Strict parse of a Content-Type: a malformed one (`;;;=`, `json`, `a/b; =x`) is refused with 415."""
    media, *parameters = header.split(";")
    match = _MEDIA_TYPE.fullmatch(media)
    if match is None:
        raise RequestError(
            415, f"Content-Type '{_clip(header)}' is not a media type (type/subtype); send one of {', '.join(CONTENT_TYPES)}."
        )
    params = {}
    for parameter in parameters:
        if not parameter.strip():
            continue  # "application/json;" is common and harmless
        found = _PARAMETER.fullmatch(parameter)
        if found is None:
            raise RequestError(
                415, f"Content-Type '{_clip(header)}': parameter '{_clip(parameter.strip())}' is not name=value."
            )
        value = found.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[found.group(1).lower()] = value.lower()
    media_type = f"{match.group(1)}/{match.group(2)}".lower()
    return _ALIASES.get(media_type, media_type), params


def _clip(text: str, limit: int = 60) -> str:
    text = text.encode("unicode_escape").decode("ascii")  # one line, printable, whatever was sent
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_request(
    body: bytes | bytearray | str,
    content_type: str | None,
    *,
    max_texts: int | None = DEFAULT_MAX_TEXTS,
    max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
) -> InferenceRequest:
    """Parse a request body into texts. A missing (or blank) Content-Type is read as application/json.

    Raises RequestError (4xx) for every client mistake and nothing else: malformed headers and
    bodies, limits, JSON nested too deeply or with numbers too long to convert, texts that are not
    valid Unicode (lone surrogates).
    """
    if content_type is None or not content_type.strip():
        media_type, params = JSON, {}
    else:
        media_type, params = _content_type(content_type)
    if media_type not in CONTENT_TYPES:
        raise RequestError(
            415, f"Content-Type '{_clip(content_type or '')}' is not supported; send one of {', '.join(CONTENT_TYPES)}."
        )
    charset = params.get("charset", "utf-8")
    if charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
        raise RequestError(415, f"charset '{_clip(charset)}' is not supported; send UTF-8 text.")
    size = len(body.encode("utf-8", "surrogatepass")) if isinstance(body, str) else len(body)
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
        request = InferenceRequest(csv_texts(text))
    elif media_type == PLAIN:
        request = InferenceRequest([line for line in _lines(text) if line.strip()])
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
    _check_unicode(request.texts, media_type)
    return request


def csv_texts(text: str, source: str = "text/csv body") -> list[str]:
    """The texts of a CSV document: THE definition of text input as CSV (HTTP, handler, `sagemaker invoke`).

    Records are parsed with the csv module (RFC 4180: a field holding a comma, quote or newline is
    double-quoted, a quote inside it doubled); blank records are skipped. Then:
    - if every record has 2 or 3 fields and starts with a class index (digits only), the body is in
      the DBpedia layout that training reads, `index,text` or `index,title,content`: the index is
      dropped and title and content are joined as in training ("Title. Content");
    - otherwise each record is one text, its fields joined again with "," (so an unquoted comma
      stays part of the text).
    Raises RequestError (400) naming `source` and the line for malformed CSV.
    """
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    rows: list[list[str]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if any(field.strip() for field in row):
                rows.append(row)
    except csv.Error as error:
        raise RequestError(400, f"{source} is not valid CSV at line {reader.line_num}: {error}.") from None
    width = len(rows[0]) if rows else 0
    if width in (2, 3) and all(len(row) == width and _CLASS_INDEX.fullmatch(row[0]) for row in rows):
        return [dbpedia_text(row[1:]) for row in rows]
    return [",".join(row) for row in rows]


def _check_unicode(texts: list[str], media_type: str) -> None:
    for index, text in enumerate(texts):
        if text.isascii():
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RequestError(
                400,
                f"{media_type} text {index + 1} is not valid Unicode: a lone surrogate U+{ord(text[error.start]):04X} "
                f"at character {error.start} (a \\u escape of half a surrogate pair); send the whole character.",
            ) from None


def _text_of(item: Any, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in ("inputs", "text"):
            if isinstance(item.get(key), str):
                return item[key]
    raise RequestError(400, f"{where} must be a string or an object with a string 'inputs' or 'text' field.")


def _parse_json(text: str, where: str) -> Any:
    """json.loads with every failure a 400: syntax, nesting too deep, integers too long to convert."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(
            400, f"{where} is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})."
        ) from None
    except RecursionError:
        raise RequestError(400, f"{where} is nested too deeply to parse; send a flat list of texts.") from None
    except ValueError as error:  # an integer over Python's int/str conversion limit (4300 digits by default)
        if "integer string conversion" in str(error):
            digits = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
            raise RequestError(400, f"{where} holds an integer of over {digits} digits; texts go in as strings.") from None
        raise RequestError(400, f"{where} could not be parsed: {_clip(str(error), 120)}.") from None


def _lines(text: str) -> list[str]:
    # Lines end at "\n" (or "\r\n") only: str.splitlines would also cut at U+2028, form feeds and
    # other characters that may sit unescaped inside a JSON string or a text.
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _jsonlines_texts(text: str) -> list[str]:
    texts = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        item = _parse_json(line, f"application/jsonlines line {number}")
        texts.append(_text_of(item, f"application/jsonlines line {number}"))
    return texts


def _json_request(text: str) -> InferenceRequest:
    payload = _parse_json(text, "application/json body")
    top_k = 1
    if isinstance(payload, dict):
        if "inputs" not in payload:
            raise RequestError(400, 'application/json object needs an "inputs" field: {"inputs": ["text", ...]}.')
        parameters = payload.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise RequestError(400, '"parameters" must be an object, e.g. {"top_k": 3}.')
        top_k = parameters.get("top_k", 1)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise RequestError(
                400, f'"parameters.top_k" must be a whole number from 1 to {MAX_TOP_K}, not {_clip(repr(top_k))}.'
            )
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
    raise RequestError(406, f"Accept '{_clip(accept)}' is not supported; ask for one of {', '.join(ACCEPT_TYPES)}.")


def encode_response(predictions: list[dict[str, Any]], accept: str | None) -> tuple[bytes, str]:
    """(body, content type) for the predictions, one object per input text in input order."""
    media_type = choose_accept(accept)
    if media_type == JSONLINES:
        body = "".join(json.dumps(prediction, ensure_ascii=False) + "\n" for prediction in predictions)
    else:
        body = json.dumps(predictions, ensure_ascii=False)
    return body.encode("utf-8"), media_type
