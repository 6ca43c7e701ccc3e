"""Metrics against hand-computed values, the text report, the confusion-matrix PNG, and `evaluate` end to end."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from bert_classify.cli import main
from bert_classify.errors import DataError
from bert_classify.evaluation import (
    classification_metrics,
    evaluate_model,
    metrics_from_confusion,
    plot_confusion_matrix,
    text_report,
)
from conftest import CLASS_NAMES, make_rows, write_dbpedia_csv

# Class C is never predicted; worked by hand:
#   confusion  A: [2, 1, 0]   B: [1, 1, 0]   C: [0, 2, 0]
#   A: p = 2/3, r = 2/3, f1 = 2/3;  B: p = 1/4, r = 1/2, f1 = 1/3;  C: p = r = f1 = 0
Y_TRUE = [0, 0, 0, 1, 1, 2, 2]
Y_PRED = [0, 0, 1, 1, 0, 1, 1]


def test_metrics_match_hand_computed_values() -> None:
    metrics = classification_metrics(Y_TRUE, Y_PRED, ["A", "B", "C"])
    assert metrics["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 2, 0]]
    assert metrics["accuracy"] == pytest.approx(3 / 7)
    assert metrics["num_examples"] == 7
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert metrics["per_class"]["A"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert metrics["per_class"]["B"] == pytest.approx({"precision": 1 / 4, "recall": 1 / 2, "f1": 1 / 3, "support": 2})
    assert metrics["per_class"]["C"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    json.dumps(metrics)  # plain Python types only


def test_metrics_from_confusion_equals_label_path_and_ignores_absent_classes() -> None:
    confusion = np.array([[2, 1, 0, 0], [1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]])
    metrics = metrics_from_confusion(confusion, ["A", "B", "C", "D"])
    # D has neither examples nor predictions: it is reported but left out of the macro average.
    assert metrics["macro_f1"] == pytest.approx(1 / 3)
    assert metrics["per_class"]["D"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    labels_path = classification_metrics(Y_TRUE, Y_PRED, ["A", "B", "C", "D"])
    assert labels_path == metrics


def test_metrics_edge_cases() -> None:
    perfect = classification_metrics([0, 1, 1], [0, 1, 1], ["x", "y"])
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
    empty = metrics_from_confusion(np.zeros((2, 2)), ["x", "y"])
    assert empty["accuracy"] == 0.0 and empty["macro_f1"] == 0.0 and empty["num_examples"] == 0
    with pytest.raises(ValueError, match="label ids must be in 0..1"):
        classification_metrics([0, 2], [0, 1], ["x", "y"])


def test_text_report_lists_every_class_and_averages() -> None:
    report = text_report(classification_metrics(Y_TRUE, Y_PRED, ["Company", "Artist", "Animal"]))
    lines = report.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[2].split() == ["Company", "0.6667", "0.6667", "0.6667", "3"]
    assert lines[3].split() == ["Artist", "0.2500", "0.5000", "0.3333", "2"]
    assert lines[4].split() == ["Animal", "0.0000", "0.0000", "0.0000", "2"]
    assert lines[6].split() == ["accuracy", "0.4286", "7"]
    assert lines[7].split() == ["macro", "avg", "0.3056", "0.3889", "0.3333", "7"]
    # weighted: precision (3*2/3 + 2*1/4) / 7, recall = accuracy, f1 (3*2/3 + 2*1/3) / 7
    assert lines[8].split() == ["weighted", "avg", "0.3571", "0.4286", "0.3810", "7"]


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_plot_confusion_matrix_writes_png_for_14_classes(tmp_path: Path) -> None:
    names = [f"Class{index:02d}LongName" for index in range(14)]
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 50, size=(14, 14)) + np.diag(rng.integers(200, 400, size=14))
    path = plot_confusion_matrix(confusion, names, tmp_path / "nested" / "cm.png")
    width, height = _png_size(path)
    assert width >= 800 and height >= 700  # room for 14 rotated names and a count in every cell
    assert path.stat().st_size > 20_000  # text and shading, not a blank canvas


def test_plot_draws_labels_and_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    captured: list[Figure] = []
    original = Figure.savefig

    def capture(self: Figure, *args: object, **kwargs: object) -> None:
        captured.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    plot_confusion_matrix([[5, 0], [2, 3]], ["ham", "spam"], tmp_path / "cm.png")
    axes = captured[0].axes[0]
    assert axes.get_xlabel() == "Predicted class" and axes.get_ylabel() == "True class"
    assert [label.get_text() for label in axes.get_xticklabels()] == ["ham", "spam"]
    assert axes.get_xticklabels()[0].get_rotation() == 45
    assert sorted(text.get_text() for text in axes.texts) == ["2", "3", "5"]  # the empty off-diagonal cell is blank


# --------------------------------------------------------------------------------- evaluate_model
def test_evaluate_command_end_to_end(tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path, capsys) -> None:
    output = tmp_path / "eval"
    code = main([
        "evaluate", "--model", str(tiny_model_dir), "--data", str(tiny_data_dir / "val.csv"),
        "--classes", str(tiny_data_dir / "classes.txt"), "--output-dir", str(output), "--batch-size", "8",
        "--precision", "fp32",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    metrics = json.loads((output / "metrics.json").read_text())
    assert f"accuracy: {metrics['accuracy']:.4f}" in printed and str(output / "confusion_matrix.png") in printed
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (3, 3) and confusion.sum() == metrics["num_examples"] == 30
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert list(metrics["per_class"]) == CLASS_NAMES
    assert metrics["precision"] == "fp32"  # what ran, as asked
    assert [values["support"] for values in metrics["per_class"].values()] == [10, 10, 10]
    assert (output / "report.txt").read_text().splitlines()[2].split()[0] == "Company"
    assert _png_size(output / "confusion_matrix.png")[0] > 300


def test_evaluate_reads_named_labels_with_model_classes(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = make_rows(12, seed=5)
    lines = [json.dumps({"body": f"{title} {content}", "y": CLASS_NAMES[index - 1]}) for index, title, content in rows]
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    metrics = evaluate_model(
        tiny_model_dir, tmp_path / "test.jsonl", output_dir=tmp_path / "out", text_column="body", label_column="y"
    )
    assert [values["support"] for values in metrics["per_class"].values()] == [4, 4, 4]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]


def test_evaluate_refuses_classes_that_differ_from_the_model(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    data = write_dbpedia_csv(tmp_path / "val.csv", make_rows(6))
    (tmp_path / "classes.txt").write_text("Company\nArtist\nPlant\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"classes.txt: the classes differ .*line 3: 'Plant' vs 'Animal'"):
        evaluate_model(tiny_model_dir, data, classes=tmp_path / "classes.txt", output_dir=tmp_path / "out")
    code = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(tmp_path / "missing.csv"),
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2 and "error: data file not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written for a failed evaluation


def test_evaluate_with_a_plugin_reader(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "eval_rows_reader.py").write_text(
        "class Rows:\n"
        "    def __init__(self, path):\n"
        "        self.path = path\n"
        "    def records(self):\n"
        "        yield 'company founded shares', 'Company'\n"
        "        yield 'species genus habitat', 2\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["evaluate", "--model", str(tiny_model_dir), "--reader", "eval_rows_reader:Rows",
                 "--output-dir", str(tmp_path / "out")])
    assert code == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_examples"] == 2
    assert [values["support"] for values in metrics["per_class"].values()] == [1, 0, 1]
    assert metrics["data"] == "plug-in eval_rows_reader:Rows"
