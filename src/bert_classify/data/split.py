"""Seeded, stratified train/validation split of one LabeledData (used when no --val is given).

Each class gives its share of validation examples; a class with a single example stays in training.
Multi-label data is stratified by each example's first (lowest-id) label, examples without labels
forming one more group: every label that leads some example is spread over both parts.
"""

from __future__ import annotations

import numpy as np

from bert_classify.data.labels import LabeledData
from bert_classify.errors import ConfigError


def stratified_split(data: LabeledData, val_fraction: float, seed: int) -> tuple[LabeledData, LabeledData]:
    """(train, val): about `val_fraction` of the examples to val, each class in proportion.

    The validation size is round(n * val_fraction) (at least 1), shared among classes by largest
    remainder so that each class keeps its proportion; every class keeps at least one training
    example. The same data, fraction and seed always give the same split; both parts keep file order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), not {val_fraction}.")
    class_count = len(data.class_names)
    if data.multi_label:  # stratum: the first label id; class_count for "no labels"
        labels = np.asarray([ids[0] if ids else class_count for ids in data.labels], dtype=np.int64)
        class_count += 1
    else:
        labels = np.asarray(data.labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=class_count) if len(labels) else np.zeros(class_count, dtype=np.int64)
    val_counts = _val_counts(counts, val_fraction)
    rng = np.random.default_rng(seed)
    val_mask = np.zeros(len(labels), dtype=bool)
    for label in range(class_count):
        if val_counts[label] == 0:
            continue
        members = np.flatnonzero(labels == label)
        val_mask[rng.permutation(members)[: val_counts[label]]] = True
    train_rows, val_rows = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
    return _subset(data, train_rows, "train"), _subset(data, val_rows, "validation")


def _val_counts(counts: np.ndarray, val_fraction: float) -> list[int]:
    """Validation examples per class: largest-remainder shares of round(total * fraction), capped at count - 1."""
    capacity = np.maximum(counts - 1, 0)
    total = int(counts.sum())
    target = min(max(1, round(total * val_fraction)), int(capacity.sum()))
    exact = counts * val_fraction
    shares = np.minimum(np.floor(exact).astype(np.int64), capacity)
    remainders = exact - np.floor(exact)
    # Hand out what is left by largest remainder (ties to the lower class id), skipping full classes;
    # target <= capacity.sum(), so this ends.
    order = sorted(range(len(counts)), key=lambda index: (-remainders[index], index))
    missing = target - int(shares.sum())
    while missing > 0:
        for label in order:
            if missing > 0 and shares[label] < capacity[label]:
                shares[label] += 1
                missing -= 1
    return [int(share) for share in shares]


def _subset(data: LabeledData, rows: np.ndarray, part: str) -> LabeledData:
    texts, labels = data.texts, data.labels
    return LabeledData(
        texts=[texts[row] for row in rows],
        labels=[labels[row] for row in rows],
        class_names=list(data.class_names),
        source=f"{data.source} ({part} part)",
        multi_label=data.multi_label,
    )

