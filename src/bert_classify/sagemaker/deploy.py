"""Deploy a trained model.tar.gz as a SageMaker endpoint (real-time or serverless), invoke it, delete it.

The archive is what a training job leaves in S3: the model files plus code/inference.py, which
the AWS PyTorch inference container runs as is. Plain boto3; every step has a dry run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bert_classify.errors import BertClassifyError, ConfigError
from bert_classify.sagemaker import aws
from bert_classify.sagemaker.launch import DEFAULT_FRAMEWORK_VERSION, DEFAULT_PY_VERSION, default_job_name

DEFAULT_ENDPOINT_INSTANCE_TYPE = "ml.g4dn.xlarge"
SERVERLESS_MEMORY_SIZES = (1024, 2048, 3072, 4096, 5120, 6144)
# Which AWS inference image serves the archive; both run code/inference.py from the model.tar.gz.
IMAGES = ("pytorch", "huggingface")
# The Hugging Face inference image's versions (transformers, and the PyTorch it is built on).
DEFAULT_HF_TRANSFORMERS_VERSION = "4.49.0"
DEFAULT_HF_PYTORCH_VERSION = "pytorch2.6.0"
# Serverless endpoints run on CPU; this instance type only picks the CPU flavour of the image.
_SERVERLESS_IMAGE_INSTANCE_TYPE = "ml.m5.xlarge"


@dataclass
class DeployOptions:
    """Everything `bert-classify sagemaker deploy` accepts."""

    role: str | None = None
    model_data: str | None = None  # s3://.../model.tar.gz
    training_job: str | None = None  # alternative to model_data: that job's model artifacts
    endpoint_name: str | None = None
    model_name: str | None = None  # default: the endpoint name
    instance_type: str = DEFAULT_ENDPOINT_INSTANCE_TYPE
    instance_count: int = 1
    serverless: bool = False
    memory_size_mb: int = 4096
    max_concurrency: int = 5
    image_uri: str | None = None
    image: str = "pytorch"  # or "huggingface": the Hugging Face inference DLC
    framework_version: str = DEFAULT_FRAMEWORK_VERSION  # PyTorch's; with image="huggingface", transformers'

    py_version: str = DEFAULT_PY_VERSION
    kms_key: str | None = None
    subnets: list[str] = field(default_factory=list)
    security_group_ids: list[str] = field(default_factory=list)
    network_isolation: bool = False
    environment: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    region: str | None = None


def validate_deploy_options(options: DeployOptions) -> None:
    aws.require_role(options.role)
    if bool(options.model_data) == bool(options.training_job):
        raise ConfigError("give exactly one of --model-data s3://.../model.tar.gz or --training-job NAME.")
    if options.model_data:
        _, key = aws.parse_s3_uri(options.model_data, "--model-data")
        if not key.endswith(".tar.gz"):
            raise ConfigError(f"--model-data must name a model.tar.gz archive, not '{options.model_data}'.")
    for flag, name in (("--endpoint-name", options.endpoint_name), ("--model-name", options.model_name)):
        if name is not None and not aws.RESOURCE_NAME.match(name):
            raise ConfigError(
                f"{flag} '{name}' is invalid: 1-63 letters, digits and hyphens, starting with a letter or digit."
            )
    if options.serverless:
        if options.memory_size_mb not in SERVERLESS_MEMORY_SIZES:
            raise ConfigError(
                f"--memory-size must be one of {', '.join(map(str, SERVERLESS_MEMORY_SIZES))} MB, not {options.memory_size_mb}."
            )
        if not 1 <= options.max_concurrency <= 200:
            raise ConfigError(f"--max-concurrency must be between 1 and 200, not {options.max_concurrency}.")
    else:
        if options.instance_count < 1:
            raise ConfigError(f"--instance-count must be >= 1, not {options.instance_count}.")
        if not options.instance_type.startswith("ml."):
            raise ConfigError(
                f"--instance-type must be a SageMaker instance type such as ml.g4dn.xlarge, not '{options.instance_type}'."
            )
    if bool(options.subnets) != bool(options.security_group_ids):
        raise ConfigError("--subnets and --security-group-ids go together: a VPC configuration needs both.")
    if options.image not in IMAGES:
        raise ConfigError(f"--image must be one of {', '.join(IMAGES)}, not '{options.image}'.")
    if options.network_isolation and options.image == "pytorch" and not options.image_uri:
        # code/requirements.txt is installed at start; only an image that already satisfies it works offline.
        raise ConfigError(
            "--network-isolation: the PyTorch inference image has no transformers and an isolated container "
            "cannot pip-install code/requirements.txt; use --image huggingface (it ships transformers, "
            "tokenizers and safetensors, so nothing is installed), or an --image-uri that has them."
        )


def build_deploy_requests(
    options: DeployOptions, *, region: str, model_data: str, image_uri: str
) -> dict[str, dict[str, Any]]:
    """The CreateModel, CreateEndpointConfig and CreateEndpoint requests. No AWS calls."""
    endpoint_name = options.endpoint_name or default_job_name().replace("bert-classify-", "bert-classify-ep-")
    model_name = options.model_name or endpoint_name
    tags = [{"Key": key, "Value": value} for key, value in options.tags.items()]
    environment = {
        # The PyTorch inference container runs code/inference.py from inside the model archive.
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": region,
        "TOKENIZERS_PARALLELISM": "false",
        **options.environment,
    }
    create_model: dict[str, Any] = {
        "ModelName": model_name,
        "PrimaryContainer": {"Image": image_uri, "ModelDataUrl": model_data, "Environment": environment},
        "ExecutionRoleArn": options.role,
    }
    if options.subnets:
        create_model["VpcConfig"] = {
            "Subnets": list(options.subnets),
            "SecurityGroupIds": list(options.security_group_ids),
        }
    if options.network_isolation:
        create_model["EnableNetworkIsolation"] = True
    variant: dict[str, Any] = {"VariantName": "AllTraffic", "ModelName": model_name}
    if options.serverless:
        variant["ServerlessConfig"] = {
            "MemorySizeInMB": options.memory_size_mb,
            "MaxConcurrency": options.max_concurrency,
        }
    else:
        variant.update(
            {
                "InitialInstanceCount": options.instance_count,
                "InstanceType": options.instance_type,
                "InitialVariantWeight": 1.0,
            }
        )
    create_config: dict[str, Any] = {"EndpointConfigName": endpoint_name, "ProductionVariants": [variant]}
    if options.kms_key:
        create_config["KmsKeyId"] = options.kms_key
    create_endpoint: dict[str, Any] = {"EndpointName": endpoint_name, "EndpointConfigName": endpoint_name}
    if tags:
        for request in (create_model, create_config, create_endpoint):
            request["Tags"] = tags
    return {
        "CreateModel": create_model,
        "CreateEndpointConfig": create_config,
        "CreateEndpoint": create_endpoint,
    }


def deploy(
    options: DeployOptions,
    *,
    dry_run: bool = False,
    wait: bool = False,
    session: Any = None,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Create model, endpoint configuration and endpoint; return the requests (dry_run: print them, send nothing)."""
    validate_deploy_options(options)
    session = session or aws.make_session(options.region)
    region = aws.session_region(session, options.region)
    image_uri = options.image_uri or inference_image_uri(options, region)
    sagemaker = None
    model_data = options.model_data
    if model_data is None and dry_run:  # a dry run makes no AWS call, not even a read
        model_data = f"<S3ModelArtifacts of training job {options.training_job}>"
        aws.note(f"dry run: training job {options.training_job} is not described; its model.tar.gz URI is a placeholder.")
    elif model_data is None:  # --training-job: read its artifacts
        sagemaker = session.client("sagemaker")
        model_data = training_job_model_data(sagemaker, str(options.training_job))
    requests = build_deploy_requests(options, region=region, model_data=model_data, image_uri=image_uri)
    if dry_run:
        out(json.dumps(requests, indent=2))
        return requests
    sagemaker = sagemaker or session.client("sagemaker")
    with aws.aws_errors("creating the model"):
        sagemaker.create_model(**requests["CreateModel"])
    with aws.aws_errors("creating the endpoint configuration"):
        sagemaker.create_endpoint_config(**requests["CreateEndpointConfig"])
    with aws.aws_errors("creating the endpoint"):
        sagemaker.create_endpoint(**requests["CreateEndpoint"])
    endpoint_name = requests["CreateEndpoint"]["EndpointName"]
    out(f"creating endpoint {endpoint_name} (model {requests['CreateModel']['ModelName']}, {model_data})")
    if wait:
        with aws.aws_errors(f"waiting for endpoint {endpoint_name}"):
            sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=endpoint_name)
        out(f"endpoint {endpoint_name} is in service")
    return requests


def inference_image_uri(options: DeployOptions, region: str) -> str:
    """The AWS PyTorch or Hugging Face inference image for the options (looked up offline)."""
    instance_type = _SERVERLESS_IMAGE_INSTANCE_TYPE if options.serverless else options.instance_type
    if options.image == "huggingface":
        version = (
            DEFAULT_HF_TRANSFORMERS_VERSION
            if options.framework_version == DEFAULT_FRAMEWORK_VERSION
            else options.framework_version
        )
        return aws.framework_image_uri(
            region,
            instance_type,
            version,
            options.py_version,
            scope="inference",
            framework="huggingface",
            base_framework_version=DEFAULT_HF_PYTORCH_VERSION,
        )
    return aws.framework_image_uri(
        region, instance_type, options.framework_version, options.py_version, scope="inference"
    )


def training_job_model_data(sagemaker: Any, job_name: str) -> str:
    with aws.aws_errors(f"describing training job {job_name}"):
        description = sagemaker.describe_training_job(TrainingJobName=job_name)
    if description.get("TrainingJobStatus") != "Completed":
        raise BertClassifyError(
            f"training job {job_name} is {description.get('TrainingJobStatus')}, not Completed: nothing to deploy yet."
        )
    return str(description["ModelArtifacts"]["S3ModelArtifacts"])


def invoke(
    endpoint_name: str,
    texts: Sequence[str],
    *,
    top_k: int | None = None,
    session: Any = None,
    region: str | None = None,
    dry_run: bool = False,
    out: Callable[[str], None] = print,
) -> Any:
    """Send texts to an endpoint as application/json {"inputs": [...]}; return the decoded answer.

    With top_k, the body carries {"parameters": {"top_k": k}}, as the SageMaker handler expects.
    """
    if not texts:
        raise ConfigError(
            "give at least one text: --text TEXT (repeatable) or --input FILE (one text per line)."
        )
    body: dict[str, Any] = {"inputs": list(texts)}
    if top_k is not None:
        if top_k < 1:
            raise ConfigError(f"--top-k must be >= 1, not {top_k}.")
        body["parameters"] = {"top_k": top_k}  # the handler's request format (inference/codec.py)
    request = {
        "EndpointName": endpoint_name,
        "ContentType": "application/json",
        "Accept": "application/json",
        "Body": json.dumps(body),
    }
    if dry_run:
        out(json.dumps(request, indent=2))
        return request
    session = session or aws.make_session(region)
    aws.session_region(session, region)
    runtime = session.client("sagemaker-runtime")
    with aws.aws_errors(f"invoking endpoint {endpoint_name}"):
        response = runtime.invoke_endpoint(**request)
    payload = response["Body"].read()
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", errors="replace")


def delete(
    endpoint_name: str,
    *,
    delete_model: bool = False,
    session: Any = None,
    region: str | None = None,
    dry_run: bool = False,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Delete the endpoint and its configuration (and, with delete_model, the models it served).

    dry_run makes no AWS call: the configuration and model names are placeholders (said on stderr).
    """
    if dry_run:
        plan = {
            "DeleteEndpoint": {"EndpointName": endpoint_name},
            "DeleteEndpointConfig": {"EndpointConfigName": f"<EndpointConfigName of endpoint {endpoint_name}>"},
            "DeleteModel": [{"ModelName": f"<each ModelName of endpoint {endpoint_name}>"}] if delete_model else [],
        }
        aws.note(
            "dry run: the endpoint is not described, so its configuration and model names are placeholders "
            "(`bert-classify sagemaker deploy` names them after the endpoint unless --model-name was given)."
        )
        out(json.dumps(plan, indent=2))
        return plan
    session = session or aws.make_session(region)
    aws.session_region(session, region)
    sagemaker = session.client("sagemaker")
    with aws.aws_errors(f"describing endpoint {endpoint_name}"):
        endpoint = sagemaker.describe_endpoint(EndpointName=endpoint_name)
    config_name = endpoint["EndpointConfigName"]
    model_names: list[str] = []
    if delete_model:
        with aws.aws_errors(f"describing endpoint configuration {config_name}"):
            config = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
        model_names = sorted({variant["ModelName"] for variant in config.get("ProductionVariants", [])})
    plan = {
        "DeleteEndpoint": {"EndpointName": endpoint_name},
        "DeleteEndpointConfig": {"EndpointConfigName": config_name},
        "DeleteModel": [{"ModelName": name} for name in model_names],
    }
    with aws.aws_errors(f"deleting endpoint {endpoint_name}"):
        sagemaker.delete_endpoint(EndpointName=endpoint_name)
        sagemaker.delete_endpoint_config(EndpointConfigName=config_name)
        for name in model_names:
            sagemaker.delete_model(ModelName=name)
    out(
        f"deleted endpoint {endpoint_name} and endpoint configuration {config_name}"
        + (f"; models {', '.join(model_names)}" if model_names else "")
    )
    return plan
