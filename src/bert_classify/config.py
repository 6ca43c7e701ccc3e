"""One typed, validated training configuration, built from CLI arguments or Python alike.

Invalid values and invalid combinations are refused here, before any data is read or model loaded,
with a message that names the flag to change.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bert_classify.errors import ConfigError
from bert_classify.precision import PRECISIONS

BEST_METRICS = ("macro_f1", "accuracy", "loss")
DATA_FORMATS = ("auto", "dbpedia", "csv", "jsonl")
DEFAULT_MODEL = "bert-base-uncased"


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
    # model
    model: str = DEFAULT_MODEL
    freeze_encoder: bool = False
    max_seq_len: int = 128
    # optimisation
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 16  # per device, per micro-step
    grad_accum_steps: int = 1
    learning_rate: float | None = None  # None: auto_learning_rate(model hidden size)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    precision: str = "auto"
    group_by_length: bool = True
    seed: int = 42
    # evaluation and selection
    eval_every_steps: int | None = None
    best_metric: str = "macro_f1"
    early_stopping_patience: int | None = None
    # output
    output_dir: str = "output"
    log_every_steps: int = 20
    # checkpoints (spot interruptions)
    checkpoint_dir: str | None = None
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 10.0
    keep_checkpoints: int = 2
    force_resume: bool = False
    # tokenised-data cache; default <checkpoint_dir>/token-cache when --checkpoint-dir is given
    cache_dir: str | None = None
    # extra metrics/plots directory (SageMaker's SM_OUTPUT_DATA_DIR); defaults to output_dir
    metrics_dir: str | None = None

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
        _positive_int("--epochs", self.epochs)
        _positive_int("--batch-size", self.batch_size)
        _positive_int("--grad-accum-steps", self.grad_accum_steps)
        _positive_int("--max-seq-len", self.max_seq_len)
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
        if self.early_stopping_patience is not None and not self.val and self.val_fraction <= 0:
            raise ConfigError("--early-stopping-patience needs validation data: give --val or --val-fraction.")
        for flag, path in (("--train", self.train), ("--val", self.val), ("--classes", self.classes)):
            if path and not self.reader and not Path(path).exists():
                raise ConfigError(f"{flag}: file not found: {path}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)


def _positive_int(flag: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{flag} must be a whole number >= 1, not {value!r}.")
