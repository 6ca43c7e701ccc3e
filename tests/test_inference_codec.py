"""The request codec: every client mistake is a RequestError with a 4xx status (property-based, with
Hypothesis: arbitrary bytes, JSON and headers in, only a request or our error out), and text/csv's
one definition of text input."""

from __future__ import annotations

import csv
import functools
import io
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bert_classify.inference import codec
from bert_classify.inference.codec import InferenceRequest, RequestError, csv_texts, decode_request

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KNOWN_TYPES = [
    "application/json", "application/jsonlines", "application/x-ndjson", "text/csv", "text/plain",
    "text/csv; charset=utf-8", 'application/json; charset="UTF-8"', "application/json; charset=latin-1",
]  # fmt: skip
content_types = st.one_of(st.none(), st.sampled_from(KNOWN_TYPES), st.text(max_size=40))
# Text with lone surrogates too (Hypothesis leaves category Cs out by default).
any_text = st.text(st.characters() | st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]), max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | any_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(["inputs", "text", "parameters", "top_k", "x"]) | any_text, children, max_size=5),
    max_leaves=20,
)


def check_outcome(body: bytes | str, content_type: str | None) -> InferenceRequest | None:
    """decode_request's only outcomes: a valid request or a RequestError with a 4xx status."""
    try:
        request = decode_request(body, content_type, max_texts=50, max_body_bytes=100_000)
    except RequestError as error:
        assert 400 <= error.status_code < 500 and error.message
        assert "\n" not in error.message  # one line
        return None
    assert isinstance(request, InferenceRequest)
    assert request.texts and all(isinstance(text, str) for text in request.texts)
    for text in request.texts:
        text.encode("utf-8")  # valid Unicode: no lone surrogate reaches the tokenizer
    assert isinstance(request.top_k, int) and 1 <= request.top_k <= codec.MAX_TOP_K
    return request


@SETTINGS
@given(body=st.binary(max_size=300), content_type=content_types)
@example(body=b"[" * 100_000, content_type="application/json")
@example(body=b"1" * 5000, content_type=None)
@example(body=b'["\\ud800"]', content_type="application/json")
@example(body=b'["a"]', content_type=";;;=")
@example(body=b"x" * 200_000, content_type="text/csv")
def test_arbitrary_bytes_give_a_request_or_a_4xx(body: bytes, content_type: str | None) -> None:
    check_outcome(body, content_type)


@SETTINGS
@given(payload=json_values, content_type=st.sampled_from(["application/json", "application/jsonlines", None]),
       as_str=st.booleans(), ensure_ascii=st.booleans())  # fmt: skip
@example(payload=["a\u2028b", "c\x0cd"], content_type="application/jsonlines", as_str=False, ensure_ascii=False)
def test_arbitrary_json_gives_a_request_or_a_4xx(
    payload: object, content_type: str | None, as_str: bool, ensure_ascii: bool
) -> None:
    # ensure_ascii: lone surrogates travel as \\udXXX escapes; without: U+2028 and the like unescaped.
    dumps = functools.partial(json.dumps, ensure_ascii=ensure_ascii)
    text = dumps(payload)
    if content_type == "application/jsonlines" and isinstance(payload, list):
        text = "\n".join(dumps(item) for item in payload)
    if not ensure_ascii and not as_str:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return  # a lone surrogate cannot be sent unescaped as UTF-8 bytes
    request = check_outcome(text if as_str else text.encode("utf-8"), content_type)
    if isinstance(payload, list) and payload and all(_valid_text(item) for item in payload):
        assert request is not None and request.texts == payload  # taken as it is (JSON Lines: a string a line)


def _valid_text(item: object) -> bool:
    if not isinstance(item, str):
        return False
    try:
        item.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@SETTINGS
@given(texts=st.lists(st.text(min_size=1, max_size=40).filter(lambda text: text.strip()), min_size=1, max_size=8))
def test_csv_written_texts_come_back_unchanged(texts: list[str]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([text] for text in texts)
    assert csv_texts(buffer.getvalue()) == texts


@SETTINGS
@given(accept=st.text(max_size=60))
def test_any_accept_header_gives_a_supported_type_or_406(accept: str) -> None:
    try:
        assert codec.choose_accept(accept) in codec.ACCEPT_TYPES
    except RequestError as error:
        assert error.status_code == 406


@pytest.mark.parametrize(
    "body, texts",
    [
        ("one text\nanother, with a comma\n\n", ["one text", "another, with a comma"]),
        ('"quoted, with\na newline"\nplain\n', ["quoted, with\na newline", "plain"]),
        # DBpedia layout (every record: class index + title + content, or class index + text).
        ('1,"Acme Corp","makes, sells"\n2,Picasso.,painted\n', ["Acme Corp. makes, sells", "Picasso. painted"]),
        ("3,a text\n1,another\n", ["a text", "another"]),
        ("1,,only content\n", ["only content"]),
        # Not every record starts with an index: plain lines, commas kept.
        ("1,first\nsecond, and more\n", ["1,first", "second, and more"]),
        # A text that starts with a number and a comma reads as a DBpedia row unless quoted (documented).
        ("1984, a novel\n", ["a novel"]),
        ('"1984, a novel"\n', ["1984, a novel"]),
        ("12345678901,x\n", ["12345678901,x"]),  # ten digits or more is not a class index
    ],
)
def test_csv_texts_definition(body: str, texts: list[str]) -> None:
    assert csv_texts(body) == texts


def test_a_csv_field_longer_than_the_csv_modules_default_limit() -> None:
    line = "word " * 60_000  # 300 KB; the csv module's default field limit is 128 KiB
    assert csv_texts(line) == [line]


@pytest.mark.parametrize(
    "header, status",
    [
        (";;;=", 415), ("json", 415), ("/json", 415), ("application/json; =x", 415), ("application/json; x", 415),
        ("application/json; charset=latin-1", 415), ("application/xml", 415),
    ],
)  # fmt: skip
def test_malformed_or_unsupported_content_types(header: str, status: int) -> None:
    with pytest.raises(RequestError) as raised:
        decode_request(b'["a"]', header)
    assert raised.value.status_code == status


@pytest.mark.parametrize(
    "header",
    ["application/json", "Application/JSON", "application/json;", 'application/json; charset="utf-8"', "  ", None],
)
def test_well_formed_content_types(header: str | None) -> None:
    assert decode_request(b'["a"]', header).texts == ["a"]


@pytest.mark.parametrize(
    "body, content_type, words",
    [
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "nested too deeply"),
        (b"9" * 5000, "application/json", "digits"),
        (b'{"inputs": "a", "parameters": {"top_k": ' + b"1" * 5000 + b"}}", "application/json", "digits"),
        (b'["fine", "x \\ud800 y"]', "application/json", "text 2 is not valid Unicode"),
        (b'"\\udfff"\n', "application/jsonlines", "lone surrogate U+DFFF"),
    ],
)
def test_client_mistakes_that_used_to_be_500(body: bytes, content_type: str, words: str) -> None:
    with pytest.raises(RequestError) as raised:
        decode_request(body, content_type, max_body_bytes=None)
    assert raised.value.status_code == 400 and words in raised.value.message


@pytest.mark.parametrize(
    "body", [b'["x \\ud800 y"]', b"[" * 100_000, b'{"inputs": ["a"], "parameters": {"top_k": ' + b"5" * 5000 + b"}}"]
)
def test_the_sagemaker_handler_gets_the_same_4xx(body: bytes) -> None:
    from bert_classify.inference import handler

    for payload in (body, body.decode("utf-8")):  # the toolkit passes str for UTF-8 content types
        with pytest.raises(RequestError) as raised:  # outside the container RequestError passes through
            handler.input_fn(payload, "application/json")
        assert raised.value.status_code == 400
