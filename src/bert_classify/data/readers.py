"""Read labelled text (DBpedia-layout CSV, CSV with a header, JSON Lines, plug-ins) and unlabelled text.

One pass per file with the csv/json modules; every problem raises DataError naming the file, the
1-based physical line (as an editor shows it) and the fix, before any training starts.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from bert_classify.config import DATA_FORMATS  # one list of formats, defined with the flags
from bert_classify.data.labels import (
    LabeledData,
    check_class_names,
    clip,
    is_integer,
    label_sets_to_ids,
    labels_to_ids,
    unicode_problem,
)
from bert_classify.errors import ConfigError, DataError

TEXT_FORMATS = (*DATA_FORMATS, "text")
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "label"
# Multi-label CSV: the label cell lists an example's labels joined by this (--label-separator).
DEFAULT_LABEL_SEPARATOR = "|"
JSONL_EXTENSIONS = (".jsonl", ".json")
STDIN_PATH = "-"
# The csv module's default of 128 KiB per field is shorter than some real documents.
_FIELD_SIZE_LIMIT = 64 * 1024 * 1024
# DBpedia titles that already end a sentence are joined to the content with a space, not ". ".
_SENTENCE_END = (".", "!", "?")


# ----------------------------------------------------------------------------------- public API
def load_labeled_data(
    path: str | os.PathLike[str] | None,
    *,
    class_names: Sequence[str] | None = None,
    data_format: str = "auto",
    text_column: str | None = None,
    label_column: str | None = None,
    reader: str | None = None,
    multi_label: bool | None = None,
    label_separator: str = DEFAULT_LABEL_SEPARATOR,
) -> LabeledData:
    """Read and validate labelled examples; labels become 0-based ids into the returned class_names.

    `class_names` (from --classes, or the training set's for validation data) fixes the label map:
    DBpedia indices 1..K and CSV/JSON Lines names must fall inside it. Without it the classes are
    the distinct labels found (DBpedia: indices 1..K as '1'..'K'; names: sorted, numerically when
    all are integers). `reader='package.module:ClassName'` hands reading to a plug-in.

    `multi_label`: True reads every label as a list (JSON Lines: a JSON list, a single label being a
    list of one; CSV with a header: the cell split at `label_separator`; an empty list or cell is an
    example with none of the classes); False refuses list labels; None (auto) is multi-label when
    the JSON Lines labels are lists. The DBpedia layout is single-label only.
    """
    names = check_class_names(class_names, "class names") if class_names is not None else None
    if reader is not None:
        if data_format != "auto" or text_column is not None or label_column is not None:
            raise ConfigError(
                "--reader takes over reading, so --data-format, --text-column and --label-column do not apply; "
                "drop them or drop --reader."
            )
        from bert_classify.data.plugins import read_with_plugin

        return read_with_plugin(
            reader, None if path is None else os.fspath(path), class_names=names, multi_label=multi_label
        )
    if path is None:
        raise DataError("no data file given: name a file (--train/--val/--data) or a plug-in with --reader.")
    path = os.fspath(path)
    _check_format(data_format, DATA_FORMATS)
    if _resolve_by_extension(path, data_format) == "jsonl":
        texts, raw_labels, lines = _read_jsonl(
            path, text_column or DEFAULT_TEXT_COLUMN, label_column or DEFAULT_LABEL_COLUMN, allow_lists=multi_label is not False
        )
        label_sets = _jsonl_label_sets(raw_labels, lines, path, multi_label)
        if label_sets is not None:
            return _labeled_sets(texts, label_sets, lines, names, path)
        return _labeled(texts, raw_labels, lines, names, path)
    with _open_source(path) as handle:
        records = _csv_records(handle, path)
        first = _first_record(records, path)
        layout = _csv_layout(first, data_format, path, text_column, label_column)
        if layout == "dbpedia" and multi_label:
            raise ConfigError(
                f"{path} is in the headerless DBpedia layout, which holds one class index per example; for "
                "multi-label data use a CSV with a header (labels joined by --label-separator) or JSON Lines "
                "(a JSON list of labels)."
            )
        if layout == "dbpedia":
            texts, indices, lines = _read_dbpedia(first, records, path, want_labels=True)
        else:
            texts, raw_labels, lines = _read_header_csv(
                first, records, path, text_column or DEFAULT_TEXT_COLUMN, label_column or DEFAULT_LABEL_COLUMN,
                allow_empty_label=bool(multi_label),
            )
    if layout == "dbpedia":
        return _labeled(texts, indices, lines, names, path, index_base=1)
    if multi_label:
        return _labeled_sets(texts, _split_label_cells(raw_labels, lines, path, label_separator), lines, names, path)
    return _labeled(texts, raw_labels, lines, names, path)


def read_texts(path: str | os.PathLike[str], *, data_format: str = "auto", text_column: str | None = None) -> list[str]:
    """Texts to classify, in file order. '-' reads standard input.

    Formats: 'text' (one text per line; an empty line is an error, never skipped), 'csv' (with a
    header; `text_column`, default 'text'), 'jsonl' (`text_column` field), 'dbpedia' (labels
    ignored). 'auto': .jsonl/.json -> jsonl; .csv -> DBpedia layout or CSV with header by its first
    line; anything else, and standard input, -> text.
    """
    path = os.fspath(path)
    _check_format(data_format, TEXT_FORMATS)
    source = "<stdin>" if path == STDIN_PATH else path
    resolved = data_format
    if data_format == "auto":
        extension = os.path.splitext(path)[1].lower()
        if extension in JSONL_EXTENSIONS:
            resolved = "jsonl"
        elif extension in (".csv", ".tsv"):
            resolved = "auto"  # sniffed below: DBpedia layout or header
        else:
            resolved = "text"
    if resolved == "text" and text_column is not None:
        raise ConfigError(
            f"--text-column applies to CSV with a header and JSON Lines, but {source} is read as plain text "
            "(one text per line); pass --data-format csv or jsonl, or drop --text-column."
        )
    if resolved == "jsonl":
        texts = _read_jsonl(path, text_column or DEFAULT_TEXT_COLUMN, None)[0]
    elif resolved == "text":
        texts = _read_plain_lines(path, source)
    else:
        with _open_source(path) as handle:
            records = _csv_records(handle, source)
            first = _first_record(records, source)
            layout = _csv_layout(first, resolved, source, text_column, None)
            if layout == "dbpedia":
                texts = _read_dbpedia(first, records, source, want_labels=False)[0]
            else:
                texts = _read_header_csv(first, records, source, text_column or DEFAULT_TEXT_COLUMN, None)[0]
    return texts


# ------------------------------------------------------------------------------- opening files
@contextmanager
def _open_source(path: str) -> Iterator[Iterator[str]]:
    """Decoded lines (line endings kept) of a file or of standard input ('-').

    Lines are decoded one by one so that bad bytes are reported with their physical line: in UTF-8
    no multi-byte character contains the newline byte, so a line decodes on its own.
    """
    source = "<stdin>" if path == STDIN_PATH else path
    if path == STDIN_PATH:
        yield _decoded_lines(sys.stdin.buffer, source)
        return
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}. Check the path (relative paths start from {os.getcwd()}).") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory; give the data file itself.") from None
    with handle:
        yield _decoded_lines(handle, source)


def _decoded_lines(handle: IO[bytes], source: str) -> Iterator[str]:
    line_number = 1
    first = handle.readline()
    if not first:
        return
    yield _decode(first[3:] if first.startswith(b"\xef\xbb\xbf") else first, source, line_number)
    for raw in handle:
        line_number += 1
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            _decode(raw, source, line_number)


def _decode(raw: bytes, source: str, line_number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{source}:{line_number}: not valid UTF-8 (byte {error.start + 1} of the line is "
            f"0x{raw[error.start]:02x}); save the file as UTF-8 (for example: iconv -f latin1 -t utf-8)."
        ) from None


def _check_format(data_format: str, allowed: Sequence[str]) -> None:
    if data_format not in allowed:
        raise ConfigError(f"--data-format must be one of {', '.join(allowed)}, not '{data_format}'.")


def _resolve_by_extension(path: str, data_format: str) -> str:
    if data_format == "auto" and os.path.splitext(path)[1].lower() in JSONL_EXTENSIONS:
        return "jsonl"
    return data_format


# ------------------------------------------------------------------------------------- CSV files
def _csv_records(lines: Iterator[str], source: str) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) per CSV record; quoting errors become DataError."""
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_SIZE_LIMIT))
    reader = csv.reader(lines, strict=True)
    previous_end = 0
    try:
        for row in reader:
            yield previous_end + 1, row
            previous_end = reader.line_num
    except csv.Error as error:
        start = previous_end + 1
        message = str(error)
        if "unexpected end of data" in message:
            raise DataError(
                f"{source}:{start}: a quoted field opened on line {start} is never closed (the file ends inside it); "
                'close the quote, and double any quote inside a quoted field ("").'
            ) from None
        if "expected after" in message:
            raise DataError(
                f"{source}:{reader.line_num}: a quote inside a quoted field is not doubled ({message}); "
                'write a literal quote inside a quoted field as "".'
            ) from None
        raise DataError(f"{source}:{reader.line_num}: malformed CSV ({message}).") from None


def _first_record(records: Iterator[tuple[int, list[str]]], source: str) -> tuple[int, list[str]]:
    first = next(records, None)
    if first is None:
        raise DataError(f"{source}: the file is empty; it needs at least one example.")
    return first


def _csv_layout(
    first: tuple[int, list[str]], data_format: str, source: str, text_column: str | None, label_column: str | None
) -> str:
    """'dbpedia' or 'csv': the given format, or (auto) DBpedia when line 1 starts with an integer index."""
    if data_format in ("dbpedia", "csv"):
        layout = data_format
    else:
        row = first[1]
        layout = "dbpedia" if len(row) >= 2 and is_integer(row[0]) else "csv"
    if layout == "dbpedia" and (text_column is not None or label_column is not None):
        flag = "--text-column" if text_column is not None else "--label-column"
        why = "was chosen with --data-format dbpedia" if data_format == "dbpedia" else (
            "looks like the headerless DBpedia layout (line 1 starts with a class index)"
        )
        raise ConfigError(
            f"{flag} names a header column, but {source} {why}; "
            "use --data-format csv if line 1 is a header, or drop the column options."
        )
    return layout


def dbpedia_text(fields: Sequence[str]) -> str:
    """The text of a DBpedia-layout row without its class index: (title, content) joined as training reads
    them ("Title. Content"), or (text,). The one rule for the readers and the request codec."""
    if len(fields) == 1:
        return fields[0].strip()
    title, content = fields[0].strip(), fields[1].strip()
    if not title or not content:
        return title or content
    return f"{title} {content}" if title.endswith(_SENTENCE_END) else f"{title}. {content}"


def _read_dbpedia(
    first: tuple[int, list[str]], records: Iterator[tuple[int, list[str]]], source: str, *, want_labels: bool
) -> tuple[list[str], list[int], list[int]]:
    """Texts, 1-based class indices and line numbers of a headerless 'index,title,content' (or 'index,text') file."""
    width = len(first[1])
    if width not in (2, 3):
        raise DataError(
            f"{source}:{first[0]}: {width} fields; the DBpedia layout has 3 (class index, title, content) or "
            "2 (class index, text). Quote fields that contain commas; for a CSV with a header use --data-format csv."
        )
    texts: list[str] = []
    indices: list[int] = []
    lines: list[int] = []
    for line, row in _chain_first(first, records):
        if len(row) != width:
            _raise_field_count(source, line, row, width, "like line 1 (class index, title, content)" if width == 3
                               else "like line 1 (class index, text)")
        try:
            index = int(row[0])
        except ValueError:
            hint = " (a header line? use --data-format csv)" if line == 1 else ""
            raise DataError(
                f"{source}:{line}: class index '{clip(row[0])}' is not an integer{hint}; the first field of "
                "each line is the 1-based class index."
            ) from None
        text = dbpedia_text(row[1:])
        if not text:
            raise DataError(f"{source}:{line}: empty text; give each example some text or remove the line.")
        texts.append(text)
        if want_labels:
            indices.append(index)
            lines.append(line)
    return texts, indices, lines


def _read_header_csv(
    first: tuple[int, list[str]],
    records: Iterator[tuple[int, list[str]]],
    source: str,
    text_column: str,
    label_column: str | None,
    *,
    allow_empty_label: bool = False,
) -> tuple[list[str], list[str], list[int]]:
    """Texts, label strings and line numbers of a CSV whose first line names the columns."""
    header_line, header = first
    columns = [name.strip() for name in header]
    text_index = _column_index(columns, text_column, "--text-column", source, header_line)
    label_index = None if label_column is None else _column_index(columns, label_column, "--label-column", source, header_line)
    width = len(columns)
    texts: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    for line, row in records:
        if len(row) != width:
            _raise_field_count(source, line, row, width, f"like the header on line {header_line}")
        text = row[text_index]
        if not text.strip():
            raise DataError(
                f"{source}:{line}: empty text in column '{text_column}'; give each example some text or remove the line."
            )
        texts.append(text)
        if label_index is not None:
            label = row[label_index].strip()
            if not label and not allow_empty_label:
                raise DataError(f"{source}:{line}: empty label in column '{label_column}'; every example needs a label.")
            labels.append(label)
            lines.append(line)
    if not texts:
        raise DataError(f"{source}: only a header line, no examples; add rows below the header.")
    return texts, labels, lines


def _column_index(columns: list[str], wanted: str, flag: str, source: str, line: int) -> int:
    if wanted in columns:
        return columns.index(wanted)
    present = ", ".join(f"'{clip(name)}'" for name in columns) or "none"
    raise DataError(
        f"{source}:{line}: no column '{wanted}' in the header (columns present: {present}); pass {flag} "
        "with one of these. Line 1 of a CSV is read as its header; a headerless file whose first field is a "
        "class index is the DBpedia layout."
    )


def _raise_field_count(source: str, line: int, row: list[str], width: int, like: str) -> None:
    if not row:
        raise DataError(f"{source}:{line}: blank line; remove it (blank lines are not skipped).")
    span = sum(field.count("\n") for field in row)
    spans = f" (this record spans lines {line}-{line + span}: is a quote left open?)" if span else ""
    raise DataError(
        f"{source}:{line}: {len(row)} fields, expected {width} {like}{spans}. "
        'Quote fields that contain commas or line breaks ("a, b"), and double quotes inside them ("").'
    )


def _chain_first(first: tuple[int, list[str]], rest: Iterator[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
    yield first
    yield from rest


# ------------------------------------------------------------------------------ JSON Lines / text
def _read_jsonl(
    path: str, text_field: str, label_field: str | None, *, allow_lists: bool = False
) -> tuple[list[str], list[Any], list[int]]:
    """Texts, label strings (a JSON integer label becomes its decimal string) and line numbers.

    With `allow_lists` a label may also be a JSON list of such labels (returned as a list of strings).
    """
    source = "<stdin>" if path == STDIN_PATH else path
    texts: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    with _open_source(path) as decoded:
        for line, raw in enumerate(decoded, start=1):
            if not raw.strip():
                raise DataError(f"{source}:{line}: blank line; remove it (each line must be one JSON object).")
            example = f'{{"{text_field}": "some text"' + (f', "{label_field}": "a class"}}' if label_field else "}")
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{source}:{line}: invalid JSON ({error.msg} at column {error.colno}); each line must be one "
                    f"JSON object such as {example}."
                ) from None
            except RecursionError:
                raise DataError(
                    f"{source}:{line}: JSON nested too deeply to read; each line must be one flat JSON object such "
                    f"as {example}."
                ) from None
            except ValueError:  # the one ValueError json.loads raises beyond JSONDecodeError
                raise DataError(
                    f"{source}:{line}: a number longer than {_max_digits():,} digits; write it as a "
                    "string (in quotes) or shorten it."
                ) from None
            if not isinstance(record, dict):
                raise DataError(f"{source}:{line}: a JSON {type(record).__name__}, not an object; each line must be one JSON object.")
            text = _json_field(record, text_field, "--text-column", source, line)
            if not isinstance(text, str) or not text.strip():
                raise DataError(
                    f"{source}:{line}: field '{text_field}' must be a non-empty string, not {clip(json.dumps(text))}."
                )
            _check_unicode(text, f"{source}:{line}: field '{text_field}'")
            texts.append(text)
            if label_field is not None:
                label = _json_field(record, label_field, "--label-column", source, line)
                if isinstance(label, list):
                    labels.append(_jsonl_label_list(label, label_field, allow_lists, source, line))
                    lines.append(line)
                    continue
                if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
                    raise DataError(
                        f"{source}:{line}: field '{label_field}' must be a class name (string) or integer, "
                        f"not {clip(json.dumps(label))}."
                    )
                _check_unicode(str(label), f"{source}:{line}: field '{label_field}'")
                labels.append(str(label).strip())
                lines.append(line)
    if not texts:
        raise DataError(f"{source}: the file is empty; it needs at least one example.")
    return texts, labels, lines


def _max_digits() -> int:
    """Python's limit on the digits of an integer read from text (3.11+; earlier versions have none)."""
    return int(getattr(sys, "get_int_max_str_digits", lambda: 4300)())


def _json_field(record: dict, name: str, flag: str, source: str, line: int) -> object:
    if name in record:
        return record[name]
    present = ", ".join(f"'{clip(key)}'" for key in record) or "none"
    raise DataError(f"{source}:{line}: no field '{name}' (fields present: {present}); pass {flag} with one of these.")


def _read_plain_lines(path: str, source: str) -> list[str]:
    texts: list[str] = []
    with _open_source(path) as decoded:
        for line, raw in enumerate(decoded, start=1):
            text = raw.rstrip("\r\n")
            if not text.strip():
                raise DataError(
                    f"{source}:{line}: empty line; each line is one text to classify, so remove empty lines."
                )
            texts.append(text)
    if not texts:
        raise DataError(f"{source}: no texts (the input is empty); give one text per line.")
    return texts


# ---------------------------------------------------------------------------------- label maps
def _labeled(
    texts: list[str],
    raw_labels: Sequence[str | int],
    lines: list[int],
    class_names: list[str] | None,
    source: str,
    *,
    index_base: int = 0,
) -> LabeledData:
    """DBpedia indices (`index_base` 1) or label names -> LabeledData with 0-based ids."""
    fix = (
        "Fix the index, or give --classes FILE naming every class (line N names index N)."
        if index_base == 1 else "Fix the label, or add the class to the classes file."
    )
    labels, names = labels_to_ids(
        raw_labels, class_names, lambda position: f"{source}:{lines[position]}", index_base=index_base, fix=fix
    )
    return LabeledData(texts, labels, names, source)


def _labeled_sets(
    texts: list[str], label_sets: list[list[str]], lines: list[int], class_names: list[str] | None, source: str
) -> LabeledData:
    """Lists of label names -> multi-label LabeledData (sorted id lists)."""
    labels, names = label_sets_to_ids(
        label_sets, class_names, lambda position: f"{source}:{lines[position]}",
        fix="Fix the label, or add the class to the classes file.",
    )
    return LabeledData(texts, labels, names, source, multi_label=True)


def _jsonl_label_list(value: list, field: str, allowed: bool, source: str, line: int) -> list[str]:
    """A JSON list label's items as strings; DataError for a list where single labels are read, or a bad item."""
    if not allowed:
        raise DataError(
            f"{source}:{line}: field '{field}' is a list of labels, but the labels are read as single-label here "
            "(the model or the training data is single-label); give one label, or train a multi-label model "
            "(train --multi-label)."
        )
    items = []
    for number, item in enumerate(value, start=1):
        if isinstance(item, bool) or not isinstance(item, (str, int)) or not str(item).strip():
            raise DataError(
                f"{source}:{line}: item {number} of the list in field '{field}' must be a class name (string) or "
                f"integer, not {clip(json.dumps(item))}."
            )
        _check_unicode(str(item), f"{source}:{line}: field '{field}'")
        items.append(str(item).strip())
    return items


def _jsonl_label_sets(
    raw_labels: list[Any], lines: list[int], source: str, multi_label: bool | None
) -> list[list[str]] | None:
    """Label lists when the JSON Lines labels are multi-label (forced, or any label a list), else None.

    Auto mode (`multi_label` None) refuses list labels mixed with single ones: which was meant is unclear.
    """
    list_positions = [position for position, label in enumerate(raw_labels) if isinstance(label, list)]
    if multi_label is False or (multi_label is None and not list_positions):
        return None
    if multi_label is None and len(list_positions) != len(raw_labels):
        scalar = next(position for position, label in enumerate(raw_labels) if not isinstance(label, list))
        raise DataError(
            f"{source}:{lines[scalar]}: a single label ('{clip(raw_labels[scalar])}') among list labels (line "
            f"{lines[list_positions[0]]} gives a list); write every label as a JSON list, or pass --multi-label to "
            "read single labels as lists of one."
        )
    return [label if isinstance(label, list) else [label] for label in raw_labels]


def _split_label_cells(cells: list[str], lines: list[int], source: str, separator: str) -> list[list[str]]:
    """Multi-label CSV: each label cell split at `separator` (an empty cell: no labels); empty items refused."""
    sets = []
    for cell, line in zip(cells, lines):
        if not cell:
            sets.append([])
            continue
        items = [item.strip() for item in cell.split(separator)]
        if not all(items):
            raise DataError(
                f"{source}:{line}: empty label in '{clip(cell)}' (labels are separated by '{separator}', "
                "--label-separator); remove the extra separator."
            )
        sets.append(items)
    return sets


def _check_unicode(text: str, where: str) -> None:
    problem = unicode_problem(text)
    if problem is not None:
        raise DataError(f"{where}: {problem}")
