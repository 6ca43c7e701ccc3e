"""Launching SageMaker training jobs: the request under moto, dry runs, validation, the code archive, --wait."""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

from bert_classify.cli import main  # noqa: E402
from bert_classify.errors import BertClassifyError, ConfigError  # noqa: E402
from bert_classify.sagemaker.forwarding import container_command  # noqa: E402
from bert_classify.sagemaker.launch import (  # noqa: E402
    METRIC_DEFINITIONS,
    TrainingJobOptions,
    launch_training,
    normalise_hyperparameters,
    spot_summary,
    wait_for_training_job,
)
from bert_classify.sagemaker.source import ENTRY_SCRIPT_NAME, build_sourcedir  # noqa: E402

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
REGION = "us-east-1"
BUCKET = "my-training-bucket"


@pytest.fixture
def data_files(tiny_data_dir: Path) -> Path:
    return tiny_data_dir


def test_launch_uploads_code_and_data_and_creates_a_spot_job(aws_session, data_files: Path) -> None:
    options = TrainingJobOptions(
        role=ROLE,
        train=str(data_files / "train.csv"),
        val=str(data_files / "val.csv"),
        classes=str(data_files / "classes.txt"),
        model="s3://models-bucket/minilm/model.tar.gz",
        hyperparameters={"epochs": 2, "freeze_encoder": True, "learning_rate": "2e-4", "precision": "bf16"},
        instance_type="ml.g5.2xlarge",
        instance_count=1,
        max_run=3600,
        max_wait=7200,
        s3_prefix=f"s3://{BUCKET}/runs",
        job_name="spot-job-1",
        tags={"project": "bert"},
    )
    aws_session.client("s3").create_bucket(Bucket=BUCKET)
    lines: list[str] = []
    launch_training(options, session=aws_session, out=lines.append)

    s3 = aws_session.client("s3")
    keys = sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys == [
        "runs/spot-job-1/input/classes/classes.txt",
        "runs/spot-job-1/input/train/train.csv",
        "runs/spot-job-1/input/val/val.csv",
        "runs/spot-job-1/source/sourcedir.tar.gz",
    ]
    uploaded = s3.get_object(Bucket=BUCKET, Key="runs/spot-job-1/input/train/train.csv")["Body"].read()
    assert uploaded == (data_files / "train.csv").read_bytes()
    archive = s3.get_object(Bucket=BUCKET, Key="runs/spot-job-1/source/sourcedir.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert ENTRY_SCRIPT_NAME in tar.getnames() and "requirements.txt" in tar.getnames()

    job = aws_session.client("sagemaker").describe_training_job(TrainingJobName="spot-job-1")
    assert job["EnableManagedSpotTraining"] is True
    assert job["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/runs/spot-job-1/checkpoints", "LocalPath": "/opt/ml/checkpoints"}
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert job["ResourceConfig"]["InstanceCount"] == 1
    assert job["ResourceConfig"]["InstanceType"] == "ml.g5.2xlarge"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels == {
        "train": f"s3://{BUCKET}/runs/spot-job-1/input/train/",
        "val": f"s3://{BUCKET}/runs/spot-job-1/input/val/",
        "classes": f"s3://{BUCKET}/runs/spot-job-1/input/classes/",
        "model": "s3://models-bucket/minilm/model.tar.gz",
    }
    hyperparameters = job["HyperParameters"]
    assert {k: hyperparameters[k] for k in ("epochs", "freeze-encoder", "learning-rate", "precision")} == {
        "epochs": "2",
        "freeze-encoder": "True",
        "learning-rate": "2e-4",
        "precision": "bf16",
    }
    assert hyperparameters["sagemaker_program"] == ENTRY_SCRIPT_NAME
    assert hyperparameters["sagemaker_submit_directory"] == f"s3://{BUCKET}/runs/spot-job-1/source/sourcedir.tar.gz"
    assert hyperparameters["sagemaker_torch_distributed_enabled"] == "false"
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/runs/output"
    assert job["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6-gpu-py312"
    )
    # moto stores a fake metric definition and no Environment: check what was sent.
    sent = aws_session.sent["CreateTrainingJob"]
    assert sent["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert sent["Environment"]["PYTHONUNBUFFERED"] == "1"
    assert sent["Tags"] == [{"Key": "project", "Value": "bert"}]
    assert any("created training job spot-job-1" in line for line in lines)


def test_launch_without_s3_prefix_creates_the_default_bucket(aws_session, data_files: Path) -> None:
    options = TrainingJobOptions(role=ROLE, train=str(data_files / "train.csv"), job_name="default-bucket", image_uri="img:1")
    launch_training(options, session=aws_session, out=lambda line: None)
    bucket = f"sagemaker-{REGION}-123456789012"
    keys = [item["Key"] for item in aws_session.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert "bert-classify/default-bucket/input/train/train.csv" in keys


def test_a_local_model_directory_is_uploaded_as_the_model_channel(aws_session, data_files: Path, tiny_model_dir: Path) -> None:
    aws_session.client("s3").create_bucket(Bucket=BUCKET)
    options = TrainingJobOptions(
        role=ROLE,
        train=str(data_files / "train.csv"),
        model=str(tiny_model_dir),
        s3_prefix=f"s3://{BUCKET}/p",
        job_name="local-model",
        image_uri="img:1",
    )
    launch_training(options, session=aws_session, out=lambda line: None)
    keys = {item["Key"] for item in aws_session.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert "p/local-model/input/model/config.json" in keys
    assert "p/local-model/input/model/model.safetensors" in keys
    sent = aws_session.sent["CreateTrainingJob"]
    assert {c["ChannelName"] for c in sent["InputDataConfig"]} == {"train", "model"}
    assert "model" not in sent["HyperParameters"]


def test_dry_run_of_a_multi_node_spot_job_prints_the_exact_request(aws_session, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "sagemaker", "train", "--dry-run", "--role", ROLE, "--region", "eu-west-1",
            "--train", "s3://data-bucket/dbpedia/train.csv", "--val", "s3://data-bucket/dbpedia/val.csv",
            "--classes", "s3://data-bucket/dbpedia/classes.txt", "--model", "bert-base-uncased",
            "--job-name", "multi-node", "--instance-type", "ml.g5.12xlarge", "--instance-count", "2",
            "--max-run", "6h", "--max-wait", "12h", "--checkpoint-s3-uri", "s3://ckpt-bucket/multi-node",
            "--s3-prefix", "s3://work-bucket/bert", "--output-path", "s3://out-bucket/models",
            "--subnets", "subnet-1,subnet-2", "--security-group-ids", "sg-1", "--output-kms-key", "key-1",
            "--network-isolation", "--tag", "team=nlp", "--environment", "NCCL_DEBUG=INFO",
            "--epochs", "2", "--batch-size", "32", "--freeze-encoder", "--no-group-by-length",
        ]
    )  # fmt: skip
    assert status == 0
    request = json.loads(capsys.readouterr().out)
    assert request["TrainingJobName"] == "multi-node"
    assert request["RoleArn"] == ROLE
    assert request["AlgorithmSpecification"] == {
        "TrainingImage": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.6-gpu-py312",
        "TrainingInputMode": "File",
        "MetricDefinitions": METRIC_DEFINITIONS,
        "EnableSageMakerMetricsTimeSeries": True,
        # the PID-1 signal forwarder in front of the image's own entry (tests/test_sagemaker_pid1.py)
        "ContainerEntrypoint": container_command()[0],
        "ContainerArguments": ["bash", "-m", "start_with_right_hostname.sh", "train"],
    }
    assert request["ResourceConfig"] == {"InstanceType": "ml.g5.12xlarge", "InstanceCount": 2, "VolumeSizeInGB": 30}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 6 * 3600, "MaxWaitTimeInSeconds": 12 * 3600}
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"] == {"S3Uri": "s3://ckpt-bucket/multi-node", "LocalPath": "/opt/ml/checkpoints"}
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://out-bucket/models", "KmsKeyId": "key-1"}
    assert request["VpcConfig"] == {"Subnets": ["subnet-1", "subnet-2"], "SecurityGroupIds": ["sg-1"]}
    assert request["EnableNetworkIsolation"] is True
    assert request["EnableInterContainerTrafficEncryption"] is False
    assert request["Tags"] == [{"Key": "team", "Value": "nlp"}]
    assert request["Environment"] == {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "NCCL_DEBUG": "INFO"}
    assert [(c["ChannelName"], c["DataSource"]["S3DataSource"]["S3Uri"]) for c in request["InputDataConfig"]] == [
        ("train", "s3://data-bucket/dbpedia/train.csv"),
        ("val", "s3://data-bucket/dbpedia/val.csv"),
        ("classes", "s3://data-bucket/dbpedia/classes.txt"),
    ]
    assert all(c["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "FullyReplicated" for c in request["InputDataConfig"])
    assert request["HyperParameters"] == {
        "batch-size": "32",
        "epochs": "2",
        "freeze-encoder": "True",
        "model": "bert-base-uncased",
        "no-group-by-length": "True",
        "sagemaker_container_log_level": "20",
        "sagemaker_job_name": "multi-node",
        "sagemaker_program": ENTRY_SCRIPT_NAME,
        "sagemaker_region": "eu-west-1",
        "sagemaker_submit_directory": "s3://work-bucket/bert/multi-node/source/sourcedir.tar.gz",
        "sagemaker_torch_distributed_enabled": "true",
    }
    assert "CreateTrainingJob" not in aws_session.sent  # nothing sent
    assert aws_session.client("s3").list_buckets()["Buckets"] == []


def test_on_demand_job_has_no_max_wait_and_no_default_checkpoints(aws_session, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["sagemaker", "train", "--dry-run", "--role", ROLE, "--train", "s3://data-bucket/t.csv", "--no-spot",
         "--s3-prefix", "s3://work-bucket/x", "--image-uri", "img:1", "--job-name", "on-demand"]
    )  # fmt: skip
    assert status == 0
    request = json.loads(capsys.readouterr().out)
    assert request["EnableManagedSpotTraining"] is False
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 24 * 3600}
    assert "CheckpointConfig" not in request
    assert request["AlgorithmSpecification"]["TrainingImage"] == "img:1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-run", "2h", "--max-wait", "1h"], r"--max-wait \(3600 s\) must be >= --max-run \(7200 s\)"),
        (["--no-spot", "--max-wait", "1h"], "--max-wait applies only to spot"),
        (["--checkpoint-s3-uri", "s3:/bucket/x"], r"--checkpoint-s3-uri: 's3:/bucket/x' is not a valid S3 URI"),
        (["--output-path", "s3://Bad_Bucket/x"], "--output-path: .* is not a valid S3 URI"),
        (["--val", "s3:/oops/val.csv"], "--val: .* is not a valid S3 URI"),
        (["--val", "no/such/file.csv"], "--val: 'no/such/file.csv' is neither an S3 URI"),
        (["--subnets", "subnet-1"], "--subnets and --security-group-ids go together"),
        (["--precision", "fp8"], "invalid choice"),
        (["--epochs", "zero"], "training option --epochs: invalid value 'zero'"),
        (["--warmup-ratio", "1.5"], r"--warmup-ratio must be in \[0, 1\)"),
        (["--job-name", "bad_name"], "--job-name 'bad_name' is invalid"),
    ],
)
def test_invalid_launch_options_give_clear_messages(
    aws_session, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sagemaker", "train", "--dry-run", "--role", ROLE, "--train", "s3://data-bucket/t.csv", "--image-uri", "i"]
    if message == "invalid choice":  # argparse's own check, exit status 2 as well
        with pytest.raises(SystemExit) as exit_info:
            main(argv + extra)
        assert exit_info.value.code == 2
    else:
        assert main(argv + extra) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("role", "message"),
    [
        (None, "--role is required: the ARN of the IAM role SageMaker assumes"),
        ("SageMakerRole", "--role 'SageMakerRole' is not an IAM role ARN"),
    ],
)
def test_missing_or_malformed_role_is_refused(aws_session, role: str | None, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sagemaker", "train", "--dry-run", "--train", "s3://data-bucket/t.csv"] + (["--role", role] if role else [])
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_python_api_refuses_options_the_launcher_owns_and_unknown_ones() -> None:
    with pytest.raises(ConfigError, match="'output_dir' is set by the launcher"):
        normalise_hyperparameters({"output_dir": "/tmp/x"})
    with pytest.raises(ConfigError, match="unknown training option 'epochz'"):
        normalise_hyperparameters({"epochz": 3})
    assert normalise_hyperparameters({"group_by_length": False, "max_steps": None, "seed": 7}) == {
        "no-group-by-length": "True",
        "seed": "7",
    }


def test_metric_definitions_match_the_lines_training_prints() -> None:
    lines = {
        "val_accuracy": "metric: val_accuracy=0.9812 step=1200 epoch=1",
        "val_macro_f1": "metric: val_macro_f1=0.9800 step=1200 epoch=1",
        "val_loss": "metric: val_loss=0.0612 step=1200 epoch=1",
        "train_loss": "metric: train_loss=0.2311 step=1200 epoch=1",
    }
    values = {"val_accuracy": 0.9812, "val_macro_f1": 0.98, "val_loss": 0.0612, "train_loss": 0.2311}
    log = "\n".join(lines.values())
    for definition in METRIC_DEFINITIONS:
        matches = re.findall(definition["Regex"], log)
        assert [float(m) for m in matches] == [values[definition["Name"]]], definition["Name"]
    assert re.search(METRIC_DEFINITIONS[0]["Regex"], "metric: train_loss=1e-05 step=3 epoch=1").group(1) == "1e-05"


def test_sourcedir_holds_the_entry_script_requirements_and_an_installable_wheel(tmp_path: Path) -> None:
    archive = build_sourcedir(tmp_path / "sourcedir.tar.gz")
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
        requirements = tar.extractfile("requirements.txt").read().decode()
        wheel_name = next(n for n in names if n.endswith(".whl"))
        wheel_bytes = tar.extractfile(wheel_name).read()
    assert names == sorted([ENTRY_SCRIPT_NAME, "requirements.txt", wheel_name])
    assert requirements.strip() == f"./{wheel_name}"
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as wheel:
        files = wheel.namelist()
        metadata = wheel.read(next(f for f in files if f.endswith(".dist-info/METADATA"))).decode()
    assert "bert_classify/sagemaker/entry_point.py" in files
    assert "bert_classify/cli.py" in files
    assert not any("__pycache__" in f for f in files)
    assert "Requires-Dist: transformers" in metadata
    assert build_sourcedir(tmp_path / "again.tar.gz").read_bytes() == archive.read_bytes()  # reproducible


class _FakeClient:
    def __init__(self, descriptions: list[dict[str, Any]], events: list[str]) -> None:
        self.descriptions = descriptions
        self.events = events
        self.served = False

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:
        return self.descriptions.pop(0) if len(self.descriptions) > 1 else self.descriptions[0]

    def describe_log_streams(self, **_: Any) -> dict[str, Any]:
        return {"logStreams": [{"logStreamName": "job/algo-1-1700000000"}]}

    def get_log_events(self, **arguments: Any) -> dict[str, Any]:
        if self.served or "nextToken" in arguments and arguments["nextToken"] == "t1":
            return {"events": [], "nextForwardToken": "t1"}
        self.served = True
        return {"events": [{"message": line} for line in self.events], "nextForwardToken": "t1"}


class _FakeSession:
    def __init__(self, client: _FakeClient) -> None:
        self._client = client

    def client(self, name: str) -> _FakeClient:
        return self._client


def test_wait_streams_status_and_logs_and_reports_the_spot_saving() -> None:
    final = {
        "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed",
        "EnableManagedSpotTraining": True,
        "TrainingTimeInSeconds": 1000,
        "BillableTimeInSeconds": 300,
        "ModelArtifacts": {"S3ModelArtifacts": "s3://out-bucket/job/output/model.tar.gz"},
    }
    descriptions = [
        {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting", "SecondaryStatusTransitions": [{"StatusMessage": "Launching"}]},
        {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"},
        final,
    ]
    client = _FakeClient(descriptions, ["metric: val_accuracy=0.9 step=1 epoch=1"])
    lines: list[str] = []
    wait_for_training_job(_FakeSession(client), "job", out=lines.append, sleep=lambda s: None)
    assert lines[0] == "status: InProgress / Starting - Launching"
    assert "[algo-1] metric: val_accuracy=0.9 step=1 epoch=1" in lines
    assert "status: Completed / Completed" in lines
    assert "training 1000 s, billable 300 s: managed spot saved 70.0%" in lines
    assert lines[-1] == "model: s3://out-bucket/job/output/model.tar.gz"
    assert sum("val_accuracy" in line for line in lines) == 1  # each log line printed once


def test_wait_raises_with_the_failure_reason() -> None:
    failed = {"TrainingJobStatus": "Failed", "SecondaryStatus": "Failed", "FailureReason": "AlgorithmError: boom"}
    with pytest.raises(BertClassifyError, match="ended Failed: AlgorithmError: boom"):
        wait_for_training_job(_FakeSession(_FakeClient([failed], [])), "job", out=lambda line: None, sleep=lambda s: None)


def test_spot_summary_on_demand_and_unknown() -> None:
    assert spot_summary({"TrainingTimeInSeconds": 10, "BillableTimeInSeconds": 10}) == "training 10 s, billable 10 s (on-demand)"
    assert "not reported" in spot_summary({})


def test_wait_under_moto_completes(aws_session, data_files: Path) -> None:
    aws_session.client("s3").create_bucket(Bucket=BUCKET)
    options = TrainingJobOptions(
        role=ROLE, train=str(data_files / "train.csv"), s3_prefix=f"s3://{BUCKET}/w", job_name="waited", image_uri="img:1"
    )
    lines: list[str] = []
    result = launch_training(options, session=aws_session, out=lines.append, wait=True, poll_seconds=0)
    assert result["description"]["TrainingJobStatus"] == "Completed"
    assert lines[-1] == f"model: s3://{BUCKET}/w/output/waited/output/model.tar.gz"
