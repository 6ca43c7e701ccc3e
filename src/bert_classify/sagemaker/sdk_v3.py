"""The same training job through the SageMaker Python SDK v3 (`sagemaker.train.ModelTrainer`).

`model_trainer_arguments` derives ModelTrainer's arguments from `build_training_request`, so a job
started with the SDK runs our entry script under the same contract as `bert-classify sagemaker train`
(channels, hyper-parameters, spot, checkpoints, retries). No AWS call is made to build them.

    from sagemaker.train import ModelTrainer
    arguments = model_trainer_arguments(options, region="eu-west-1", source_dir="bc-source")
    ModelTrainer(**arguments).train(wait=False)

Needs `sagemaker-core` (the configs) and, to run, the SDK's `sagemaker-train` (ModelTrainer, Torchrun).
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import Any

from bert_classify.errors import ConfigError
from bert_classify.sagemaker import aws
from bert_classify.sagemaker.launch import TrainingJobOptions, build_training_request
from bert_classify.sagemaker.source import ENTRY_SCRIPT_NAME, build_sourcedir


def write_source_dir(directory: Path) -> Path:
    """Unpack our sourcedir (entry script, wheel, requirements.txt) into `directory` for SourceCode."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        archive = build_sourcedir(Path(scratch) / "sourcedir.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(directory, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(directory)  # noqa: S202
    return directory


def model_trainer_arguments(
    options: TrainingJobOptions,
    *,
    region: str,
    source_dir: str | Path,
    account_id: str | None = None,
    image_uri: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for `sagemaker.train.ModelTrainer` that reproduce our training job.

    Local data must already be in S3 (the SDK's InputData takes S3 URIs here); `source_dir` is filled
    by `write_source_dir`. Multi-instance jobs use the SDK's Torchrun driver (sagemaker-train).
    """
    try:
        from sagemaker.core import shapes
        from sagemaker.core.training.configs import (
            CheckpointConfig,
            Compute,
            InputData,
            OutputDataConfig,
            SourceCode,
        )
    except ImportError:
        raise ConfigError(f"sagemaker-core is needed for the SDK v3 objects: {aws.EXTRA_HINT}.") from None
    for channel in ("train", "val", "classes"):
        value = getattr(options, channel)
        if value is not None and not value.startswith("s3://"):
            raise ConfigError(f"--{channel}: with the SDK give an S3 URI (upload '{value}' first), not a local file.")
    plan = build_training_request(options, region=region, account_id=account_id, image_uri=image_uri)
    request = plan.request
    resources = request["ResourceConfig"]
    stopping = request["StoppingCondition"]
    arguments: dict[str, Any] = {
        "training_image": request["AlgorithmSpecification"]["TrainingImage"],
        "role": request["RoleArn"],
        "base_job_name": options.job_name or "bert-classify",  # the SDK appends a timestamp
        "source_code": SourceCode(source_dir=str(source_dir), requirements="requirements.txt", entry_script=ENTRY_SCRIPT_NAME),
        "compute": Compute(
            instance_type=resources["InstanceType"],
            instance_count=resources["InstanceCount"],
            volume_size_in_gb=resources["VolumeSizeInGB"],
            keep_alive_period_in_seconds=resources.get("KeepAlivePeriodInSeconds"),
            enable_managed_spot_training=request["EnableManagedSpotTraining"],
        ),
        "stopping_condition": shapes.StoppingCondition(
            max_runtime_in_seconds=stopping["MaxRuntimeInSeconds"],
            max_wait_time_in_seconds=stopping.get("MaxWaitTimeInSeconds"),
        ),
        # The SDK runs the entry script with `--name value` per hyper-parameter, as SageMaker's toolkit does;
        # its own sagemaker_* settings replace ours.
        "hyperparameters": {k: v for k, v in request["HyperParameters"].items() if not k.startswith("sagemaker_")},
        "environment": dict(request["Environment"]),
        "input_data_config": [
            InputData(channel_name=channel["ChannelName"], data_source=channel["DataSource"]["S3DataSource"]["S3Uri"])
            for channel in request["InputDataConfig"]
        ],
        "output_data_config": OutputDataConfig(s3_output_path=request["OutputDataConfig"]["S3OutputPath"]),
    }
    if "CheckpointConfig" in request:
        arguments["checkpoint_config"] = CheckpointConfig(
            s3_uri=request["CheckpointConfig"]["S3Uri"], local_path=request["CheckpointConfig"]["LocalPath"]
        )
    if options.instance_count > 1 and options.distribution != "none":
        from sagemaker.train.distributed import Torchrun  # sagemaker-train, part of the SDK v3

        arguments["distributed"] = Torchrun()
    return arguments
