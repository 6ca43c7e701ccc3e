"""Classification metrics from a confusion matrix, a text report, a confusion-matrix plot, and `evaluate_model`.

The training loop reduces confusion matrices over ranks and calls `metrics_from_confusion`; the
`evaluate` command runs a saved model over a labelled file and writes the same metrics to disk.
Multi-label models: per-label counts (`metrics_from_label_counts`: micro/macro F1, subset accuracy),
per-label decision thresholds tuned on validation data (`tune_thresholds`) and a per-label F1 plot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_classify.data.labels import describe_class_differences
from bert_classify.errors import DataError

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.txt"
CONFUSION_PLOT_FILE = "confusion_matrix.png"
PER_LABEL_PLOT_FILE = "per_label_f1.png"  # multi-label models: a confusion matrix does not apply
# Multi-label decision thresholds: the grid searched per label, and the threshold of a label that the
# validation data gives no evidence for (no positive example).
THRESHOLD_GRID = tuple(round(0.05 * step, 2) for step in range(1, 20))  # 0.05 .. 0.95
DEFAULT_THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------- metrics
def metrics_from_confusion(confusion: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro F1 and per-class precision/recall/F1/support from a C x C count matrix.

    Rows are true classes, columns predicted ones. A ratio with a zero denominator is 0.0. Macro F1
    averages over the classes that occur in the labels or the predictions (as scikit-learn does
    when no label list is given), so a class absent from a small validation set does not count as
    an F1 of 0; with no examples at all it is 0.0.
    """
    matrix = np.asarray(confusion, dtype=np.int64)
    classes = len(class_names)
    if matrix.shape != (classes, classes):
        raise ValueError(f"confusion matrix of shape {matrix.shape} does not match {classes} class names")
    true_positives = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _divide(true_positives, predicted)
    recall = _divide(true_positives, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    total = int(support.sum())
    present = (support + predicted) > 0
    per_class = {
        str(name): {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "support": int(support[index]),
        }
        for index, name in enumerate(class_names)
    }
    return {
        "accuracy": float(true_positives.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "micro_f1": float(true_positives.sum() / total) if total else 0.0,  # single-label: equals accuracy
        "num_examples": total,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict[str, Any]:
    """`metrics_from_confusion` of the confusion matrix of 0-based label ids `y_true` vs `y_pred`."""
    true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    predicted = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if true.shape != predicted.shape:
        raise ValueError(f"{len(true)} true labels but {len(predicted)} predictions")
    classes = len(class_names)
    if true.size and (min(true.min(), predicted.min()) < 0 or max(true.max(), predicted.max()) >= classes):
        raise ValueError(f"label ids must be in 0..{classes - 1} for {classes} class names")
    confusion = np.bincount(true * classes + predicted, minlength=classes * classes).reshape(classes, classes)
    return metrics_from_confusion(confusion, class_names)


# ------------------------------------------------------------------------------ multi-label metrics
def metrics_from_label_counts(
    true_positives: Any,
    false_positives: Any,
    false_negatives: Any,
    exact_matches: int,
    examples: int,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Multi-label metrics from per-label counts: micro F1, macro F1, subset accuracy, per-label report.

    `exact_matches`: examples whose predicted label set equals the true one. "accuracy" is the
    subset accuracy (so --best-metric accuracy means exact match); macro F1 averages over the labels
    that occur in the labels or the predictions, as for single-label data.
    """
    tp, fp, fn = (np.asarray(values, dtype=np.float64).reshape(-1) for values in (true_positives, false_positives, false_negatives))
    if not len(tp) == len(fp) == len(fn) == len(class_names):
        raise ValueError(f"label counts of length {len(tp)} do not match {len(class_names)} class names")
    support, predicted = tp + fn, tp + fp
    precision, recall = _divide(tp, predicted), _divide(tp, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    present = (support + predicted) > 0
    micro_denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    subset_accuracy = float(exact_matches / examples) if examples else 0.0
    return {
        "accuracy": subset_accuracy,
        "subset_accuracy": subset_accuracy,
        "micro_f1": float(2 * tp.sum() / micro_denominator) if micro_denominator else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "num_examples": int(examples),
        "multi_label": True,
        "per_class": {
            str(name): {
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "f1": float(f1[index]),
                "support": int(support[index]),
            }
            for index, name in enumerate(class_names)
        },
    }


def multilabel_metrics(targets: Any, predicted: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """`metrics_from_label_counts` of N x C 0/1 arrays of true and predicted label sets."""
    true = np.asarray(targets).astype(bool)
    guess = np.asarray(predicted).astype(bool)
    if true.shape != guess.shape or true.ndim != 2 or true.shape[1] != len(class_names):
        raise ValueError(f"label arrays of shapes {true.shape} and {guess.shape} do not fit {len(class_names)} classes")
    return metrics_from_label_counts(
        (true & guess).sum(axis=0), (~true & guess).sum(axis=0), (true & ~guess).sum(axis=0),
        int((true == guess).all(axis=1).sum()), len(true), class_names,
    )


def threshold_counts(probabilities: Any, targets: Any, grid: Sequence[float] = THRESHOLD_GRID) -> np.ndarray:
    """(len(grid), C, 3) counts of true positives, false positives, false negatives per threshold and label."""
    scores = np.asarray(probabilities, dtype=np.float32)
    true = np.asarray(targets).astype(bool)
    predicted = scores[None, :, :] >= np.asarray(grid, dtype=np.float32)[:, None, None]
    return np.stack(
        [(predicted & true).sum(axis=1), (predicted & ~true).sum(axis=1), (~predicted & true).sum(axis=1)], axis=-1
    ).astype(np.int64)


def tune_thresholds(counts: Any, grid: Sequence[float] = THRESHOLD_GRID) -> np.ndarray:
    """Per label, the grid threshold with the best F1 on the data `counts` (from `threshold_counts`) came from.

    Ties go to the threshold nearest DEFAULT_THRESHOLD; a label without positive examples keeps DEFAULT_THRESHOLD
    (nothing to tune it on).
    """
    counts = np.asarray(counts, dtype=np.float64)
    grid_values = np.asarray(grid, dtype=np.float64)
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)  # (G, C)
    closeness = -np.abs(grid_values - DEFAULT_THRESHOLD)
    thresholds = np.full(counts.shape[1], DEFAULT_THRESHOLD)
    for label in range(counts.shape[1]):
        if tp[0, label] + fn[0, label] == 0:
            continue
        best = max(range(len(grid_values)), key=lambda index: (round(f1[index, label], 12), closeness[index]))
        thresholds[label] = grid_values[best]
    return thresholds


def f1_at_thresholds(counts: Any, thresholds: Sequence[float], grid: Sequence[float] = THRESHOLD_GRID) -> dict[str, float]:
    """Micro and macro F1 when each label uses its threshold (each one a grid value), from `threshold_counts`."""
    counts = np.asarray(counts, dtype=np.float64)
    rows = [int(np.argmin(np.abs(np.asarray(grid) - threshold))) for threshold in thresholds]
    chosen = counts[rows, np.arange(counts.shape[1])]  # (C, 3)
    metrics = metrics_from_label_counts(chosen[:, 0], chosen[:, 1], chosen[:, 2], 0, 0, [str(i) for i in rows])
    return {"micro_f1": metrics["micro_f1"], "macro_f1": metrics["macro_f1"]}


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(denominator), where=denominator > 0)


# ----------------------------------------------------------------------------------------- report
def text_report(metrics: dict[str, Any], digits: int = 4) -> str:
    """A table in the style of scikit-learn's classification_report, from a metrics dict."""
    if metrics.get("multi_label"):
        return _multilabel_report(metrics, digits)
    per_class = metrics["per_class"]
    total = int(metrics["num_examples"])
    rows = [(name, values["precision"], values["recall"], values["f1"], values["support"]) for name, values in per_class.items()]
    supports = np.array([row[4] for row in rows], dtype=np.float64)
    weights = supports / supports.sum() if supports.sum() else np.zeros_like(supports)
    column = np.array([row[1:4] for row in rows], dtype=np.float64).reshape(-1, 3)
    weighted = (column * weights[:, None]).sum(axis=0)
    macro_precision, macro_recall = (column[:, 0].mean(), column[:, 1].mean()) if len(rows) else (0.0, 0.0)
    width = max([len("weighted avg"), *(len(name) for name in per_class)])
    number = max(len("precision"), digits + 2)
    header = f"{'':>{width}} {'precision':>{number}} {'recall':>{number}} {'f1-score':>{number}} {'support':>9}"
    lines = [header, ""]
    for name, precision, recall, f1, support in rows:
        lines.append(
            f"{name:>{width}} {precision:>{number}.{digits}f} {recall:>{number}.{digits}f} {f1:>{number}.{digits}f} {support:>9}"
        )
    lines.append("")
    lines.append(f"{'accuracy':>{width}} {'':>{number}} {'':>{number}} {metrics['accuracy']:>{number}.{digits}f} {total:>9}")
    lines.append(
        f"{'macro avg':>{width}} {macro_precision:>{number}.{digits}f} {macro_recall:>{number}.{digits}f} "
        f"{metrics['macro_f1']:>{number}.{digits}f} {total:>9}"
    )
    lines.append(
        f"{'weighted avg':>{width}} {weighted[0]:>{number}.{digits}f} {weighted[1]:>{number}.{digits}f} "
        f"{weighted[2]:>{number}.{digits}f} {total:>9}"
    )
    return "\n".join(lines) + "\n"


def _multilabel_report(metrics: dict[str, Any], digits: int) -> str:
    """Per-label precision/recall/F1/support (plus each label's threshold), micro and macro averages, subset accuracy."""
    per_class = metrics["per_class"]
    thresholds = metrics.get("label_thresholds") or {}
    width = max([len("subset accuracy"), *(len(name) for name in per_class)])
    number = max(len("precision"), digits + 2)
    header = (
        f"{'':>{width}} {'precision':>{number}} {'recall':>{number}} {'f1-score':>{number}} {'support':>9}"
        + (f" {'threshold':>9}" if thresholds else "")
    )
    lines = [header, ""]
    for name, values in per_class.items():
        lines.append(
            f"{name:>{width}} {values['precision']:>{number}.{digits}f} {values['recall']:>{number}.{digits}f} "
            f"{values['f1']:>{number}.{digits}f} {values['support']:>9}"
            + (f" {thresholds.get(name, DEFAULT_THRESHOLD):>9.2f}" if thresholds else "")
        )
    total = int(metrics["num_examples"])
    lines.append("")
    lines.append(f"{'micro avg':>{width}} {'':>{number}} {'':>{number}} {metrics['micro_f1']:>{number}.{digits}f} {total:>9}")
    lines.append(f"{'macro avg':>{width}} {'':>{number}} {'':>{number}} {metrics['macro_f1']:>{number}.{digits}f} {total:>9}")
    lines.append(
        f"{'subset accuracy':>{width}} {'':>{number}} {'':>{number}} {metrics['subset_accuracy']:>{number}.{digits}f} {total:>9}"
    )
    return "\n".join(lines) + "\n"


def plot_per_label_f1(metrics: dict[str, Any], path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write a horizontal bar chart of each label's precision, recall and F1 (multi-label models) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(metrics["per_class"])
    values = {key: [metrics["per_class"][name][key] for name in names] for key in ("precision", "recall", "f1")}
    height = max(3.0, 0.45 * len(names) + 1.5)
    figure = Figure(figsize=(8.0, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    for offset, key in zip((-0.27, 0.0, 0.27), ("precision", "recall", "f1")):
        axes.barh(positions + offset, values[key], height=0.26, label=key)
    axes.set_yticks(positions, labels=names)
    axes.invert_yaxis()
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("score at the label's threshold")
    axes.legend(loc="lower right")
    if title:
        axes.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


# ------------------------------------------------------------------------------------------- plot
def plot_confusion_matrix(
    confusion: Any, class_names: Sequence[str], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Write the confusion matrix as a PNG: counts in cells, shaded by each true class's share."""
    # Figure + the Agg canvas directly: no pyplot global state, no display needed, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(confusion, dtype=np.int64)
    classes = len(class_names)
    row_totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_totals, out=np.zeros(matrix.shape), where=row_totals > 0)
    side = max(5.0, 0.55 * classes + 3.0)
    figure = Figure(figsize=(side + 1.0, side), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    axes.set_xticks(range(classes), labels=list(class_names), rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(classes), labels=list(class_names))
    axes.set_xlabel("Predicted class")
    axes.set_ylabel("True class")
    if title:
        axes.set_title(title)
    font_size = 9 if classes <= 10 else 7
    for row in range(classes):
        for column in range(classes):
            count = int(matrix[row, column])
            if count == 0 and row != column:
                continue  # empty off-diagonal cells stay blank: the errors stand out
            colour = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=font_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


# ----------------------------------------------------------------------------------- evaluate_model
def evaluate_model(
    model_dir: str | os.PathLike[str],
    data_path: str | os.PathLike[str] | None,
    *,
    classes: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str],
    data_format: str = "auto",
    text_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 64,
    max_seq_len: int | None = None,
    reader: str | None = None,
    label_separator: str = "|",
    precision: str = "auto",
    long_texts: str | None = None,
    chunk_aggregation: str | None = None,
    max_windows: int | None = None,
) -> dict[str, Any]:
    """Run a saved model over labelled data; write metrics.json, report.txt and confusion_matrix.png.

    A multi-label model (config.problem_type multi_label_classification) reads the labels as lists
    (`label_separator` splits a CSV label cell), predicts each label at the threshold saved with the
    model, and writes micro/macro F1, subset accuracy, the per-label report, the same figures at a
    fixed 0.5 threshold ("at_threshold_0.5") and per_label_f1.png instead of the confusion matrix.

    Labels are read with the model's class names (config.id2label). `classes` (a classes.txt) is a
    check: it must list the model's classes in the model's order, else DataError saying which
    differ. `reader` ('package.module:ClassName') reads the data with a plug-in instead. `precision`
    as for `Classifier.from_pretrained` (what predict/serve run). Returns the metrics dict (plus
    "model", "data" and "precision"). `long_texts`, `chunk_aggregation`, `max_windows`: as for
    `Classifier.from_pretrained` (default: the model's own); with chunk, one prediction per text.
    """
    from bert_classify.data import load_labeled_data, read_class_names
    from bert_classify.inference.predictor import Classifier

    classifier = Classifier.from_pretrained(
        model_dir, max_length=max_seq_len, precision=precision, **_long_texts_arguments(long_texts, chunk_aggregation, max_windows)
    )
    model_classes = list(classifier.class_names)
    if classes is not None:
        _check_same_classes(read_class_names(classes), model_classes, os.fspath(classes), os.fspath(model_dir))
    data = load_labeled_data(
        data_path,
        class_names=model_classes,
        data_format=data_format,
        text_column=text_column,
        label_column=label_column,
        reader=reader,
        multi_label=classifier.multi_label,
        label_separator=label_separator,
    )
    if classifier.multi_label:
        return _evaluate_multilabel(classifier, data, Path(output_dir), batch_size, os.fspath(model_dir))
    probabilities = classifier.predict_proba(data.texts, batch_size=batch_size)
    metrics = classification_metrics(data.labels, probabilities.argmax(axis=1).tolist(), model_classes)
    metrics["model"] = os.fspath(model_dir)
    metrics["precision"] = classifier.precision
    metrics["data"] = data.source
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (output / REPORT_FILE).write_text(text_report(metrics), encoding="utf-8")
    plot_confusion_matrix(
        metrics["confusion_matrix"],
        model_classes,
        output / CONFUSION_PLOT_FILE,
        title=f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f} (n={metrics['num_examples']})",
    )
    return metrics


def _long_texts_arguments(long_texts: str | None, chunk_aggregation: str | None, max_windows: int | None) -> dict[str, Any]:
    arguments: dict[str, Any] = {"long_texts": long_texts, "chunk_aggregation": chunk_aggregation}
    if max_windows is not None:
        arguments["max_windows"] = max_windows
    return arguments


def _check_same_classes(given: list[str], model: list[str], classes_path: str, model_dir: str) -> None:
    if given == model:
        return
    raise DataError(
        f"{classes_path}: the classes differ from the model's labels in {model_dir}/config.json (file vs model: "
        f"{describe_class_differences(given, model, position='line', start=1)}). Drop --classes to use the model's "
        "labels, or give the classes file the model was trained with."
    )


def _evaluate_multilabel(classifier: Any, data: Any, output: Path, batch_size: int, model_dir: str) -> dict[str, Any]:
    classes = list(classifier.class_names)
    targets = np.zeros((len(data.labels), len(classes)), dtype=bool)
    for row, ids in enumerate(data.labels):
        targets[row, ids] = True
    probabilities = classifier.predict_proba(data.texts, batch_size=batch_size)
    thresholds = np.asarray(classifier.label_thresholds, dtype=np.float32)
    metrics = multilabel_metrics(targets, probabilities >= thresholds[None, :], classes)
    fixed = multilabel_metrics(targets, probabilities >= np.float32(DEFAULT_THRESHOLD), classes)
    metrics["at_threshold_0.5"] = {key: fixed[key] for key in ("micro_f1", "macro_f1", "subset_accuracy")}
    metrics["label_thresholds"] = {name: float(value) for name, value in zip(classes, thresholds)}
    metrics["model"] = model_dir
    metrics["precision"] = classifier.precision
    metrics["data"] = data.source
    output.mkdir(parents=True, exist_ok=True)
    (output / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (output / REPORT_FILE).write_text(text_report(metrics), encoding="utf-8")
    plot_per_label_f1(
        metrics, output / PER_LABEL_PLOT_FILE,
        title=f"micro F1 {metrics['micro_f1']:.4f}, macro F1 {metrics['macro_f1']:.4f} (n={metrics['num_examples']})",
    )
    return metrics
