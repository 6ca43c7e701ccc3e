"""The README's second command: the offline quickstart runs end to end, shows an interruption and
its resume, and the tiny model it trains really learns the sample data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bert_classify.data import load_labeled_data, read_class_names
from bert_classify.inference.predictor import Classifier
from bert_classify.quickstart import run_quickstart

pytestmark = pytest.mark.slow


def test_quickstart_trains_interrupts_resumes_evaluates_and_predicts(tmp_path: Path) -> None:
    said: list[str] = []
    result = run_quickstart(tmp_path / "qs", say=said.append)
    assert result.interrupted_at_step == 13 and result.resumed_from_step == 13
    assert any("simulated spot interruption" in line for line in said)
    assert result.metrics["accuracy"] >= 0.9  # 14 classes: chance is 0.07
    # The reported test accuracy, checked against predictions made here independently of `evaluate`.
    evaluation = json.loads((result.evaluation_dir / "metrics.json").read_text())
    data = result.output_dir / "data"
    test = load_labeled_data(data / "test.csv", class_names=read_class_names(data / "classes.txt"))
    predicted = Classifier.from_pretrained(result.model_dir).predict(test.texts)
    correct = sum(p["label"] == test.class_names[label] for p, label in zip(predicted, test.labels))
    assert evaluation["accuracy"] == pytest.approx(correct / len(test.labels), abs=1e-9)
    assert (result.evaluation_dir / "confusion_matrix.png").stat().st_size > 10_000
    assert (result.model_dir / "model.safetensors").exists()
    assert len(result.predictions) == 3

    from transformers import pipeline

    label = pipeline("text-classification", model=str(result.model_dir))("a river with a summit")[0]["label"]
    assert label in json.loads((result.model_dir / "config.json").read_text())["id2label"].values()
