"""ONNX export: parity with PyTorch on padded batches, the int8 file, the CLI, and the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from bert_classify.cli import main  # noqa: E402
from bert_classify.errors import BertClassifyError  # noqa: E402
from bert_classify.inference.predictor import Classifier  # noqa: E402
from conftest import make_rows  # noqa: E402
from test_inference_predictor import fit_head  # noqa: E402

TEXTS = [content for _, _, content in make_rows(40, seed=5)] + ["x", "species " * 100]


@pytest.fixture(scope="module")
def exported_model_dir(tiny_model_no_dropout_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = fit_head(tiny_model_no_dropout_dir, tmp_path_factory.mktemp("onnx-bert"))
    assert main(["export-onnx", "--model", str(model_dir), "--quantize"]) == 0
    return model_dir


def test_export_writes_fp32_and_int8_files(exported_model_dir: Path) -> None:
    assert (exported_model_dir / "onnx" / "model.onnx").is_file()
    assert (exported_model_dir / "onnx" / "model_int8.onnx").is_file()


def test_onnx_fp32_matches_torch_on_padded_batches(exported_model_dir: Path) -> None:
    torch_probabilities = Classifier.from_pretrained(exported_model_dir, precision="fp32").predict_proba(TEXTS, batch_size=8)
    onnx_classifier = Classifier.from_pretrained(exported_model_dir, runtime="onnx")
    assert onnx_classifier.runtime == "onnx"
    np.testing.assert_allclose(onnx_classifier.predict_proba(TEXTS, batch_size=8), torch_probabilities, atol=1e-5)
    np.testing.assert_allclose(onnx_classifier.predict_proba(TEXTS, batch_size=1), torch_probabilities, atol=1e-5)


def test_onnx_int8_stays_close_to_torch(exported_model_dir: Path) -> None:
    torch_probabilities = Classifier.from_pretrained(exported_model_dir, precision="fp32").predict_proba(TEXTS)
    int8 = Classifier.from_pretrained(exported_model_dir, runtime="onnx", onnx_file="onnx/model_int8.onnx")
    difference = np.abs(int8.predict_proba(TEXTS) - torch_probabilities).max()
    # Quantised (not the fp32 graph again), yet close. Label agreement on real text is benchmarked:
    # this random-encoder model's classes are too close together for argmax to be a fair test.
    assert 1e-6 < difference < 0.05


def test_predict_command_with_onnx_runtime(exported_model_dir: Path, tmp_path: Path, capsys) -> None:
    import json

    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS[:6]) + "\n", encoding="utf-8")
    assert main(["predict", "--model", str(exported_model_dir), "--input", str(source), "--runtime", "onnx"]) == 0
    labels = [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()]
    assert labels == [item["label"] for item in Classifier.from_pretrained(exported_model_dir, precision="fp32").predict(TEXTS[:6])]


def test_missing_or_broken_onnx_file_is_a_user_error(exported_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BertClassifyError, match="export-onnx"):
        Classifier.from_pretrained(exported_model_dir, runtime="onnx", onnx_file=str(tmp_path / "none.onnx"))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(BertClassifyError, match="not a loadable ONNX model"):
        Classifier.from_pretrained(exported_model_dir, runtime="onnx", onnx_file=str(broken))


def test_the_onnx_runtime_does_not_import_the_predictor_or_the_export() -> None:
    import subprocess
    import sys

    code = (
        "import sys, bert_classify.inference.onnx_runtime\n"
        "loaded = [name for name in ('bert_classify.inference.predictor', 'bert_classify.inference.onnx_export') "
        "if name in sys.modules]\n"
        "assert not loaded, loaded\n"
        "import bert_classify.inference.predictor\n"
        "assert 'bert_classify.inference.onnx_export' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
