"""SDK v3 recipe: ModelTrainer's arguments come from our own training request (offline; no AWS call)."""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("sagemaker.core.training.configs", reason="sagemaker-core (the SageMaker extra) is not installed")

from bert_classify.errors import ConfigError  # noqa: E402
from bert_classify.sagemaker.environment import boolean_flags_to_cli  # noqa: E402
from bert_classify.sagemaker.launch import TrainingJobOptions  # noqa: E402
from bert_classify.sagemaker.sdk_v3 import model_trainer_arguments, write_source_dir  # noqa: E402
from bert_classify.sagemaker.source import ENTRY_SCRIPT_NAME  # noqa: E402

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def _options(**changes) -> TrainingJobOptions:
    values = {
        "role": ROLE, "train": "s3://data-bucket/train.csv", "val": "s3://data-bucket/val.csv",
        "s3_prefix": "s3://work-bucket/runs", "job_name": "sdk-job", "image_uri": "img:1",
        "hyperparameters": {"epochs": 2, "freeze-encoder": True, "group_by_length": False},
    }  # fmt: skip
    values.update(changes)
    return TrainingJobOptions(**values)


def test_model_trainer_arguments_keep_spot_checkpoints_and_hyper_parameters(tmp_path: Path) -> None:
    source = write_source_dir(tmp_path / "source")
    assert (source / ENTRY_SCRIPT_NAME).is_file() and (source / "requirements.txt").is_file()
    arguments = model_trainer_arguments(_options(max_run=3600), region="us-east-1", source_dir=source)
    compute = arguments["compute"]
    assert (compute.instance_type, compute.instance_count, compute.enable_managed_spot_training) == ("ml.g5.xlarge", 1, True)
    assert arguments["stopping_condition"].max_runtime_in_seconds == 3600
    assert arguments["stopping_condition"].max_wait_time_in_seconds == 7200
    assert arguments["checkpoint_config"].s3_uri == "s3://work-bucket/runs/sdk-job/checkpoints"
    assert arguments["checkpoint_config"].local_path == "/opt/ml/checkpoints"
    assert arguments["source_code"].entry_script == ENTRY_SCRIPT_NAME
    assert {c.channel_name: c.data_source for c in arguments["input_data_config"]} == {
        "train": "s3://data-bucket/train.csv", "val": "s3://data-bucket/val.csv",
    }  # fmt: skip
    hyperparameters = arguments["hyperparameters"]
    assert hyperparameters == {"epochs": "2", "freeze-encoder": "True", "no-group-by-length": "True"}
    # The SDK's driver runs the entry script with `--name value` per hyper-parameter: our container mapping reads that.
    argv = [item for name, value in hyperparameters.items() for item in (f"--{name}", value)]
    assert boolean_flags_to_cli(argv) == ["--epochs", "2", "--freeze-encoder", "--no-group-by-length"]


def test_warm_pool_and_on_demand_reach_compute() -> None:
    arguments = model_trainer_arguments(_options(spot=False, keep_alive_seconds=600), region="us-east-1", source_dir="s")
    assert arguments["compute"].keep_alive_period_in_seconds == 600
    assert arguments["compute"].enable_managed_spot_training is False
    assert "checkpoint_config" not in arguments


def test_local_files_are_refused_with_the_fix(tiny_data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="with the SDK give an S3 URI"):
        model_trainer_arguments(_options(train=str(tiny_data_dir / "train.csv")), region="us-east-1", source_dir="s")


def test_model_trainer_accepts_the_arguments(tmp_path: Path) -> None:
    if importlib.util.find_spec("sagemaker.train") is None:
        pytest.skip("sagemaker-train (SDK v3's ModelTrainer) is not installed: it pulls mlflow 3, kept out of the dev extra")
    from sagemaker.train import ModelTrainer

    ModelTrainer(**model_trainer_arguments(_options(), region="us-east-1", source_dir=write_source_dir(tmp_path / "s")))


def test_source_dir_matches_the_sourcedir_archive(tmp_path: Path) -> None:
    from bert_classify.sagemaker.source import build_sourcedir

    with tarfile.open(build_sourcedir(tmp_path / "s.tar.gz")) as tar:
        names = sorted(n for n in tar.getnames() if n != ".")
    assert sorted(p.name for p in write_source_dir(tmp_path / "dir").iterdir()) == sorted(Path(n).name for n in names)
