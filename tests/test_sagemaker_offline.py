"""Dry runs with no AWS at all, and the spot user's job options (retries, warm pools, TensorBoard).

The dry runs run the real CLI in a subprocess with no credentials and every AWS endpoint pointed
at a closed local port, so any AWS call would fail: the request JSON must still come out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

botocore = pytest.importorskip("botocore")

from bert_classify.errors import ConfigError  # noqa: E402
from bert_classify.sagemaker.launch import TrainingJobOptions, build_training_request  # noqa: E402

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
SOURCE = Path(__file__).resolve().parents[1] / "src"


def validate_request(operation: str, request: dict[str, Any]) -> None:
    """Check a request against botocore's SageMaker service model (types, required fields, enums, lengths)."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("sagemaker")
    report = ParamValidator().validate(request, model.operation_model(operation).input_shape)
    assert not report.has_errors(), report.generate_report()


def offline_environment(tmp_path: Path) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AWS_") and key not in ("HTTP_PROXY", "HTTPS_PROXY")
    }
    environment.update(
        {
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # discard port: any call fails at once
            "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_MAX_ATTEMPTS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE), os.environ.get("PYTHONPATH")])),
        }
    )
    return environment


def run_offline(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bert_classify", "sagemaker", *argv],
        env=offline_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_train_dry_run_needs_no_credentials_nor_network(tmp_path: Path) -> None:
    result = run_offline(
        tmp_path, "train", "--dry-run", "--role", ROLE, "--train", "s3://data-bucket/train.csv",
        "--job-name", "offline-job", "--epochs", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    request = json.loads(result.stdout)
    validate_request("CreateTrainingJob", request)
    prefix = "s3://sagemaker-eu-west-1-<ACCOUNT_ID>/bert-classify"
    assert request["HyperParameters"]["sagemaker_submit_directory"] == f"{prefix}/offline-job/source/sourcedir.tar.gz"
    assert request["OutputDataConfig"]["S3OutputPath"] == f"{prefix}/output"
    assert request["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.6-gpu-py312"
    )
    assert "<ACCOUNT_ID> stands for it" in result.stderr and "--s3-prefix" in result.stderr


def test_train_dry_run_with_a_prefix_has_no_placeholder(tmp_path: Path) -> None:
    result = run_offline(
        tmp_path, "train", "--dry-run", "--role", ROLE, "--train", "s3://data-bucket/train.csv",
        "--s3-prefix", "s3://work-bucket/runs",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "<ACCOUNT_ID>" not in result.stdout + result.stderr


@pytest.mark.parametrize("image", ["pytorch", "huggingface"])
def test_deploy_dry_run_from_a_training_job_is_offline(tmp_path: Path, image: str) -> None:
    result = run_offline(
        tmp_path, "deploy", "--dry-run", "--role", ROLE, "--training-job", "job-1", "--image", image,
        "--endpoint-name", "ep-1", "--instance-type", "ml.g5.xlarge",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    requests = json.loads(result.stdout)
    for operation in ("CreateModel", "CreateEndpointConfig", "CreateEndpoint"):
        validate_request(operation, requests[operation])
    container = requests["CreateModel"]["PrimaryContainer"]
    assert container["ModelDataUrl"] == "<S3ModelArtifacts of training job job-1>"
    assert "training job job-1 is not described" in result.stderr
    expected = {
        "pytorch": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:2.6-gpu-py312",
        "huggingface": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/huggingface-pytorch-inference:"
        "2.6.0-transformers4.49.0-gpu-py312-cu124-ubuntu22.04",
    }
    assert container["Image"] == expected[image]


def test_delete_and_invoke_dry_runs_are_offline(tmp_path: Path) -> None:
    deleted = run_offline(tmp_path, "delete", "--dry-run", "--endpoint-name", "ep-1", "--delete-model")
    assert deleted.returncode == 0, deleted.stderr
    plan = json.loads(deleted.stdout)
    assert plan["DeleteEndpoint"] == {"EndpointName": "ep-1"}
    assert plan["DeleteEndpointConfig"]["EndpointConfigName"].startswith("<")
    assert "placeholders" in deleted.stderr
    invoked = run_offline(tmp_path, "invoke", "--dry-run", "--endpoint-name", "ep-1", "--text", "hello")
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(json.loads(invoked.stdout)["Body"]) == {"inputs": ["hello"]}


def test_without_dry_run_the_same_command_does_reach_for_aws(tmp_path: Path) -> None:
    """The offline environment really blocks AWS: the real launch fails with a one-line error."""
    result = run_offline(tmp_path, "train", "--role", ROLE, "--train", "s3://data-bucket/train.csv")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "error:" in result.stderr


def test_static_image_pattern_matches_sagemaker_core() -> None:
    pytest.importorskip("sagemaker.core")
    from bert_classify.sagemaker import aws

    for region, instance, scope in (("us-east-1", "ml.g5.xlarge", "training"), ("eu-west-1", "ml.m5.xlarge", "inference")):
        looked_up = aws.framework_image_uri(region, instance, "2.6", "py312", scope=scope)
        assert aws.static_image_uri(region, instance, "2.6", "py312", scope) == looked_up
    hf = aws.framework_image_uri(
        "eu-west-1", "ml.m5.xlarge", "4.49.0", "py312", scope="inference", framework="huggingface",
        base_framework_version="pytorch2.6.0",
    )  # fmt: skip
    assert hf.startswith(aws.static_image_uri("eu-west-1", "ml.m5.xlarge", "4.49.0", "py312", "inference", "huggingface"))


# --- job options a spot user expects ---------------------------------------------------------------


def _request(**changes: Any) -> dict[str, Any]:
    options = TrainingJobOptions(
        role=ROLE, train="s3://data-bucket/train.csv", s3_prefix="s3://work-bucket/runs", job_name="j1", **changes
    )
    request = build_training_request(options, region="us-east-1", image_uri="img:1").request
    validate_request("CreateTrainingJob", request)
    return request


def test_every_job_retries_capacity_errors_and_syncs_tensorboard() -> None:
    request = _request()
    assert request["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    assert request["TensorBoardOutputConfig"] == {
        "S3OutputPath": "s3://work-bucket/runs/j1/tensorboard",
        "LocalPath": "/opt/ml/output/tensorboard",
    }
    assert "KeepAlivePeriodInSeconds" not in request["ResourceConfig"]
    request = _request(max_retry_attempts=0, tensorboard=False)
    assert "RetryStrategy" not in request and "TensorBoardOutputConfig" not in request
    assert _request(tensorboard_s3_uri="s3://tb-bucket/x")["TensorBoardOutputConfig"]["S3OutputPath"] == "s3://tb-bucket/x"


def test_warm_pool_on_demand() -> None:
    request = _request(spot=False, keep_alive_seconds=1800)
    assert request["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 1800
    assert request["EnableManagedSpotTraining"] is False


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"keep_alive_seconds": 600}, "warm pools cannot be used with managed spot training; add --no-spot"),
        ({"spot": False, "keep_alive_seconds": 3601}, "--keep-alive-seconds must be between 1 and 3600"),
        ({"max_retry_attempts": 31}, "--max-retry-attempts must be between 0 and 30"),
        ({"tensorboard": False, "tensorboard_s3_uri": "s3://tb-bucket/x"}, "contradict"),
        ({"tensorboard_s3_uri": "tb/x"}, "--tensorboard-s3-uri: 'tb/x' is not a valid S3 URI"),
    ],
)
def test_invalid_job_options_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _request(**changes)


def test_cli_refuses_warm_pool_with_spot(tmp_path: Path) -> None:
    result = run_offline(
        tmp_path, "train", "--dry-run", "--role", ROLE, "--train", "s3://data-bucket/t.csv", "--keep-alive-seconds", "30m",
    )  # fmt: skip
    assert result.returncode == 2
    assert "warm pools cannot be used with managed spot training" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_sagemaker_core_the_image_comes_from_the_dlc_pattern(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from bert_classify.sagemaker import aws

    monkeypatch.setitem(sys.modules, "sagemaker.core", None)  # import fails as if not installed
    uri = aws.framework_image_uri("eu-central-1", "ml.g5.xlarge", "2.6", "py312", scope="training")
    assert uri == "763104351884.dkr.ecr.eu-central-1.amazonaws.com/pytorch-training:2.6-gpu-py312"
    assert "sagemaker-core is not installed" in capsys.readouterr().err


def test_network_isolated_deploy_needs_an_image_that_has_our_dependencies(tmp_path: Path) -> None:
    argv = ["deploy", "--dry-run", "--role", ROLE, "--model-data", "s3://out-bucket/m/model.tar.gz", "--network-isolation"]
    refused = run_offline(tmp_path, *argv)
    assert refused.returncode == 2
    assert "cannot pip-install code/requirements.txt; use --image huggingface" in refused.stderr
    accepted = run_offline(tmp_path, *argv, "--image", "huggingface")
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["CreateModel"]["EnableNetworkIsolation"] is True
