"""Readers: each layout, CSV quoting edge cases, and every bad-data case with its message (file and line)."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest

from bert_classify.data import LabeledData, load_labeled_data, read_class_names, read_texts
from bert_classify.errors import ConfigError, DataError
from conftest import CLASS_NAMES, make_rows, write_dbpedia_csv


def write(path: Path, text: str) -> str:
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def error_of(function, *args, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        function(*args, **kwargs)
    return str(caught.value)


# ------------------------------------------------------------------------------------ classes.txt
def test_read_class_names_strips_and_keeps_order(tmp_path: Path) -> None:
    path = write(tmp_path / "classes.txt", "\ufeffCompany\r\n Artist \nAnimal")
    assert read_class_names(path) == ["Company", "Artist", "Animal"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("A\n\nB\n", r"classes.txt:2: blank line"),
        ("A\nB\nA\n", r"classes.txt:3: class name 'A' repeats line 1"),
        ("", r"classes.txt: the classes file is empty"),
        ("A\nB\n\n", r"classes.txt:3: blank line"),
    ],
)
def test_read_class_names_rejects_bad_files(tmp_path: Path, content: str, expected: str) -> None:
    assert re.search(expected, error_of(read_class_names, write(tmp_path / "classes.txt", content)))


def test_read_class_names_missing_and_undecodable(tmp_path: Path) -> None:
    message = error_of(read_class_names, tmp_path / "nope.txt")
    assert "classes file not found" in message and "nope.txt" in message
    (tmp_path / "latin.txt").write_bytes(b"A\nCaf\xe9\n")
    assert "latin.txt:2: not valid UTF-8" in error_of(read_class_names, tmp_path / "latin.txt")


# --------------------------------------------------------------------------------- DBpedia layout
def test_dbpedia_three_columns_with_classes(tmp_path: Path, tiny_data_dir: Path) -> None:
    data = load_labeled_data(str(tiny_data_dir / "train.csv"), class_names=read_class_names(tiny_data_dir / "classes.txt"))
    rows = make_rows(60, seed=1)
    assert isinstance(data, LabeledData) and len(data) == 60
    assert data.class_names == CLASS_NAMES
    assert data.labels == [index - 1 for index, _, _ in rows]
    assert data.texts[0] == f"{rows[0][1]}. {rows[0][2]}"
    assert data.source == str(tiny_data_dir / "train.csv")


def test_dbpedia_title_joining_and_two_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.csv",
        '1,"E. D. Abbott Ltd"," Abbott of Farnham was a coachbuilder."\n'
        "2,Foo Inc.,makes things\n"
        "1,,content only\n"
        "2,Wow!,exclaims\n",
    )
    assert load_labeled_data(path).texts == [
        "E. D. Abbott Ltd. Abbott of Farnham was a coachbuilder.",
        "Foo Inc. makes things",
        "content only",
        "Wow! exclaims",
    ]
    two = load_labeled_data(write(tmp_path / "two.csv", "2,first text\n1,second text\n"))
    assert two.texts == ["first text", "second text"] and two.labels == [1, 0] and two.class_names == ["1", "2"]


def test_dbpedia_quoting_edge_cases(tmp_path: Path) -> None:
    content = 'He said ""hi"", then left,\nand came back — café, naïve, 東京'
    path = tmp_path / "q.csv"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + f'1,"Title, with comma","{content}"\r\n2,"Plain","x"\r\n'.encode()
    )
    data = load_labeled_data(str(path), class_names=["A", "B"])
    assert data.texts[0] == "Title, with comma. " + content.replace('""', '"')
    assert data.labels == [0, 1]


def test_dbpedia_round_trips_what_csv_writer_writes(tmp_path: Path) -> None:
    rows = [(1, 'quote " inside', "multi\nline, with comma"), (2, "", 'only "content"'), (1, "Ünïcödé", "ok")]
    data = load_labeled_data(str(write_dbpedia_csv(tmp_path / "w.csv", rows)))
    assert data.texts == ['quote " inside. multi\nline, with comma', 'only "content"', "Ünïcödé. ok"]


def test_dbpedia_without_classes_needs_contiguous_indices(tmp_path: Path) -> None:
    data = load_labeled_data(write(tmp_path / "d.csv", "3,t,a\n1,t,b\n2,t,c\n10,t,d\n" + "".join(
        f"{index},t,x\n" for index in range(4, 10)
    )))
    assert data.class_names == [str(index) for index in range(1, 11)]
    assert data.labels[:4] == [2, 0, 1, 9]
    message = error_of(load_labeled_data, write(tmp_path / "gap.csv", "1,t,a\n3,t,b\n"))
    assert "gap.csv" in message and "never use 2" in message and "--classes" in message
    message = error_of(load_labeled_data, write(tmp_path / "zero.csv", "1,t,a\n0,t,b\n"))
    assert "zero.csv:2:" in message and "1-based" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("1,t,a\n4,t,b\n", r"bad.csv:2: class index 4 is outside 1..3"),
        ("1,t,a\nx,t,b\n", r"bad.csv:2: class index 'x' is not an integer"),
        ("1,t,a\n2,t,b,extra\n", r"bad.csv:2: 4 fields, expected 3"),
        ("1,t,a\n2,t\n", r"bad.csv:2: 2 fields, expected 3"),
        ("1,t,a\n2,,\n", r"bad.csv:2: empty text"),
        ("1,t,a\n\n2,t,b\n", r"bad.csv:2: blank line"),
        ('1,t,"multi\nline"\n2,t,"x",y\n', r"bad.csv:3: 4 fields"),
        ('1,t,a\n2,t,"never closed\n3,t,c\n', r"bad.csv:2: a quoted field opened on line 2 is never closed"),
        ('1,t,a\n2,t,"bad "quote" here"\n', r"bad.csv:2: a quote inside a quoted field is not doubled"),
        ("1,a,b,c,d\n", r"bad.csv:1: 5 fields; the DBpedia layout has 3"),
    ],
)
def test_dbpedia_bad_data_names_file_and_line(tmp_path: Path, content: str, expected: str) -> None:
    message = error_of(
        load_labeled_data, write(tmp_path / "bad.csv", content), class_names=CLASS_NAMES, data_format="dbpedia"
    )
    assert re.search(expected, message), message


def test_wrong_field_count_says_to_quote_commas(tmp_path: Path) -> None:
    message = error_of(load_labeled_data, write(tmp_path / "c.csv", "1,t,a\n2,t,a, b\n"))
    assert "c.csv:2:" in message and "Quote fields that contain commas" in message


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b'1,t,"ok"\n2,t,"multi\nline"\n3,t,caf\xe9\n')
    message = error_of(load_labeled_data, str(path))
    assert "latin1.csv:4: not valid UTF-8" in message


def test_missing_empty_and_directory(tmp_path: Path) -> None:
    assert "data file not found: " + str(tmp_path / "nope.csv") in error_of(load_labeled_data, str(tmp_path / "nope.csv"))
    assert "empty.csv: the file is empty" in error_of(load_labeled_data, write(tmp_path / "empty.csv", ""))
    assert "is a directory" in error_of(load_labeled_data, str(tmp_path))
    assert "e.jsonl: the file is empty" in error_of(load_labeled_data, write(tmp_path / "e.jsonl", ""))


def test_dbpedia_header_line_hint(tmp_path: Path) -> None:
    message = error_of(load_labeled_data, write(tmp_path / "h.csv", "label,title,content\n1,t,a\n"), data_format="dbpedia")
    assert "h.csv:1:" in message and "--data-format csv" in message


def test_long_field_beyond_csv_default_limit(tmp_path: Path) -> None:
    long_text = "word " * 40_000  # 200 kB, past the csv module's default 128 KiB field limit
    data = load_labeled_data(write(tmp_path / "long.csv", f'1,t,"{long_text}"\n2,t,b\n'))
    assert data.texts[0] == "t. " + long_text.strip()


# ----------------------------------------------------------------------------- CSV with a header
def test_header_csv_string_labels_sorted(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", 'text,label\n"great, really",pos\nawful,neg\n"so\nso",neutral\n')
    data = load_labeled_data(path)
    assert data.class_names == ["neg", "neutral", "pos"]
    assert data.labels == [2, 0, 1]
    assert data.texts == ["great, really", "awful", "so\nso"]


def test_header_csv_integer_labels_sort_numerically(tmp_path: Path) -> None:
    data = load_labeled_data(write(tmp_path / "n.csv", "text,label\na,10\nb,2\nc,1\n"))
    assert data.class_names == ["1", "2", "10"] and data.labels == [2, 1, 0]


def test_header_csv_custom_columns_and_class_names_order(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "id,review,sentiment\n1,nice,positive\n2,bad,negative\n")
    data = load_labeled_data(
        path, text_column="review", label_column="sentiment", class_names=["positive", "negative"]
    )
    assert data.labels == [0, 1] and data.texts == ["nice", "bad"] and data.class_names == ["positive", "negative"]


def test_header_csv_bad_data(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "body,label\nx,a\n")
    message = error_of(load_labeled_data, path)
    assert "h.csv:1: no column 'text'" in message and "'body', 'label'" in message and "--text-column" in message
    path = write(tmp_path / "u.csv", "text,label\nx,pos\ny,meh\n")
    message = error_of(load_labeled_data, path, class_names=["neg", "pos"])
    assert "u.csv:3: label 'meh' is not one of the 2 known classes ('neg', 'pos')" in message
    message = error_of(load_labeled_data, write(tmp_path / "i.csv", "text,label\nx,1\n"), class_names=["neg", "pos"])
    assert "i.csv:2:" in message and "matched as names" in message
    assert "e.csv:3: empty text" in error_of(load_labeled_data, write(tmp_path / "e.csv", "text,label\nx,a\n  ,b\n"))
    assert "l.csv:2: empty label" in error_of(load_labeled_data, write(tmp_path / "l.csv", "text,label\nx,\n"))
    assert "f.csv:2: 3 fields, expected 2" in error_of(load_labeled_data, write(tmp_path / "f.csv", "text,label\nx,a,b\n"))
    assert "o.csv: only a header line" in error_of(load_labeled_data, write(tmp_path / "o.csv", "text,label\n"))


def test_auto_detection_and_column_options_on_dbpedia(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "1,t,a\n2,t,b\n")
    with pytest.raises(ConfigError, match="--text-column names a header column.*--data-format csv"):
        load_labeled_data(path, text_column="text")
    # Forced to a CSV with header, line 1 becomes the header.
    assert "no column 'text'" in error_of(load_labeled_data, path, data_format="csv")
    with pytest.raises(ConfigError, match="--data-format must be one of"):
        load_labeled_data(path, data_format="xml")


# -------------------------------------------------------------------------------------- JSON Lines
def test_jsonl_reads_names_and_integers(tmp_path: Path) -> None:
    lines = [{"text": "a \"quoted\" text, with comma", "label": "x"}, {"text": "zweite Zeile ü", "label": "y", "extra": 1}]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    data = load_labeled_data(path)
    assert data.texts == [line["text"] for line in lines] and data.labels == [0, 1] and data.class_names == ["x", "y"]
    numbers = load_labeled_data(write(tmp_path / "n.json", '{"body": "a", "y": 2}\n{"body": "b", "y": 1}\n'),
                                text_column="body", label_column="y")
    assert numbers.class_names == ["1", "2"] and numbers.labels == [1, 0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": }\n', r"d.jsonl:2: invalid JSON \(Expecting value at column 24\)"),
        ('{"text": "a", "label": "x"}\n\n', r"d.jsonl:2: blank line"),
        ('["a", "x"]\n', r"d.jsonl:1: a JSON list, not an object"),
        ('{"body": "a", "label": "x"}\n', r"d.jsonl:1: no field 'text' \(fields present: 'body', 'label'\)"),
        ('{"text": "a"}\n', r"d.jsonl:1: no field 'label'"),
        ('{"text": "", "label": "x"}\n', r"d.jsonl:1: field 'text' must be a non-empty string"),
        ('{"text": 5, "label": "x"}\n', r"d.jsonl:1: field 'text' must be a non-empty string"),
        ('{"text": "a", "label": null}\n', r"d.jsonl:1: field 'label' must be a class name"),
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": "zzz"}\n', r"d.jsonl:2: label 'zzz' is not one of"),
    ],
)
def test_jsonl_bad_data(tmp_path: Path, content: str, expected: str) -> None:
    message = error_of(load_labeled_data, write(tmp_path / "d.jsonl", content), class_names=["x", "y"])
    assert re.search(expected, message), message


def test_reader_excludes_format_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--reader takes over"):
        load_labeled_data(None, reader="x:Y", data_format="csv")
    assert "no data file given" in error_of(load_labeled_data, None)


# ------------------------------------------------------------------------------------- read_texts
def test_read_texts_plain_lines(tmp_path: Path) -> None:
    assert read_texts(write(tmp_path / "t.txt", "first, text\r\nsecond \"text\"\nlast")) == [
        "first, text",
        'second "text"',
        "last",
    ]
    message = error_of(read_texts, write(tmp_path / "gap.txt", "one\n\nthree\n"))
    assert "gap.txt:2: empty line" in message
    assert "x.txt: no texts" in error_of(read_texts, write(tmp_path / "x.txt", ""))


def test_read_texts_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("héllo\nworld\n".encode())))
    assert read_texts("-") == ["héllo", "world"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok\n\xff\n")))
    assert "<stdin>:2: not valid UTF-8" in error_of(read_texts, "-")


def test_read_texts_structured_formats(tmp_path: Path) -> None:
    assert read_texts(write(tmp_path / "h.csv", "id,text\n1,\"a, b\"\n2,c\n")) == ["a, b", "c"]
    assert read_texts(write(tmp_path / "h2.csv", "id,body\n1,x\n"), text_column="body") == ["x"]
    assert read_texts(write(tmp_path / "d.csv", "1,T,a\n2,,b\n")) == ["T. a", "b"]
    assert read_texts(write(tmp_path / "j.jsonl", '{"text": "a"}\n{"text": "b", "label": 3}\n')) == ["a", "b"]
    assert read_texts(write(tmp_path / "t.data", "x,y\n"), data_format="text") == ["x,y"]
    assert "j2.jsonl:1: no field 'text'" in error_of(read_texts, write(tmp_path / "j2.jsonl", '{"body": "a"}\n'))
    with pytest.raises(ConfigError, match="--text-column applies to CSV"):
        read_texts(write(tmp_path / "t.txt", "a\n"), text_column="body")


# ------------------------------------------------------------------------------------ hostile files
def test_hostile_json_lines_name_file_and_line(tmp_path: Path) -> None:
    good = '{"text": "fine", "label": "a"}\n'
    cases = {
        "surrogate.jsonl": ('{"text": "x \\ud800 y", "label": "a"}', "surrogate.jsonl:2: field 'text': character 3 is a lone"),
        "label.jsonl": ('{"text": "x", "label": "\\udfffb"}', "label.jsonl:2: field 'label': character 1 is a lone"),
        "deep.jsonl": ('{"text": "x", "label": ' + "[" * 100_000 + "]" * 100_000 + "}", "deep.jsonl:2: JSON nested too deeply"),
        "digits.jsonl": ('{"text": "x", "label": ' + "9" * 5000 + "}", "digits.jsonl:2: a number longer than"),
    }
    for name, (line, expected) in cases.items():
        assert expected in error_of(load_labeled_data, write(tmp_path / name, good + line + "\n")), name
        if name != "label.jsonl":  # read_texts reads no labels
            assert expected in error_of(read_texts, str(tmp_path / name)), name
    # a surrogate pair written as two escapes is one real character, and fine
    data = load_labeled_data(write(tmp_path / "pair.jsonl", '{"text": "\\ud83d\\ude00", "label": "a"}\n' + good))
    assert data.texts[0] == "\U0001f600"


def test_a_huge_class_index_is_refused_quickly(tmp_path: Path) -> None:
    """Indices up to 10**4000 must not build a range of that size to find the missing ones."""
    message = error_of(load_labeled_data, write(tmp_path / "huge.csv", "1,t,a\n1" + "0" * 4000 + ",t,b\n"))
    assert "huge.csv:2: class indices go up to (an integer of about 4000 digits)" in message
    assert "never use 2, 3, 4" in message
    assert len(message) < 1000
    message = error_of(load_labeled_data, write(tmp_path / "h.jsonl", '{"text": "x", "label": 1}\n'),
                       class_names=["a"])
    assert "h.jsonl:1: label '1' is not one of the 1 known classes" in message


def test_messages_stay_on_one_line_when_fields_hold_line_breaks(tmp_path: Path) -> None:
    message = error_of(load_labeled_data, write(tmp_path / "h.csv", '"a\nb",label\nx,y\n'))
    assert "'a\\nb'" in message and "\n" not in message


def test_unused_classes_are_the_ones_without_examples(tmp_path: Path) -> None:
    from bert_classify.data.labels import unused_classes

    data = load_labeled_data(write(tmp_path / "d.csv", "1,t,a\n3,t,b\n"), class_names=["x", "y", "z", "w"])
    assert unused_classes(data) == ["y", "w"]
