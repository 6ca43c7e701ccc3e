"""`bert-classify sagemaker tune`: the HyperParameterTuningJob request, under moto and against botocore's model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

from bert_classify.errors import BertClassifyError, ConfigError  # noqa: E402
from bert_classify.sagemaker.environment import training_defaults  # noqa: E402
from bert_classify.sagemaker.launch import METRIC_NAMES, TrainingJobOptions  # noqa: E402
from bert_classify.sagemaker.tune import (  # noqa: E402
    OBJECTIVES,
    TuningOptions,
    build_tuning_request,
    launch_tuning,
    wait_for_tuning_job,
)
from test_sagemaker_offline import run_offline, validate_request  # noqa: E402

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
REGION = "us-east-1"
BUCKET = "tuning-bucket"


def _options(**changes: Any) -> TuningOptions:
    training = TrainingJobOptions(
        role=ROLE,
        train="s3://data-bucket/train.csv",
        val="s3://data-bucket/val.csv",
        s3_prefix=f"s3://{BUCKET}/runs",
        image_uri="img:1",
        hyperparameters={"freeze-encoder": True, "max-seq-len": 64},
        max_run=3600,
    )
    values: dict[str, Any] = {
        "training": training,
        "batch_sizes": [16, 32],
        "epochs": (2, 4),
        "warmup_ratio": (0.0, 0.1),
        "max_jobs": 6,
        "max_parallel_jobs": 3,
        "tuning_job_name": "tune-1",
    }
    values.update(changes)
    return TuningOptions(**values)


def test_tuning_request_keeps_spot_and_checkpoints_and_validates_against_botocore() -> None:
    request = build_tuning_request(_options(), region=REGION).request
    validate_request("CreateHyperParameterTuningJob", request)
    definition = request["TrainingJobDefinition"]
    # SDK v3's tuner once dropped this flag (sagemaker-python-sdk issue 5584): ours must carry it.
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert definition["CheckpointConfig"] == {
        "S3Uri": f"s3://{BUCKET}/runs/tune-1/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert definition["Environment"]["BERT_CLASSIFY_CHECKPOINT_PER_JOB"] == "1"
    assert definition["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    assert definition["StaticHyperParameters"]["freeze-encoder"] == "True"
    assert definition["StaticHyperParameters"]["max-seq-len"] == "64"
    assert not {"learning-rate", "batch-size", "epochs", "warmup-ratio"} & set(definition["StaticHyperParameters"])
    assert definition["HyperParameterRanges"] == {
        "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "2", "MaxValue": "4", "ScalingType": "Auto"}],
        "ContinuousParameterRanges": [
            {"Name": "learning-rate", "MinValue": "1e-05", "MaxValue": "0.0005", "ScalingType": "Logarithmic"},
            {"Name": "warmup-ratio", "MinValue": "0.0", "MaxValue": "0.1", "ScalingType": "Linear"},
        ],
        "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["16", "32"]}],
    }
    config = request["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "val_macro_f1"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 3}
    assert config["TrainingJobEarlyStoppingType"] == "Auto" and config["Strategy"] == "Bayesian"
    names = [m["Name"] for m in definition["AlgorithmSpecification"]["MetricDefinitions"]]
    assert config["HyperParameterTuningJobObjective"]["MetricName"] in names


def test_every_objective_is_a_metric_line_and_loss_is_minimised() -> None:
    assert set(OBJECTIVES) <= set(METRIC_NAMES)
    request = build_tuning_request(_options(objective="val_loss", strategy="Random", early_stopping="Off"), region=REGION).request
    config = request["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "val_loss"}
    assert (config["Strategy"], config["TrainingJobEarlyStoppingType"]) == ("Random", "Off")


def test_tune_creates_the_job_under_moto_and_uploads_the_code(aws_session, tiny_data_dir: Path) -> None:
    aws_session.client("s3").create_bucket(Bucket=BUCKET)
    training = _options().training
    training.train = str(tiny_data_dir / "train.csv")
    lines: list[str] = []
    launch_tuning(_options(training=training), session=aws_session, out=lines.append)
    keys = sorted(o["Key"] for o in aws_session.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys == ["runs/tune-1/input/train/train.csv", "runs/tune-1/source/sourcedir.tar.gz"]
    sent = aws_session.sent["CreateHyperParameterTuningJob"]
    assert sent["TrainingJobDefinition"]["EnableManagedSpotTraining"] is True
    description = aws_session.client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="tune-1")
    assert description["HyperParameterTuningJobName"] == "tune-1"
    assert description["TrainingJobDefinition"]["EnableManagedSpotTraining"] is True
    assert lines[0].startswith("created tuning job tune-1")


def test_tune_cli_dry_run_is_offline(tmp_path: Path) -> None:
    result = run_offline(
        tmp_path, "tune", "--dry-run", "--role", ROLE, "--train", "s3://data-bucket/train.csv",
        "--batch-sizes", "16,32", "--epochs-range", "2:4", "--objective", "val_accuracy", "--tuning-job-name", "t1",
        "--max-jobs", "4", "--max-parallel-jobs", "2", "--freeze-encoder",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    request = json.loads(result.stdout)
    validate_request("CreateHyperParameterTuningJob", request)
    assert request["TrainingJobDefinition"]["CheckpointConfig"]["S3Uri"] == (
        "s3://sagemaker-eu-west-1-<ACCOUNT_ID>/bert-classify/t1/checkpoints"
    )
    assert "<ACCOUNT_ID> stands for it" in result.stderr


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"objective": "accuracy"}, "--objective must be one of"),
        ({"max_parallel_jobs": 7}, r"--max-parallel-jobs must be between 1 and --max-jobs \(6\)"),
        ({"max_jobs": 0}, "--max-jobs must be >= 1"),
        ({"tuning_job_name": "a" * 33}, "--tuning-job-name 'a{33}' is invalid"),
        ({"learning_rate": (0.0, 1e-3)}, "log scale: LOW must be > 0"),
        ({"epochs": (4, 2)}, "--epochs-range LOW:HIGH needs LOW < HIGH"),
        ({"epochs": (0, 2)}, "--epochs must be a whole number >= 1"),
        ({"warmup_ratio": (0.0, 1.5)}, r"--warmup-ratio must be in \[0, 1\)"),
        ({"batch_sizes": [16, 16]}, "--batch-sizes needs distinct values"),
        ({"learning_rate": None, "batch_sizes": None, "epochs": None, "warmup_ratio": None}, "nothing to tune"),
        ({"strategy": "Grid"}, "--strategy must be one of"),
        ({"early_stopping": "On"}, "--early-stopping must be one of"),
    ],
)
def test_invalid_tuning_options_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_tuning_request(_options(**changes), region=REGION)


def test_an_option_both_fixed_and_tuned_is_refused() -> None:
    options = _options()
    options.training.hyperparameters["epochs"] = 3
    with pytest.raises(ConfigError, match="--epochs is both fixed and tuned"):
        build_tuning_request(options, region=REGION)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = run_offline(
        tmp_path, "tune", "--dry-run", "--role", ROLE, "--train", "s3://data-bucket/t.csv", "--epochs-range", "2-4",
    )  # fmt: skip
    assert result.returncode == 2 and "expected LOW:HIGH such as 2:5" in result.stderr


def test_each_training_job_of_a_tuning_job_checkpoints_under_its_own_name(tmp_path: Path) -> None:
    environ = {"SM_MODEL_DIR": str(tmp_path), "TRAINING_JOB_NAME": "tune-1-003-abcdef12"}
    assert training_defaults(environ)["checkpoint_dir"] == "/opt/ml/checkpoints"
    environ["BERT_CLASSIFY_CHECKPOINT_PER_JOB"] = "1"
    assert training_defaults(environ)["checkpoint_dir"] == "/opt/ml/checkpoints/tune-1-003-abcdef12"
    del environ["TRAINING_JOB_NAME"]
    with pytest.raises(ConfigError, match="neither TRAINING_JOB_NAME nor SM_TRAINING_ENV names the job"):
        training_defaults(environ)


class _FakeSageMaker:
    def __init__(self, descriptions: list[dict[str, Any]]) -> None:
        self.descriptions = descriptions

    def describe_hyper_parameter_tuning_job(self, **_: Any) -> dict[str, Any]:
        return self.descriptions.pop(0)


class _FakeSession:
    def __init__(self, client: _FakeSageMaker) -> None:
        self._client = client

    def client(self, name: str) -> _FakeSageMaker:
        return self._client


def test_wait_reports_progress_and_the_best_job() -> None:
    best = {
        "TrainingJobName": "tune-1-002-aa",
        "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "val_macro_f1", "Value": 0.93},
        "TunedHyperParameters": {"batch-size": "32"},
    }
    descriptions = [
        {"HyperParameterTuningJobStatus": "InProgress", "TrainingJobStatusCounters": {"InProgress": 2}},
        {"HyperParameterTuningJobStatus": "InProgress", "TrainingJobStatusCounters": {"InProgress": 2}},
        {"HyperParameterTuningJobStatus": "Completed", "TrainingJobStatusCounters": {"Completed": 4}, "BestTrainingJob": best},
    ]
    lines: list[str] = []
    wait_for_tuning_job(_FakeSession(_FakeSageMaker(descriptions)), "tune-1", out=lines.append, sleep=lambda s: None)
    assert lines == [
        "status: InProgress; training jobs InProgress 2",
        "status: Completed; training jobs Completed 4",
        'best: tune-1-002-aa val_macro_f1=0.93 with {"batch-size": "32"}',
    ]
    failed = [{"HyperParameterTuningJobStatus": "Failed", "FailureReason": "no capacity"}]
    with pytest.raises(BertClassifyError, match="tuning job tune-1 ended Failed: no capacity"):
        wait_for_tuning_job(_FakeSession(_FakeSageMaker(failed)), "tune-1", out=lines.append, sleep=lambda s: None)
