"""Small AWS helpers shared by launch and deploy: session and region, S3 URIs, role check, images, errors.

boto3 and sagemaker-core are imported lazily: they are the optional `sagemaker` extra.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bert_classify.errors import BertClassifyError, ConfigError

_S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/[\w+=,.@\-/]+$")
EXTRA_HINT = "install the SageMaker extra: pip install 'bert-classify[sagemaker]'"
# Names that must match SageMaker's own pattern: training, tuning, model and endpoint names.
RESOURCE_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
# What a dry run writes where only AWS could say (it never asks): clearly not a real value.
ACCOUNT_PLACEHOLDER = "<ACCOUNT_ID>"
# The AWS Deep Learning Containers registry of most commercial regions; used only when sagemaker-core
# (which knows every region's registry) is not installed, and then said on stderr.
DLC_REGISTRY_ACCOUNT = "763104351884"


def parse_s3_uri(uri: str, flag: str) -> tuple[str, str]:
    """(bucket, key) of an s3://bucket/key URI, or a ConfigError naming the flag."""
    match = _S3_URI.match(uri)
    if not match:
        raise ConfigError(
            f"{flag}: '{uri}' is not a valid S3 URI; write s3://bucket/key "
            "(bucket: 3-63 lower-case letters, digits, dots and hyphens)."
        )
    return match.group(1), match.group(2) or ""


def require_role(role: str | None) -> str:
    if not role:
        raise ConfigError(
            "--role is required: the ARN of the IAM role SageMaker assumes for the job "
            "(arn:aws:iam::<account>:role/<name>, with S3 read/write on your buckets and CloudWatch Logs; "
            "see docs/sagemaker.md)."
        )
    if not _ROLE_ARN.match(role):
        raise ConfigError(
            f"--role '{role}' is not an IAM role ARN; expected arn:aws:iam::<12-digit account>:role/<name>."
        )
    return role


def make_session(region: str | None = None) -> Any:
    try:
        import boto3
    except ImportError:
        raise ConfigError(f"boto3 is not installed: {EXTRA_HINT}.") from None
    return boto3.session.Session(region_name=region)


def session_region(session: Any, region: str | None = None) -> str:
    region = region or session.region_name or os.environ.get("AWS_REGION")
    if not region:
        raise ConfigError("no AWS region: pass --region or set AWS_REGION / AWS_DEFAULT_REGION.")
    return region


def account_id(session: Any) -> str:
    with aws_errors("looking up the AWS account (to name the default bucket; pass --s3-prefix to skip)"):
        return str(session.client("sts").get_caller_identity()["Account"])


def default_s3_prefix(region: str, account: str | None) -> str:
    """SageMaker's default bucket; `ACCOUNT_PLACEHOLDER` stands in for the account in a dry run."""
    if not account:
        raise ConfigError(
            "pass --s3-prefix s3://bucket/prefix: without it the default bucket needs the AWS account id."
        )
    return f"s3://sagemaker-{region}-{account}/bert-classify"


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    """Create SageMaker's default bucket when it does not exist yet (as the SageMaker SDK does)."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise BertClassifyError(f"cannot use bucket {bucket}: {error}") from None
    with aws_errors(f"creating bucket {bucket}"):
        if region == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})


def upload_file(s3: Any, local: Path, uri: str) -> None:
    bucket, key = parse_s3_uri(uri, "upload")
    s3.upload_file(str(local), bucket, key)


def note(message: str) -> None:
    """A line for the user on stderr (stdout carries the request JSON of a dry run)."""
    print(f"note: {message}", file=sys.stderr)


def framework_image_uri(
    region: str,
    instance_type: str,
    framework_version: str,
    py_version: str,
    *,
    scope: str,
    framework: str = "pytorch",
    base_framework_version: str | None = None,
) -> str:
    """The AWS Deep Learning Container for this region, instance type and scope ('training' / 'inference').

    framework "pytorch" (version = PyTorch's) or "huggingface" (version = transformers', with
    base_framework_version "pytorch2.6.0"). sagemaker-core's table is read offline (no AWS call); without
    sagemaker-core the documented DLC name pattern is used and said on stderr.
    """
    try:
        from sagemaker.core import image_uris
    except ImportError:
        uri = static_image_uri(
            region, instance_type, framework_version, py_version, scope, framework, base_framework_version
        )
        note(f"sagemaker-core is not installed ({EXTRA_HINT}); image URI built from the DLC name pattern: {uri}")
        return uri
    arguments: dict[str, Any] = {}
    if base_framework_version:
        arguments["base_framework_version"] = base_framework_version
    try:
        return str(
            image_uris.retrieve(
                framework,
                region=region,
                version=framework_version,
                py_version=py_version,
                instance_type=instance_type,
                image_scope=scope,
                **arguments,
            )
        )
    except (ValueError, KeyError) as error:
        raise ConfigError(
            f"no {framework} {scope} image for version {framework_version}/{py_version} on {instance_type} in {region} "
            f"({error}); change --framework-version / --py-version or pass --image-uri."
        ) from None


def static_image_uri(
    region: str,
    instance_type: str,
    framework_version: str,
    py_version: str,
    scope: str,
    framework: str = "pytorch",
    base_framework_version: str | None = None,
) -> str:
    """The DLC name pattern (github.com/aws/deep-learning-containers, available_images.md).

    pytorch:     <account>.dkr.ecr.<region>.amazonaws.com/pytorch-<scope>:<version>-<cpu|gpu>-<py>
    huggingface: .../huggingface-pytorch-<scope>:<torch>-transformers<version>-<cpu|gpu>-<py>
    (the GPU images of Hugging Face also carry a CUDA/OS suffix that only sagemaker-core's table knows).
    """
    processor = "gpu" if instance_type.split(".")[1][:1] in ("p", "g") else "cpu"
    suffix = ".amazonaws.com.cn" if region.startswith("cn-") else ".amazonaws.com"
    registry = f"{DLC_REGISTRY_ACCOUNT}.dkr.ecr.{region}{suffix}"
    if framework == "huggingface":
        torch = (base_framework_version or "pytorch2.6.0").removeprefix("pytorch")
        return (
            f"{registry}/huggingface-pytorch-{scope}:{torch}-transformers{framework_version}-{processor}-{py_version}"
        )
    return f"{registry}/pytorch-{scope}:{framework_version}-{processor}-{py_version}"


@contextlib.contextmanager
def aws_errors(doing: str) -> Iterator[None]:
    """Turn AWS errors (credentials, permissions, validation) into one-line user errors."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise ConfigError(f"boto3 is not installed: {EXTRA_HINT}.") from None
    try:
        yield
    except ClientError as error:
        details = error.response.get("Error", {})
        raise BertClassifyError(
            f"AWS refused {doing}: {details.get('Code', 'error')}: {details.get('Message', error)}"
        ) from None
    except BotoCoreError as error:
        raise BertClassifyError(f"AWS call failed while {doing}: {error}") from None
