"""Stratified train/validation split: proportions per class, determinism per seed, tiny classes."""

from __future__ import annotations

from collections import Counter

import pytest

from bert_classify.data import LabeledData, stratified_split
from bert_classify.errors import ConfigError


def make_data(counts: list[int]) -> LabeledData:
    labels = [label for label, count in enumerate(counts) for _ in range(count)]
    texts = [f"text {index} of class {label}" for index, label in enumerate(labels)]
    return LabeledData(texts, labels, [f"class{index}" for index in range(len(counts))], "memory.csv")


def test_each_class_keeps_its_proportion() -> None:
    data = make_data([500, 300, 150, 50])
    train, val = stratified_split(data, 0.2, seed=7)
    assert len(train) + len(val) == len(data) and len(val) == 200
    assert Counter(val.labels) == {0: 100, 1: 60, 2: 30, 3: 10}
    assert Counter(train.labels) == {0: 400, 1: 240, 2: 120, 3: 40}
    # Every example lands in exactly one part, with its own label.
    pairs = set(zip(train.texts, train.labels)) | set(zip(val.texts, val.labels))
    assert pairs == set(zip(data.texts, data.labels))
    assert train.class_names == val.class_names == data.class_names
    assert "memory.csv" in train.source and "memory.csv" in val.source


def test_uneven_shares_add_up_to_the_rounded_total() -> None:
    data = make_data([7, 7, 7, 4])
    _, val = stratified_split(data, 0.1, seed=0)
    assert len(val) == round(25 * 0.1) == 2
    assert max(Counter(val.labels).values()) == 1  # two different classes give one each


def test_same_seed_same_split_other_seed_differs() -> None:
    data = make_data([100, 100, 100])
    first = stratified_split(data, 0.25, seed=3)
    again = stratified_split(data, 0.25, seed=3)
    other = stratified_split(data, 0.25, seed=4)
    assert first[0].texts == again[0].texts and first[1].texts == again[1].texts
    assert first[1].texts != other[1].texts
    assert Counter(first[1].labels) == Counter(other[1].labels)  # still stratified


def test_parts_keep_file_order() -> None:
    data = make_data([50, 50])
    train, val = stratified_split(data, 0.3, seed=1)
    for part in (train, val):
        positions = [data.texts.index(text) for text in part.texts]
        assert positions == sorted(positions)


def test_tiny_classes_stay_in_training() -> None:
    data = make_data([40, 1, 2])
    train, val = stratified_split(data, 0.5, seed=0)
    assert Counter(train.labels)[1] == 1 and 1 not in val.labels  # the single example trains
    assert Counter(train.labels)[2] >= 1  # every class keeps a training example
    # round(43 * 0.5) = 22 in validation: 1 from the two-example class, the singleton's share moves to class 0.
    assert Counter(val.labels) == {0: 21, 2: 1}


def test_small_data_still_gets_a_validation_example() -> None:
    train, val = stratified_split(make_data([3, 2]), 0.1, seed=0)
    assert len(val) == 1 and len(train) == 4


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ConfigError, match="--val-fraction must be between 0 and 1"):
        stratified_split(make_data([10, 10]), fraction, seed=0)
