"""Labelled examples and class-name maps: `LabeledData`, the classes.txt reader, label-to-id mapping.

Every reader (built-in formats and plug-ins) ends in `LabeledData` with 0-based label ids into
`class_names`; this module holds that type and the rules that turn raw labels into ids.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bert_classify.errors import DataError


@dataclass
class LabeledData:
    """Texts with 0-based label ids into `class_names`; `source` names the file or plug-in in messages.

    Single-label data: `labels[i]` is one id. Multi-label data (`multi_label` True): `labels[i]` is a
    sorted list of distinct ids (possibly empty: none of the classes applies).
    """

    texts: list[str]
    labels: list[Any]  # list[int], or list[list[int]] when multi_label
    class_names: list[str]
    source: str = field(default="<memory>")
    multi_label: bool = False

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
    if labels and all(is_integer(label) for label in labels):
        return sorted(labels, key=lambda label: (int(label), label))
    return sorted(labels)


def is_integer(text: str) -> bool:
    """Whether `text` reads as a whole number (a class index rather than a class name)."""
    try:
        int(text)
    except ValueError:
        return False
    return True


def labels_to_ids(
    labels: Sequence[str | int],
    class_names: Sequence[str] | None,
    where: Callable[[int], str],
    *,
    index_base: int = 0,
    fix: str,
) -> tuple[list[int], list[str]]:
    """The one label map of every reader: each label becomes a 0-based id into the returned class names.

    A str label is a class name; an int label is a class index counted from `index_base` (1 in the
    DBpedia layout, 0 for plug-ins). Without `class_names` the classes are the labels seen: names
    sorted (numerically when all are integers), or indices `index_base`..K named by their decimal
    string, which must then leave none out. `where(position)` names the file and line (or record)
    of the label at `position` in messages; `fix` is the sentence that ends every message.
    """
    if class_names is None:
        kinds = {type(label) for label in labels}
        if kinds == {int}:
            return _contiguous_indices([int(label) for label in labels], where, index_base, fix)
        if kinds != {str}:
            position = next(i for i, label in enumerate(labels) if isinstance(label, int))
            raise DataError(f"{where(position)}: an integer label among class names; mixing needs a label map. {fix}")
        class_names = sorted_label_names({str(label) for label in labels})
    names = list(class_names)
    ids_by_name = {name: index for index, name in enumerate(names)}
    ids: list[int] = []
    for position, label in enumerate(labels):
        if isinstance(label, int):
            if not index_base <= label < index_base + len(names):
                raise DataError(
                    f"{where(position)}: class index {_number(label)} is outside {index_base}..{index_base + len(names) - 1} "
                    f"({len(names)} classes: {describe_classes(names)}). {fix}"
                )
            ids.append(label - index_base)
            continue
        index = ids_by_name.get(label)
        if index is None:
            hint = (
                " Text labels are matched as names; class indices belong in the headerless DBpedia layout."
                if is_integer(label) else ""
            )
            raise DataError(
                f"{where(position)}: label '{clip(label)}' is not one of the {len(names)} known classes "
                f"({describe_classes(names)}). {fix}{hint}"
            )
        ids.append(index)
    return ids, names


def label_sets_to_ids(
    label_sets: Sequence[Sequence[str | int]],
    class_names: Sequence[str] | None,
    where: Callable[[int], str],
    *,
    index_base: int = 0,
    fix: str,
) -> tuple[list[list[int]], list[str]]:
    """`labels_to_ids` for multi-label data: each example's list of labels becomes a sorted list of ids.

    The same rules per label (names, or indices from `index_base`); without `class_names` the classes
    are every label seen in any list. A label twice in one example's list raises DataError.
    """
    flat: list[str | int] = []
    owner: list[int] = []
    for position, labels in enumerate(label_sets):
        flat.extend(labels)
        owner.extend([position] * len(labels))
    if not flat and class_names is None:
        raise DataError(
            f"{where(0)}: every example has an empty label list, so there are no classes to learn; "
            "give each example at least one label somewhere, or name the classes with --classes."
        )
    ids, names = labels_to_ids(flat, class_names, lambda index: where(owner[index]), index_base=index_base, fix=fix)
    sets: list[list[int]] = [[] for _ in label_sets]
    for index, label_id in zip(owner, ids):
        if label_id in sets[index]:
            raise DataError(
                f"{where(index)}: label '{clip(names[label_id])}' appears twice in the example's label list; "
                "list each label once."
            )
        sets[index].append(label_id)
    return [sorted(labels) for labels in sets], names


def _contiguous_indices(
    indices: list[int], where: Callable[[int], str], index_base: int, fix: str
) -> tuple[list[int], list[str]]:
    low, high = min(indices), max(indices)
    if low < index_base:
        raise DataError(
            f"{where(indices.index(low))}: class index {_number(low)}; indices count from {index_base} "
            f"({index_base}-based, {index_base}..K). {fix}"
        )
    distinct = set(indices)
    # Walk only as far as the first gaps: `high` may be huge (a 4,000-digit index), the set is not.
    missing = list(itertools.islice((i for i in range(index_base, high + 1) if i not in distinct), 11))
    if missing:
        shown = ", ".join(str(index) for index in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataError(
            f"{where(indices.index(high))}: class indices go up to {_number(high)} but never use {shown}; without a list of "
            f"class names the indices must be {index_base}..K with none missing. {fix}"
        )
    return [index - index_base for index in indices], [str(index) for index in range(index_base, high + 1)]


def _number(value: int) -> str:
    """An integer for a message: huge ones (a hostile file) by their size, never by thousands of digits."""
    if abs(value) < 10**18:
        return str(value)
    return f"{'-' if value < 0 else ''}(an integer of about {int(value.bit_length() * 0.30103)} digits)"


def unicode_problem(text: str) -> str | None:
    """Why `text` is not valid Unicode text (a lone surrogate from a JSON escape such as \\ud800), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return (
            f"character {error.start + 1} is a lone UTF-16 surrogate (U+{ord(text[error.start]):04X}), which is not "
            "text; write the character itself or a complete surrogate pair."
        )
    return None


def unused_classes(data: LabeledData) -> list[str]:
    """Class names that no example of `data` carries (listed in classes.txt, absent from the file)."""
    used = {label for labels in data.labels for label in labels} if data.multi_label else set(data.labels)
    return [name for index, name in enumerate(data.class_names) if index not in used]


def describe_class_differences(
    first: Sequence[str], second: Sequence[str], *, position: str, start: int, limit: int = 5
) -> str:
    """"<position> 2: 'b' vs 'c'; 3 classes vs 2" for the one message that says two class lists differ."""
    differences = [
        f"{position} {index}: '{mine}' vs '{theirs}'"
        for index, (mine, theirs) in enumerate(zip(first, second), start=start)
        if mine != theirs
    ]
    if len(first) != len(second):
        differences.append(f"{len(first)} classes vs {len(second)}")
    return "; ".join(differences[:limit]) + (" ..." if len(differences) > limit else "")


def clip(text: str, limit: int = 40) -> str:
    """`text` shortened for a one-line message: line breaks shown as \\n, at most `limit` characters."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_classes(class_names: Sequence[str], limit: int = 20) -> str:
    """'A, B, C' (shortened past `limit` names) for error messages."""
    shown = ", ".join(f"'{clip(name)}'" for name in class_names[:limit])
    more = len(class_names) - limit
    return shown + (f" and {more} more" if more > 0 else "")
