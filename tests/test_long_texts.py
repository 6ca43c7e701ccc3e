"""Long documents (`--long-texts chunk`): windows that cover a text with the overlap, the token cache keyed by
mode and stride, the aggregation rules, option errors, and chunk training → evaluate → predict → serve →
SageMaker handler following the mode saved with the model."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bert_classify.cli import main
from bert_classify.config import TrainConfig
from bert_classify.data import load_labeled_data
from bert_classify.data import token_cache as tc
from bert_classify.errors import ConfigError
from bert_classify.inference.predictor import Classifier
from bert_classify.inference.windows import (
    DEFAULT_AGGREGATION,
    Windowing,
    Windows,
    aggregate_windows,
    default_chunk_stride,
    special_tokens_around,
)
from conftest import CLASS_NAMES, make_rows, write_dbpedia_csv
from test_token_cache import _Reader  # counts reads made in the cache's builder process too
from test_user_errors import assert_one_line_error, run_in_process, train_args

# Class-neutral words of the tiny vocabulary: the class words come after ~40 tokens of them, so a window
# of 16 tokens that truncation keeps sees none of the document's class.
BOILERPLATE = "the a of is " * 10
MAX_SEQ_LEN = 16


def long_rows(count: int, seed: int) -> list[tuple[int, str, str]]:
    return [(label, title, BOILERPLATE + content) for label, title, content in make_rows(count, seed=seed)]


@pytest.fixture(scope="module")
def long_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("long-data")
    write_dbpedia_csv(directory / "train.csv", long_rows(48, seed=41))
    write_dbpedia_csv(directory / "val.csv", long_rows(12, seed=42))
    (directory / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    return directory


def _tokenizer(model_dir: Path) -> Any:
    from bert_classify.modeling import load_tokenizer

    return load_tokenizer(str(model_dir))


# --------------------------------------------------------------------------------------------- windows
@pytest.mark.parametrize("max_length, stride", [(16, 4), (16, 0), (12, 5), (5, 1)])
def test_windows_cover_the_text_with_the_overlap_like_the_tokenizers_own(
    tiny_model_dir: Path, max_length: int, stride: int
) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    text = BOILERPLATE + "species genus habitat mammal " * 5
    content = tokenizer(text, add_special_tokens=False)["input_ids"]
    windowing = Windowing.for_tokenizer(tokenizer, max_length, stride)
    windows = windowing.split(content)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert len(windows) == windowing.count(len(content)) > 2
    assert all(len(window) <= max_length and window[0] == cls and window[-1] == sep for window in windows)
    inner = [window[1:-1] for window in windows]
    for before, after in zip(inner, inner[1:]):
        assert len(before) == max_length - 2 and before[len(before) - stride :] == after[:stride] if stride else True
    rebuilt = inner[0] + [token for piece in inner[1:] for token in piece[stride:]]
    assert rebuilt == content  # every token, in order, nothing lost or repeated beyond the overlap
    # the same windows as the fast tokenizer's return_overflowing_tokens with the same stride
    overflowing = tokenizer(text, truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True)
    assert windows == overflowing["input_ids"]


def test_a_short_text_is_one_window_equal_to_truncation_and_the_cap_keeps_the_first_windows(tiny_model_dir: Path) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    short = "species genus"
    windowing = Windowing.for_tokenizer(tokenizer, MAX_SEQ_LEN)
    assert windowing.stride == default_chunk_stride(MAX_SEQ_LEN) == 4
    assert windowing.split(tokenizer(short, add_special_tokens=False)["input_ids"]) == [tokenizer(short)["input_ids"]]
    assert windowing.split([]) == [tokenizer("")["input_ids"]]  # an empty text still gets its one window
    content = tokenizer(BOILERPLATE * 3, add_special_tokens=False)["input_ids"]
    capped = Windowing.for_tokenizer(tokenizer, MAX_SEQ_LEN, max_windows=2).split(content)
    assert capped == windowing.split(content)[:2]


def test_special_tokens_are_found_for_any_tokenizer_that_wraps_a_text() -> None:
    class RobertaLike:  # a slow tokenizer's interface, <s> text </s> </s>
        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            ids = [ord(character) for character in text]
            return {"input_ids": [0, *ids, 2, 2] if add_special_tokens else ids}

    assert special_tokens_around(RobertaLike()) == ([0], [2, 2])
    windowing = Windowing.for_tokenizer(RobertaLike(), 7, 1)
    assert windowing.split([10, 11, 12, 13, 14]) == [[0, 10, 11, 12, 13, 2, 2], [0, 13, 14, 2, 2]]


# ----------------------------------------------------------------------------------------- aggregation
def _softmax(row: list[float]) -> np.ndarray:
    exponentials = np.exp(np.asarray(row) - max(row))
    return exponentials / exponentials.sum()


def test_aggregation_rules_combine_each_documents_windows() -> None:
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    documents = [0, 0, 1]
    mean = aggregate_windows(logits, documents, 2, "mean_logits")
    np.testing.assert_allclose(mean[0], _softmax([1.0, 0.0, 1.5]), rtol=1e-6)
    np.testing.assert_allclose(mean[1], _softmax([0.0, 1.0, 0.0]), rtol=1e-6)
    np.testing.assert_allclose(aggregate_windows(logits, documents, 2, "max_logits")[0], _softmax([2.0, 0.0, 3.0]), rtol=1e-6)
    best = np.maximum(_softmax([2.0, 0.0, 0.0]), _softmax([0.0, 0.0, 3.0]))
    np.testing.assert_allclose(aggregate_windows(logits, documents, 2, "max_probability")[0], best / best.sum(), rtol=1e-6)
    # a one-window document is that window's softmax whatever the rule
    for method in ("mean_logits", "max_logits", "max_probability"):
        np.testing.assert_allclose(aggregate_windows(logits, documents, 2, method)[1], _softmax([0.0, 1.0, 0.0]), rtol=1e-6)
    multi = aggregate_windows(logits, documents, 2, "max_probability", multi_label=True)
    np.testing.assert_allclose(multi[0], 1 / (1 + np.exp(-np.array([2.0, 0.0, 3.0]))), rtol=1e-6)
    with pytest.raises(ConfigError, match="--chunk-aggregation 'median'"):
        aggregate_windows(logits, documents, 2, "median")
    with pytest.raises(ValueError, match="at least one window"):
        aggregate_windows(logits, documents, 3, "mean_logits")


# ------------------------------------------------------------------------------------- option errors
@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--chunk-stride", "4"], "--chunk-stride applies to --long-texts chunk"),
        (["--long-texts", "chunk", "--chunk-stride", "9", "--max-seq-len", "16"], "--chunk-stride"),
        (["--long-texts", "chunk", "--chunk-stride", "-1"], "--chunk-stride"),
        (["--long-texts", "chunk", "--max-seq-len", "4", "--chunk-stride", "2"], "--chunk-stride 2"),
    ],
)
def test_bad_long_text_options_are_one_line_errors(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    completed = run_in_process(*train_args(tiny_data_dir, tiny_model_dir, tmp_path / "out", *extra), capsys=capsys)
    assert_one_line_error(completed, expected)
    assert not (tmp_path / "out" / "config.json").exists()


def test_unknown_modes_are_refused_naming_the_flag(tiny_data_dir: Path) -> None:
    base = dict(train=str(tiny_data_dir / "train.csv"))
    with pytest.raises(ConfigError, match="^--long-texts must be one of truncate, chunk, not 'split'"):
        TrainConfig(**base, long_texts="split").validate()
    with pytest.raises(ConfigError, match="^--chunk-aggregation must be one of"):
        TrainConfig(**base, long_texts="chunk", chunk_aggregation="median").validate()


# ---------------------------------------------------------------------------------------- token cache
def _build(data: Path, tokenizer: Any, root: Path, windowing: Windowing | None) -> tuple[tc.TokenData, _Reader]:
    reader = _Reader(data)
    inputs = {"train": tc.file_digest(data / "train.csv"), "val": tc.file_digest(data / "val.csv")}
    tokens = tc.load_or_build(
        reader, tokenizer, MAX_SEQ_LEN, cache_root=root, key_inputs=inputs, log=lambda _: None, windowing=windowing
    )
    return tokens, reader


def test_the_cache_stores_windows_with_their_documents_keyed_by_mode_and_stride(
    long_data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    root = tmp_path / "cache"
    windowing = Windowing.for_tokenizer(tokenizer, MAX_SEQ_LEN, 4)
    tokens, reader = _build(long_data_dir, tokenizer, root, windowing)
    train = load_labeled_data(long_data_dir / "train.csv", class_names=CLASS_NAMES)
    expected_windows, expected_documents = [], []
    for number, content in enumerate(tokenizer(train.texts, add_special_tokens=False)["input_ids"]):
        expected_windows += windowing.split(content)
        expected_documents += [number] * windowing.count(len(content))
    assert tokens.built and reader.calls == 1
    assert [tokens.train[i].tolist() for i in range(len(tokens.train))] == expected_windows
    assert tokens.train.documents.dtype == np.int64 and tokens.train.documents.tolist() == expected_documents
    assert tokens.train.num_documents == len(train) == 48 and len(tokens.train) > 2 * 48
    assert tokens.train.labels.tolist() == [train.labels[d] for d in expected_documents]
    assert tokens.digests["train"] == tc.data_digest(train.texts, train.labels)  # the documents' digest, as before
    # mapped again: the same entry, without reading the data
    again, reader = _build(long_data_dir, tokenizer, root, windowing)
    assert not again.built and reader.calls == 0 and again.path == tokens.path
    # truncation and another stride are other entries; truncation keeps its old layout (no documents array)
    truncated, _ = _build(long_data_dir, tokenizer, root, None)
    other_stride, _ = _build(long_data_dir, tokenizer, root, Windowing.for_tokenizer(tokenizer, MAX_SEQ_LEN, 2))
    assert len({tokens.path, truncated.path, other_stride.path}) == 3
    assert truncated.train.documents is None and len(truncated.train) == 48
    assert not any("documents" in path.name for path in truncated.path.iterdir())
    assert len(other_stride.train) < len(tokens.train)  # less overlap, fewer windows
    # a damaged document index is noticed and the entry rebuilt
    documents_file = tokens.path / "train.documents.bin"
    documents_file.write_bytes(b"\x00" * documents_file.stat().st_size)
    rebuilt, reader = _build(long_data_dir, tokenizer, root, windowing)
    assert rebuilt.built and reader.calls == 1 and rebuilt.train.documents.tolist() == expected_documents


def test_the_slow_tokenizer_path_cuts_the_same_windows(long_data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    fast = _tokenizer(tiny_model_dir)

    class SlowLike:  # no backend_tokenizer: the cache falls back to calling the tokenizer itself
        pad_token_id = fast.pad_token_id

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return fast(*args, **kwargs)

    texts = load_labeled_data(long_data_dir / "val.csv", class_names=CLASS_NAMES).texts
    results = []
    for name, tokenizer in (("fast", fast), ("slow", SlowLike())):
        windowing = Windowing.for_tokenizer(tokenizer, MAX_SEQ_LEN, 3)
        paths = [tmp_path / f"{name}.{part}.bin" for part in ("ids", "offsets", "documents")]
        tc.tokenize_windows_to_files(texts, tokenizer, windowing, *paths)
        results.append([path.read_bytes() for path in paths])
    assert results[0] == results[1]


# ------------------------------------------------------------------------ train → evaluate → predict
@pytest.fixture(scope="module")
def chunk_model(long_data_dir: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("chunk-model") / "model"
    status = main([
        "train", "--train", str(long_data_dir / "train.csv"), "--val", str(long_data_dir / "val.csv"),
        "--classes", str(long_data_dir / "classes.txt"), "--model", str(tiny_model_dir), "--output-dir", str(output),
        "--max-seq-len", str(MAX_SEQ_LEN), "--long-texts", "chunk", "--chunk-stride", "3", "--epochs", "1",
        "--batch-size", "8", "--learning-rate", "1e-3", "--cache-dir", str(output.parent / "cache"),
        "--precision", "fp32",  # validation and the fp32 evaluate below then compute the same numbers
    ])  # fmt: skip
    assert status == 0
    return output


def test_chunk_training_saves_its_mode_and_validates_per_document(chunk_model: Path, long_data_dir: Path) -> None:
    config = json.loads((chunk_model / "config.json").read_text())
    assert (config["long_texts"], config["chunk_stride"], config["chunk_aggregation"]) == ("chunk", 3, DEFAULT_AGGREGATION)
    assert json.loads((chunk_model / "tokenizer_config.json").read_text())["model_max_length"] == MAX_SEQ_LEN
    metrics = json.loads((chunk_model / "metrics.json").read_text())
    assert metrics["num_examples"] == 12  # validation counted documents, not their windows

    from transformers import pipeline  # the extra config.json attributes do not disturb plain transformers

    assert pipeline("text-classification", model=str(chunk_model))("species genus")[0]["label"] in CLASS_NAMES


def test_predictions_combine_the_windows_saved_mode_by_default(chunk_model: Path) -> None:
    texts = [BOILERPLATE + "species genus habitat " * 4, "company shares", BOILERPLATE * 4 + "album songs"]
    classifier = Classifier.from_pretrained(chunk_model, precision="fp32")
    assert classifier.windowing is not None and classifier.windowing.stride == 3
    encoded = classifier.encode(texts)
    assert all(isinstance(entry, Windows) for entry in encoded) and len(encoded[1]) == 1 and len(encoded[2]) > 5
    rows = [window for entry in encoded for window in entry]
    documents = [number for number, entry in enumerate(encoded) for _ in entry]
    logits = np.concatenate([classifier.logits(*classifier.pad([row])) for row in rows])
    expected = aggregate_windows(logits, documents, len(texts), DEFAULT_AGGREGATION)
    np.testing.assert_allclose(classifier.predict_proba(texts, batch_size=3), expected, rtol=1e-5, atol=1e-6)
    # the override: truncation reads the first window only
    truncating = Classifier.from_pretrained(chunk_model, precision="fp32", long_texts="truncate")
    assert truncating.windowing is None and truncating.encode(texts)[2] == encoded[2][0]
    first_window = aggregate_windows(classifier.logits(*classifier.pad([encoded[2][0]])), [0], 1, "mean_logits")
    np.testing.assert_allclose(truncating.predict_proba(texts[2:]), first_window, rtol=1e-5, atol=1e-6)


def test_evaluate_and_predict_commands_follow_the_saved_mode(
    chunk_model: Path, long_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--model", str(chunk_model), "--data", str(long_data_dir / "val.csv"),
                 "--output-dir", str(tmp_path / "eval"), "--precision", "fp32"]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_examples"] == 12
    trained = json.loads((chunk_model / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(trained["accuracy"])  # the same per-document rule as validation
    texts = load_labeled_data(long_data_dir / "val.csv", class_names=CLASS_NAMES).texts
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", "--model", str(chunk_model), "--input", str(tmp_path / "texts.txt"), "--precision", "fp32",
                 "--data-format", "text"]) == 0  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = Classifier.from_pretrained(chunk_model, precision="fp32").predict(texts)
    assert [line["label"] for line in lines] == [item["label"] for item in expected] and len(lines) == 12


def test_too_many_windows_keep_the_first_ones_with_a_warning(chunk_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    classifier = Classifier.from_pretrained(chunk_model, precision="fp32", max_windows=2)
    huge = BOILERPLATE * 50 + "species"
    with caplog.at_level(logging.WARNING):
        encoded = classifier.encode([huge])
    assert len(encoded[0]) == 2 and encoded[0].truncated_from > 100
    assert "text 1 has" in caplog.text and "--max-windows-per-text" in caplog.text
    with pytest.raises(ConfigError, match="--max-windows-per-text 0"):
        Classifier.from_pretrained(chunk_model, max_windows=0)


# ---------------------------------------------------------------------------- serve and the SageMaker handler
def test_the_server_combines_a_long_texts_windows_and_caps_them(chunk_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    from test_server import ServerProcess

    texts = [BOILERPLATE + "species genus habitat " * 4, "company shares", BOILERPLATE * 30 + "album songs"]
    expected = Classifier.from_pretrained(chunk_model, precision="fp32", max_windows=4).predict(texts, top_k=3)
    server = ServerProcess(chunk_model, tmp_path / "server.log", "--precision", "fp32", "--max-windows-per-text", "4")
    try:
        response = httpx.post(server.url + "/invocations", json={"inputs": texts, "parameters": {"top_k": 3}}, timeout=60)
        assert response.status_code == 200, response.text
        answered = response.json()
        assert [item["label"] for item in answered] == [item["label"] for item in expected]
        for got, want in zip(answered, expected):
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert server.metrics()["config"]["long_texts"] == "chunk"
        assert server.metrics()["config"]["max_windows_per_text"] == 4
    finally:
        assert server.stop() == 0, server.log()
    assert "text 3 has" in server.log() and "only its first 4 windows" in server.log()


def test_the_handler_follows_the_saved_mode(chunk_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bert_classify.inference import handler

    monkeypatch.setenv("BERT_CLASSIFY_MAX_WINDOWS", "3")
    monkeypatch.setenv("BERT_CLASSIFY_PRECISION", "fp32")
    model = handler.model_fn(str(chunk_model))
    assert model.windowing is not None and model.windowing.max_windows == 3
    texts = [BOILERPLATE * 5 + "species genus habitat", "company shares"]
    body, content_type = handler.output_fn(
        handler.predict_fn(handler.input_fn(json.dumps({"inputs": texts}), "application/json"), model), "application/json"
    )
    reference = Classifier.from_pretrained(chunk_model, precision="fp32", max_windows=3)
    assert [item["label"] for item in json.loads(body)] == [item["label"] for item in reference.predict(texts)]
    assert len(model.encode(texts)[0]) == 3


# ----------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_a_chunked_run_resumes_exactly_and_refuses_a_changed_stride(long_data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from test_resume import _run, checkpoint_events

    def command(run_dir: Path, *extra: str) -> list[str]:
        return [
            "-m", "bert_classify", "train", "--train", str(long_data_dir / "train.csv"), "--val", str(long_data_dir / "val.csv"),
            "--classes", str(long_data_dir / "classes.txt"), "--model", str(tiny_model_dir), "--output-dir", str(run_dir / "model"),
            "--checkpoint-dir", str(run_dir / "checkpoints"), "--epochs", "1", "--batch-size", "4", "--grad-accum-steps", "2",
            "--learning-rate", "2e-3", "--max-seq-len", str(MAX_SEQ_LEN), "--long-texts", "chunk", "--log-every-steps", "1",
            "--checkpoint-every-steps", "4", *extra,
        ]  # fmt: skip

    reference = _run([sys.executable, *command(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr
    interrupted = _run([sys.executable, *command(tmp_path / "resumed")], BERT_CLASSIFY_SIGTERM_AT_STEP="6")
    assert interrupted.returncode == 128 + signal.SIGTERM, interrupted.stderr
    changed = _run([sys.executable, *command(tmp_path / "resumed", "--chunk-stride", "2")])
    assert changed.returncode == 2 and "chunk_stride 4 → 2" in changed.stderr, changed.stderr
    resumed = _run([sys.executable, *command(tmp_path / "resumed")])
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint_events(resumed.stdout, "resumed")[0]["step"] == 6
    expected = load_file(tmp_path / "reference" / "model" / "model.safetensors")
    actual = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert all(torch_equal(expected[name], actual[name]) for name in expected)


def torch_equal(first: Any, second: Any) -> bool:
    import torch

    return bool(torch.equal(first, second))


def test_a_build_forked_after_parallel_tokenising_does_not_hang(long_data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The tokenizer's thread pool does not survive a fork: a builder child forked after the parent used it
    must tokenise on one thread (it deadlocked before: a second train() in one process, a test session)."""
    import subprocess

    script = f"""
import os
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from pathlib import Path
from bert_classify.data import load_labeled_data, token_cache as tc
from bert_classify.inference.windows import Windowing
from bert_classify.modeling import load_tokenizer
data = Path({str(long_data_dir)!r})
names = {CLASS_NAMES!r}
tokenizer = load_tokenizer({str(tiny_model_dir)!r})
def read():
    return (load_labeled_data(data / "train.csv", class_names=names), load_labeled_data(data / "val.csv", class_names=names))
tc.load_or_build(read, tokenizer, 16, cache_root=None, key_inputs=None, in_child=False)  # the pool runs here
tokens = tc.load_or_build(read, tokenizer, 16, cache_root=None, key_inputs=None, in_child=True,
                          windowing=Windowing.for_tokenizer(tokenizer, 16))
print("windows", len(tokens.train))
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "windows" in completed.stdout


def test_list_labels_found_in_the_data_with_chunk_are_refused_naming_the_file(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import subprocess

    data = tmp_path / "train.jsonl"
    rows = [{"text": f"row {index} about things", "label": ["a", "b"] if index % 2 else ["a"]} for index in range(12)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    completed = subprocess.run(
        [sys.executable, "-m", "bert_classify", "train", "--train", str(data), "--model", str(tiny_model_dir),
         "--output-dir", str(tmp_path / "out"), "--long-texts", "chunk", "--max-steps", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode != 0
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in completed.stderr, completed.stderr
    assert str(data) in lines[0] and "--long-texts chunk does not support multi-label data yet" in lines[0]
    assert not (tmp_path / "out" / "config.json").exists()
