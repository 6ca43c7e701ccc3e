"""One typed, validated training configuration, built from CLI arguments or Python alike.

Invalid values and invalid combinations are refused here, before any data is read or model loaded,
with a message that names the flag to change.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bert_classify.errors import ConfigError
from bert_classify.inference.windows import AGGREGATIONS, DEFAULT_AGGREGATION, LONG_TEXT_MODES
from bert_classify.precision import PRECISIONS

# micro_f1 equals accuracy for single-label data; for multi-label data accuracy is subset (exact-match) accuracy.
BEST_METRICS = ("macro_f1", "micro_f1", "accuracy", "loss")
DATA_FORMATS = ("auto", "dbpedia", "csv", "jsonl")
DEFAULT_MODEL = "bert-base-uncased"
MULTI_LABEL_CHUNK_REFUSED = (
    "--long-texts chunk does not support multi-label data yet (list labels or --multi-label); use --long-texts "
    "truncate (the default), or split long documents into shorter texts that each carry the labels."
)
# The shortest input worth classifying: [CLS], one token of text, [SEP]. Training, predict,
# evaluate and serve all refuse a shorter --max-seq-len.
MIN_SEQ_LEN = 3
# Seeds feed numpy's generators and torch.manual_seed: whole numbers in [0, 2**32).
MAX_SEED = 2**32 - 1
# Files whose presence means a directory already holds a model (ours or anyone's save_pretrained).
MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "training_config.json")
TRAINING_CONFIG_FILE = "training_config.json"
# Options that do not change what a run trains: a re-run differing only in these is the same run.
_OPERATIONAL_OPTIONS = frozenset({
    "output_dir", "metrics_dir", "log_every_steps", "force_resume", "overwrite_output_dir",
    "checkpoint_every_steps", "checkpoint_every_minutes", "keep_checkpoints",
})
CLASS_WEIGHT_MODES = ("none", "balanced")


def auto_learning_rate(hidden_size: int) -> float:
    """Peak learning rate for fine-tuning an encoder of this width.

    5e-5 is the usual choice for BERT-base (hidden 768) and is too low for small encoders: on our
    DBpedia measurement MiniLM (hidden 384) reached 0.879 accuracy at 5e-5 and 0.981 at 2e-4. The
    stable rate scales roughly with 1/hidden^2 (muP-style width scaling), which gives 5e-5 at 768,
    2e-4 at 384 and 2.8e-5 at 1024 (BERT-large, where 2e-5 to 3e-5 is standard). Capped at 5e-4.
    """
    return float(min(5e-4, 5e-5 * (768.0 / float(hidden_size)) ** 2))


@dataclass
class TrainConfig:
    """Everything `train` needs. Field names are the CLI flags with '-' for '_'."""

    # data
    train: str | None = None
    val: str | None = None
    classes: str | None = None
    data_format: str = "auto"
    text_column: str | None = None
    label_column: str | None = None
    reader: str | None = None  # "package.module:ClassName" plug-in
    val_fraction: float = 0.1
    multi_label: bool = False  # also on by itself when the JSON Lines labels are lists
    label_separator: str = "|"  # multi-label CSV: the label cell's labels joined by this
    # model
    model: str = DEFAULT_MODEL
    freeze_encoder: bool = False
    max_seq_len: int = 128
    # long documents: "truncate" keeps the first --max-seq-len tokens; "chunk" trains and predicts on
    # overlapping windows (inference/windows.py), consecutive windows sharing chunk_stride tokens
    long_texts: str = "truncate"
    chunk_stride: int | None = None  # None: a quarter of --max-seq-len
    chunk_aggregation: str = DEFAULT_AGGREGATION
    # optimisation
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 16  # per device, per micro-step
    grad_accum_steps: int = 1
    learning_rate: float | None = None  # None: auto_learning_rate(model hidden size)
    weight_decay: float = 0.01
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30 % more compute
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    precision: str = "auto"
    group_by_length: bool = True
    seed: int = 42
    class_weights: str = "none"  # "balanced": inverse class frequency, mean weight 1 over examples
    # evaluation and selection
    eval_every_steps: int | None = None
    best_metric: str = "macro_f1"
    early_stopping_patience: int | None = None
    # output
    output_dir: str = "output"
    log_every_steps: int = 20
    tensorboard_dir: str | None = None  # TensorBoard event files (SageMaker: /opt/ml/output/tensorboard)
    # checkpoints (spot interruptions)
    checkpoint_dir: str | None = None
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 2.0  # asynchronous writes: a SIGKILL loses ~2 min, <1 % overhead (docs/benchmarks.md)
    keep_checkpoints: int = 2
    force_resume: bool = False
    # tokenised-data cache; default <checkpoint_dir>/token-cache when --checkpoint-dir is given
    cache_dir: str | None = None
    # extra metrics/plots directory (SageMaker's SM_OUTPUT_DATA_DIR); defaults to output_dir
    metrics_dir: str | None = None
    # replace a model already in output_dir that another run (or no run of ours) wrote
    overwrite_output_dir: bool = False

    def validate(self) -> TrainConfig:
        """Refuse invalid values up front; return self for chaining."""
        if not self.train and not self.reader:
            raise ConfigError("--train is required (a CSV or JSON Lines file), or --reader for a plug-in reader.")
        if self.data_format not in DATA_FORMATS:
            raise ConfigError(f"--data-format must be one of {', '.join(DATA_FORMATS)}, not '{self.data_format}'.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not '{self.precision}'.")
        if self.best_metric not in BEST_METRICS:
            raise ConfigError(f"--best-metric must be one of {', '.join(BEST_METRICS)}, not '{self.best_metric}'.")
        if self.class_weights not in CLASS_WEIGHT_MODES:
            raise ConfigError(
                f"--class-weights must be one of {', '.join(CLASS_WEIGHT_MODES)}, not '{self.class_weights}'."
            )
        self._validate_long_texts()
        _positive_int("--epochs", self.epochs)
        _positive_int("--batch-size", self.batch_size)
        _positive_int("--grad-accum-steps", self.grad_accum_steps)
        _positive_int("--max-seq-len", self.max_seq_len)
        if self.max_seq_len < MIN_SEQ_LEN:
            raise ConfigError(
                f"--max-seq-len must be at least {MIN_SEQ_LEN} ([CLS], one token of text, [SEP]), not {self.max_seq_len}."
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed must be a whole number from 0 to {MAX_SEED} (2**32 - 1), not {self.seed!r}.")
        for flag, number in (
            ("--learning-rate", self.learning_rate),
            ("--weight-decay", self.weight_decay),
            ("--warmup-ratio", self.warmup_ratio),
            ("--max-grad-norm", self.max_grad_norm),
            ("--val-fraction", self.val_fraction),
            ("--checkpoint-every-minutes", self.checkpoint_every_minutes),
        ):
            _finite(flag, number)
        _positive_int("--keep-checkpoints", self.keep_checkpoints)
        _positive_int("--log-every-steps", self.log_every_steps)
        for flag, value in (
            ("--max-steps", self.max_steps),
            ("--eval-every-steps", self.eval_every_steps),
            ("--early-stopping-patience", self.early_stopping_patience),
            ("--checkpoint-every-steps", self.checkpoint_every_steps),
        ):
            if value is not None:
                _positive_int(flag, value)
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"--learning-rate must be a positive number, not {self.learning_rate}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), not {self.warmup_ratio}.")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, not {self.weight_decay}.")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"--max-grad-norm must be > 0, not {self.max_grad_norm}.")
        if self.checkpoint_every_minutes is not None and self.checkpoint_every_minutes <= 0:
            raise ConfigError(f"--checkpoint-every-minutes must be > 0, not {self.checkpoint_every_minutes}.")
        if not self.val and not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"--val-fraction must be between 0 and 1 (exclusive) when no --val file is given, not {self.val_fraction}."
            )
        if not isinstance(self.label_separator, str) or not self.label_separator or "\n" in self.label_separator:
            raise ConfigError(f"--label-separator must be a non-empty string on one line, not {self.label_separator!r}.")
        if self.label_separator != "|" and not self.multi_label:
            raise ConfigError(
                f"--label-separator {self.label_separator!r} applies to multi-label CSV data only; add --multi-label, "
                "or drop --label-separator."
            )
        if self.early_stopping_patience is not None and not self.val and self.val_fraction <= 0:
            raise ConfigError("--early-stopping-patience needs validation data: give --val or --val-fraction.")
        for flag, path in (("--train", self.train), ("--val", self.val), ("--classes", self.classes)):
            if path and not self.reader and not Path(path).exists():
                raise ConfigError(f"{flag}: file not found: {path}")
        return self

    def _validate_long_texts(self) -> None:
        if self.long_texts not in LONG_TEXT_MODES:
            raise ConfigError(f"--long-texts must be one of {', '.join(LONG_TEXT_MODES)}, not '{self.long_texts}'.")
        if self.chunk_aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"--chunk-aggregation must be one of {', '.join(AGGREGATIONS)}, not '{self.chunk_aggregation}'."
            )
        if self.long_texts == "chunk" and self.multi_label:
            raise ConfigError(MULTI_LABEL_CHUNK_REFUSED)
        if self.chunk_stride is None:
            return
        if self.long_texts != "chunk":
            raise ConfigError("--chunk-stride applies to --long-texts chunk; add --long-texts chunk or drop --chunk-stride.")
        limit = self.max_seq_len // 2 if isinstance(self.max_seq_len, int) else 0
        if isinstance(self.chunk_stride, bool) or not isinstance(self.chunk_stride, int) or not 0 <= self.chunk_stride <= limit:
            raise ConfigError(
                f"--chunk-stride (tokens shared by consecutive windows) must be a whole number from 0 to {limit} "
                f"(half of --max-seq-len {self.max_seq_len}), not {self.chunk_stride!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)


def check_output_locations(config: TrainConfig, environ: Mapping[str, str] | None = None) -> None:
    """Refuse, before any data is read, places that training could not write or a model it would destroy.

    --output-dir, --metrics-dir and --checkpoint-dir must be directories (existing, or creatable)
    on a writable file system. An --output-dir that already holds a model is refused unless it is
    this run's own earlier output (its training_config.json records the same options: a re-run
    after a spot interruption or of a finished run) or --overwrite-output-dir is given; the
    --model directory itself is refused as --output-dir unless --overwrite-output-dir is given.
    """
    environ = os.environ if environ is None else environ
    for flag, variable, value in (
        ("--output-dir", "SM_MODEL_DIR", config.output_dir),
        ("--metrics-dir", "SM_OUTPUT_DATA_DIR", config.metrics_dir),
        ("--checkpoint-dir", None, config.checkpoint_dir),
    ):
        if value:
            named = f"{flag} (from {variable})" if variable and environ.get(variable) == value else flag
            _check_writable_directory(named, Path(value))
    _check_not_overwriting(config)


def _check_writable_directory(flag: str, path: Path) -> None:
    """`path` is a directory, or can become one: its nearest existing ancestor is a writable directory."""
    existing = Path(os.path.abspath(path))
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == Path(os.path.abspath(path)) else f" ({existing} on its path)"
        raise ConfigError(
            f"{flag} {path}: a file is in the way{where}, not a directory; give a directory path or move the file."
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".bert-classify-write-check-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(
            f"{flag} {path}: cannot write in {existing} ({error.strerror or error}); give a directory on a "
            "writable file system."
        ) from None


def _check_not_overwriting(config: TrainConfig) -> None:
    output = Path(config.output_dir)
    if config.overwrite_output_dir or not output.is_dir():
        return
    model = Path(config.model)
    if model.is_dir() and model.resolve() == output.resolve():
        raise ConfigError(
            f"--output-dir {output} is the --model directory: training would replace the base model with the "
            "fine-tuned one. Choose another --output-dir, or pass --overwrite-output-dir to replace it on purpose."
        )
    present = [name for name in MODEL_FILES if (output / name).exists()]
    if present and not _is_own_output(config, output / TRAINING_CONFIG_FILE):
        raise ConfigError(
            f"--output-dir {output} already holds a model ({', '.join(present)}) written by another run; choose a "
            "new --output-dir, or pass --overwrite-output-dir to replace it."
        )


def _is_own_output(config: TrainConfig, saved_file: Path) -> bool:
    """Whether `saved_file` (a training_config.json) records this run: every option that shapes training equal."""
    try:
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(saved, dict):
        return False
    if _continues_a_checkpointed_run(config, saved):
        return True
    for name, value in config.to_dict().items():
        if name in _OPERATIONAL_OPTIONS:
            continue
        if (name == "learning_rate" and value is None) or (name == "precision" and value == "auto"):
            continue  # saved resolved ("auto" -> the rate and precision used): any saved value is ours
        # an option added after the saved run was written is absent there; it ran with the option's default
        if saved.get(name, _FIELD_DEFAULTS.get(name, _ABSENT)) != value:
            return False
    return True


_ABSENT = object()
_FIELD_DEFAULTS = {
    field.name: field.default for field in dataclasses.fields(TrainConfig) if field.default is not dataclasses.MISSING
}


def _continues_a_checkpointed_run(config: TrainConfig, saved: dict[str, Any]) -> bool:
    """The saved run checkpointed into this run's --checkpoint-dir, and checkpoints are there: this run resumes
    it, and the checkpoint's fingerprint (not this check) decides whether changed options may continue it
    (refused, naming each change, unless --force-resume)."""
    if not config.checkpoint_dir or saved.get("checkpoint_dir") is None:
        return False
    from bert_classify.training.checkpoint import CHECKPOINT_PREFIX

    try:
        same = Path(saved["checkpoint_dir"]).resolve() == Path(config.checkpoint_dir).resolve()
        return same and any(Path(config.checkpoint_dir).glob(f"{CHECKPOINT_PREFIX}*"))
    except (OSError, TypeError, ValueError):
        return False


def _finite(flag: str, value: Any) -> None:
    """Refuse nan and ±inf: they pass every comparison-based check and train a model of NaNs."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, not {value!r}.")


def _positive_int(flag: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{flag} must be a whole number >= 1, not {value!r}.")
