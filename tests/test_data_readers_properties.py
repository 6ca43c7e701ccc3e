"""Property-based tests of the data readers: whatever bytes or JSON a file holds, reading it gives
records or the project's error (DataError/ConfigError), never another exception."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bert_classify.data import LabeledData, load_labeled_data, read_texts
from bert_classify.errors import BertClassifyError

SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Bytes that look like our formats often enough to reach deep into the readers, plus raw noise.
_FRAGMENTS = [b"1,", b"2,", b"text,label\n", b'"a\nb",', b"x\n", b'"', b'""', b",", b"\n", b"\r\n", b"\xef\xbb\xbf", b"\xff", b"{", b"}",
              b'"text": ', b'"label": ', b"\\ud800", b"0", b"-1", b"a b", b"\x00", b"\xc3\xa9", b"[", b"]"]
file_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(_FRAGMENTS) | st.binary(max_size=4), max_size=40).map(b"".join),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
json_records = st.one_of(
    json_values,
    st.fixed_dictionaries({"text": json_values, "label": json_values}),
    st.fixed_dictionaries({"text": st.text(max_size=20), "label": st.text(max_size=5) | st.integers()}),
)


def _read(content: bytes, suffix: str, **options: object) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"data{suffix}"
        path.write_bytes(content)
        try:
            labeled = load_labeled_data(str(path), **options)  # type: ignore[arg-type]
        except BertClassifyError as error:
            assert str(error) and "\n" not in str(error), str(error)  # one line, whatever the file held
        else:
            assert isinstance(labeled, LabeledData)
            assert len(labeled.texts) == len(labeled.labels) > 0
            assert all(0 <= label < len(labeled.class_names) for label in labeled.labels)
            for text in labeled.texts:
                text.encode("utf-8")  # what the tokenizer gets is valid text
        try:
            texts = read_texts(str(path))
        except BertClassifyError as error:
            assert str(error) and "\n" not in str(error), str(error)
        else:
            assert texts and all(isinstance(text, str) for text in texts)


@SETTINGS
@given(content=file_bytes, suffix=st.sampled_from([".csv", ".jsonl", ".txt"]))
def test_arbitrary_bytes_give_records_or_our_error(content: bytes, suffix: str) -> None:
    _read(content, suffix)


@SETTINGS
@given(content=file_bytes, data_format=st.sampled_from(["dbpedia", "csv", "jsonl"]), with_classes=st.booleans())
def test_arbitrary_bytes_in_each_format_give_records_or_our_error(
    content: bytes, data_format: str, with_classes: bool
) -> None:
    _read(content, ".dat", data_format=data_format, class_names=["a", "b", "1"] if with_classes else None)


@SETTINGS
@given(records=st.lists(json_records, min_size=0, max_size=6), with_classes=st.booleans())
def test_arbitrary_json_lines_give_records_or_our_error(records: list[object], with_classes: bool) -> None:
    lines = [json.dumps(record, allow_nan=True) for record in records]
    _read(("\n".join(lines) + "\n").encode("utf-8"), ".jsonl", class_names=["a", "b", "0"] if with_classes else None)
