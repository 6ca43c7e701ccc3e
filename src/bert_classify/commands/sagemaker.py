"""`bert-classify sagemaker train|tune|deploy|invoke|delete`: parse flags and call bert_classify.sagemaker (launch, tune, deploy).

The training options of `sagemaker train` are the `train` command's own, from the one option table
(bert_classify/train_options.py); they travel to the job as hyper-parameters.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Callable

from bert_classify.sagemaker.forwarding import IMAGE_ENTRY

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str) -> int:
    """'3600', '90m', '2h', '1.5d' -> seconds."""
    match = _DURATION.match(value.lower())
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected seconds or a number with s/m/h/d, such as 2h, not '{value}'"
        )
    return int(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def _key_value(value: str) -> tuple[str, str]:
    key, separator, item = value.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not '{value}'")
    return key, item


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's commands to the CLI."""
    parser = subparsers.add_parser(
        "sagemaker",
        help="train on SageMaker (managed spot) and deploy endpoints",
        description="Launch SageMaker training jobs and manage endpoints with plain boto3. "
        "Needs the extra: pip install 'bert-classify[sagemaker]'. AWS credentials come from the standard chain.",
    )
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    commands = parser.add_subparsers(dest="sagemaker_command", metavar="SUBCOMMAND")
    _register_train(commands)
    _register_tune(commands)
    _register_deploy(commands)
    _register_invoke(commands)
    _register_delete(commands)


def _add_common(parser: argparse.ArgumentParser, *, role: bool = True) -> None:
    parser.add_argument("--region", help="AWS region (default: from the AWS configuration / AWS_REGION)")
    if role:
        parser.add_argument("--role", help="IAM role ARN that SageMaker assumes (required)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the exact AWS request(s) as JSON and send nothing"
    )


def _register_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="launch a training job (managed spot by default)",
        description="Create a SageMaker training job that runs `bert-classify train` on the data channels given. "
        "Local files are uploaded under --s3-prefix first. Training options are those of `bert-classify train`.",
    )
    _add_training_job_arguments(parser, tuning=False)
    parser.set_defaults(func=_run_train)


def _add_training_job_arguments(parser: argparse.ArgumentParser, *, tuning: bool) -> None:
    """The options of one training job: `sagemaker train`'s, and the definition of `sagemaker tune`'s jobs."""
    from bert_classify.sagemaker.launch import (
        DEFAULT_FRAMEWORK_VERSION,
        DEFAULT_INSTANCE_TYPE,
        DEFAULT_MAX_RETRY_ATTEMPTS,
        DEFAULT_PY_VERSION,
        DISTRIBUTIONS,
        TENSORBOARD_DIR,
    )
    from bert_classify.train_options import TRAIN_OPTIONS

    _add_common(parser)
    data = parser.add_argument_group("data and model (S3 URIs, or local paths uploaded first)")
    data.add_argument("--train", help="training data file: s3://bucket/key or a local file (required)")
    data.add_argument("--val", help="validation data file")
    data.add_argument("--classes", help="class names file")
    data.add_argument(
        "--model",
        help="model to fine-tune: s3:// URI (directory or model.tar.gz) or local directory -> the `model` channel; "
        "anything else is a Hugging Face id downloaded in the job",
    )
    job = parser.add_argument_group("job")
    if not tuning:
        job.add_argument("--job-name", help="training job name (default: bert-classify-<timestamp>)")
    job.add_argument(
        "--instance-type", default=DEFAULT_INSTANCE_TYPE, help=f"(default: {DEFAULT_INSTANCE_TYPE})"
    )
    job.add_argument(
        "--instance-count", type=int, default=1, help="instances; >1 runs torchrun across them (default: 1)"
    )
    job.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS,
        default="auto",
        help="torchrun launched by the container: auto = when --instance-count > 1; on one multi-GPU "
        "instance `train` starts one process per GPU itself (default: auto)",
    )
    job.add_argument(
        "--spot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="managed spot training (default: on)",
    )
    job.add_argument(
        "--max-run",
        type=duration_seconds,
        default=24 * 3600,
        help="maximum training time, e.g. 6h (default: 24h)",
    )
    job.add_argument(
        "--max-wait",
        type=duration_seconds,
        help="spot only: run time plus waiting for capacity, >= --max-run (default: 2 x max-run)",
    )
    job.add_argument(
        "--checkpoint-s3-uri",
        help="S3 location synced with /opt/ml/checkpoints, for resuming after spot interruptions "
        "(default with spot: <s3-prefix>/<job-name>/checkpoints)",
    )
    if not tuning:  # CreateHyperParameterTuningJob's training definition takes no ContainerEntrypoint
        job.add_argument(
            "--forward-signals",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="run the image's entry under a small PID-1 forwarder so that SIGTERM from a spot reclaim or a "
            "stop reaches the trainer, which checkpoints and exits (default: on; see docs/sagemaker.md)",
        )
        job.add_argument(
            "--container-entry",
            type=shlex.split,
            default=list(IMAGE_ENTRY),
            help="the image's own entry command, run under the forwarder "
            f"(default: '{' '.join(IMAGE_ENTRY)}', as in the PyTorch and Hugging Face training images)",
        )
    job.add_argument("--output-path", help="S3 location for model.tar.gz (default: <s3-prefix>/output)")
    job.add_argument(
        "--s3-prefix",
        help="S3 location for uploaded data and code (default: s3://sagemaker-<region>-<account>/bert-classify)",
    )
    job.add_argument("--volume-size", type=int, default=30, help="EBS volume per instance, GB (default: 30)")
    job.add_argument(
        "--max-retry-attempts",
        type=int,
        default=DEFAULT_MAX_RETRY_ATTEMPTS,
        help="SageMaker restarts a job that failed on an internal error or for lack of capacity up to this many "
        f"times; 0 = never (default: {DEFAULT_MAX_RETRY_ATTEMPTS})",
    )
    if not tuning:  # a tuning job's training definition has neither warm pools nor TensorBoard output
        job.add_argument(
            "--keep-alive-seconds",
            type=duration_seconds,
            help="keep the instances warm this long after the job for the next matching job (warm pool, at most "
            "1h; on-demand only: needs --no-spot)",
        )
        job.add_argument(
            "--tensorboard",
            action=argparse.BooleanOptionalAction,
            default=True,
            help=f"sync {TENSORBOARD_DIR} to S3 during the job (default: on)",
        )
        job.add_argument(
            "--tensorboard-s3-uri",
            help="where TensorBoard events go (default: <s3-prefix>/<job-name>/tensorboard)",
        )
    job.add_argument(
        "--wait",
        action="store_true",
        help="follow the tuning job to the end; report the best training job"
        if tuning
        else "follow status and logs to the end; report billable vs training seconds and the spot saving",
    )
    image = parser.add_argument_group("container image")
    image.add_argument(
        "--image-uri",
        help="training image (default: the AWS PyTorch training image for the region and instance)",
    )
    image.add_argument(
        "--framework-version",
        default=DEFAULT_FRAMEWORK_VERSION,
        help=f"PyTorch image version (default: {DEFAULT_FRAMEWORK_VERSION})",
    )
    image.add_argument("--py-version", default=DEFAULT_PY_VERSION, help=f"(default: {DEFAULT_PY_VERSION})")
    security = parser.add_argument_group("network and security")
    security.add_argument("--output-kms-key", help="KMS key for the model artifacts in S3")
    security.add_argument("--volume-kms-key", help="KMS key for the instances' storage volumes")
    security.add_argument(
        "--encrypt-inter-container-traffic", action="store_true", help="encrypt traffic between instances"
    )
    _add_network_tags_environment(security)

    training = parser.add_argument_group(
        "training options (as for `bert-classify train`; sent as hyper-parameters)"
    )
    for option in TRAIN_OPTIONS:
        if option.launcher_owned:
            continue
        destination = f"hyperparameter:{option.flag}"
        if option.switch:
            training.add_argument(
                f"--{option.flag}",
                dest=destination,
                action="store_const",
                const="True",
                default=argparse.SUPPRESS,
                help=option.help,
            )
        else:
            # The value travels as text; launch.normalise_hyperparameters checks it with the option's parser.
            training.add_argument(
                f"--{option.flag}",
                dest=destination,
                choices=option.choices,
                default=argparse.SUPPRESS,
                help=option.help,
                metavar=option.flag.upper().replace("-", "_"),
            )


def _run_train(args: argparse.Namespace) -> int:
    from bert_classify.sagemaker.launch import launch_training

    launch_training(_training_job_options(args), dry_run=args.dry_run, wait=args.wait)
    return 0


def _training_job_options(args: argparse.Namespace):  # -> TrainingJobOptions
    from bert_classify.sagemaker.launch import TrainingJobOptions

    hyperparameters = {
        key.split(":", 1)[1]: value for key, value in vars(args).items() if key.startswith("hyperparameter:")
    }
    return TrainingJobOptions(
        role=args.role,
        train=args.train,
        val=args.val,
        classes=args.classes,
        model=args.model,
        hyperparameters=hyperparameters,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        distribution=args.distribution,
        spot=args.spot,
        max_run=args.max_run,
        max_wait=args.max_wait,
        checkpoint_s3_uri=args.checkpoint_s3_uri,
        output_path=args.output_path,
        s3_prefix=args.s3_prefix,
        job_name=getattr(args, "job_name", None),
        image_uri=args.image_uri,
        framework_version=args.framework_version,
        py_version=args.py_version,
        volume_size_gb=args.volume_size,
        subnets=args.subnets,
        security_group_ids=args.security_group_ids,
        output_kms_key=args.output_kms_key,
        volume_kms_key=args.volume_kms_key,
        network_isolation=args.network_isolation,
        encrypt_inter_container_traffic=args.encrypt_inter_container_traffic,
        tags=dict(args.tags),
        environment=dict(args.environment),
        region=args.region,
        max_retry_attempts=args.max_retry_attempts,
        keep_alive_seconds=getattr(args, "keep_alive_seconds", None),
        tensorboard=getattr(args, "tensorboard", False),
        tensorboard_s3_uri=getattr(args, "tensorboard_s3_uri", None),
        # a tuning job's training definition has no ContainerEntrypoint: no forwarder there (tune.py)
        forward_signals=getattr(args, "forward_signals", False),
        container_entry=list(getattr(args, "container_entry", IMAGE_ENTRY)),
    )


def _range(kind: type, example: str) -> Callable[[str], tuple]:
    """A parser of LOW:HIGH for numbers of `kind` (float or int)."""

    def parse(value: str) -> tuple:
        low, separator, high = value.partition(":")
        try:
            if not separator:
                raise ValueError
            return kind(low), kind(high)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LOW:HIGH such as {example}, not '{value}'") from None

    return parse


_float_range = _range(float, "1e-5:5e-4")
_int_range = _range(int, "2:5")


def _int_list(value: str) -> list[int]:
    try:
        return [int(item) for item in _comma_list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 16,32, not '{value}'") from None


def _register_tune(commands: argparse._SubParsersAction) -> None:
    from bert_classify.sagemaker.tune import EARLY_STOPPING, OBJECTIVES, STRATEGIES

    parser = commands.add_parser(
        "tune",
        help="launch a hyper-parameter tuning job over our training job (managed spot by default)",
        description="Create a SageMaker HyperParameterTuningJob whose training jobs run `bert-classify train`, "
        "each on managed spot with its own checkpoints. Options not tuned are fixed for every job.",
    )
    _add_training_job_arguments(parser, tuning=True)
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument("--tuning-job-name", help="1-32 characters (default: bc-tune-<timestamp>)")
    tuning.add_argument(
        "--objective",
        choices=tuple(OBJECTIVES),
        default="val_macro_f1",
        help="metric line to optimise: val_macro_f1 / val_accuracy maximised, val_loss minimised (default: val_macro_f1)",
    )
    tuning.add_argument(
        "--learning-rate-range",
        type=_float_range,
        default=(1e-5, 5e-4),
        metavar="LOW:HIGH",
        help="learning rate, searched on a log scale (default: 1e-5:5e-4)",
    )
    tuning.add_argument(
        "--no-learning-rate-range",
        dest="learning_rate_range",
        action="store_const",
        const=None,
        help="do not tune the learning rate",
    )
    tuning.add_argument("--batch-sizes", type=_int_list, metavar="N,N,...", help="batch sizes to try, e.g. 16,32")
    tuning.add_argument("--epochs-range", type=_int_range, metavar="LOW:HIGH", help="epochs, e.g. 2:5")
    tuning.add_argument("--warmup-ratio-range", type=_float_range, metavar="LOW:HIGH", help="warm-up ratio, e.g. 0:0.1")
    tuning.add_argument("--max-jobs", type=int, default=10, help="training jobs in all (default: 10)")
    tuning.add_argument("--max-parallel-jobs", type=int, default=2, help="training jobs at once (default: 2)")
    tuning.add_argument(
        "--early-stopping", choices=EARLY_STOPPING, default="Auto", help="stop unpromising jobs early (default: Auto)"
    )
    tuning.add_argument("--strategy", choices=STRATEGIES, default="Bayesian", help="(default: Bayesian)")
    parser.set_defaults(func=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from bert_classify.sagemaker.tune import TuningOptions, launch_tuning

    options = TuningOptions(
        training=_training_job_options(args),
        objective=args.objective,
        learning_rate=args.learning_rate_range,
        batch_sizes=args.batch_sizes,
        epochs=args.epochs_range,
        warmup_ratio=args.warmup_ratio_range,
        max_jobs=args.max_jobs,
        max_parallel_jobs=args.max_parallel_jobs,
        early_stopping=args.early_stopping,
        strategy=args.strategy,
        tuning_job_name=args.tuning_job_name,
    )
    launch_tuning(options, dry_run=args.dry_run, wait=args.wait)
    return 0


def _add_network_tags_environment(group: argparse._ActionsContainer) -> None:
    """VPC, network isolation, tags and container environment: the same flags for a training job and a model."""
    group.add_argument("--subnets", type=_comma_list, default=[], help="VPC subnet ids, comma-separated")
    group.add_argument(
        "--security-group-ids", type=_comma_list, default=[], help="VPC security group ids, comma-separated"
    )
    group.add_argument("--network-isolation", action="store_true", help="no network access from the container")
    group.add_argument(
        "--tag", dest="tags", type=_key_value, action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    group.add_argument(
        "--environment", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
        help="container environment variable; repeatable",
    )  # fmt: skip


def _register_deploy(commands: argparse._SubParsersAction) -> None:
    from bert_classify.sagemaker.deploy import (
        DEFAULT_ENDPOINT_INSTANCE_TYPE,
        DEFAULT_HF_TRANSFORMERS_VERSION,
        IMAGES,
        SERVERLESS_MEMORY_SIZES,
    )
    from bert_classify.sagemaker.launch import DEFAULT_FRAMEWORK_VERSION, DEFAULT_PY_VERSION

    parser = commands.add_parser(
        "deploy",
        help="create model, endpoint configuration and endpoint from a model.tar.gz",
        description="Deploy the model.tar.gz a training job wrote (model files + code/inference.py) "
        "on the AWS PyTorch inference container, real-time or serverless.",
    )
    _add_common(parser)
    parser.add_argument("--model-data", help="s3://.../model.tar.gz")
    parser.add_argument(
        "--training-job", help="deploy this completed training job's model.tar.gz instead of --model-data"
    )
    parser.add_argument(
        "--endpoint-name",
        help="(default: bert-classify-ep-<timestamp>; also names the model and configuration)",
    )
    parser.add_argument("--model-name", help="SageMaker model name (default: the endpoint name)")
    parser.add_argument(
        "--instance-type",
        default=DEFAULT_ENDPOINT_INSTANCE_TYPE,
        help=f"(default: {DEFAULT_ENDPOINT_INSTANCE_TYPE})",
    )
    parser.add_argument("--instance-count", type=int, default=1, help="(default: 1)")
    parser.add_argument(
        "--serverless", action="store_true", help="serverless endpoint (CPU) instead of instances"
    )
    parser.add_argument(
        "--memory-size",
        type=int,
        default=4096,
        help=f"serverless memory, MB: {', '.join(map(str, SERVERLESS_MEMORY_SIZES))} (default: 4096)",
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=5, help="serverless concurrent invocations (default: 5)"
    )
    parser.add_argument(
        "--image",
        choices=IMAGES,
        default="pytorch",
        help="AWS inference image: the PyTorch one, or the Hugging Face one (transformers "
        f"{DEFAULT_HF_TRANSFORMERS_VERSION}); the same model.tar.gz serves on both (default: pytorch)",
    )
    parser.add_argument("--image-uri", help="inference image URI (overrides --image)")
    parser.add_argument(
        "--framework-version",
        default=DEFAULT_FRAMEWORK_VERSION,
        help=f"PyTorch version of the pytorch image, transformers version of the huggingface image "
        f"(default: {DEFAULT_FRAMEWORK_VERSION} / {DEFAULT_HF_TRANSFORMERS_VERSION})",
    )
    parser.add_argument("--py-version", default=DEFAULT_PY_VERSION, help=f"(default: {DEFAULT_PY_VERSION})")
    parser.add_argument("--kms-key", help="KMS key for the endpoint's storage")
    _add_network_tags_environment(parser)
    parser.add_argument("--wait", action="store_true", help="wait until the endpoint is in service")
    parser.set_defaults(func=_run_deploy)


def _run_deploy(args: argparse.Namespace) -> int:
    from bert_classify.sagemaker.deploy import DeployOptions, deploy

    options = DeployOptions(
        role=args.role,
        model_data=args.model_data,
        training_job=args.training_job,
        endpoint_name=args.endpoint_name,
        model_name=args.model_name,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        serverless=args.serverless,
        memory_size_mb=args.memory_size,
        max_concurrency=args.max_concurrency,
        image_uri=args.image_uri,
        image=args.image,
        framework_version=args.framework_version,
        py_version=args.py_version,
        kms_key=args.kms_key,
        subnets=args.subnets,
        security_group_ids=args.security_group_ids,
        network_isolation=args.network_isolation,
        environment=dict(args.environment),
        tags=dict(args.tags),
        region=args.region,
    )
    deploy(options, dry_run=args.dry_run, wait=args.wait)
    return 0


def _register_invoke(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("invoke", help="send texts to an endpoint and print the predictions")
    _add_common(parser, role=False)
    parser.add_argument("--endpoint-name", required=True)
    parser.add_argument("--text", action="append", default=[], help="a text to classify; repeatable")
    parser.add_argument("--input", help="texts to send, read as `predict --input` reads them (one per line; .csv, .jsonl)")
    parser.add_argument("--top-k", type=int, help="labels per text (default: the endpoint's, 1)")
    parser.set_defaults(func=_run_invoke)


def _run_invoke(args: argparse.Namespace) -> int:
    from bert_classify.sagemaker.deploy import invoke

    texts = list(args.text)
    if args.input:
        from bert_classify.data import read_texts

        # the same reading of text files as `predict --input` (bert_classify.data.readers)
        texts += read_texts(args.input)
    answer = invoke(args.endpoint_name, texts, top_k=args.top_k, region=args.region, dry_run=args.dry_run)
    if not args.dry_run:
        print(json.dumps(answer, indent=2) if not isinstance(answer, str) else answer)
    return 0


def _register_delete(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("delete", help="delete an endpoint and its configuration")
    _add_common(parser, role=False)
    parser.add_argument("--endpoint-name", required=True)
    parser.add_argument(
        "--delete-model", action="store_true", help="also delete the model(s) the endpoint served"
    )
    parser.set_defaults(func=_run_delete)


def _run_delete(args: argparse.Namespace) -> int:
    from bert_classify.sagemaker.deploy import delete

    delete(args.endpoint_name, delete_model=args.delete_model, region=args.region, dry_run=args.dry_run)
    return 0
