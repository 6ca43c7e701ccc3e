"""Imbalanced classes: balanced class weights (inverse frequency, example-mean 1), the start-up warning,
the weighted loss in a real training run, and the option's place in the resume fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bert_classify.cli import main
from bert_classify.config import TrainConfig
from bert_classify.errors import CheckpointError, ConfigError
from bert_classify.training.class_balance import balanced_class_weights, class_counts, imbalance_warning
from bert_classify.training.loop import train
from conftest import CLASS_NAMES, make_rows, write_dbpedia_csv


def test_balanced_weights_are_inverse_frequency_with_example_mean_one() -> None:
    labels = [0] * 90 + [1] * 10 + [2] * 20
    counts = class_counts(labels, 3)
    weights = balanced_class_weights(counts)
    assert counts.tolist() == [90, 10, 20]
    np.testing.assert_allclose(weights, [120 / (3 * 90), 120 / (3 * 10), 120 / (3 * 20)])
    assert weights[1] / weights[0] == pytest.approx(9.0)  # inverse frequency
    assert np.mean(weights[np.asarray(labels)]) == pytest.approx(1.0)  # the loss keeps its scale


def test_a_class_without_training_examples_gets_weight_zero_and_the_mean_stays_one() -> None:
    labels = [0] * 30 + [2] * 10
    weights = balanced_class_weights(class_counts(labels, 3))
    assert weights[1] == 0.0
    assert np.mean(weights[np.asarray(labels)]) == pytest.approx(1.0)


def test_the_imbalance_warning_fires_from_ten_times_fewer_examples() -> None:
    names = ["big", "small", "middle"]
    assert imbalance_warning(np.array([90, 10, 50]), names, "none") is None  # 9x: no warning
    warning = imbalance_warning(np.array([100, 10, 50]), names, "none")
    assert warning is not None and "\n" not in warning
    assert warning.startswith("warning: imbalanced classes: 'small' has 10 training examples, 10x fewer than 'big' (100)")
    assert "1 class(es) have at most 1/10" in warning and "consider --class-weights balanced" in warning
    assert "--class-weights balanced is on" in imbalance_warning(np.array([100, 10, 50]), names, "balanced")
    assert "'small' has no training examples ('big' has 100)" in imbalance_warning(np.array([100, 0, 5]), names, "none")


def test_an_unknown_class_weights_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^--class-weights must be one of none, balanced, not 'inverse'\.$"):
        TrainConfig(train="x.csv", class_weights="inverse").validate()


def test_the_cli_refuses_an_unknown_mode_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--train", "x.csv", "--class-weights", "inverse"])
    assert stopped.value.code == 2
    assert "--class-weights: invalid choice: 'inverse'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def imbalanced_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Company and Artist with 40 rows each, Animal with 3."""
    directory = tmp_path_factory.mktemp("imbalanced")
    rows = make_rows(120, seed=5)
    animal = [row for row in rows if row[0] == 3][:3]
    write_dbpedia_csv(directory / "train.csv", [row for row in rows if row[0] != 3] + animal)
    write_dbpedia_csv(directory / "val.csv", make_rows(30, seed=6))
    (directory / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    return directory


def _config(data: Path, model: Path, output: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = dict(
        train=str(data / "train.csv"), val=str(data / "val.csv"), classes=str(data / "classes.txt"),
        model=str(model), output_dir=str(output), epochs=1, max_steps=3, batch_size=8, learning_rate=1e-3,
        log_every_steps=1, checkpoint_every_minutes=None,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def _losses_of(model_dir: Path, data_file: Path, weights: torch.Tensor) -> tuple[float, float]:
    """(weighted, unweighted) mean cross-entropy of a model on a file, computed independently of the loop."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bert_classify.data import load_labeled_data

    data = load_labeled_data(str(data_file), class_names=CLASS_NAMES)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        encoded = tokenizer(data.texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        logits = model(**encoded).logits
    labels = torch.tensor(data.labels)
    weighted = F.cross_entropy(logits, labels, weight=weights, reduction="sum") / len(data.texts)
    return float(weighted), float(F.cross_entropy(logits, labels))


def test_balanced_training_weights_the_training_loss_and_warns(
    imbalanced_data: Path, tiny_model_no_dropout_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One step over all 83 training examples: its logged loss is the initial model's loss on them.
    config = _config(imbalanced_data, tiny_model_no_dropout_dir, tmp_path / "model", class_weights="balanced",
                     max_steps=1, batch_size=83, learning_rate=1e-6)  # fmt: skip
    result = train(config)
    printed = capsys.readouterr().out
    assert "warning: imbalanced classes: 'Animal' has 3 training examples, 13x fewer than 'Company' (40)" in printed
    assert "--class-weights balanced is on" in printed
    assert "class weights (balanced): from 0.692 to 9.22" in printed  # 83/(3*40), 83/(3*3)
    weights = torch.tensor(balanced_class_weights(np.array([40, 40, 3])), dtype=torch.float32)
    weighted, unweighted = _losses_of(tiny_model_no_dropout_dir, imbalanced_data / "train.csv", weights)
    assert abs(weighted - unweighted) > 1e-3
    curves = json.loads((tmp_path / "model" / "training_curves.json").read_text())
    assert curves["train/loss"] == [[1, pytest.approx(weighted, rel=1e-5)]]
    # The validation loss stays the plain cross-entropy, comparable across runs with and without weights.
    _, validation_unweighted = _losses_of(tmp_path / "model", imbalanced_data / "val.csv", weights)
    assert result.metrics is not None and result.metrics["loss"] == pytest.approx(validation_unweighted, rel=1e-4)
    assert json.loads((tmp_path / "model" / "training_config.json").read_text())["class_weights"] == "balanced"


def test_weights_change_the_trained_model(imbalanced_data: Path, tiny_model_no_dropout_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    train(_config(imbalanced_data, tiny_model_no_dropout_dir, tmp_path / "none"))
    train(_config(imbalanced_data, tiny_model_no_dropout_dir, tmp_path / "balanced", class_weights="balanced"))
    plain = load_file(tmp_path / "none" / "model.safetensors")
    weighted = load_file(tmp_path / "balanced" / "model.safetensors")
    assert not torch.equal(plain["classifier.weight"], weighted["classifier.weight"])


def test_a_resume_with_other_class_weights_is_refused(imbalanced_data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    checkpoints = str(tmp_path / "checkpoints")
    train(_config(imbalanced_data, tiny_model_dir, tmp_path / "a", max_steps=2, checkpoint_dir=checkpoints))
    with pytest.raises(CheckpointError, match=r"class_weights None → 'balanced'"):
        train(_config(imbalanced_data, tiny_model_dir, tmp_path / "b", max_steps=2, checkpoint_dir=checkpoints,
                      class_weights="balanced"))  # fmt: skip
