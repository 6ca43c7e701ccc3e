"""Deploying, invoking and deleting SageMaker endpoints under moto, with dry runs and validation."""

from __future__ import annotations

import json
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

from bert_classify.cli import main  # noqa: E402
from bert_classify.sagemaker.deploy import DeployOptions, deploy  # noqa: E402

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
REGION = "us-east-1"
MODEL_DATA = "s3://out-bucket/job-1/output/model.tar.gz"


def _sent(session: Any, operation: str) -> list[dict[str, Any]]:
    return [params for name, params in session.sent_log if name == operation]


def test_deploy_creates_model_endpoint_config_and_endpoint(aws_session, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["sagemaker", "deploy", "--role", ROLE, "--model-data", MODEL_DATA, "--endpoint-name", "classifier",
         "--instance-type", "ml.g4dn.xlarge", "--tag", "team=nlp", "--wait"]
    )  # fmt: skip
    assert status == 0
    sagemaker = aws_session.client("sagemaker")
    model = sagemaker.describe_model(ModelName="classifier")
    assert model["PrimaryContainer"]["ModelDataUrl"] == MODEL_DATA
    assert model["PrimaryContainer"]["Image"] == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-gpu-py312"
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert model["ExecutionRoleArn"] == ROLE
    config = sagemaker.describe_endpoint_config(EndpointConfigName="classifier")
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.xlarge"
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 1
    assert config["ProductionVariants"][0]["ModelName"] == "classifier"
    endpoint = sagemaker.describe_endpoint(EndpointName="classifier")
    assert endpoint["EndpointConfigName"] == "classifier"
    assert endpoint["EndpointStatus"] == "InService"
    assert _sent(aws_session, "CreateEndpoint")[0]["Tags"] == [{"Key": "team", "Value": "nlp"}]
    assert "endpoint classifier is in service" in capsys.readouterr().out


def test_serverless_deploy_from_a_training_job(aws_session) -> None:
    sagemaker = aws_session.client("sagemaker")
    sagemaker.create_training_job(
        TrainingJobName="job-1",
        AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
        RoleArn=ROLE,
        OutputDataConfig={"S3OutputPath": "s3://out-bucket"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 60},
    )
    options = DeployOptions(role=ROLE, training_job="job-1", endpoint_name="serverless-ep", serverless=True, memory_size_mb=2048)
    deploy(options, session=aws_session, out=lambda line: None)
    model = sagemaker.describe_model(ModelName="serverless-ep")
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://out-bucket/job-1/output/model.tar.gz"
    assert model["PrimaryContainer"]["Image"].endswith("pytorch-inference:2.6-cpu-py312")
    variant = sagemaker.describe_endpoint_config(EndpointConfigName="serverless-ep")["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    assert "InstanceType" not in variant


def test_deploy_dry_run_prints_three_requests_and_sends_nothing(aws_session, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["sagemaker", "deploy", "--dry-run", "--role", ROLE, "--model-data", MODEL_DATA, "--endpoint-name", "ep",
         "--image-uri", "my-image:1", "--instance-count", "2", "--kms-key", "key-1"]
    )  # fmt: skip
    assert status == 0
    requests = json.loads(capsys.readouterr().out)
    assert list(requests) == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
    assert requests["CreateModel"]["PrimaryContainer"]["Image"] == "my-image:1"
    assert requests["CreateEndpointConfig"] == {
        "EndpointConfigName": "ep",
        "ProductionVariants": [
            {"VariantName": "AllTraffic", "ModelName": "ep", "InitialInstanceCount": 2, "InstanceType": "ml.g4dn.xlarge", "InitialVariantWeight": 1.0}
        ],
        "KmsKeyId": "key-1",
    }
    assert requests["CreateEndpoint"] == {"EndpointName": "ep", "EndpointConfigName": "ep"}
    assert aws_session.sent_log == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give exactly one of --model-data"),
        (["--model-data", "s3://out-bucket/model"], "must name a model.tar.gz archive"),
        (["--model-data", "https://x/model.tar.gz"], "--model-data: 'https://x/model.tar.gz' is not a valid S3 URI"),
        (["--model-data", MODEL_DATA, "--serverless", "--memory-size", "1000"], "--memory-size must be one of 1024"),
        (["--model-data", MODEL_DATA, "--endpoint-name", "bad_name"], "--endpoint-name 'bad_name' is invalid"),
    ],
)
def test_invalid_deploy_options_give_clear_messages(aws_session, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sagemaker", "deploy", "--dry-run", "--role", ROLE, *extra]) == 2
    assert message in capsys.readouterr().err


def test_deploy_without_role_is_refused(aws_session, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sagemaker", "deploy", "--model-data", MODEL_DATA]) == 2
    assert "--role is required" in capsys.readouterr().err


def test_invoke_sends_json_inputs(aws_session, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("a painter and singer\nspecies of mammal\n", encoding="utf-8")
    status = main(["sagemaker", "invoke", "--endpoint-name", "classifier", "--text", "a company", "--input", str(texts), "--top-k", "2"])
    assert status == 0
    (sent,) = _sent(aws_session, "InvokeEndpoint")
    assert sent["ContentType"] == "application/json"
    assert json.loads(sent["Body"]) == {"inputs": ["a company", "a painter and singer", "species of mammal"], "parameters": {"top_k": 2}}
    assert capsys.readouterr().out.strip() == "body"  # moto's canned answer, printed as is
    # The body is one the SageMaker handler decodes (texts in order, top_k honoured).
    from bert_classify.inference.codec import decode_request

    decoded = decode_request(sent["Body"].encode(), sent["ContentType"])
    assert (decoded.texts, decoded.top_k) == (["a company", "a painter and singer", "species of mammal"], 2)


def test_invoke_dry_run_and_no_texts(aws_session, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sagemaker", "invoke", "--dry-run", "--endpoint-name", "ep", "--text", "hello"]) == 0
    assert json.loads(json.loads(capsys.readouterr().out)["Body"]) == {"inputs": ["hello"]}
    assert main(["sagemaker", "invoke", "--endpoint-name", "ep"]) == 2
    assert "give at least one text" in capsys.readouterr().err
    assert aws_session.sent_log == []


def test_delete_removes_endpoint_and_config_and_optionally_the_model(aws_session, capsys: pytest.CaptureFixture[str]) -> None:
    deploy(DeployOptions(role=ROLE, model_data=MODEL_DATA, endpoint_name="ep", image_uri="img"), session=aws_session, out=lambda line: None)
    assert main(["sagemaker", "delete", "--endpoint-name", "ep", "--delete-model", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan == {  # a dry run asks AWS nothing: names it cannot know are marked placeholders
        "DeleteEndpoint": {"EndpointName": "ep"},
        "DeleteEndpointConfig": {"EndpointConfigName": "<EndpointConfigName of endpoint ep>"},
        "DeleteModel": [{"ModelName": "<each ModelName of endpoint ep>"}],
    }
    assert aws_session.sent_log[-1][0] == "CreateEndpoint"  # no DescribeEndpoint was sent
    sagemaker = aws_session.client("sagemaker")
    assert sagemaker.describe_endpoint(EndpointName="ep")["EndpointStatus"] == "InService"  # dry run kept it
    assert main(["sagemaker", "delete", "--endpoint-name", "ep"]) == 0
    assert sagemaker.list_endpoints()["Endpoints"] == []
    assert sagemaker.list_endpoint_configs()["EndpointConfigs"] == []
    assert [m["ModelName"] for m in sagemaker.list_models()["Models"]] == ["ep"]  # kept without --delete-model


def test_delete_of_an_unknown_endpoint_is_a_clear_error(aws_session, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sagemaker", "delete", "--endpoint-name", "nope"]) == 2
    assert "AWS refused describing endpoint nope" in capsys.readouterr().err
