"""Every `train` option described once: flag, TrainConfig field, value type, choices, help, on/off.

The `train` CLI (commands/train.py), the SageMaker launcher's hyper-parameters (sagemaker/launch.py)
and the container's mapping of hyper-parameters back to flags (sagemaker/environment.py) are all
built from `TRAIN_OPTIONS`, so a new option cannot reach one of them and not the others. Defaults
live on TrainConfig's fields.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bert_classify.config import BEST_METRICS, CLASS_WEIGHT_MODES, DATA_FORMATS, DEFAULT_MODEL, PRECISIONS
from bert_classify.errors import ConfigError
from bert_classify.inference.windows import AGGREGATIONS, DEFAULT_AGGREGATION, LONG_TEXT_MODES


def parse_learning_rate(value: str) -> float | None:
    """A number, or 'auto' (None): the rate scaled with the model's width."""
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', not '{value}'") from None


SWITCH_TRUE = ("true", "1", "yes", "on")
SWITCH_FALSE = ("false", "0", "no", "off")


def parse_switch(value: Any, *, flag: str, source: str = "training option") -> bool:
    """An on/off value as users and SageMaker write it (True/False, 1/0, yes/no, on/off; any case)."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in SWITCH_TRUE:
        return True
    if lowered in SWITCH_FALSE:
        return False
    raise ConfigError(f"{source} --{flag} must be True or False, not '{value}'.")


@dataclass(frozen=True)
class TrainOption:
    """One `train` option. `switch`: an on/off flag that takes no value; `negated`: the flag turns its field off."""

    flag: str  # without the leading dashes
    field: str | None  # TrainConfig field; None for options that are not configuration (--nproc)
    group: str
    help: str
    parse: Callable[[str], Any] | None = str
    choices: tuple[str, ...] | None = None
    switch: bool = False
    negated: bool = False
    launcher_owned: bool = False  # set by the SageMaker launcher itself (channels, SageMaker directories)

    @property
    def field_flag(self) -> str:
        """The field's name as a flag (`group-by-length`): how a hyper-parameter may also name it."""
        return (self.field or self.flag).replace("_", "-")

    def value_from_switch(self, enabled: bool) -> bool:
        """The field's value when the switch's hyper-parameter says `enabled`."""
        return not enabled if self.negated else enabled


TRAIN_OPTIONS: tuple[TrainOption, ...] = (
    # data
    TrainOption("train", "train", "data", "training data: DBpedia-layout CSV, CSV with header, or JSON Lines", launcher_owned=True),
    TrainOption("val", "val", "data", "validation data (same format); default: a split of --train", launcher_owned=True),
    TrainOption("classes", "classes", "data", "class names, one per line; line N names 1-based label N", launcher_owned=True),
    TrainOption("data-format", "data_format", "data", "input format (default: auto)", choices=DATA_FORMATS),
    TrainOption("text-column", "text_column", "data", "text field for CSV-with-header / JSON Lines (default: text)"),
    TrainOption("label-column", "label_column", "data", "label field for CSV-with-header / JSON Lines (default: label)"),
    TrainOption("reader", "reader", "data", "plug-in reader 'package.module:ClassName' yielding (text, label) records"),
    TrainOption("val-fraction", "val_fraction", "data", "fraction split off --train when no --val (default: 0.1)", float),
    TrainOption(
        "multi-label", "multi_label", "data",
        "each example has a list of labels (sigmoid outputs, per-label thresholds); on by itself when the JSON Lines "
        "labels are JSON lists", None, switch=True,
    ),  # fmt: skip
    TrainOption(
        "label-separator", "label_separator", "data",
        "multi-label CSV: the labels in one label cell are joined by this (default: '|', e.g. 'sports|politics')",
    ),  # fmt: skip
    # model
    TrainOption("model", "model", "model", f"Hugging Face id or local directory (default: {DEFAULT_MODEL})", launcher_owned=True),
    TrainOption("freeze-encoder", "freeze_encoder", "model", "train only the classification head", None, switch=True),
    TrainOption("max-seq-len", "max_seq_len", "model", "truncate inputs to this many tokens (default: 128)", int),
    TrainOption(
        "long-texts", "long_texts", "model",
        "texts longer than --max-seq-len: truncate (keep the start), or chunk into overlapping windows whose "
        "outputs are combined per text; saved with the model (default: truncate)", choices=LONG_TEXT_MODES,
    ),  # fmt: skip
    TrainOption(
        "chunk-stride", "chunk_stride", "model",
        "with --long-texts chunk: tokens shared by consecutive windows, 0 to --max-seq-len/2 "
        "(default: a quarter of --max-seq-len)", int,
    ),  # fmt: skip
    TrainOption(
        "chunk-aggregation", "chunk_aggregation", "model",
        f"with --long-texts chunk: how the windows' outputs make one prediction (default: {DEFAULT_AGGREGATION})",
        choices=AGGREGATIONS,
    ),  # fmt: skip
    # optimisation
    TrainOption("epochs", "epochs", "optimisation", "passes over the training data (default: 3)", int),
    TrainOption("max-steps", "max_steps", "optimisation", "stop after this many optimizer steps", int),
    TrainOption("batch-size", "batch_size", "optimisation", "examples per device per micro-step (default: 16)", int),
    TrainOption("grad-accum-steps", "grad_accum_steps", "optimisation", "micro-steps per optimizer step (default: 1)", int),
    TrainOption(
        "learning-rate", "learning_rate", "optimisation",
        "peak learning rate, or 'auto' to scale with model width (default)", parse_learning_rate,
    ),  # fmt: skip
    TrainOption("weight-decay", "weight_decay", "optimisation", "AdamW weight decay (default: 0.01)", float),
    TrainOption("warmup-ratio", "warmup_ratio", "optimisation", "fraction of steps warming up (default: 0.06)", float),
    TrainOption("max-grad-norm", "max_grad_norm", "optimisation", "gradient clipping norm (default: 1.0)", float),
    TrainOption(
        "precision", "precision", "optimisation",
        "auto = bf16 autocast where the device computes bf16 natively (bf16 GPUs; CPUs with AVX512-BF16 or AMX), "
        "else fp32; fp16 (GPU) adds a gradient scaler", choices=PRECISIONS,
    ),  # fmt: skip
    TrainOption("no-group-by-length", "group_by_length", "optimisation", "plain shuffled batches", None, switch=True, negated=True),
    TrainOption(
        "gradient-checkpointing", "gradient_checkpointing", "optimisation",
        "keep one layer's activations and recompute the rest in backward: much less memory for long or large "
        "batches, about a third more compute", None, switch=True,
    ),  # fmt: skip
    TrainOption("seed", "seed", "optimisation", "random seed (default: 42)", int),
    TrainOption(
        "class-weights", "class_weights", "optimisation",
        "balanced: weight the loss by inverse class frequency, for imbalanced classes (default: none)",
        choices=CLASS_WEIGHT_MODES,
    ),  # fmt: skip
    # evaluation
    TrainOption("eval-every-steps", "eval_every_steps", "evaluation", "also evaluate every N steps (always every epoch)", int),
    TrainOption("best-metric", "best_metric", "evaluation", "metric choosing the best model (default: macro_f1)", choices=BEST_METRICS),
    TrainOption("early-stopping-patience", "early_stopping_patience", "evaluation", "stop after N evaluations without improvement", int),
    # output
    TrainOption("output-dir", "output_dir", "output", "where the trained model and metrics go (default: output)", launcher_owned=True),
    TrainOption("metrics-dir", "metrics_dir", "output", "extra copy of metrics.json (SageMaker: SM_OUTPUT_DATA_DIR)", launcher_owned=True),
    TrainOption(
        "overwrite-output-dir", "overwrite_output_dir", "output",
        "replace a model that another run left in --output-dir (a re-run of the same run needs no flag)", None, switch=True,
    ),  # fmt: skip
    TrainOption("log-every-steps", "log_every_steps", "output", "progress line every N steps (default: 20)", int),
    TrainOption(
        "tensorboard-dir", "tensorboard_dir", "output",
        "also write TensorBoard event files here (SageMaker: /opt/ml/output/tensorboard)", launcher_owned=True,
    ),  # fmt: skip
    # checkpoints
    TrainOption(
        "checkpoint-dir", "checkpoint_dir", "checkpoints (spot interruptions)",
        "write and resume checkpoints here (SageMaker: /opt/ml/checkpoints)", launcher_owned=True,
    ),  # fmt: skip
    TrainOption("checkpoint-every-steps", "checkpoint_every_steps", "checkpoints (spot interruptions)", "checkpoint every N optimizer steps", int),
    TrainOption(
        "checkpoint-every-minutes", "checkpoint_every_minutes", "checkpoints (spot interruptions)",
        "checkpoint every M minutes (default: 2; written in the background)", float,
    ),  # fmt: skip
    TrainOption("keep-checkpoints", "keep_checkpoints", "checkpoints (spot interruptions)", "complete checkpoints kept (default: 2)", int),
    TrainOption(
        "force-resume", "force_resume", "checkpoints (spot interruptions)", "resume despite a changed configuration",
        None, switch=True,
    ),  # fmt: skip
    TrainOption(
        "cache-dir", "cache_dir", "checkpoints (spot interruptions)",
        "keep the tokenised data here, built once per node and reused by every rank and restart "
        "(default: <checkpoint-dir>/token-cache; none without --checkpoint-dir)",
    ),  # fmt: skip
    # distributed
    TrainOption(
        "nproc", None, "distributed", "processes (devices) on this machine; >1 launches torchrun (default: one per GPU)",
        int, launcher_owned=True,
    ),  # fmt: skip
)

OPTIONS_BY_FLAG: dict[str, TrainOption] = {option.flag: option for option in TRAIN_OPTIONS}


def find_option(name: str) -> TrainOption | None:
    """The option a flag or field name means (`max-steps`, `max_steps`, `--max-steps`, `group_by_length`)."""
    flag = str(name).lstrip("-").replace("_", "-")
    if flag in OPTIONS_BY_FLAG:
        return OPTIONS_BY_FLAG[flag]
    for option in TRAIN_OPTIONS:
        if option.field_flag == flag:
            return option
    return None


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The `train` command's flags, in their groups; each stores into its TrainConfig field."""
    groups: dict[str, Any] = {}
    for option in TRAIN_OPTIONS:
        group = groups.get(option.group) or groups.setdefault(option.group, parser.add_argument_group(option.group))
        destination = option.field or option.flag.replace("-", "_")
        if option.switch:
            group.add_argument(
                f"--{option.flag}",
                dest=destination,
                action="store_false" if option.negated else "store_true",
                help=option.help,
            )
        else:
            group.add_argument(
                f"--{option.flag}", dest=destination, type=option.parse, choices=option.choices, help=option.help
            )
