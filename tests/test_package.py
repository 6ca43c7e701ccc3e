"""model.tar.gz: layout, round trip through the SageMaker handler from the vendored code, safe extraction."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bert_classify.cli import main
from bert_classify.errors import BertClassifyError
from bert_classify.inference.package import build_package, extract_archive, write_inference_code
from bert_classify.inference.predictor import Classifier
from conftest import make_rows
from test_inference_predictor import fit_head

TEXTS = [content for _, _, content in make_rows(5, seed=4)]


@pytest.fixture(scope="module")
def model_dir(tiny_model_no_dropout_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = fit_head(tiny_model_no_dropout_dir, tmp_path_factory.mktemp("package-bert"))
    (directory / "metrics.json").write_text("{}", encoding="utf-8")
    (directory / "checkpoints").mkdir()  # training state: must stay out of the archive
    (directory / "checkpoints" / "state.bin").write_bytes(b"\0" * 10)
    return directory


@pytest.fixture(scope="module")
def archive(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("archive") / "model.tar.gz"
    assert main(["package", "--model", str(model_dir), "--output", str(output)]) == 0
    return output


def test_archive_layout(archive: Path) -> None:
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.json"} <= names
    assert {"code/inference.py", "code/requirements.txt", "code/bert_classify/inference/handler.py"} <= names
    assert not any(name.startswith("checkpoints") or "__pycache__" in name for name in names)
    assert not any(name.startswith(("/", "./", "..")) for name in names)


def test_round_trip_through_the_handler_with_the_vendored_package(
    archive: Path, model_dir: Path, tmp_path: Path
) -> None:
    """What the container does: extract, import code/inference.py, model_fn, then a request."""
    extracted = extract_archive(archive, tmp_path / "opt-ml-model")
    requirements = (extracted / "code" / "requirements.txt").read_text(encoding="utf-8").split()
    assert any(line.startswith("transformers>=") for line in requirements)
    assert not any(line.startswith(("torch", "bert-classify")) for line in requirements)
    script = f"""
import json, sys
sys.path.insert(0, {str(extracted / "code")!r})
import inference, bert_classify
assert bert_classify.__file__.startswith({str(extracted / "code")!r}), bert_classify.__file__
model = inference.model_fn({str(extracted)!r})
body, content_type = inference.output_fn(
    inference.predict_fn(inference.input_fn({json.dumps(TEXTS)!r}, "application/json"), model), "application/json"
)
print(content_type)
print(body.decode())
"""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["BERT_CLASSIFY_PRECISION"] = "fp32"  # the handler's setting, compared with fp32 below
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    content_type, body = result.stdout.strip().split("\n", 1)
    assert content_type == "application/json"
    expected = Classifier.from_pretrained(model_dir, precision="fp32").predict(TEXTS)
    assert [item["label"] for item in json.loads(body)] == [item["label"] for item in expected]
    assert [item["score"] for item in json.loads(body)] == pytest.approx([item["score"] for item in expected], abs=1e-5)


def test_write_inference_code_into_a_training_output(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    output = shutil.copytree(model_dir, tmp_path / "model")
    (output / "code").mkdir()
    (output / "code" / "stale.py").write_text("old", encoding="utf-8")
    write_inference_code(output)
    assert (output / "code" / "inference.py").read_text(encoding="utf-8").count("import input_fn") == 1
    assert not (output / "code" / "stale.py").exists()
    assert (output / "code" / "bert_classify" / "inference" / "predictor.py").is_file()


def test_package_refuses_bad_arguments(model_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["package", "--model", str(tmp_path), "--output", str(tmp_path / "m.tar.gz")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["package", "--model", str(model_dir), "--output", str(tmp_path / "model.zip")]) == 2
    assert "model.tar.gz" in capsys.readouterr().err
    with pytest.raises(BertClassifyError, match="outside the model directory"):
        build_package(model_dir, model_dir / "model.tar.gz")


def _malicious_archive(path: Path, member: tarfile.TarInfo, data: bytes = b"owned") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("config.json")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"{}"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize(
    "name, kind",
    [("../escaped.txt", tarfile.REGTYPE), ("/tmp/absolute.txt", tarfile.REGTYPE), ("link", tarfile.SYMTYPE),
     ("hard", tarfile.LNKTYPE), ("a/../../up.txt", tarfile.REGTYPE)],
)  # fmt: skip
def test_extraction_refuses_members_outside_the_target(tmp_path: Path, name: str, kind: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        member.linkname = "/etc/passwd"
    archive = _malicious_archive(tmp_path / "evil.tar.gz", member)
    target = tmp_path / "target" / "inner"
    with pytest.raises(BertClassifyError, match="outside the target|link or special file"):
        extract_archive(archive, target)
    assert not (tmp_path / "target" / "escaped.txt").exists()
    assert not (tmp_path / "target" / "up.txt").exists()
    assert not list(target.iterdir())  # checked before anything is written


def test_extraction_of_a_corrupt_archive_is_a_user_error(tmp_path: Path) -> None:
    broken = tmp_path / "model.tar.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(BertClassifyError, match="not a readable"):
        extract_archive(broken, tmp_path / "out")
