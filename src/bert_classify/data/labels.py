"""Labelled examples and class-name maps: `LabeledData`, the classes.txt reader, label-to-id mapping.

Every reader (built-in formats and plug-ins) ends in `LabeledData` with 0-based label ids into
`class_names`; this module holds that type and the rules that turn raw labels into ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from bert_classify.errors import DataError


@dataclass
class LabeledData:
    """Texts with 0-based label ids into `class_names`; `source` names the file or plug-in in messages."""

    texts: list[str]
    labels: list[int]
    class_names: list[str]
    source: str = field(default="<memory>")

    def __len__(self) -> int:
        return len(self.texts)


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a classes.txt: line N names 1-based class index N.

    Surrounding whitespace is dropped; a blank line, a duplicate name, undecodable bytes or an
    empty file raise DataError naming the file and line.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw_lines = handle.read().split(b"\n")
    except FileNotFoundError:
        raise DataError(
            f"classes file not found: {path}. --classes needs a text file with one class name per line "
            "(line N names class index N)."
        ) from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory; --classes needs a text file with one class name per line.") from None
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the newline that ends the last line
    names: list[str] = []
    first_line_of: dict[str, int] = {}
    for line_number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}:{line_number}: not valid UTF-8; save the classes file as UTF-8.") from None
        name = text.strip()
        if not name:
            raise DataError(
                f"{path}:{line_number}: blank line; every line must name a class (line N names class index N), "
                "so remove blank lines."
            )
        if name in first_line_of:
            raise DataError(
                f"{path}:{line_number}: class name '{name}' repeats line {first_line_of[name]}; class names must be unique."
            )
        first_line_of[name] = line_number
        names.append(name)
    if not names:
        raise DataError(f"{path}: the classes file is empty; write one class name per line.")
    return names


def check_class_names(class_names: Sequence[str], origin: str) -> list[str]:
    """A copy of `class_names` after checking they are non-empty, unique strings."""
    names = list(class_names)
    if not names:
        raise DataError(f"{origin}: the list of class names is empty.")
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{origin}: class name {position} ({name!r}) must be a non-empty string.")
        if name in seen:
            raise DataError(f"{origin}: class name '{name}' appears twice; class names must be unique.")
        seen.add(name)
    return names


def sorted_label_names(labels: set[str]) -> list[str]:
    """Distinct label strings in a stable order: numerically when all are integers ('2' before '10')."""
    if labels and all(_is_integer(label) for label in labels):
        return sorted(labels, key=lambda label: (int(label), label))
    return sorted(labels)


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def describe_classes(class_names: Sequence[str], limit: int = 20) -> str:
    """'A, B, C' (shortened past `limit` names) for error messages."""
    shown = ", ".join(f"'{name}'" for name in class_names[:limit])
    more = len(class_names) - limit
    return shown + (f" and {more} more" if more > 0 else "")
