"""What training decides about length travels with the model: `train --max-seq-len N` is applied at N
by predict, evaluate, the HTTP server and a plain `transformers.pipeline`, with no flag."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from bert_classify.cli import main
from bert_classify.inference.predictor import Classifier
from conftest import CLASS_NAMES
from test_inference_predictor import fit_head

MAX_SEQ_LEN = 12
# About 90 tokens: far past MAX_SEQ_LEN, within the tiny model's 128 positions (so "no truncation at
# N" would still run and give other numbers: the checks below can fail).
LONG_TEXTS = [
    "company founded headquarters shares " * 3 + "species genus habitat mammal feathers predator " * 12,
    "painter singer album gallery " * 20,
]


@pytest.fixture(scope="module")
def trained_dir(tiny_data_dir: Path, tiny_model_no_dropout_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("trained") / "model"
    status = main([
        "train", "--train", str(tiny_data_dir / "train.csv"), "--val", str(tiny_data_dir / "val.csv"),
        "--classes", str(tiny_data_dir / "classes.txt"), "--model", str(tiny_model_no_dropout_dir),
        "--output-dir", str(output), "--max-steps", "2", "--batch-size", "4", "--max-seq-len", str(MAX_SEQ_LEN),
        "--learning-rate", "0.01",
    ])  # fmt: skip
    assert status == 0
    return output


def reference_probabilities(model_dir: Path, texts: list[str], max_length: int) -> np.ndarray:
    """Plain transformers, one text at a time, truncated at `max_length`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for text in texts:
        with torch.no_grad():
            encoded = tokenizer([text], return_tensors="pt", truncation=True, max_length=max_length)
            rows.append(torch.softmax(model(**encoded).logits, dim=-1)[0].numpy())
    return np.stack(rows)


@pytest.fixture(scope="module")
def expected(trained_dir: Path) -> np.ndarray:
    at_n = reference_probabilities(trained_dir, LONG_TEXTS, MAX_SEQ_LEN)
    untruncated = reference_probabilities(trained_dir, LONG_TEXTS, 128)
    assert not np.allclose(at_n, untruncated, atol=1e-4), "the long texts must score differently past N"
    return at_n


def test_training_writes_its_max_seq_len_into_the_tokenizer_config(trained_dir: Path) -> None:
    config = json.loads((trained_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["model_max_length"] == MAX_SEQ_LEN
    assert Classifier.from_pretrained(trained_dir, precision="fp32").max_length == MAX_SEQ_LEN


def test_the_sagemaker_handler_loads_the_trained_length(
    trained_dir: Path, expected: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bert_classify.inference import handler

    monkeypatch.setenv("BERT_CLASSIFY_PRECISION", "fp32")
    model = handler.model_fn(str(trained_dir))
    assert model.max_length == MAX_SEQ_LEN
    request = handler.input_fn(json.dumps({"inputs": LONG_TEXTS, "parameters": {"top_k": 3}}), "application/json")
    for item, row in zip(handler.predict_fn(request, model), expected):
        scores = {entry["label"]: entry["score"] for entry in item["top_k"]}
        assert [scores[name] for name in CLASS_NAMES] == pytest.approx(row.tolist(), abs=1e-5)


def test_predict_applies_the_trained_length(trained_dir: Path, expected: np.ndarray, tmp_path: Path) -> None:
    source = tmp_path / "long.txt"
    source.write_text("\n".join(LONG_TEXTS) + "\n", encoding="utf-8")
    output = tmp_path / "predictions.jsonl"
    assert main(["predict", "--model", str(trained_dir), "--input", str(source), "--output", str(output),
                 "--precision", "fp32", "--top-k", "3"]) == 0  # fmt: skip
    for line, row in zip(output.read_text(encoding="utf-8").splitlines(), expected):
        scores = {item["label"]: item["score"] for item in json.loads(line)["top_k"]}
        assert [scores[name] for name in CLASS_NAMES] == pytest.approx(row.tolist(), abs=1e-5)


def test_plain_pipeline_applies_the_trained_length(trained_dir: Path, expected: np.ndarray) -> None:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(trained_dir), device="cpu")
    for text, row in zip(LONG_TEXTS, expected):
        scores = {item["label"]: item["score"] for item in classify(text, truncation=True, top_k=None)}
        assert [scores[name] for name in CLASS_NAMES] == pytest.approx(row.tolist(), abs=1e-5)


def test_the_server_applies_the_trained_length(trained_dir: Path, expected: np.ndarray, tmp_path: Path) -> None:
    from test_server import ServerProcess

    server = ServerProcess(trained_dir, tmp_path / "server.log", "--precision", "fp32")
    try:
        response = httpx.post(
            server.url + "/invocations", json={"inputs": LONG_TEXTS, "parameters": {"top_k": 3}}, timeout=30
        )
        assert response.status_code == 200, response.text
        for item, row in zip(response.json(), expected):
            scores = {entry["label"]: entry["score"] for entry in item["top_k"]}
            assert [scores[name] for name in CLASS_NAMES] == pytest.approx(row.tolist(), abs=1e-5)
        assert server.metrics()["config"]["max_seq_len"] == MAX_SEQ_LEN
    finally:
        assert server.stop() == 0, server.log()


def test_evaluate_applies_the_length_saved_with_the_model(
    tiny_model_no_dropout_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model that tells classes apart, saved as training saves it (model_max_length = N): the
    first N tokens say Company, the rest Animal, so only evaluation at N scores 1.0."""
    from transformers import AutoTokenizer

    model_dir = fit_head(tiny_model_no_dropout_dir, tmp_path / "fitted")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.model_max_length = MAX_SEQ_LEN
    tokenizer.save_pretrained(model_dir)
    text = "company founded headquarters shares products corporation market " * 2 + "species genus habitat " * 25
    assert Classifier.from_pretrained(model_dir, precision="fp32", max_length=128).predict([text])[0]["label"] == "Animal"
    data = tmp_path / "eval.csv"
    data.write_text("".join(f'1,"{text}"\n' for _ in range(3)), encoding="utf-8")
    assert main(["evaluate", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "eval"),
                 "--precision", "fp32"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] == 1.0
    capsys.readouterr()
    # The flag still overrides what the model carries.
    assert main(["evaluate", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "eval"),
                 "--precision", "fp32", "--max-seq-len", "128"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] == 0.0


def test_predict_and_serve_take_max_seq_len_and_the_old_name_still_works(
    trained_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "long.txt"
    source.write_text(LONG_TEXTS[0] + "\n", encoding="utf-8")
    outputs = []
    for flag in ("--max-seq-len", "--max-length"):
        assert main(["predict", "--model", str(trained_dir), "--input", str(source), "--precision", "fp32",
                     flag, "64"]) == 0  # fmt: skip
        outputs.append(json.loads(capsys.readouterr().out))
    expected_64 = reference_probabilities(trained_dir, LONG_TEXTS[:1], 64)[0]
    assert outputs[0] == outputs[1]
    assert outputs[0]["score"] == pytest.approx(float(expected_64.max()), abs=1e-5)
    assert main(["predict", "--model", str(trained_dir), "--input", str(source), "--max-seq-len", "1"]) == 2
    assert "--max-seq-len 1: must be between 2" in capsys.readouterr().err
    for command in ("predict", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        help_text = capsys.readouterr().out
        assert "--max-seq-len" in help_text and "--max-length" not in help_text
