"""The same model.tar.gz served by both AWS inference images' real toolkits, driven as their servers drive them.

A model trained here is packaged, unpacked, and loaded by MMS's loader with the Hugging Face toolkit
(transformers 4.49, as in the HF 4.49 image) and by TorchServe's loader with sagemaker-pytorch-inference,
each in its own virtual environment (scripts/setup-toolkit-venvs.sh), where only the archive's vendored
copy of bert_classify is importable. Skipped, with the reason, when a venv is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bert_classify.cli import main
from bert_classify.inference.package import extract_archive
from bert_classify.inference.predictor import Classifier

ROOT = Path(__file__).resolve().parents[1]
VENVS = {"huggingface": ROOT / ".venv-hf", "pytorch": ROOT / ".venv-pytorch"}
DRIVER = Path(__file__).with_name("toolkit_driver.py")
TEXTS = ["species genus habitat of the mammal", "the football club won the league", "a village in the district"]


def toolkit_python(toolkit: str) -> Path:
    python = VENVS[toolkit] / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{VENVS[toolkit].name} is absent: run `bash scripts/setup-toolkit-venvs.sh {toolkit}` first")
    return python


@pytest.fixture(scope="module")
def served_model(tiny_data_dir: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained by `bert-classify train`, packaged, and unpacked as the endpoint unpacks it."""
    work = tmp_path_factory.mktemp("toolkits")
    trained = work / "trained"
    assert main([
        "train", "--train", str(tiny_data_dir / "train.csv"), "--val", str(tiny_data_dir / "val.csv"),
        "--classes", str(tiny_data_dir / "classes.txt"), "--model", str(tiny_model_dir),
        "--output-dir", str(trained), "--max-steps", "2", "--batch-size", "8", "--max-seq-len", "32",
    ]) == 0  # fmt: skip
    archive = work / "model.tar.gz"
    assert main(["package", "--model", str(trained), "--output", str(archive)]) == 0
    return extract_archive(archive, work / "opt-ml-model")


def serve(toolkit: str, model_dir: Path, requests: list[dict]) -> tuple[dict, list[dict]]:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environment.update({"SAGEMAKER_PROGRAM": "inference.py", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    result = subprocess.run(
        [str(toolkit_python(toolkit)), str(DRIVER), toolkit, str(model_dir)],
        input=json.dumps(requests),
        env=environment,
        cwd=model_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return lines[0], lines[1:]


REQUESTS = [
    {"body": json.dumps({"inputs": TEXTS}), "content_type": "application/json", "accept": "application/json"},
    {"body": "\n".join(TEXTS) + "\n", "content_type": "text/csv", "accept": "*/*"},
    {"body": "".join(json.dumps(t) + "\n" for t in TEXTS), "content_type": "application/jsonlines", "accept": "application/jsonlines"},
    {"body": json.dumps({"inputs": TEXTS[:1], "parameters": {"top_k": 2}}), "content_type": "application/json"},
    # client mistakes: each answered with its own 4xx status, never 500
    {"body": "<a/>", "content_type": "application/xml", "accept": "application/json"},
    {"body": json.dumps({"inputs": TEXTS}), "content_type": "application/json", "accept": "text/html"},
    {"body": "{not json", "content_type": "application/json"},
    {"body": "[" * 100_000 + "]" * 100_000, "content_type": "application/json"},
    {"body": '{"inputs": ' + "9" * 5000 + "}", "content_type": "application/json"},
    {"body": '{"inputs": ["\\ud800 lone"]}', "content_type": "application/json"},
]


@pytest.mark.slow
@pytest.mark.parametrize("toolkit", ["huggingface", "pytorch"])
def test_the_archive_serves_on_both_images(toolkit: str, served_model: Path) -> None:
    toolkit_python(toolkit)
    expected = Classifier.from_pretrained(served_model).predict(TEXTS)
    expected_top2 = Classifier.from_pretrained(served_model).predict(TEXTS[:1], top_k=2)
    loaded, replies = serve(toolkit, served_model, REQUESTS)
    assert loaded["loaded_seconds"] > 0
    json_reply, csv_reply, jsonlines_reply, top_k_reply, *errors = replies
    for reply in (json_reply, csv_reply, jsonlines_reply, top_k_reply):
        assert reply["status"] == 200, reply
    assert json_reply["content_type"] == "application/json"
    for reply in (json_reply, csv_reply):
        answer = json.loads(reply["body"])
        assert [item["label"] for item in answer] == [item["label"] for item in expected]
        assert [item["score"] for item in answer] == pytest.approx([item["score"] for item in expected], abs=1e-4)
    assert jsonlines_reply["content_type"] == "application/jsonlines"
    lines = [json.loads(line) for line in jsonlines_reply["body"].splitlines()]
    assert [item["label"] for item in lines] == [item["label"] for item in expected]
    top2 = json.loads(top_k_reply["body"])[0]
    assert [entry["label"] for entry in top2["top_k"]] == [entry["label"] for entry in expected_top2[0]["top_k"]]
    statuses = [reply["status"] for reply in errors]
    assert statuses == [415, 406, 400, 400, 400, 400], errors
    assert "application/xml" in errors[0]["body"]


@pytest.mark.slow
def test_a_model_trained_here_loads_in_transformers_4_49_pipeline(served_model: Path) -> None:
    python = toolkit_python("huggingface")
    script = (
        "import sys, json, transformers\n"
        "from transformers import pipeline\n"
        "classifier = pipeline('text-classification', model=sys.argv[1])\n"
        "print(json.dumps({'version': transformers.__version__, 'labels': [r['label'] for r in classifier(sys.argv[2:])]}))\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [str(python), "-c", script, str(served_model), *TEXTS], env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["version"] == "4.49.0"
    assert answer["labels"] == [item["label"] for item in Classifier.from_pretrained(served_model).predict(TEXTS)]


@pytest.mark.slow
def test_requirements_are_already_met_by_the_hugging_face_image(served_model: Path) -> None:
    """pip installs code/requirements.txt at start: on the HF image it must change nothing (an upgraded
    transformers breaks that image's toolkit, and an isolated endpoint cannot download at all)."""
    python = toolkit_python("huggingface")
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "-r",
         str(served_model / "code" / "requirements.txt")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Would install" not in result.stdout


def _package(trained: Path, work: Path) -> Path:
    archive = work / "model.tar.gz"
    assert main(["package", "--model", str(trained), "--output", str(archive)]) == 0
    return extract_archive(archive, work / "opt-ml-model")


@pytest.fixture(scope="module")
def multi_label_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-label model (list labels: problem_type and label_thresholds in config.json), packaged and unpacked."""
    from test_multilabel import make_documents, write_jsonl

    work = tmp_path_factory.mktemp("toolkits-multilabel")
    train, val = write_jsonl(work / "train.jsonl", make_documents(48, 1)), write_jsonl(work / "val.jsonl", make_documents(16, 2))
    assert main([
        "train", "--train", str(train), "--val", str(val), "--model", str(tiny_model_dir),
        "--output-dir", str(work / "trained"), "--max-steps", "3", "--batch-size", "8", "--max-seq-len", "32",
    ]) == 0  # fmt: skip
    return _package(work / "trained", work)


@pytest.fixture(scope="module")
def chunked_model(tiny_data_dir: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --long-texts chunk model (long_texts, chunk_stride, chunk_aggregation in config.json), packaged and unpacked."""
    work = tmp_path_factory.mktemp("toolkits-chunk")
    assert main([
        "train", "--train", str(tiny_data_dir / "train.csv"), "--val", str(tiny_data_dir / "val.csv"),
        "--classes", str(tiny_data_dir / "classes.txt"), "--model", str(tiny_model_dir),
        "--output-dir", str(work / "trained"), "--max-steps", "2", "--batch-size", "8", "--max-seq-len", "16",
        "--long-texts", "chunk", "--precision", "fp32",
    ]) == 0  # fmt: skip
    return _package(work / "trained", work)


@pytest.mark.slow
@pytest.mark.parametrize("toolkit", ["huggingface", "pytorch"])
def test_multi_label_and_chunked_models_serve_on_both_images_as_they_predict_here(
    toolkit: str, multi_label_model: Path, chunked_model: Path
) -> None:
    """The settings saved in config.json by transformers 5 are read by the archive's handler under each image's
    own transformers (4.49 in the Hugging Face one): thresholds and the {labels, scores} shape, and windows."""
    toolkit_python(toolkit)
    request = [{"body": json.dumps({"inputs": TEXTS}), "content_type": "application/json", "accept": "application/json"}]
    expected = Classifier.from_pretrained(multi_label_model).predict(TEXTS)
    assert all(set(item) >= {"labels", "scores"} for item in expected)
    _, (reply,) = serve(toolkit, multi_label_model, request)
    assert reply["status"] == 200, reply
    answer = json.loads(reply["body"])
    assert [item["labels"] for item in answer] == [item["labels"] for item in expected]
    for got, want in zip(answer, expected):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-4)

    long_texts = [" ".join([text] * 12) for text in TEXTS]  # many windows of 16 tokens each
    classifier = Classifier.from_pretrained(chunked_model, precision="fp32")
    assert len(classifier.encode(long_texts[:1])[0]) > 1  # really chunked
    expected = classifier.predict(long_texts)
    request[0]["body"] = json.dumps({"inputs": long_texts})
    _, (reply,) = serve(toolkit, chunked_model, request)
    assert reply["status"] == 200, reply
    answer = json.loads(reply["body"])
    assert [item["label"] for item in answer] == [item["label"] for item in expected]
    assert [item["score"] for item in answer] == pytest.approx([item["score"] for item in expected], abs=1e-3)
