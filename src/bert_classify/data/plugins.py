"""User plug-in readers: `--reader package.module:ClassName` for data in any shape we do not read ourselves.

The class is imported (the current directory is importable), built as `ClassName(path)` and asked
for `(text, label)` records; every failure becomes DataError naming the plug-in and record number.
"""

from __future__ import annotations

import importlib
import numbers
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

from bert_classify.data.labels import LabeledData, check_class_names, describe_classes, sorted_label_names
from bert_classify.errors import BertClassifyError, DataError


@runtime_checkable
class RecordReader(Protocol):
    """What a `--reader package.module:ClassName` plug-in provides.

    - `ClassName(path)`: constructed with the data path given on the command line (`--train`,
      `--val`, `--data`), or None when none was given (a reader that fetches its own data).
    - `records()`: yields `(text, label)` pairs. `text` is a non-empty str; `label` is a class name
      (str) or a 0-based class id (int) into `class_names`. A plain `__iter__` yielding the same
      pairs is accepted instead of `records()`.
    - `class_names` (optional attribute or property, list[str]): the label map, id i = class_names[i].
      Read after `records()` is exhausted, so it may be filled while reading. Without it the
      classes come from `--classes`, or else from the labels seen (names sorted; integer ids 0..K-1
      named '0'..'K-1').

    Raise `bert_classify.errors.DataError` for bad input to have its message shown as is.
    """

    def records(self) -> Iterable[tuple[str, str | int]]: ...


def read_with_plugin(spec: str, path: str | None, *, class_names: list[str] | None = None) -> LabeledData:
    """Run the plug-in `spec` ('package.module:ClassName') on `path` and validate what it yields."""
    source = f"plug-in {spec}" + (f" on {path}" if path is not None else "")
    reader_class = _import_reader(spec)
    instance = _call(lambda: reader_class(path), spec, f"constructing {spec}({path!r})")
    records = _record_iterator(instance, spec)
    texts: list[str] = []
    raw_labels: list[str | int] = []
    number = 0
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except BertClassifyError:
            raise
        except Exception as error:
            raise DataError(
                f"{source}: failed while producing record {number + 1}: {_describe(error)}. Fix the plug-in or its input."
            ) from error
        number += 1
        text, label = _check_record(record, number, source)
        texts.append(text)
        raw_labels.append(label)
    if not texts:
        raise DataError(f"{source}: the plug-in yielded no records; it must yield (text, label) pairs.")
    names = _class_names(instance, spec, source, class_names)
    labels, names = _map_labels(raw_labels, names, source)
    return LabeledData(texts, labels, names, source)


def _import_reader(spec: str) -> Any:
    module_name, _, attribute_path = spec.partition(":")
    if not module_name or not attribute_path or ":" in attribute_path:
        raise DataError(
            f"--reader '{spec}': expected 'package.module:ClassName' (a module path, one colon, a class name)."
        )
    # A console script does not put the current directory on sys.path; a user's my_reader.py lives there.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()  # a module written since the last import scan must be found
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (error.name == module_name or module_name.startswith(error.name + ".")):
            raise DataError(
                f"--reader '{spec}': no module named '{module_name}'. Run from the directory that holds "
                f"{module_name.replace('.', '/')}.py, add its directory to PYTHONPATH, or pip install its package."
            ) from None
        raise DataError(f"--reader '{spec}': importing '{module_name}' failed: {_describe(error)}.") from error
    except Exception as error:
        raise DataError(f"--reader '{spec}': importing '{module_name}' failed: {_describe(error)}.") from error
    target: Any = module
    for part in attribute_path.split("."):
        if not hasattr(target, part):
            public = sorted(name for name in vars(module) if not name.startswith("_") and isinstance(vars(module)[name], type))
            raise DataError(
                f"--reader '{spec}': module '{module_name}' has no attribute '{attribute_path}' "
                f"(classes it defines: {', '.join(public) or 'none'})."
            )
        target = getattr(target, part)
    if not callable(target):
        raise DataError(f"--reader '{spec}': '{attribute_path}' is not a class; it must be constructible as {attribute_path}(path).")
    return target


def _call(function: Any, spec: str, what: str) -> Any:
    try:
        return function()
    except BertClassifyError:
        raise
    except Exception as error:
        raise DataError(f"plug-in {spec}: failed while {what}: {_describe(error)}.") from error


def _record_iterator(instance: Any, spec: str) -> Iterator[Any]:
    records = getattr(instance, "records", None)
    if callable(records):
        iterable = _call(records, spec, "calling records()")
    elif hasattr(instance, "__iter__"):
        iterable = instance
    else:
        raise DataError(
            f"plug-in {spec}: {type(instance).__name__} has neither a records() method nor __iter__; "
            "give it records() yielding (text, label) pairs (see bert_classify.data.RecordReader)."
        )
    try:
        return iter(iterable)
    except TypeError:
        raise DataError(
            f"plug-in {spec}: records() returned a {type(iterable).__name__}, which is not iterable; "
            "it must yield (text, label) pairs."
        ) from None


def _check_record(record: Any, number: int, source: str) -> tuple[str, str | int]:
    if not isinstance(record, (tuple, list)) or len(record) != 2:
        shape = f"a {type(record).__name__}" + (f" of {len(record)} items" if isinstance(record, (tuple, list)) else "")
        raise DataError(f"{source}: record {number} is {shape}; each record must be a (text, label) pair.")
    text, label = record
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{source}: record {number}: text must be a non-empty str, not {_short_repr(text)}.")
    if isinstance(label, str):
        if not label.strip():
            raise DataError(f"{source}: record {number}: empty label; give a class name or a 0-based class id.")
        return text, label.strip()
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        return text, int(label)
    raise DataError(
        f"{source}: record {number}: label must be a class name (str) or a 0-based class id (int), not {_short_repr(label)}."
    )


def _class_names(instance: Any, spec: str, source: str, given: list[str] | None) -> list[str] | None:
    own = _call(lambda: getattr(instance, "class_names", None), spec, "reading class_names")
    if own is None:
        return given
    if isinstance(own, str) or not isinstance(own, Iterable):
        raise DataError(f"{source}: class_names must be a list of str, not {_short_repr(own)}.")
    own = check_class_names(list(own), f"{source}: class_names")
    if given is not None and own != given:
        differences = [
            f"{index}: '{mine}' vs '{theirs}'"
            for index, (mine, theirs) in enumerate(zip(own, given))
            if mine != theirs
        ]
        if len(own) != len(given):
            differences.append(f"{len(own)} classes vs {len(given)}")
        raise DataError(
            f"{source}: the plug-in's class_names differ from the given class names (plug-in vs given: "
            f"{'; '.join(differences[:5])}). Drop --classes, or make them agree."
        )
    return own


def _map_labels(raw_labels: list[str | int], names: list[str] | None, source: str) -> tuple[list[int], list[str]]:
    if names is None:
        kinds = {type(label) for label in raw_labels}
        if kinds == {int}:
            ids = [int(label) for label in raw_labels]
            high = max(ids)
            unused = sorted(set(range(high + 1)).difference(ids))
            if min(ids) < 0 or unused:
                bad = f"a negative id ({min(ids)})" if min(ids) < 0 else f"ids up to {high} but never {unused[0]}"
                raise DataError(
                    f"{source}: integer labels are 0-based class ids, and these have {bad}; give the plug-in a "
                    "class_names attribute or pass --classes."
                )
            return ids, [str(index) for index in range(high + 1)]
        if kinds == {str}:
            names = sorted_label_names({str(label) for label in raw_labels})
        else:
            first_int = next(number for number, label in enumerate(raw_labels, start=1) if isinstance(label, int))
            raise DataError(
                f"{source}: record {first_int} has an integer label but others are names; mixing needs a label map: "
                "give the plug-in a class_names attribute or pass --classes."
            )
    ids_by_name = {name: index for index, name in enumerate(names)}
    labels: list[int] = []
    for number, label in enumerate(raw_labels, start=1):
        if isinstance(label, int):
            if not 0 <= label < len(names):
                raise DataError(
                    f"{source}: record {number}: class id {label} is outside 0..{len(names) - 1} "
                    f"({len(names)} classes: {describe_classes(names)})."
                )
            labels.append(label)
        else:
            index = ids_by_name.get(label)
            if index is None:
                raise DataError(
                    f"{source}: record {number}: label '{label}' is not one of the {len(names)} known classes "
                    f"({describe_classes(names)})."
                )
            labels.append(index)
    return labels, list(names)


def _describe(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def _short_repr(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
