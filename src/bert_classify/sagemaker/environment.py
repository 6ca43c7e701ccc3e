"""The SageMaker container contract in one place: SM_* variables and hyper-parameters mapped to our options.

Channels, model and output directories, checkpoints, host list and GPU count are read here and
nowhere else; the `train` command, the entry script and the torchrun launcher all ask this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from bert_classify import train_options
from bert_classify.errors import ConfigError

CHECKPOINT_DIR = "/opt/ml/checkpoints"
# Set (to "1") in a tuning job's training jobs: each checkpoints under CHECKPOINT_DIR/<its job name>, so
# parallel jobs never resume from one another's state. SageMaker names the job in TRAINING_JOB_NAME.
CHECKPOINT_PER_JOB_VARIABLE = "BERT_CLASSIFY_CHECKPOINT_PER_JOB"
# TensorBoard event files: SageMaker's TensorBoardOutputConfig uploads this directory (its default LocalPath).
TENSORBOARD_DIR = "/opt/ml/output/tensorboard"
DEFAULT_MASTER_PORT = 29500
# SM_CHANNEL_<NAME> -> TrainConfig field. The model channel is special: a model directory, not a file.
FILE_CHANNELS = {"train": "train", "val": "val", "classes": "classes"}
MODEL_CHANNEL = "model"
# Environment variable -> TrainConfig field, for plain directories.
DIRECTORY_VARIABLES = {"SM_MODEL_DIR": "output_dir", "SM_OUTPUT_DATA_DIR": "metrics_dir"}
# Where the model channel's archive is unpacked (one directory per archive, shared by the ranks of a node).
MODEL_EXTRACT_ROOT_VARIABLE = "BERT_CLASSIFY_MODEL_EXTRACT_DIR"


def in_sagemaker_training(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return "SM_TRAINING_ENV" in environ or "SM_MODEL_DIR" in environ


def training_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """TrainConfig field -> value implied by the SageMaker environment (empty outside SageMaker).

    Flags the user passes win over these (the `train` command merges them on top).
    """
    environ = os.environ if environ is None else environ
    if not in_sagemaker_training(environ):
        return {}
    defaults: dict[str, str] = {}
    for channel, field in FILE_CHANNELS.items():
        directory = environ.get(f"SM_CHANNEL_{channel.upper()}")
        if directory:
            defaults[field] = str(channel_file(channel, Path(directory)))
    model_directory = environ.get(f"SM_CHANNEL_{MODEL_CHANNEL.upper()}")
    if model_directory:
        defaults["model"] = str(model_channel_dir(Path(model_directory), environ))
    for variable, field in DIRECTORY_VARIABLES.items():
        if environ.get(variable):
            defaults[field] = environ[variable]
    defaults["checkpoint_dir"] = CHECKPOINT_DIR
    if environ.get(CHECKPOINT_PER_JOB_VARIABLE) == "1":
        job_name = environ.get("TRAINING_JOB_NAME") or _training_env(environ).get("job_name")
        if not job_name:
            raise ConfigError(
                f"{CHECKPOINT_PER_JOB_VARIABLE}=1 but neither TRAINING_JOB_NAME nor SM_TRAINING_ENV names the job."
            )
        defaults["checkpoint_dir"] = f"{CHECKPOINT_DIR}/{job_name}"
    defaults["tensorboard_dir"] = tensorboard_dir(environ)
    return defaults


def _training_env(environ: Mapping[str, str]) -> dict:
    try:
        value = json.loads(environ.get("SM_TRAINING_ENV") or "{}")
    except ValueError:
        raise ConfigError("SM_TRAINING_ENV is not valid JSON; SageMaker sets it to a JSON object.") from None
    return value if isinstance(value, dict) else {}


def tensorboard_dir(environ: Mapping[str, str]) -> str:
    """`tensorboard/` beside the job's output data (SM_OUTPUT_DIR, else SM_OUTPUT_DATA_DIR's parent)."""
    if environ.get("SM_OUTPUT_DIR"):
        return str(Path(environ["SM_OUTPUT_DIR"]) / "tensorboard")
    if environ.get("SM_OUTPUT_DATA_DIR"):
        return str(Path(environ["SM_OUTPUT_DATA_DIR"]).parent / "tensorboard")
    return TENSORBOARD_DIR


def channel_file(channel: str, directory: Path) -> Path:
    """The one data file of a channel directory (hidden files ignored).

    With several files, the one named after the channel (`train.csv` in channel `train`) is used;
    anything else is ambiguous and refused.
    """
    if directory.is_file():
        return directory
    if not directory.is_dir():
        raise ConfigError(f"SageMaker channel '{channel}': directory {directory} does not exist.")
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )
    if len(files) == 1:
        return files[0]
    named = [p for p in files if p.name.split(".")[0] == channel]
    if len(named) == 1:
        return named[0]
    if not files:
        raise ConfigError(
            f"SageMaker channel '{channel}' at {directory} is empty: point the channel at one data file."
        )
    listing = ", ".join(str(p.relative_to(directory)) for p in files[:5])
    raise ConfigError(
        f"SageMaker channel '{channel}' at {directory} holds {len(files)} files ({listing}); "
        f"give the channel one file, or name one '{channel}.<ext>', or pass --{channel} with a path."
    )


def model_channel_dir(directory: Path, environ: Mapping[str, str] | None = None) -> Path:
    """The model directory (with config.json) that the `model` channel holds.

    The channel may hold the model files directly, in one sub-directory, or as a `*.tar.gz` archive
    (SageMaker's model.tar.gz), which is unpacked safely into a work directory.
    """
    environ = os.environ if environ is None else environ
    if not directory.is_dir():
        raise ConfigError(f"SageMaker channel 'model': directory {directory} does not exist.")
    found = _find_model_dir(directory)
    if found is not None:
        return found
    archives = sorted(directory.glob("*.tar.gz")) + sorted(directory.glob("*.tgz"))
    if len(archives) == 1:
        extracted = _extract_once(archives[0], environ)
        found = _find_model_dir(extracted)
        if found is not None:
            return found
        raise ConfigError(
            f"SageMaker channel 'model': archive {archives[0]} has no config.json; it is not a model directory."
        )
    raise ConfigError(
        f"SageMaker channel 'model' at {directory} holds neither a model directory (config.json) "
        f"nor one model.tar.gz; found: {', '.join(p.name for p in sorted(directory.iterdir())[:5]) or 'nothing'}."
    )


def _find_model_dir(directory: Path) -> Path | None:
    if (directory / "config.json").is_file():
        return directory
    subdirectories = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirectories) == 1 and (subdirectories[0] / "config.json").is_file():
        return subdirectories[0]
    return None


def _extract_once(archive: Path, environ: Mapping[str, str]) -> Path:
    """Unpack `archive` into a directory named by its identity; concurrent ranks agree on one copy."""
    stat = archive.stat()
    identity = hashlib.sha256(f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[
        :16
    ]
    root = Path(
        environ.get(MODEL_EXTRACT_ROOT_VARIABLE)
        or Path(tempfile.gettempdir()) / "bert-classify-model-channel"
    )
    target = root / identity
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{identity}.", dir=root))
    try:
        from bert_classify.inference.package import extract_archive

        extract_archive(archive, staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # another rank won the race otherwise
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def boolean_flags_to_cli(argv: Sequence[str]) -> list[str]:
    """Translate SageMaker-style hyper-parameter arguments into `train` flags.

    `--freeze-encoder True` -> `--freeze-encoder`, `--freeze-encoder False` -> nothing,
    `--group-by-length False` -> `--no-group-by-length`; `--max_steps 2` -> `--max-steps 2`.
    Other arguments pass through unchanged. A boolean flag with no value (a hand-written
    command line) means True.
    """
    # The on/off flags come from the one option table (train_options.py). SageMaker passes every
    # hyper-parameter as `--name value`, so they arrive as "True"/"False". `group-by-length False`
    # is how a hyper-parameter naturally says `--no-group-by-length`.
    switches = [option for option in train_options.TRAIN_OPTIONS if option.switch]
    boolean_flags = {option.flag for option in switches}
    negated_flags = {option.field_flag: option.flag for option in switches if option.negated}
    result: list[str] = []
    index = 0
    argv = list(argv)
    while index < len(argv):
        item = argv[index]
        index += 1
        if not item.startswith("--"):
            result.append(item)
            continue
        name, has_inline, inline_value = item[2:].partition("=")
        name = name.replace("_", "-")
        flag = negated_flags.get(name, name)
        if name not in boolean_flags and name not in negated_flags:
            result.append(f"--{name}={inline_value}" if has_inline else f"--{name}")
            continue
        if has_inline:
            value: str | None = inline_value
        elif index < len(argv) and not argv[index].startswith("--"):
            value = argv[index]
            index += 1
        else:
            value = None
        enabled = True if value is None else train_options.parse_switch(value, flag=name, source="hyper-parameter")
        if name in negated_flags:
            enabled = not enabled
        if enabled:
            result.append(f"--{flag}")
    return result


def distributed_settings(environ: Mapping[str, str] | None = None) -> dict:
    """torchrun's rendezvous settings for this host: nnodes, node_rank, nproc_per_node, master_addr, master_port.

    Inside SageMaker: hosts from SM_HOSTS (sorted; the first is the master), this host from
    SM_CURRENT_HOST, processes per host from SM_NUM_GPUS (one process on a CPU instance).
    Outside SageMaker: one node, one process per local GPU (or one on CPU), on 127.0.0.1.
    MASTER_PORT in the environment overrides the port.
    """
    environ = os.environ if environ is None else environ
    port = _master_port(environ)
    hosts_json = environ.get("SM_HOSTS")
    if not hosts_json:
        return {
            "nnodes": 1,
            "node_rank": 0,
            "nproc_per_node": _local_gpu_count(environ),
            "master_addr": "127.0.0.1",
            "master_port": port,
        }
    try:
        hosts = sorted(str(host) for host in json.loads(hosts_json))
    except (ValueError, TypeError):
        raise ConfigError(f"SM_HOSTS must be a JSON list of host names, not {hosts_json!r}.") from None
    if not hosts:
        raise ConfigError("SM_HOSTS is an empty list: SageMaker names at least one host.")
    current = environ.get("SM_CURRENT_HOST", hosts[0])
    if current not in hosts:
        raise ConfigError(f"SM_CURRENT_HOST '{current}' is not in SM_HOSTS {hosts}.")
    return {
        "nnodes": len(hosts),
        "node_rank": hosts.index(current),
        "nproc_per_node": _local_gpu_count(environ),
        "master_addr": hosts[0],
        "master_port": port,
    }


def _master_port(environ: Mapping[str, str]) -> int:
    value = environ.get("MASTER_PORT") or str(DEFAULT_MASTER_PORT)
    port = int(value) if value.strip().isdigit() else -1
    if not 1 <= port <= 65535:
        raise ConfigError(
            f"MASTER_PORT must be a TCP port number from 1 to 65535, not {value[:40]!r}; fix or unset it "
            f"(default {DEFAULT_MASTER_PORT})."
        )
    return port


def _local_gpu_count(environ: Mapping[str, str]) -> int:
    if environ.get("SM_NUM_GPUS") not in (None, ""):
        try:
            return max(1, int(environ["SM_NUM_GPUS"]))
        except ValueError:
            raise ConfigError(
                f"SM_NUM_GPUS must be a whole number, not {environ['SM_NUM_GPUS']!r}."
            ) from None
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
