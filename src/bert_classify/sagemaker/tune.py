"""Hyper-parameter tuning on spot: a HyperParameterTuningJob over our training job, with plain boto3.

`build_tuning_request` derives the training-job definition from `build_training_request` (the same
channels, image, spot settings, retries and static hyper-parameters), so the two never drift; the
tuned options become ranges. No AWS call is made to build it.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bert_classify.errors import BertClassifyError, ConfigError
from bert_classify.sagemaker import aws
from bert_classify.sagemaker.environment import CHECKPOINT_PER_JOB_VARIABLE
from bert_classify.sagemaker.launch import (
    LaunchPlan,
    TrainingJobOptions,
    build_training_request,
    dry_run_account,
    normalise_hyperparameters,
    validate_options,
)
from bert_classify.sagemaker.source import build_sourcedir

# The objective is one of the metric lines training prints; loss goes down, the others up.
OBJECTIVES = {"val_macro_f1": "Maximize", "val_accuracy": "Maximize", "val_loss": "Minimize"}
STRATEGIES = ("Bayesian", "Random")
EARLY_STOPPING = ("Auto", "Off")
TUNING_TERMINAL_STATUSES = ("Completed", "Failed", "Stopped")
# Fields of CreateTrainingJob that a tuning job's HyperParameterTrainingJobDefinition also takes.
_DEFINITION_FIELDS = (
    "RoleArn",
    "InputDataConfig",
    "VpcConfig",
    "OutputDataConfig",
    "ResourceConfig",
    "StoppingCondition",
    "EnableNetworkIsolation",
    "EnableInterContainerTrafficEncryption",
    "EnableManagedSpotTraining",
    "CheckpointConfig",
    "RetryStrategy",
    "Environment",
)
_ALGORITHM_FIELDS = ("TrainingImage", "TrainingInputMode", "MetricDefinitions")
# SageMaker names the tuning job's training jobs <tuning-job>-<NNN>-<hash>: 32 characters at most.
MAX_TUNING_JOB_NAME = 32


@dataclass
class TuningOptions:
    """What `bert-classify sagemaker tune` accepts on top of the training job's options.

    A range is (low, high); None leaves the option static (its value, if any, from training.hyperparameters).
    """

    training: TrainingJobOptions = field(default_factory=TrainingJobOptions)
    objective: str = "val_macro_f1"
    learning_rate: tuple[float, float] | None = (1e-5, 5e-4)  # searched on a log scale
    batch_sizes: Sequence[int] | None = None  # categorical
    epochs: tuple[int, int] | None = None  # integer range
    warmup_ratio: tuple[float, float] | None = None  # linear range
    max_jobs: int = 10
    max_parallel_jobs: int = 2
    early_stopping: str = "Auto"
    strategy: str = "Bayesian"
    tuning_job_name: str | None = None


def default_tuning_job_name(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"bc-tune-{now:%y%m%d-%H%M%S}"  # 20 characters


def tuned_options(options: TuningOptions) -> dict[str, Any]:
    """Training flag -> its range, for the options being tuned."""
    tuned: dict[str, Any] = {}
    if options.learning_rate is not None:
        tuned["learning-rate"] = options.learning_rate
    if options.batch_sizes is not None:
        tuned["batch-size"] = list(options.batch_sizes)
    if options.epochs is not None:
        tuned["epochs"] = options.epochs
    if options.warmup_ratio is not None:
        tuned["warmup-ratio"] = options.warmup_ratio
    return tuned


def validate_tuning_options(options: TuningOptions) -> None:
    """Refuse a tuning job SageMaker would refuse, or one whose training jobs would fail, before any AWS call."""
    validate_options(options.training)
    if options.objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, not '{options.objective}'.")
    if options.strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, not '{options.strategy}'.")
    if options.early_stopping not in EARLY_STOPPING:
        raise ConfigError(
            f"--early-stopping must be one of {', '.join(EARLY_STOPPING)}, not '{options.early_stopping}'."
        )
    if options.max_jobs < 1:
        raise ConfigError(f"--max-jobs must be >= 1, not {options.max_jobs}.")
    if not 1 <= options.max_parallel_jobs <= options.max_jobs:
        raise ConfigError(
            f"--max-parallel-jobs must be between 1 and --max-jobs ({options.max_jobs}), not {options.max_parallel_jobs}."
        )
    name = options.tuning_job_name
    if name is not None and (len(name) > MAX_TUNING_JOB_NAME or not aws.RESOURCE_NAME.match(name)):
        raise ConfigError(
            f"--tuning-job-name '{name}' is invalid: 1-{MAX_TUNING_JOB_NAME} letters, digits and hyphens "
            "(SageMaker adds a suffix to name each training job)."
        )
    if options.training.keep_alive_seconds is not None:
        raise ConfigError("--keep-alive-seconds is for single training jobs; a tuning job takes no warm pool.")
    tuned = tuned_options(options)
    if not tuned:
        raise ConfigError(
            "nothing to tune: give at least one of --learning-rate-range, --batch-sizes, --epochs-range, "
            "--warmup-ratio-range."
        )
    given = {str(key).lstrip("-").replace("_", "-") for key in options.training.hyperparameters}
    for flag in tuned:
        if flag in given:
            raise ConfigError(f"--{flag} is both fixed and tuned: drop --{flag}, or drop its range option.")
    for flag, span in tuned.items():
        if flag == "batch-size":
            if not span or len(set(span)) != len(span):
                raise ConfigError(f"--batch-sizes needs distinct values, not {span}.")
            values: Sequence[Any] = span
        else:
            low, high = span
            if not (isinstance(low, (int, float)) and isinstance(high, (int, float))) or not low < high:
                raise ConfigError(f"--{flag}-range LOW:HIGH needs LOW < HIGH, not {low}:{high}.")
            if flag == "learning-rate" and not (low > 0 and math.isfinite(high)):
                raise ConfigError(f"--learning-rate-range is searched on a log scale: LOW must be > 0, not {low}.")
            values = (low, high)
        for value in values:  # each end of each range must be a value `train` accepts
            normalise_hyperparameters({**options.training.hyperparameters, flag: value})


def build_tuning_request(
    options: TuningOptions,
    *,
    region: str,
    account_id: str | None = None,
    image_uri: str | None = None,
    tuning_job_name: str | None = None,
) -> LaunchPlan:
    """The exact CreateHyperParameterTuningJob request and the uploads it needs. No AWS calls."""
    validate_tuning_options(options)
    name = tuning_job_name or options.tuning_job_name or default_tuning_job_name()
    # The training request under the tuning job's name gives uploads, channels and static values.
    plan = build_training_request(
        options.training, region=region, account_id=account_id, job_name=name, image_uri=image_uri
    )
    training = plan.request
    tuned = tuned_options(options)
    definition: dict[str, Any] = {
        "AlgorithmSpecification": {
            key: training["AlgorithmSpecification"][key]
            for key in _ALGORITHM_FIELDS
            if key in training["AlgorithmSpecification"]
        },
        "StaticHyperParameters": {
            key: value for key, value in training["HyperParameters"].items() if key not in tuned
        },
        "HyperParameterRanges": _parameter_ranges(tuned),
    }
    definition.update({key: training[key] for key in _DEFINITION_FIELDS if key in training})
    # Parallel training jobs must not share checkpoints: each writes under its own job name.
    definition["Environment"] = {**definition.get("Environment", {}), CHECKPOINT_PER_JOB_VARIABLE: "1"}
    request: dict[str, Any] = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": options.strategy,
            "HyperParameterTuningJobObjective": {
                "Type": OBJECTIVES[options.objective],
                "MetricName": options.objective,
            },
            "ResourceLimits": {
                "MaxNumberOfTrainingJobs": options.max_jobs,
                "MaxParallelTrainingJobs": options.max_parallel_jobs,
            },
            "TrainingJobEarlyStoppingType": options.early_stopping,
        },
        "TrainingJobDefinition": definition,
    }
    if "Tags" in training:
        request["Tags"] = training["Tags"]
    return LaunchPlan(request=request, uploads=plan.uploads, source_uri=plan.source_uri)


def _parameter_ranges(tuned: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    ranges: dict[str, list[dict[str, Any]]] = {
        "IntegerParameterRanges": [],
        "ContinuousParameterRanges": [],
        "CategoricalParameterRanges": [],
    }
    for flag, span in tuned.items():
        if flag == "batch-size":
            ranges["CategoricalParameterRanges"].append({"Name": flag, "Values": [str(v) for v in span]})
        elif flag == "epochs":
            ranges["IntegerParameterRanges"].append(
                {"Name": flag, "MinValue": str(span[0]), "MaxValue": str(span[1]), "ScalingType": "Auto"}
            )
        else:
            ranges["ContinuousParameterRanges"].append(
                {
                    "Name": flag,
                    "MinValue": repr(float(span[0])),
                    "MaxValue": repr(float(span[1])),
                    "ScalingType": "Logarithmic" if flag == "learning-rate" else "Linear",
                }
            )
    return {kind: values for kind, values in ranges.items() if values}


def launch_tuning(
    options: TuningOptions,
    *,
    dry_run: bool = False,
    wait: bool = False,
    session: Any = None,
    out: Callable[[str], None] = print,
    poll_seconds: float = 60.0,
) -> dict[str, Any]:
    """Create the tuning job (dry_run: print the request and make no AWS call at all)."""
    validate_tuning_options(options)
    training = options.training
    session = session or aws.make_session(training.region)
    region = aws.session_region(session, training.region)
    account_id = None
    if not training.s3_prefix:
        account_id = dry_run_account(dry_run) or aws.account_id(session)
    image_uri = training.image_uri or aws.framework_image_uri(
        region, training.instance_type, training.framework_version, training.py_version, scope="training"
    )
    plan = build_tuning_request(options, region=region, account_id=account_id, image_uri=image_uri)
    aws.note(
        "tune: the training jobs run the image's entry without our PID-1 signal forwarder (a tuning job's "
        "training definition takes no ContainerEntrypoint); checkpoints still carry them across spot restarts."
    )
    if dry_run:
        out(json.dumps(plan.request, indent=2))
        return {"request": plan.request, "uploads": [(str(p), uri) for p, uri in plan.uploads]}
    s3 = session.client("s3")
    if not training.s3_prefix:
        aws.ensure_bucket(s3, aws.parse_s3_uri(plan.source_uri, "--s3-prefix")[0], region)
    with aws.aws_errors("uploading data and code"):
        for local, uri in plan.uploads:
            aws.upload_file(s3, local, uri)
        with tempfile.TemporaryDirectory() as workdir:
            aws.upload_file(s3, build_sourcedir(Path(workdir) / "sourcedir.tar.gz"), plan.source_uri)
    sagemaker = session.client("sagemaker")
    with aws.aws_errors("creating the tuning job"):
        response = sagemaker.create_hyper_parameter_tuning_job(**plan.request)
    name = plan.request["HyperParameterTuningJobName"]
    out(f"created tuning job {name} ({response.get('HyperParameterTuningJobArn', '')})")
    result: dict[str, Any] = {"request": plan.request, "job_name": name}
    if wait:
        result["description"] = wait_for_tuning_job(session, name, out=out, poll_seconds=poll_seconds)
    return result


def wait_for_tuning_job(
    session: Any,
    name: str,
    *,
    out: Callable[[str], None] = print,
    poll_seconds: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Print the training-job counts as they change until the tuning job ends; then the best job."""
    sagemaker = session.client("sagemaker")
    last = None
    while True:
        with aws.aws_errors(f"describing tuning job {name}"):
            description = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        status = description.get("HyperParameterTuningJobStatus")
        counters = description.get("TrainingJobStatusCounters", {})
        line = f"status: {status}; training jobs " + ", ".join(
            f"{key} {value}" for key, value in sorted(counters.items())
        )
        if line != last:
            out(line)
            last = line
        if status in TUNING_TERMINAL_STATUSES:
            break
        sleep(poll_seconds)
    best = description.get("BestTrainingJob") or {}
    if best:
        metric = best.get("FinalHyperParameterTuningJobObjectiveMetric", {})
        out(
            f"best: {best.get('TrainingJobName')} {metric.get('MetricName', '')}={metric.get('Value', '')} "
            f"with {json.dumps(best.get('TunedHyperParameters', {}), sort_keys=True)}"
        )
    if status != "Completed":
        reason = description.get("FailureReason") or "no reason given"
        raise BertClassifyError(f"tuning job {name} ended {status}: {reason}")
    return description
