"""Classifier: loading, length-sorted batching restored to input order, top-k, errors, CLI predict."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bert_classify.cli import main
from bert_classify.errors import BertClassifyError
from bert_classify.inference.predictor import Classifier
from conftest import CLASS_NAMES, make_rows


def fit_head(source: Path, target: Path) -> Path:
    """The tiny random BERT with its head fitted on the test vocabulary (encoder frozen, a second of CPU).

    A random head predicts one class for every text; a fitted one tells texts apart, so that a test
    can notice a prediction landing on the wrong text.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    rows = make_rows(150, seed=11)
    labels = torch.tensor([label - 1 for label, _, _ in rows])
    with torch.no_grad():
        encoded = tokenizer([content for _, _, content in rows], padding=True, return_tensors="pt")
        features = model.bert(**encoded).pooler_output
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model.classifier(features), labels).backward()
        optimizer.step()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def fitted_model_dir(tiny_model_no_dropout_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_head(tiny_model_no_dropout_dir, tmp_path_factory.mktemp("fitted-bert"))


@pytest.fixture(scope="module")
def classifier(fitted_model_dir: Path) -> Classifier:
    # fp32 forced: these tests compare with plain transformers to 1e-5; "auto" may pick bf16 here.
    return Classifier.from_pretrained(fitted_model_dir, precision="fp32")


TEXTS = [content for _, _, content in make_rows(23, seed=7)] + ["x", "company " * 60]


def test_class_names_come_from_the_config(classifier: Classifier) -> None:
    assert classifier.class_names == CLASS_NAMES
    assert classifier.device == "cpu"


def test_predict_proba_matches_plain_transformers_in_input_order(classifier: Classifier, fitted_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(fitted_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(fitted_model_dir)
    expected = []
    for text in TEXTS:  # one at a time: no padding at all
        with torch.no_grad():
            logits = model(**tokenizer([text], return_tensors="pt", truncation=True, max_length=128)).logits
        expected.append(torch.softmax(logits, dim=-1)[0].numpy())
    probabilities = classifier.predict_proba(TEXTS, batch_size=4)  # sorted, padded batches
    assert probabilities.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(probabilities, np.stack(expected), atol=1e-5)
    assert len({int(row.argmax()) for row in probabilities}) > 1, "the test model must tell texts apart"


def test_bert_classifiers_run_the_last_layer_for_the_first_token_only(
    classifier: Classifier, fitted_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from bert_classify.inference.first_token import FirstTokenHead

    head = classifier.backend.first_token_head  # the test above compared its output with plain transformers
    assert head is not None
    calls: list[tuple[int, ...]] = []
    handle = head.last.intermediate.register_forward_hook(lambda module, args, output: calls.append(tuple(output.shape)))
    try:
        classifier.predict_proba(TEXTS[:4], batch_size=4)
    finally:
        handle.remove()
    assert len(calls) == 1 and calls[0][:2] == (4, 1)  # one token per text through the last feed-forward block
    # A head that disagrees with the full forward pass on the probe is not used.
    monkeypatch.setattr(FirstTokenHead, "_last_layer_first_token", lambda self, hidden, mask: hidden[:, :1] * 0)
    assert FirstTokenHead.build(head.model) is None
    # Only BERT classifiers in eval mode qualify.
    assert FirstTokenHead.build(torch.nn.Linear(2, 2)) is None
    head.model.train()
    try:
        assert FirstTokenHead.build(head.model) is None
    finally:
        head.model.eval()


def test_batch_size_does_not_change_results(classifier: Classifier) -> None:
    np.testing.assert_allclose(
        classifier.predict_proba(TEXTS, batch_size=1), classifier.predict_proba(TEXTS, batch_size=64), atol=1e-5
    )


def test_predict_shape_and_top_k(classifier: Classifier) -> None:
    single = classifier.predict(TEXTS[:3])
    assert [set(item) for item in single] == [{"label", "score"}] * 3
    ranked = classifier.predict(TEXTS[:3], top_k=5)  # more than the classes: all three, best first
    for plain, item in zip(single, ranked):
        assert item["label"] == plain["label"] and item["score"] == pytest.approx(plain["score"])
        assert [entry["label"] for entry in item["top_k"]][0] == item["label"]
        assert sorted(entry["label"] for entry in item["top_k"]) == sorted(CLASS_NAMES)
        scores = [entry["score"] for entry in item["top_k"]]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_empty_list_gives_no_predictions(classifier: Classifier) -> None:
    assert classifier.predict([]) == []
    assert classifier.predict_proba([]).shape == (0, 3)


@pytest.mark.parametrize(
    "texts, kwargs, message",
    [
        ("one string", {}, "not a single string"),
        (["ok", 3], {}, "texts[1] is a int"),
        (["ok"], {"top_k": 0}, "--top-k 0"),
        (["ok"], {"batch_size": 0}, "--batch-size 0"),
    ],
)
def test_bad_arguments_raise_user_errors(classifier: Classifier, texts, kwargs, message) -> None:
    with pytest.raises(BertClassifyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        classifier.predict(texts, **kwargs)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_hardware_has_it(
    classifier: Classifier, fitted_model_dir: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr("bert_classify.precision.native_bf16", lambda device: native)
    auto = Classifier.from_pretrained(fitted_model_dir, precision="auto")
    assert auto.precision == ("bf16" if native else "fp32")
    difference = np.abs(auto.predict_proba(TEXTS) - classifier.predict_proba(TEXTS)).max()
    if native:  # autocast really ran in bf16 (not fp32 again), and stays close to fp32
        assert 1e-6 < difference < 0.03
    else:
        assert difference < 1e-6


def test_forced_bf16_stays_close_to_fp32(classifier: Classifier, fitted_model_dir: Path) -> None:
    bf16 = Classifier.from_pretrained(fitted_model_dir, precision="bf16")
    assert bf16.precision == "bf16"
    difference = np.abs(bf16.predict_proba(TEXTS, batch_size=4) - classifier.predict_proba(TEXTS, batch_size=4)).max()
    assert 1e-6 < difference < 0.03  # label agreement on real text: docs/benchmarks.md


def test_native_bf16_is_false_off_cpu_and_cuda() -> None:
    from bert_classify.precision import native_bf16, resolve_precision

    assert native_bf16("mps") is False
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(BertClassifyError, match="no config.json"):
        Classifier.from_pretrained(tmp_path)
    with pytest.raises(BertClassifyError, match="--runtime"):
        Classifier.from_pretrained(tmp_path, runtime="tensorrt")
    with pytest.raises(BertClassifyError, match="--precision: 'fp16' is not one of auto, fp32, bf16"):
        Classifier.from_pretrained(tmp_path, precision="fp16")
    with pytest.raises(BertClassifyError, match="--precision bf16 applies to --runtime torch"):
        Classifier.from_pretrained(tmp_path, runtime="onnx", precision="bf16")


def test_loads_from_a_model_archive(classifier: Classifier, fitted_model_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in fitted_model_dir.iterdir():
            tar.add(path, arcname=path.name)
    from_archive = Classifier.from_pretrained(archive, precision="fp32")
    np.testing.assert_allclose(from_archive.predict_proba(TEXTS), classifier.predict_proba(TEXTS), atol=1e-6)


def test_predict_command_writes_one_line_per_text_in_order(
    classifier: Classifier, fitted_model_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS[:10]) + "\n", encoding="utf-8")
    output = tmp_path / "out" / "predictions.jsonl"
    code = main(["predict", "--model", str(fitted_model_dir), "--input", str(source), "--output", str(output),
                 "--top-k", "2", "--batch-size", "3", "--precision", "fp32"])
    assert code == 0
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [line["label"] for line in lines] == [item["label"] for item in classifier.predict(TEXTS[:10])]
    assert all(len(line["top_k"]) == 2 for line in lines)


def test_predict_command_reads_jsonl_from_stdin(
    classifier: Classifier, fitted_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import io

    records = "".join(json.dumps({"body": text}) + "\n" for text in TEXTS[:5])
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(records.encode("utf-8")), encoding="utf-8"))
    code = main(["predict", "--model", str(fitted_model_dir), "--input", "-", "--data-format", "jsonl",
                 "--text-column", "body", "--precision", "fp32"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["label"] for line in lines] == [item["label"] for item in classifier.predict(TEXTS[:5])]


def test_predict_command_user_mistakes_exit_2(fitted_model_dir: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "texts.txt"
    source.write_text("hello\n", encoding="utf-8")
    assert main(["predict", "--model", str(tmp_path / "missing"), "--input", str(source)]) == 2
    assert "error: --model" in capsys.readouterr().err
    assert main(["predict", "--model", str(fitted_model_dir), "--input", str(source), "--top-k", "0"]) == 2
    assert "--top-k 0" in capsys.readouterr().err
    assert main(["predict", "--model", str(fitted_model_dir), "--input", str(source), "--runtime", "onnx",
                 "--onnx-file", "nowhere.onnx"]) == 2
    assert "export-onnx" in capsys.readouterr().err
