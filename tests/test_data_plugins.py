"""Plug-in readers (--reader package.module:ClassName): good ones, the shipped example, and every failure."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest

from bert_classify.data import RecordReader, load_labeled_data
from bert_classify.errors import DataError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin_reader.py"


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    return directory


_counter = iter(range(10_000))


def write_plugin(directory: Path, body: str) -> str:
    """A fresh module name each time: modules are cached in sys.modules once imported."""
    name = f"user_reader_{next(_counter)}"
    (directory / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")
    return name


def plugin_error(spec: str, path: str | None = None, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        load_labeled_data(path, reader=spec, **kwargs)
    return str(caught.value)


def test_plugin_with_names_and_class_names(plugin_dir: Path) -> None:
    module = write_plugin(plugin_dir, """
        class Reader:
            class_names = ["spam", "ham"]

            def __init__(self, path):
                self.path = path

            def records(self):
                yield f"from {self.path}", "ham"
                yield "second", "spam"
                yield "third", 1
    """)
    data = load_labeled_data("some/where.db", reader=f"{module}:Reader")
    assert data.texts == ["from some/where.db", "second", "third"]
    assert data.labels == [1, 0, 1]
    assert data.class_names == ["spam", "ham"]
    assert data.source == f"plug-in {module}:Reader on some/where.db"


def test_plugin_iterable_without_class_names_and_no_path(plugin_dir: Path) -> None:
    module = write_plugin(plugin_dir, """
        class Reader:
            def __init__(self, path):
                assert path is None

            def __iter__(self):
                return iter([("a", "pos"), ("b", "neg"), ("c", "pos")])

        class IdReader:
            def __init__(self, path):
                pass

            def records(self):
                return [("a", 1), ("b", 0)]
    """)
    data = load_labeled_data(None, reader=f"{module}:Reader")
    assert data.class_names == ["neg", "pos"] and data.labels == [1, 0, 1]
    ids = load_labeled_data(None, reader=f"{module}:IdReader")
    assert ids.class_names == ["0", "1"] and ids.labels == [1, 0]
    given = load_labeled_data(None, reader=f"{module}:IdReader", class_names=["neg", "pos"])
    assert given.class_names == ["neg", "pos"] and given.labels == [1, 0]


def test_plugin_module_in_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A console script does not put the current directory on sys.path; the reader must add it."""
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", str(tmp_path))])
    (tmp_path / "cwd_reader_module.py").write_text(
        "class R:\n    def __init__(self, path): pass\n    def records(self): yield ('t', 'x'); yield ('u', 'y')\n"
    )
    assert load_labeled_data(None, reader="cwd_reader_module:R").labels == [0, 1]


def test_example_plugin_reads_a_folder_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(EXAMPLE, tmp_path / "example_folder_reader.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    data_dir = tmp_path / "reviews"
    for name, texts in {"positive": ["great film", "loved it"], "negative": ["dull"]}.items():
        (data_dir / name).mkdir(parents=True)
        for index, text in enumerate(texts):
            (data_dir / name / f"{index}.txt").write_text(text + "\n", encoding="utf-8")
    data = load_labeled_data(str(data_dir), reader="example_folder_reader:FolderReader")
    assert data.class_names == ["negative", "positive"]
    assert list(zip(data.texts, data.labels)) == [("dull", 0), ("great film", 1), ("loved it", 1)]
    import example_folder_reader

    assert isinstance(example_folder_reader.FolderReader(str(data_dir)), RecordReader)
    message = plugin_error("example_folder_reader:FolderReader", str(tmp_path / "nope"))
    assert "nope: not a folder" in message


@pytest.mark.parametrize(
    ("body", "attribute", "expected"),
    [
        ("class R:\n    pass\n", "Missing", r"has no attribute 'Missing' \(classes it defines: R\)"),
        ("raise RuntimeError('boom at import')\n", "R", r"importing '.*' failed: RuntimeError: boom at import"),
        ("import not_installed_dependency_xyz\n", "R", r"importing '.*' failed: ModuleNotFoundError"),
        ("class R:\n    def __init__(self, path):\n        raise ValueError('bad path')\n", "R",
         r"failed while constructing .*\(None\): ValueError: bad path"),
        ("class R:\n    def __init__(self, path): pass\n", "R", r"has neither a records\(\) method nor __iter__"),
        ("class R:\n    def __init__(self, path): pass\n    def records(self): return 5\n", "R",
         r"records\(\) returned a int, which is not iterable"),
        ("class R:\n    def __init__(self, path): pass\n    def records(self): return []\n", "R",
         r"yielded no records"),
        ("class R:\n    def __init__(self, path): pass\n    def records(self): yield ('a', 'x'); yield 'just text'\n", "R",
         r"record 2 is a str; each record must be a \(text, label\) pair"),
        ("class R:\n    def __init__(self, path): pass\n    def records(self): yield ('a', 'x', 'extra')\n", "R",
         r"record 1 is a tuple of 3 items"),
        ("class R:\n    def __init__(self, path): pass\n    def records(self): yield ('a', 'x'); yield ('', 'x')\n", "R",
         r"record 2: text must be a non-empty str"),
        ("class R:\n    def __init__(self, path): pass\n    def records(self): yield ('a', 1.5)\n", "R",
         r"record 1: label must be a class name \(str\) or a 0-based class id \(int\), not float 1.5"),
        ("class R:\n    def __init__(self, path): pass\n    def records(self):\n        yield ('a', 'x')\n"
         "        yield ('b', 'y')\n        raise KeyError('row')\n", "R",
         r"failed while producing record 3: KeyError: 'row'"),
        ("class R:\n    class_names = ['x']\n    def __init__(self, path): pass\n"
         "    def records(self): yield ('a', 'x'); yield ('b', 'z')\n", "R",
         r"record 2: label 'z' is not one of the 1 known classes \('x'\)"),
        ("class R:\n    class_names = ['x', 'y']\n    def __init__(self, path): pass\n"
         "    def records(self): yield ('a', 2)\n", "R", r"record 1: class index 2 is outside 0..1"),
        ("class R:\n    def __init__(self, path): pass\n    def records(self): yield ('a', 'x'); yield ('b', 0)\n", "R",
         r"record 2: an integer label among class names"),
        ("class R:\n    def __init__(self, path): pass\n    def records(self): yield ('a \\ud800 b', 'x')\n", "R",
         r"record 1: text: character 3 is a lone UTF-16 surrogate \(U\+D800\)"),
        ("class R:\n    def __init__(self, path): pass\n    def records(self): yield ('a', 'x\\udfff')\n", "R",
         r"record 1: label: character 2 is a lone UTF-16 surrogate"),
        ("class R:\n    def __init__(self, path): pass\n    def records(self): yield ('a', 0); yield ('b', 10**5000)\n",
         "R", r"record 2: class indices go up to \(an integer of about 5000 digits\) but never use 1, 2"),
        ("def R(path):\n    raise AssertionError('a function must never be called')\n", "R",
         r"'R' is a function, not a class"),
        ("class R:\n    def __init__(self, path): pass\n    def records(self): yield ('a', 0); yield ('b', 2)\n", "R",
         r"record 2: class indices go up to 2 but never use 1"),
    ],
)
def test_bad_plugins_name_plugin_and_record(plugin_dir: Path, body: str, attribute: str, expected: str) -> None:
    module = write_plugin(plugin_dir, body)
    message = plugin_error(f"{module}:{attribute}")
    assert module in message, message
    assert re.search(expected, message), message


def test_bad_reader_specs(plugin_dir: Path) -> None:
    assert "expected 'package.module:ClassName'" in plugin_error("no_colon_here")
    message = plugin_error("surely_missing_module_xyz:Reader")
    assert "no module named 'surely_missing_module_xyz'" in message and "PYTHONPATH" in message


def test_plugin_class_names_must_agree_with_given_ones(plugin_dir: Path) -> None:
    module = write_plugin(plugin_dir, """
        class R:
            class_names = ["a", "b"]
            def __init__(self, path): pass
            def records(self): yield ("t", "a")
    """)
    message = plugin_error(f"{module}:R", class_names=["a", "c"])
    assert "class_names differ from the given class names" in message and "1: 'b' vs 'c'" in message


def test_plugin_data_error_passes_through_unchanged(plugin_dir: Path) -> None:
    module = write_plugin(plugin_dir, """
        from bert_classify.errors import DataError
        class R:
            def __init__(self, path): pass
            def records(self):
                yield ("t", "a")
                raise DataError("rows.db:7: my own message")
    """)
    assert plugin_error(f"{module}:R") == "rows.db:7: my own message"
