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

from bert_classify.data.labels import (
    LabeledData,
    check_class_names,
    describe_class_differences,
    label_sets_to_ids,
    labels_to_ids,
    unicode_problem,
)
from bert_classify.errors import BertClassifyError, DataError


@runtime_checkable
class RecordReader(Protocol):
    """What a `--reader package.module:ClassName` plug-in provides.

    - `ClassName(path)`: constructed with the data path given on the command line (`--train`,
      `--val`, `--data`), or None when none was given (a reader that fetches its own data).
    - `records()`: yields `(text, label)` pairs. `text` is a non-empty str; `label` is a class name
      (str) or a 0-based class id (int) into `class_names`, or for multi-label data a list of them
      (every record a list, or `train --multi-label`; an empty list: none of the classes). A plain `__iter__` yielding the same
      pairs is accepted instead of `records()`.
    - `class_names` (optional attribute or property, list[str]): the label map, id i = class_names[i].
      Read after `records()` is exhausted, so it may be filled while reading. Without it the
      classes come from `--classes`, or else from the labels seen (names sorted; integer ids 0..K-1
      named '0'..'K-1').

    Raise `bert_classify.errors.DataError` for bad input to have its message shown as is.
    """

    def records(self) -> Iterable[tuple[str, str | int]]: ...


def read_with_plugin(
    spec: str, path: str | None, *, class_names: list[str] | None = None, multi_label: bool | None = None
) -> LabeledData:
    """Run the plug-in `spec` ('package.module:ClassName') on `path` and validate what it yields.

    `multi_label` as for `load_labeled_data`: None detects list labels, True reads single labels as
    lists of one, False refuses list labels.
    """
    source = f"plug-in {spec}" + (f" on {path}" if path is not None else "")
    reader_class = _import_reader(spec)
    instance = _call(lambda: reader_class(path), spec, f"constructing {spec}({path!r})")
    records = _record_iterator(instance, spec)
    texts: list[str] = []
    raw_labels: list[Any] = []
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
    where = lambda position: f"{source}: record {position + 1}"  # noqa: E731
    fix = (
        "Integer labels are 0-based class ids and text labels class names; fix the plug-in's labels, or give it "
        "a class_names attribute or pass --classes."
    )
    label_sets = _label_sets(raw_labels, source, multi_label)
    if label_sets is not None:
        sets, names = label_sets_to_ids(label_sets, names, where, fix=fix)
        return LabeledData(texts, sets, names, source, multi_label=True)
    labels, names = labels_to_ids(raw_labels, names, where, fix=fix)
    return LabeledData(texts, labels, names, source)


def _label_sets(raw_labels: list[Any], source: str, multi_label: bool | None) -> list[list[str | int]] | None:
    """The labels as lists when the data is multi-label (forced, or list labels), else None; refuses a mix."""
    lists = [position for position, label in enumerate(raw_labels) if isinstance(label, list)]
    if multi_label is False and lists:
        raise DataError(
            f"{source}: record {lists[0] + 1}: a list of labels, but the labels are read as single-label here (the "
            "model or the training data is single-label); yield one label, or train with --multi-label."
        )
    if multi_label is False or (multi_label is None and not lists):
        return None
    if multi_label is None and len(lists) != len(raw_labels):
        single = next(position for position, label in enumerate(raw_labels) if not isinstance(label, list))
        raise DataError(
            f"{source}: record {single + 1}: a single label among list labels (record {lists[0] + 1} yields a list); "
            "yield every label as a list, or pass --multi-label to read single labels as lists of one."
        )
    return [label if isinstance(label, list) else [label] for label in raw_labels]


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
    if not isinstance(target, type):
        # A function would be called with the data path: `--reader os:system` would run a command.
        raise DataError(
            f"--reader '{spec}': '{attribute_path}' is a {type(target).__name__}, not a class; --reader names a "
            f"class constructible as {attribute_path}(path) (see bert_classify.data.RecordReader)."
        )
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


def _check_record(record: Any, number: int, source: str) -> tuple[str, Any]:
    if not isinstance(record, (tuple, list)) or len(record) != 2:
        shape = f"a {type(record).__name__}" + (f" of {len(record)} items" if isinstance(record, (tuple, list)) else "")
        raise DataError(f"{source}: record {number} is {shape}; each record must be a (text, label) pair.")
    text, label = record
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{source}: record {number}: text must be a non-empty str, not {_short_repr(text)}.")
    problem = unicode_problem(text)
    if problem is not None:
        raise DataError(f"{source}: record {number}: text: {problem}")
    if isinstance(label, (list, tuple)):
        return text, [_check_label(item, number, source) for item in label]
    return text, _check_label(label, number, source)


def _check_label(label: Any, number: int, source: str) -> str | int:
    problem = unicode_problem(label) if isinstance(label, str) else None
    if problem is not None:
        raise DataError(f"{source}: record {number}: label: {problem}")
    if isinstance(label, str):
        if not label.strip():
            raise DataError(f"{source}: record {number}: empty label; give a class name or a 0-based class id.")
        return label.strip()
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        return int(label)
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
        raise DataError(
            f"{source}: the plug-in's class_names differ from the given class names (plug-in vs given: "
            f"{describe_class_differences(own, given, position='id', start=0)}). Drop --classes, or make them agree."
        )
    return own


def _describe(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def _short_repr(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
