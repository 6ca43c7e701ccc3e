"""Launch a SageMaker training job (managed spot by default) with plain boto3, and follow it to the end.

`build_training_request` turns `TrainingJobOptions` into the exact CreateTrainingJob request (no AWS
calls); `launch_training` uploads local data and our code, sends it, and optionally waits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bert_classify.config import TrainConfig
from bert_classify.errors import BertClassifyError, ConfigError
from bert_classify.sagemaker import aws
from bert_classify.sagemaker.environment import CHECKPOINT_DIR
from bert_classify.sagemaker.forwarding import IMAGE_ENTRY, container_command
from bert_classify.sagemaker.source import ENTRY_SCRIPT_NAME, build_sourcedir
from bert_classify.train_options import TRAIN_OPTIONS, find_option, parse_switch

DEFAULT_INSTANCE_TYPE = "ml.g5.xlarge"
DEFAULT_FRAMEWORK_VERSION = "2.6"
DEFAULT_PY_VERSION = "py312"
DEFAULT_MAX_RUN_SECONDS = 24 * 3600
DISTRIBUTIONS = ("auto", "torchrun", "none")
DATA_CHANNELS = ("train", "val", "classes")
# `train` flags that the job sets itself: SageMaker's directories, or container-side paths only.
LAUNCHER_OWNED_FLAGS = tuple(option.flag for option in TRAIN_OPTIONS if option.launcher_owned)
# SageMaker takes the first capture group of each regex from the job's log (our `metric:` lines).
_FLOAT = r"([-+]?(?:[0-9]*\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?|nan|inf)"
METRIC_NAMES = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1")
METRIC_DEFINITIONS = [{"Name": name, "Regex": rf"metric: {name}={_FLOAT} step="} for name in METRIC_NAMES]
TERMINAL_STATUSES = ("Completed", "Failed", "Stopped")
# SageMaker retries a job that fails with an internal error or for lack of capacity (RetryStrategy).
DEFAULT_MAX_RETRY_ATTEMPTS = 2
MAX_RETRY_ATTEMPTS = 30
MAX_KEEP_ALIVE_SECONDS = 3600  # SageMaker's limit for warm pools
TENSORBOARD_DIR = "/opt/ml/output/tensorboard"


@dataclass
class TrainingJobOptions:
    """Everything `bert-classify sagemaker train` accepts. Data and model are S3 URIs or local paths."""

    role: str | None = None
    train: str | None = None
    val: str | None = None
    classes: str | None = None
    model: str | None = None  # S3 URI / local directory -> `model` channel; anything else: a Hugging Face id
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # `train` options (flag or field names)
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    distribution: str = "auto"  # auto: torchrun across instances when instance_count > 1
    spot: bool = True
    max_run: int = DEFAULT_MAX_RUN_SECONDS
    max_wait: int | None = None  # default with spot: 2 x max_run
    checkpoint_s3_uri: str | None = None  # default with spot: <s3-prefix>/<job>/checkpoints
    output_path: str | None = None  # default: <s3-prefix>/output
    s3_prefix: str | None = (
        None  # where local data and the code go; default s3://sagemaker-<region>-<account>/bert-classify
    )
    job_name: str | None = None
    image_uri: str | None = None
    framework_version: str = DEFAULT_FRAMEWORK_VERSION
    py_version: str = DEFAULT_PY_VERSION
    volume_size_gb: int = 30
    subnets: list[str] = field(default_factory=list)
    security_group_ids: list[str] = field(default_factory=list)
    output_kms_key: str | None = None
    volume_kms_key: str | None = None
    network_isolation: bool = False
    encrypt_inter_container_traffic: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    region: str | None = None
    max_retry_attempts: int = DEFAULT_MAX_RETRY_ATTEMPTS  # 0: no RetryStrategy
    keep_alive_seconds: int | None = None  # warm pool (on-demand only)
    tensorboard: bool = True
    tensorboard_s3_uri: str | None = None  # default: <s3-prefix>/<job>/tensorboard
    # PID-1 signal forwarder in front of the image's entry, so that a spot reclaim's SIGTERM reaches the trainer.
    forward_signals: bool = True
    container_entry: list[str] = field(default_factory=lambda: list(IMAGE_ENTRY))


@dataclass
class LaunchPlan:
    """The request and the uploads it depends on (local path -> S3 URI)."""

    request: dict[str, Any]
    uploads: list[tuple[Path, str]]
    source_uri: str


def default_job_name(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"bert-classify-{now:%Y-%m-%d-%H-%M-%S}-{now.microsecond // 1000:03d}"


def validate_options(options: TrainingJobOptions) -> None:
    """Refuse a job that SageMaker would refuse (or that would waste a spot instance) before any AWS call."""
    aws.require_role(options.role)
    if not options.train:
        raise ConfigError("--train is required: an S3 URI (s3://bucket/key) or a local file to upload.")
    if options.instance_count < 1:
        raise ConfigError(f"--instance-count must be >= 1, not {options.instance_count}.")
    if not options.instance_type.startswith("ml."):
        raise ConfigError(
            f"--instance-type must be a SageMaker instance type such as ml.g5.xlarge, not '{options.instance_type}'."
        )
    if options.distribution not in DISTRIBUTIONS:
        raise ConfigError(
            f"--distribution must be one of {', '.join(DISTRIBUTIONS)}, not '{options.distribution}'."
        )
    if options.max_run < 1:
        raise ConfigError(f"--max-run must be at least 1 second, not {options.max_run}.")
    if options.spot:
        if options.max_wait is not None and options.max_wait < options.max_run:
            raise ConfigError(
                f"--max-wait ({options.max_wait} s) must be >= --max-run ({options.max_run} s) with spot training: "
                "max-wait is the run time plus the time spent waiting for spot capacity. Raise --max-wait or lower --max-run."
            )
    elif options.max_wait is not None:
        raise ConfigError("--max-wait applies only to spot training; drop it, or drop --no-spot.")
    if options.volume_size_gb < 1:
        raise ConfigError(f"--volume-size must be >= 1 GB, not {options.volume_size_gb}.")
    if bool(options.subnets) != bool(options.security_group_ids):
        raise ConfigError("--subnets and --security-group-ids go together: a VPC configuration needs both.")
    if options.job_name is not None and not aws.RESOURCE_NAME.match(options.job_name):
        raise ConfigError(
            f"--job-name '{options.job_name}' is invalid: 1-63 letters, digits and hyphens, starting with a letter or digit."
        )
    if not 0 <= options.max_retry_attempts <= MAX_RETRY_ATTEMPTS:
        raise ConfigError(
            f"--max-retry-attempts must be between 0 and {MAX_RETRY_ATTEMPTS}, not {options.max_retry_attempts}."
        )
    if options.keep_alive_seconds is not None:
        if not 1 <= options.keep_alive_seconds <= MAX_KEEP_ALIVE_SECONDS:
            raise ConfigError(
                f"--keep-alive-seconds must be between 1 and {MAX_KEEP_ALIVE_SECONDS} (SageMaker's warm-pool limit), "
                f"not {options.keep_alive_seconds}."
            )
        if options.spot:
            raise ConfigError(
                "--keep-alive-seconds: SageMaker warm pools cannot be used with managed spot training; "
                "add --no-spot to keep on-demand instances warm, or drop --keep-alive-seconds."
            )
    if options.tensorboard_s3_uri is not None and not options.tensorboard:
        raise ConfigError("--tensorboard-s3-uri and --no-tensorboard contradict each other; drop one.")
    for flag, uri in (
        ("--tensorboard-s3-uri", options.tensorboard_s3_uri),
        ("--checkpoint-s3-uri", options.checkpoint_s3_uri),
        ("--output-path", options.output_path),
        ("--s3-prefix", options.s3_prefix),
    ):
        if uri is not None:
            aws.parse_s3_uri(uri, flag)
    for channel in DATA_CHANNELS:
        _channel_source(channel, getattr(options, channel))
    if options.model is not None:
        _model_source(options.model)
    if options.forward_signals:
        container_command(options.container_entry)
    normalise_hyperparameters(options.hyperparameters)


def normalise_hyperparameters(hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """`train` options -> SageMaker hyper-parameters: flag names without dashes, string values.

    Keys may be flags (`max-steps`, `no-group-by-length`) or TrainConfig fields (`max_steps`,
    `group_by_length`); on/off options become "True"/"False" under their flag (the entry script turns
    them back into flags: environment.boolean_flags_to_cli); None drops the option. Values are checked
    with the option table's parsers and TrainConfig's validation, so a typo fails here, not on a spot instance.
    """
    result: dict[str, str] = {}
    typed: dict[str, Any] = {}
    for key, value in hyperparameters.items():
        option = find_option(key)
        flag = option.flag if option else str(key).lstrip("-").replace("_", "-")
        if option is not None and option.launcher_owned:
            raise ConfigError(
                f"hyper-parameter '{key}' is set by the launcher: use the launcher's own --{flag} option "
                "(data and model channels, --output-path, --checkpoint-s3-uri)."
                if flag != "nproc"
                else "hyper-parameter 'nproc' is chosen by SageMaker: one process per GPU (see --distribution)."
            )
        if option is None or option.field is None:
            raise ConfigError(
                f"unknown training option '{key}': see `bert-classify train --help` for the options."
            )
        if value is None:
            continue
        if option.switch:
            # A field name states the field's value (group_by_length=False); the flag states the switch's.
            enabled = parse_switch(value, flag=flag)
            if option.negated and str(key).lstrip("-").replace("_", "-") == option.field_flag:
                enabled = not enabled  # group_by_length=False is the switch --no-group-by-length on
            result[flag] = "True" if enabled else "False"
            typed[option.field] = option.value_from_switch(enabled)
            continue
        text = str(value)
        try:
            converted = option.parse(text) if option.parse else text
        except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
            raise ConfigError(f"training option --{flag}: invalid value '{text}' ({error}).") from None
        if option.choices is not None and converted not in option.choices:
            raise ConfigError(
                f"training option --{flag} must be one of {', '.join(map(str, option.choices))}, not '{text}'."
            )
        result[flag] = text
        typed[option.field] = converted
    # Data comes from channels, so the file checks are skipped (`reader` stands in for them).
    TrainConfig.from_dict({**typed, "reader": typed.get("reader") or "sagemaker-channels"}).validate()
    return result


def build_training_request(
    options: TrainingJobOptions,
    *,
    region: str,
    account_id: str | None = None,
    job_name: str | None = None,
    image_uri: str | None = None,
) -> LaunchPlan:
    """The exact CreateTrainingJob request, and the uploads it needs. No AWS calls."""
    validate_options(options)
    job_name = job_name or options.job_name or default_job_name()
    prefix = (options.s3_prefix or aws.default_s3_prefix(region, account_id)).rstrip("/")
    job_prefix = f"{prefix}/{job_name}"
    uploads: list[tuple[Path, str]] = []
    channels: dict[str, str] = {}
    for channel in DATA_CHANNELS:
        source = _channel_source(channel, getattr(options, channel))
        if source is None:
            continue
        if isinstance(source, Path):
            uri = f"{job_prefix}/input/{channel}/{source.name}"
            uploads.append((source, uri))
            channels[channel] = f"{job_prefix}/input/{channel}/"
        else:
            channels[channel] = source
    hyperparameters = normalise_hyperparameters(options.hyperparameters)
    if options.model is not None:
        model_source = _model_source(options.model)
        if isinstance(model_source, Path):
            for file in sorted(p for p in model_source.rglob("*") if p.is_file()):
                uploads.append(
                    (file, f"{job_prefix}/input/model/{file.relative_to(model_source).as_posix()}")
                )
            channels["model"] = f"{job_prefix}/input/model/"
        elif model_source.startswith("s3://"):
            channels["model"] = model_source
        else:
            hyperparameters["model"] = model_source
    source_uri = f"{job_prefix}/source/sourcedir.tar.gz"
    distributed = options.distribution == "torchrun" or (
        options.distribution == "auto" and options.instance_count > 1
    )
    hyperparameters.update(
        {
            "sagemaker_program": ENTRY_SCRIPT_NAME,
            "sagemaker_submit_directory": source_uri,
            "sagemaker_region": region,
            "sagemaker_job_name": job_name,
            "sagemaker_container_log_level": "20",
            "sagemaker_torch_distributed_enabled": "true" if distributed else "false",
        }
    )
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": options.max_run}
    if options.spot:
        stopping["MaxWaitTimeInSeconds"] = (
            options.max_wait if options.max_wait is not None else 2 * options.max_run
        )
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {
            "TrainingImage": image_uri or options.image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
            "EnableSageMakerMetricsTimeSeries": True,
        },
        "RoleArn": options.role,
        "InputDataConfig": [_s3_channel(name, uri) for name, uri in channels.items()],
        "OutputDataConfig": {"S3OutputPath": options.output_path or f"{prefix}/output"},
        "ResourceConfig": {
            "InstanceType": options.instance_type,
            "InstanceCount": options.instance_count,
            "VolumeSizeInGB": options.volume_size_gb,
        },
        "StoppingCondition": stopping,
        "HyperParameters": dict(sorted(hyperparameters.items())),
        # Unbuffered output: metric lines reach the log (and the metric regexes) as they are printed.
        "Environment": {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **options.environment},
        "EnableManagedSpotTraining": options.spot,
        "EnableNetworkIsolation": options.network_isolation,
        "EnableInterContainerTrafficEncryption": options.encrypt_inter_container_traffic,
    }
    if options.forward_signals:
        entrypoint, arguments = container_command(options.container_entry)
        request["AlgorithmSpecification"]["ContainerEntrypoint"] = entrypoint
        request["AlgorithmSpecification"]["ContainerArguments"] = arguments
    checkpoint_uri = options.checkpoint_s3_uri or (f"{job_prefix}/checkpoints" if options.spot else None)
    if checkpoint_uri:
        request["CheckpointConfig"] = {"S3Uri": checkpoint_uri, "LocalPath": CHECKPOINT_DIR}
    if options.output_kms_key:
        request["OutputDataConfig"]["KmsKeyId"] = options.output_kms_key
    if options.volume_kms_key:
        request["ResourceConfig"]["VolumeKmsKeyId"] = options.volume_kms_key
    if options.subnets:
        request["VpcConfig"] = {
            "Subnets": list(options.subnets),
            "SecurityGroupIds": list(options.security_group_ids),
        }
    if options.tags:
        request["Tags"] = [{"Key": key, "Value": value} for key, value in options.tags.items()]
    request.update(job_reliability_settings(options, job_prefix))
    if options.keep_alive_seconds is not None:
        request["ResourceConfig"]["KeepAlivePeriodInSeconds"] = options.keep_alive_seconds
    return LaunchPlan(request=request, uploads=uploads, source_uri=source_uri)


def job_reliability_settings(options: TrainingJobOptions, job_prefix: str) -> dict[str, Any]:
    """RetryStrategy and TensorBoardOutputConfig of a training job (shared with the tuning job's definition)."""
    settings: dict[str, Any] = {}
    if options.max_retry_attempts:
        # SageMaker retries jobs that fail with InternalServerError, which covers insufficient capacity.
        settings["RetryStrategy"] = {"MaximumRetryAttempts": options.max_retry_attempts}
    if options.tensorboard:
        settings["TensorBoardOutputConfig"] = {
            "S3OutputPath": options.tensorboard_s3_uri or f"{job_prefix}/tensorboard",
            "LocalPath": TENSORBOARD_DIR,
        }
    return settings


def launch_training(
    options: TrainingJobOptions,
    *,
    dry_run: bool = False,
    wait: bool = False,
    session: Any = None,
    out: Callable[[str], None] = print,
    poll_seconds: float = 30.0,
) -> dict[str, Any]:
    """Create the training job; return the CreateTrainingJob request (and, with wait, the final description).

    dry_run prints the request as JSON and makes no AWS call at all (no credentials or network needed):
    without --s3-prefix the default bucket's account is `<ACCOUNT_ID>`, said on stderr. wait follows
    status and logs to the end and reports the spot saving.
    """
    validate_options(options)
    session = session or aws.make_session(options.region)
    region = aws.session_region(session, options.region)
    account_id = None
    if not options.s3_prefix:
        account_id = dry_run_account(dry_run) or aws.account_id(session)
    image_uri = options.image_uri or aws.framework_image_uri(
        region, options.instance_type, options.framework_version, options.py_version, scope="training"
    )
    if options.network_isolation:
        print(
            "warning: with --network-isolation the container cannot pip-install our dependencies from PyPI; "
            "use an --image-uri that already has them installed.",
            file=sys.stderr,
        )
    plan = build_training_request(options, region=region, account_id=account_id, image_uri=image_uri)
    if dry_run:
        out(json.dumps(plan.request, indent=2))
        return {
            "request": plan.request,
            "uploads": [(str(p), uri) for p, uri in plan.uploads],
            "source_uri": plan.source_uri,
        }
    s3 = session.client("s3")
    if not options.s3_prefix:
        aws.ensure_bucket(s3, aws.parse_s3_uri(plan.source_uri, "--s3-prefix")[0], region)
    with aws.aws_errors("uploading data and code"):
        for local, uri in plan.uploads:
            aws.upload_file(s3, local, uri)
        with tempfile.TemporaryDirectory() as workdir:
            archive = build_sourcedir(Path(workdir) / "sourcedir.tar.gz")
            aws.upload_file(s3, archive, plan.source_uri)
    sagemaker = session.client("sagemaker")
    with aws.aws_errors("creating the training job"):
        response = sagemaker.create_training_job(**plan.request)
    job_name = plan.request["TrainingJobName"]
    out(f"created training job {job_name} ({response.get('TrainingJobArn', '')})")
    result: dict[str, Any] = {
        "request": plan.request,
        "job_name": job_name,
        "arn": response.get("TrainingJobArn"),
    }
    if wait:
        result["description"] = wait_for_training_job(session, job_name, out=out, poll_seconds=poll_seconds)
    return result


def dry_run_account(dry_run: bool) -> str | None:
    """The account placeholder of a dry run (said on stderr), or None when the account must be asked."""
    if not dry_run:
        return None
    aws.note(
        f"dry run: the AWS account is not looked up; {aws.ACCOUNT_PLACEHOLDER} stands for it in the default "
        "bucket (pass --s3-prefix to name the bucket)."
    )
    return aws.ACCOUNT_PLACEHOLDER


def wait_for_training_job(
    session: Any,
    job_name: str,
    *,
    out: Callable[[str], None] = print,
    poll_seconds: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Print status changes and the job's log lines until it ends; then training vs billable seconds.

    Raises BertClassifyError when the job fails or is stopped (the message carries SageMaker's reason).
    """
    sagemaker = session.client("sagemaker")
    logs = session.client("logs")
    log_positions: dict[str, str | None] = {}
    last_status = None
    while True:
        with aws.aws_errors(f"describing training job {job_name}"):
            description = sagemaker.describe_training_job(TrainingJobName=job_name)
        status = (description.get("TrainingJobStatus"), description.get("SecondaryStatus"))
        if status != last_status:
            message = description.get("SecondaryStatusTransitions", [{}])[-1].get("StatusMessage", "")
            out(f"status: {status[0]} / {status[1]}" + (f" - {message}" if message else ""))
            last_status = status
        _print_new_log_events(logs, job_name, log_positions, out)
        if status[0] in TERMINAL_STATUSES:
            break
        sleep(poll_seconds)
    out(spot_summary(description))
    if description.get("TrainingJobStatus") != "Completed":
        reason = description.get("FailureReason") or "no reason given"
        raise BertClassifyError(
            f"training job {job_name} ended {description.get('TrainingJobStatus')}: {reason}"
        )
    artifacts = description.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if artifacts:
        out(f"model: {artifacts}")
    return description


def spot_summary(description: Mapping[str, Any]) -> str:
    """'training 3600 s, billable 1200 s: managed spot saved 66.7%' (or what is known)."""
    training = description.get("TrainingTimeInSeconds")
    billable = description.get("BillableTimeInSeconds")
    if training is None or billable is None:
        return "training and billable seconds not reported (yet) by SageMaker"
    if description.get("EnableManagedSpotTraining") and training:
        saving = 100.0 * (1.0 - float(billable) / float(training))
        return f"training {training} s, billable {billable} s: managed spot saved {saving:.1f}%"
    return f"training {training} s, billable {billable} s (on-demand)"


def _print_new_log_events(
    logs: Any, job_name: str, positions: dict[str, str | None], out: Callable[[str], None]
) -> None:
    from botocore.exceptions import ClientError

    try:
        streams = logs.describe_log_streams(
            logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{job_name}/"
        )
    except ClientError:
        return  # no log group/stream yet: the instances are still starting
    for stream in streams.get("logStreams", []):
        name = stream["logStreamName"]
        while True:
            arguments: dict[str, Any] = {
                "logGroupName": "/aws/sagemaker/TrainingJobs",
                "logStreamName": name,
                "startFromHead": True,
            }
            if positions.get(name):
                arguments["nextToken"] = positions[name]
            try:
                page = logs.get_log_events(**arguments)
            except ClientError:
                break
            host = name.split("/", 1)[-1].split("-")[0:2]
            for event in page.get("events", []):
                out(f"[{'-'.join(host)}] {event['message'].rstrip()}")
            token = page.get("nextForwardToken")
            if not page.get("events") or token == positions.get(name):
                positions[name] = token
                break
            positions[name] = token


def _channel_source(channel: str, value: str | None) -> str | Path | None:
    if value is None:
        return None
    if _looks_like_uri(value):
        aws.parse_s3_uri(value, f"--{channel}")
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--{channel}: '{value}' is neither an S3 URI (s3://bucket/key) nor an existing local file."
        )
    return path


def _model_source(value: str) -> str | Path:
    if _looks_like_uri(value):
        aws.parse_s3_uri(value, "--model")
        return value
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"--model: local directory {value} has no config.json; it is not a model directory."
            )
        return path
    if path.exists():
        raise ConfigError(
            f"--model: {value} is a file; give a model directory, an S3 URI or a Hugging Face model id."
        )
    return value  # a Hugging Face id, downloaded inside the job


def _looks_like_uri(value: str) -> bool:
    return "://" in value or value.lower().startswith("s3:")


def _s3_channel(name: str, uri: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
    }
