"""Imbalanced classes: per-class loss weights for `--class-weights balanced` and the start-up warning.

Balanced weights are inverse class frequency scaled so that the mean weight over training examples
is 1, which keeps the loss (and so the learning rate) on the same scale as unweighted training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bert_classify.config import CLASS_WEIGHT_MODES

__all__ = ["CLASS_WEIGHT_MODES", "balanced_class_weights", "class_counts", "imbalance_warning", "multilabel_pos_weights"]
# The warning fires when the largest class has at least this many times the examples of the smallest.
IMBALANCE_WARNING_RATIO = 10.0


def class_counts(labels: Sequence[int] | np.ndarray, class_count: int) -> np.ndarray:
    """Training examples per class id (0-based), classes without examples included as 0."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=class_count).astype(np.int64)


def balanced_class_weights(counts: np.ndarray) -> np.ndarray:
    """Weight per class: total / (present classes × count), so that the example-mean weight is 1.

    This is scikit-learn's `class_weight="balanced"`. A class with no training examples gets weight
    0 (it never appears in a training loss; in validation it adds nothing to the weighted loss).
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def multilabel_pos_weights(positives: np.ndarray, examples: int) -> np.ndarray:
    """Multi-label --class-weights balanced: per label, negatives / positives (BCEWithLogitsLoss's pos_weight),
    so that a label's positive and negative examples weigh the same in its loss; 1 for a label without positives."""
    positives = np.asarray(positives, dtype=np.float64)
    weights = np.ones_like(positives)
    present = positives > 0
    weights[present] = (examples - positives[present]) / positives[present]
    return np.maximum(weights, 0.0)


def imbalance_warning(counts: np.ndarray, class_names: Sequence[str], class_weights: str) -> str | None:
    """A one-line warning when the largest class has >= IMBALANCE_WARNING_RATIO × the smallest's examples."""
    counts = np.asarray(counts)
    smallest, largest = int(np.argmin(counts)), int(np.argmax(counts))
    if counts[largest] == 0 or counts[largest] < IMBALANCE_WARNING_RATIO * counts[smallest]:
        return None
    scarce = [class_names[i] for i in np.flatnonzero(counts * IMBALANCE_WARNING_RATIO <= counts[largest])]
    if counts[smallest] == 0:
        comparison = f"has no training examples ('{class_names[largest]}' has {int(counts[largest])})"
    else:
        comparison = (
            f"has {int(counts[smallest])} training examples, {counts[largest] / counts[smallest]:.0f}x fewer than "
            f"'{class_names[largest]}' ({int(counts[largest])})"
        )
    advice = (
        "--class-weights balanced is on" if class_weights == "balanced"
        else "consider --class-weights balanced, and judge the model by macro_f1 (the default --best-metric)"
    )
    listed = ", ".join(scarce[:5]) + (", …" if len(scarce) > 5 else "")
    return (
        f"warning: imbalanced classes: '{class_names[smallest]}' {comparison}; {len(scarce)} class(es) have at most "
        f"1/{IMBALANCE_WARNING_RATIO:.0f} of the largest class's examples ({listed}); {advice}."
    )
