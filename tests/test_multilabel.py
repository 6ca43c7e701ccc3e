"""Multi-label classification end to end: list labels in JSON Lines and CSV, their errors, the multi-hot
token cache, BCE training with per-label thresholds saved in config.json, evaluate/predict/serve/handler."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from bert_classify.cli import main
from bert_classify.config import TrainConfig
from bert_classify.data import load_labeled_data, stratified_split
from bert_classify.errors import ConfigError, DataError
from bert_classify.evaluation import THRESHOLD_GRID, multilabel_metrics, threshold_counts, tune_thresholds
from conftest import _WORDS, CLASS_NAMES
from test_user_errors import assert_one_line_error, run_cli


def make_documents(count: int, seed: int) -> list[tuple[str, list[str]]]:
    """(text, labels): each text mixes the vocabulary of one or two classes, labels = those classes."""
    rng = random.Random(seed)
    documents = []
    for index in range(count):
        labels = rng.sample(CLASS_NAMES, 1 if index % 2 else 2)
        words = [rng.choice(_WORDS[label]) for label in labels for _ in range(rng.randint(4, 8))]
        rng.shuffle(words)
        documents.append((" ".join(words), sorted(labels)))
    return documents


def write_jsonl(path: Path, documents: list[tuple[str, object]]) -> Path:
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in documents), encoding="utf-8")
    return path


def write_csv(path: Path, documents: list[tuple[str, list[str]]], separator: str = "|") -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((text, separator.join(labels)) for text, labels in documents)
    return path


# --------------------------------------------------------------------------------------- reading
def test_json_lines_list_labels_are_detected_as_multi_label(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [("a b", ["x", "y"]), ("c", []), ("d", ["z"]), ("e", [3])])
    data = load_labeled_data(path)
    assert data.multi_label
    assert data.class_names == ["3", "x", "y", "z"]
    assert data.labels == [[1, 2], [], [3], [0]]


def test_csv_label_cells_are_split_at_the_separator_in_multi_label_mode(tmp_path: Path) -> None:
    documents = [("a", ["x", "y"]), ("b", ["z"])]
    data = load_labeled_data(write_csv(tmp_path / "t.csv", documents, ";"), multi_label=True, label_separator=";")
    assert data.multi_label and data.class_names == ["x", "y", "z"] and data.labels == [[0, 1], [2]]
    single = load_labeled_data(write_csv(tmp_path / "s.csv", documents, ";"))  # without multi-label: names as written
    assert not single.multi_label and single.class_names == ["x;y", "z"]
    empty_cell = tmp_path / "e.csv"
    empty_cell.write_text("text,label\nsome text,\nmore,x | y\n", encoding="utf-8")
    assert load_labeled_data(empty_cell, multi_label=True).labels == [[], [0, 1]]


def test_forced_multi_label_reads_single_json_labels_as_lists_of_one(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [("a", "x"), ("b", ["x", "y"])])
    assert load_labeled_data(path, multi_label=True).labels == [[0], [0, 1]]


@pytest.mark.parametrize(
    "documents, options, expected",
    [
        ([("a", ["x"]), ("b", "y")], {}, ["t.jsonl:2", "a single label ('y') among list labels (line 1", "--multi-label"]),
        ([("a", ["x", "x"])], {}, ["t.jsonl:1", "label 'x' appears twice", "list each label once"]),
        ([("a", ["x"]), ("b", ["w"])], {"class_names": ["x", "y"]}, ["t.jsonl:2", "label 'w' is not one of the 2 known"]),
        ([("a", [])], {}, ["t.jsonl:1", "every example has an empty label list"]),
        ([("a", "x"), ("b", [])], {"multi_label": False}, ["t.jsonl:2", "is a list of labels", "single-label"]),
        ([("a", ["x", None])], {}, ["t.jsonl:1", "item 2 of the list in field 'label'", "not null"]),
    ],
)
def test_list_label_mistakes_are_data_errors_with_file_and_line(tmp_path: Path, documents, options, expected) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", documents)
    with pytest.raises(DataError) as raised:
        load_labeled_data(path, **options)
    message = str(raised.value)
    assert "\n" not in message
    for piece in expected:
        assert piece in message, message


def test_csv_empty_label_between_separators_and_dbpedia_layout_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text,label\nfine,x|y\nbad,x||y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.csv:3: empty label in 'x\|\|y'"):
        load_labeled_data(path, multi_label=True)
    dbpedia = tmp_path / "d.csv"
    dbpedia.write_text("1,Title,text\n2,Title,text\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="DBpedia layout"):
        load_labeled_data(dbpedia, multi_label=True)


def test_label_separator_without_multi_label_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", [("a", ["x"])])
    with pytest.raises(ConfigError, match="--label-separator ';' applies to multi-label CSV data only; add --multi-label"):
        TrainConfig(train=str(path), label_separator=";").validate()


def test_mixed_labels_through_the_cli_are_one_line_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [("company shares", ["Company"]), ("album songs", "Artist")])
    completed = run_cli(
        "train", "--train", str(path), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out"),
        "--max-steps", "1",
    )
    assert_one_line_error(completed, f"{path}:2:", "among list labels", "--multi-label")


def test_split_of_multi_label_data_is_stratified_by_first_label(tmp_path: Path) -> None:
    data = load_labeled_data(write_jsonl(tmp_path / "t.jsonl", make_documents(90, seed=1)))
    train, val = stratified_split(data, 0.2, seed=3)
    assert train.multi_label and val.multi_label and len(val) == 18 and len(train) == 72
    firsts = [labels[0] for labels in val.labels]
    assert set(firsts) == set(range(len(CLASS_NAMES)))  # every leading label in validation


# -------------------------------------------------------------------------------- thresholds, metrics
def test_thresholds_maximise_each_labels_f1_and_default_without_positives() -> None:
    probabilities = np.array([[0.9, 0.30, 0.2], [0.8, 0.25, 0.1], [0.1, 0.20, 0.3], [0.2, 0.05, 0.4]])
    targets = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    thresholds = tune_thresholds(threshold_counts(probabilities, targets))
    assert thresholds[0] == 0.5  # 0.25 .. 0.8 all separate label 0 perfectly: the tie goes to the one nearest 0.5
    assert thresholds[1] == 0.25  # only 0.25 (between 0.20 and 0.25) separates label 1
    assert thresholds[2] == 0.5  # no positive example: nothing to tune on
    assert set(thresholds) <= set(THRESHOLD_GRID)


def test_multilabel_metrics_micro_macro_and_subset_accuracy() -> None:
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0]])
    predicted = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 0]])
    metrics = multilabel_metrics(targets, predicted, ["a", "b", "c"])
    assert metrics["subset_accuracy"] == metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # tp 3, fp 1, fn 1
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert metrics["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def multilabel_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("multilabel-data")
    write_jsonl(directory / "train.jsonl", make_documents(120, seed=1))
    write_jsonl(directory / "val.jsonl", make_documents(40, seed=2))
    write_csv(directory / "test.csv", make_documents(30, seed=3))
    return directory


@pytest.fixture(scope="module")
def trained(multilabel_data: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import contextlib
    import io

    output = tmp_path_factory.mktemp("multilabel-model") / "model"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main([
            "train", "--train", str(multilabel_data / "train.jsonl"), "--val", str(multilabel_data / "val.jsonl"),
            "--model", str(tiny_model_dir), "--output-dir", str(output), "--epochs", "4", "--batch-size", "8",
            "--learning-rate", "3e-3", "--log-every-steps", "5", "--class-weights", "balanced",
        ])
    assert status == 0
    return output, printed.getvalue()


def test_training_detects_list_labels_and_saves_problem_type_and_thresholds(trained: tuple[Path, str]) -> None:
    output, printed = trained
    assert "multi-label classification (detected: the labels in" in printed
    assert "done: " in printed and "subset accuracy" in printed
    assert "positive weights per label (balanced)" in printed
    config = json.loads((output / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert set(config["label_thresholds"]) == set(CLASS_NAMES)
    assert all(threshold in THRESHOLD_GRID for threshold in config["label_thresholds"].values())
    metrics = json.loads((output / "metrics.json").read_text())
    assert {"micro_f1", "macro_f1", "subset_accuracy", "per_class", "label_thresholds"} <= set(metrics)
    assert metrics["label_thresholds"] == config["label_thresholds"]
    assert metrics["micro_f1"] > 0.6, metrics  # the vocabularies separate the labels

    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(output)
    assert plain.config.problem_type == "multi_label_classification"
    assert plain.config.label_thresholds == config["label_thresholds"]

    from transformers import pipeline

    from bert_classify.inference.predictor import Classifier

    text = "species genus habitat album songs"
    scores = {item["label"]: item["score"] for item in pipeline("text-classification", model=str(output), top_k=None)([text])[0]}
    classifier = Classifier.from_pretrained(output, precision="fp32")
    ours = dict(zip(classifier.class_names, classifier.predict_proba([text])[0].tolist()))
    assert scores == pytest.approx(ours, abs=1e-5)  # sigmoid per label in plain transformers too
    assert sum(scores.values()) != pytest.approx(1.0, abs=1e-3)


def test_evaluate_reports_multi_label_metrics_on_a_csv(
    trained: tuple[Path, str], multilabel_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, _ = trained
    status = main(["evaluate", "--model", str(output), "--data", str(multilabel_data / "test.csv"), "--output-dir", str(tmp_path)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "micro_f1: " in printed and "subset_accuracy: " in printed and "(at threshold 0.5: " in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["multi_label"] and metrics["num_examples"] == 30 and metrics["micro_f1"] > 0.6
    assert set(metrics["at_threshold_0.5"]) == {"micro_f1", "macro_f1", "subset_accuracy"}
    report = (tmp_path / "report.txt").read_text()
    assert "subset accuracy" in report and "threshold" in report and all(name in report for name in CLASS_NAMES)
    assert (tmp_path / "per_label_f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "confusion_matrix.png").exists()


def test_predict_returns_every_label_at_or_above_its_saved_threshold(
    trained: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, _ = trained
    model = tmp_path / "model"
    shutil.copytree(output, model)
    config = json.loads((model / "config.json").read_text())
    config["label_thresholds"] = {"Company": 0.0, "Artist": 1.0, "Animal": 0.5}  # always, never, at 0.5
    (model / "config.json").write_text(json.dumps(config))
    texts = tmp_path / "texts.txt"
    texts.write_text("species genus habitat mammal\nalbum songs singer gallery\n", encoding="utf-8")
    assert main(["predict", "--model", str(model), "--input", str(texts), "--top-k", "3"]) == 0
    predictions = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    from bert_classify.inference.predictor import Classifier

    classifier = Classifier.from_pretrained(model)
    names = classifier.class_names  # sorted: Animal, Artist, Company
    probabilities = classifier.predict_proba(texts.read_text().splitlines())
    for prediction, row in zip(predictions, probabilities):
        assert set(prediction) == {"labels", "scores", "top_k"}
        expected = {"Company"} | ({"Animal"} if row[names.index("Animal")] >= 0.5 else set())
        assert set(prediction["labels"]) == expected
        assert prediction["scores"] == {name: pytest.approx(float(row[names.index(name)])) for name in expected}
        assert [item["label"] for item in prediction["top_k"]] == [names[i] for i in np.argsort(-row)]
        assert list(prediction["scores"].values()) == sorted(prediction["scores"].values(), reverse=True)
    assert "Animal" in predictions[0]["labels"]  # the animal text


def test_single_label_model_refuses_list_labels_in_evaluate(
    multilabel_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    completed = run_cli(
        "evaluate", "--model", str(tiny_model_dir), "--data", str(multilabel_data / "val.jsonl"), "--output-dir", str(tmp_path)
    )
    assert completed.returncode == 2 and "val.jsonl:1: field 'label' is a list of labels" in completed.stderr


def test_handler_answers_with_the_multi_label_shape(trained: tuple[Path, str]) -> None:
    from bert_classify.inference import handler

    model = handler.model_fn(str(trained[0]))
    request = handler.input_fn(json.dumps({"inputs": ["company shares market", "album songs"]}), "application/json")
    body, content_type = handler.output_fn(handler.predict_fn(request, model), "application/jsonlines")
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert content_type == "application/jsonlines" and len(lines) == 2
    assert all(set(line) == {"labels", "scores"} and set(line["scores"]) == set(line["labels"]) for line in lines)
    assert lines == model.predict(["company shares market", "album songs"])


def test_server_answers_with_the_multi_label_shape(trained: tuple[Path, str], tmp_path: Path) -> None:
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    import httpx

    from bert_classify.inference.predictor import Classifier
    from test_server import ServerProcess

    texts = ["company shares market", "species genus habitat", "album songs gallery"]
    expected = Classifier.from_pretrained(trained[0], precision="fp32").predict(texts, top_k=2)
    server = ServerProcess(trained[0], tmp_path / "server.log", "--precision", "fp32")
    try:
        response = httpx.post(
            server.url + "/invocations", json={"inputs": texts, "parameters": {"top_k": 2}}, timeout=60
        )
    finally:
        assert server.stop() == 0, server.log()
    assert response.status_code == 200, response.text
    answers = response.json()
    assert [answer["labels"] for answer in answers] == [item["labels"] for item in expected]
    assert all(set(answer) == {"labels", "scores", "top_k"} and len(answer["top_k"]) == 2 for answer in answers)


# ---------------------------------------------------------------------------------------- token cache
def test_token_cache_is_keyed_by_multi_label_mode(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The same CSV read single-label ('x|y' a class of its own) and multi-label (x and y) gets two entries."""
    data = write_csv(tmp_path / "train.csv", [(text, labels) for text, labels in make_documents(40, seed=5)])
    cache = tmp_path / "cache"
    common = [
        "train", "--train", str(data), "--model", str(tiny_model_dir), "--max-steps", "1", "--batch-size", "8",
        "--cache-dir", str(cache), "--val-fraction", "0.2",
    ]
    assert main([*common, "--output-dir", str(tmp_path / "single")]) == 0
    assert main([*common, "--output-dir", str(tmp_path / "multi"), "--multi-label"]) == 0
    metas = [json.loads(path.read_text()) for path in sorted(cache.glob("*/meta.json"))]
    assert len(metas) == 2
    multi = next(meta for meta in metas if meta.get("multi_label"))
    single = next(meta for meta in metas if "multi_label" not in meta)  # the single-label layout is unchanged
    assert multi["class_names"] == sorted(CLASS_NAMES)
    assert any("|" in name for name in single["class_names"])
    assert multi["arrays"]["train.labels"]["dtype"] == "|u1"
    assert multi["arrays"]["train.labels"]["count"] == 3 * (multi["arrays"]["train.offsets"]["count"] - 1)
    # the second run of the multi-label command maps its entry (verified) instead of rebuilding
    assert main([*common, "--output-dir", str(tmp_path / "multi"), "--multi-label"]) == 0
    assert len(list(cache.glob("*/meta.json"))) == 2


def test_plugin_readers_may_yield_label_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "multi_reader_plugin.py").write_text(
        "class Reader:\n"
        "    class_names = ['x', 'y', 'z']\n"
        "    def __init__(self, path):\n"
        "        self.path = path\n"
        "    def records(self):\n"
        "        yield 'first', ['x', 2]\n"
        "        yield 'second', []\n"
        "        yield 'third', 'y' if self.path == 'mixed' else ['y']\n",
        encoding="utf-8",
    )
    data = load_labeled_data("data", reader="multi_reader_plugin:Reader")
    assert data.multi_label and data.labels == [[0, 2], [], [1]]
    with pytest.raises(DataError, match=r"record 3: a single label among list labels \(record 1 yields a list\)"):
        load_labeled_data("mixed", reader="multi_reader_plugin:Reader")
    assert load_labeled_data("mixed", reader="multi_reader_plugin:Reader", multi_label=True).labels == [[0, 2], [], [1]]
    with pytest.raises(DataError, match="record 1: a list of labels, but the labels are read as single-label"):
        load_labeled_data("data", reader="multi_reader_plugin:Reader", multi_label=False)


def test_the_fresh_head_starts_at_the_label_prior(tiny_model_dir: Path) -> None:
    import torch

    from bert_classify.modeling import load_for_training, set_output_bias_to_label_prior

    model = load_for_training(str(tiny_model_dir), ["a", "b", "c"], multi_label=True)
    assert model.config.problem_type == "multi_label_classification"
    assert set_output_bias_to_label_prior(model, [0.5, 0.1, 0.0])
    expected = torch.tensor([0.0, np.log(0.1 / 0.9), np.log(1e-4 / (1 - 1e-4))], dtype=torch.float32)
    assert torch.allclose(model.classifier.bias, expected, atol=1e-5)


def _multilabel_config(data: Path, model: Path, run: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = dict(
        train=str(data / "train.jsonl"), val=str(data / "val.jsonl"), model=str(model), output_dir=str(run / "model"),
        epochs=2, batch_size=8, learning_rate=3e-3, warmup_ratio=0.0, eval_every_steps=4, log_every_steps=4,
        precision="fp32", checkpoint_every_minutes=None,
    )
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def test_sigterm_then_resume_gives_the_uninterrupted_weights_and_thresholds(
    multilabel_data: Path, tiny_model_no_dropout_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from bert_classify.training.faults import FaultPlan
    from bert_classify.training.loop import train

    reference = train(_multilabel_config(multilabel_data, tiny_model_no_dropout_dir, tmp_path / "reference"))
    run = tmp_path / "resumed"
    config = _multilabel_config(multilabel_data, tiny_model_no_dropout_dir, run, checkpoint_dir=str(run / "checkpoints"))
    stopped = train(config, faults=FaultPlan(sigterm_at_step=10))  # after the evaluations at steps 4 and 8
    assert stopped.interrupted_by is not None and stopped.global_step == 10
    resumed = train(config)
    assert resumed.resumed_from_step == 10 and resumed.global_step == reference.global_step
    expected, actual = load_file(tmp_path / "reference/model/model.safetensors"), load_file(run / "model/model.safetensors")
    for key in expected:
        assert np.allclose(actual[key].numpy(), expected[key].numpy(), atol=1e-6), key
    saved = [json.loads((directory / "model/config.json").read_text())["label_thresholds"] for directory in (tmp_path / "reference", run)]
    assert saved[0] == saved[1]
    assert resumed.metrics is not None and reference.metrics is not None
    assert resumed.metrics["micro_f1"] == pytest.approx(reference.metrics["micro_f1"])


@pytest.mark.slow
def test_two_processes_equal_one_process_with_accumulation(
    multilabel_data: Path, tiny_model_no_dropout_dir: Path, tmp_path: Path
) -> None:
    """The multi-label loss is normalised by the step's examples and the validation counts are summed over ranks."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    def run(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        config = _multilabel_config(multilabel_data, tiny_model_no_dropout_dir, tmp_path / name, epochs=1)
        args = [
            "train", "--train", str(config.train), "--val", str(config.val), "--model", str(config.model),
            "--output-dir", str(config.output_dir), "--epochs", "1", "--learning-rate", "3e-3", "--warmup-ratio", "0",
            "--precision", "fp32", "--batch-size", "4", *extra,
        ]
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-m", "bert_classify", *args], capture_output=True, text=True, timeout=300, env=environment)

    single = run("single", "--grad-accum-steps", "2")
    assert single.returncode == 0, single.stderr
    double = run("double", "--nproc", "2")
    assert double.returncode == 0, double.stderr
    assert "world size 2" in double.stdout
    expected, actual = load_file(tmp_path / "single/model/model.safetensors"), load_file(tmp_path / "double/model/model.safetensors")
    for key in expected:
        assert np.allclose(actual[key].numpy(), expected[key].numpy(), rtol=1e-4, atol=1e-5), key
    metrics = [json.loads((tmp_path / name / "model/metrics.json").read_text()) for name in ("single", "double")]
    assert metrics[0]["num_examples"] == metrics[1]["num_examples"] == 40
    assert metrics[0]["label_thresholds"] == metrics[1]["label_thresholds"]
    assert metrics[0]["micro_f1"] == pytest.approx(metrics[1]["micro_f1"])


def test_balanced_class_weights_are_a_pos_weight_per_label() -> None:
    from bert_classify.training.class_balance import multilabel_pos_weights

    weights = multilabel_pos_weights(np.array([10, 50, 0, 100]), examples=100)
    assert weights.tolist() == [9.0, 1.0, 1.0, 0.0]  # negatives / positives; 1 without positives


def test_multi_label_with_chunked_long_texts_is_refused_in_one_line(tmp_path: Path) -> None:
    from bert_classify.config import TrainConfig
    from bert_classify.errors import ConfigError

    with pytest.raises(ConfigError, match="--long-texts chunk does not support multi-label data yet"):
        TrainConfig(train=str(tmp_path / "t.jsonl"), multi_label=True, long_texts="chunk").validate()


def test_the_onnx_runtime_applies_sigmoid_and_the_saved_thresholds(trained: tuple[Path, str], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import shutil

    from bert_classify.cli import main as cli_main
    from bert_classify.inference.predictor import Classifier

    model = shutil.copytree(trained[0], tmp_path / "model")
    assert cli_main(["export-onnx", "--model", str(model)]) == 0
    texts = [text for text, _ in make_documents(12, 5)]
    with_torch = Classifier.from_pretrained(model, precision="fp32").predict(texts)
    with_onnx = Classifier.from_pretrained(model, runtime="onnx").predict(texts)
    assert [item["labels"] for item in with_onnx] == [item["labels"] for item in with_torch]
    for onnx_item, torch_item in zip(with_onnx, with_torch):
        assert onnx_item["scores"] == pytest.approx(torch_item["scores"], abs=1e-4)
