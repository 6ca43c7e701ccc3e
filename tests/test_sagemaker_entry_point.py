"""The training entry script run as the container runs it: from an unpacked sourcedir, SM_* pointing at temp dirs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bert_classify.sagemaker.launch import METRIC_DEFINITIONS
from bert_classify.sagemaker.source import ENTRY_SCRIPT_NAME, build_sourcedir


@pytest.fixture(scope="module")
def installed_sourcedir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(code dir, site dir): sourcedir.tar.gz unpacked and its requirements.txt pip-installed, as the container does."""
    root = tmp_path_factory.mktemp("container")
    archive = build_sourcedir(root / "sourcedir.tar.gz")
    code_dir, site_dir = root / "opt-ml-code", root / "site-packages"
    with tarfile.open(archive) as tar:
        tar.extractall(code_dir, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(code_dir)
    # --no-deps/--no-index: dependencies are already in this venv and there is no network here.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site_dir), "-r", "requirements.txt"],
        cwd=code_dir,
        check=True,
    )
    return code_dir, site_dir


def _channel(root: Path, name: str, source: Path) -> str:
    directory = root / "input" / "data" / name
    directory.mkdir(parents=True)
    (directory / source.name).write_bytes(source.read_bytes())
    return str(directory)


@pytest.mark.slow
def test_entry_point_trains_from_sm_environment_into_a_deployable_model_dir(
    installed_sourcedir: tuple[Path, Path], tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    code_dir, site_dir = installed_sourcedir
    model_dir, output_data_dir, checkpoint_dir = tmp_path / "model", tmp_path / "output" / "data", tmp_path / "checkpoints"
    environment = {
        **os.environ,
        "PYTHONPATH": str(site_dir),  # the installed wheel, ahead of the editable checkout
        "HF_HUB_OFFLINE": "1",
        "SM_TRAINING_ENV": "{}",
        "SM_CHANNEL_TRAIN": _channel(tmp_path, "train", tiny_data_dir / "train.csv"),
        "SM_CHANNEL_VAL": _channel(tmp_path, "val", tiny_data_dir / "val.csv"),
        "SM_CHANNEL_CLASSES": _channel(tmp_path, "classes", tiny_data_dir / "classes.txt"),
        "SM_CHANNEL_MODEL": str(tiny_model_dir),
        "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DATA_DIR": str(output_data_dir),
        "SM_HOSTS": '["algo-1"]',
        "SM_CURRENT_HOST": "algo-1",
        "SM_NUM_GPUS": "0",
    }
    which = subprocess.run(
        [sys.executable, "-c", "import bert_classify; print(bert_classify.__file__)"],
        env=environment, cwd=code_dir, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(which.stdout.strip()).is_relative_to(site_dir)
    # Hyper-parameters as the container passes them: sorted `--name value`, booleans as "True"/"False".
    hyperparameters = [
        "--batch-size", "8", "--checkpoint-dir", str(checkpoint_dir), "--epochs", "1",
        "--force-resume", "False", "--freeze-encoder", "False", "--log-every-steps", "1", "--max-steps", "2",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, ENTRY_SCRIPT_NAME, *hyperparameters],
        env=environment, cwd=code_dir, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]

    assert (model_dir / "config.json").is_file()
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "tokenizer_config.json").is_file()
    assert (model_dir / "tokenizer.json").is_file() or (model_dir / "vocab.txt").is_file()
    assert (model_dir / "code" / "inference.py").is_file()
    assert (model_dir / "code" / "requirements.txt").is_file()
    assert (output_data_dir / "metrics.json").is_file()
    for definition in METRIC_DEFINITIONS:
        assert re.search(definition["Regex"], log), f"no {definition['Name']} line matches {definition['Regex']}"

    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(model_dir))
    assert classifier("a painter with an album of songs")[0]["label"] in {"Company", "Artist", "Animal"}


@pytest.mark.slow
def test_entry_point_reports_a_bad_boolean_hyper_parameter(installed_sourcedir: tuple[Path, Path], tmp_path: Path) -> None:
    code_dir, site_dir = installed_sourcedir
    environment = {**os.environ, "PYTHONPATH": str(site_dir), "SM_MODEL_DIR": str(tmp_path / "model")}
    result = subprocess.run(
        [sys.executable, ENTRY_SCRIPT_NAME, "--freeze-encoder", "perhaps"],
        env=environment, cwd=code_dir, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "error: hyper-parameter --freeze-encoder must be True or False, not 'perhaps'" in result.stderr
