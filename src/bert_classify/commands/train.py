"""`bert-classify train`: parse flags into a TrainConfig and call the library's `train`.

`--nproc N` (N > 1) re-launches the same command under torchrun, one process per device.
Inside a SageMaker training container, unset flags are filled from the SM_* environment.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from bert_classify.config import BEST_METRICS, DATA_FORMATS, DEFAULT_MODEL, PRECISIONS, TrainConfig
from bert_classify.errors import ConfigError


def _learning_rate(value: str) -> float | None:
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', not '{value}'") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model on labelled text",
        description="Fine-tune a BERT-family model for text classification. Unset options take the defaults "
        "shown; inside a SageMaker training job, data and output locations come from the SM_* environment.",
        argument_default=argparse.SUPPRESS,  # only flags the user gave reach the config
    )
    data = parser.add_argument_group("data")
    data.add_argument("--train", help="training data: DBpedia-layout CSV, CSV with header, or JSON Lines")
    data.add_argument("--val", help="validation data (same format); default: a split of --train")
    data.add_argument("--classes", help="class names, one per line; line N names 1-based label N")
    data.add_argument("--data-format", choices=DATA_FORMATS, help="input format (default: auto)")
    data.add_argument("--text-column", help="text field for CSV-with-header / JSON Lines (default: text)")
    data.add_argument("--label-column", help="label field for CSV-with-header / JSON Lines (default: label)")
    data.add_argument("--reader", help="plug-in reader 'package.module:ClassName' yielding (text, label) records")
    data.add_argument("--val-fraction", type=float, help="fraction split off --train when no --val (default: 0.1)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help=f"Hugging Face id or local directory (default: {DEFAULT_MODEL})")
    model.add_argument("--freeze-encoder", action="store_true", help="train only the classification head")
    model.add_argument("--max-seq-len", type=int, help="truncate inputs to this many tokens (default: 128)")
    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument("--epochs", type=int, help="passes over the training data (default: 3)")
    optimisation.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    optimisation.add_argument("--batch-size", type=int, help="examples per device per micro-step (default: 16)")
    optimisation.add_argument("--grad-accum-steps", type=int, help="micro-steps per optimizer step (default: 1)")
    optimisation.add_argument(
        "--learning-rate", type=_learning_rate, help="peak learning rate, or 'auto' to scale with model width (default)"
    )
    optimisation.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: 0.01)")
    optimisation.add_argument("--warmup-ratio", type=float, help="fraction of steps warming up (default: 0.06)")
    optimisation.add_argument("--max-grad-norm", type=float, help="gradient clipping norm (default: 1.0)")
    optimisation.add_argument("--precision", choices=PRECISIONS, help="auto = bf16 autocast where the device computes bf16 natively (bf16 GPUs; CPUs with AVX512-BF16 or AMX), else fp32; fp16 (GPU) adds a gradient scaler")
    optimisation.add_argument(
        "--no-group-by-length", dest="group_by_length", action="store_false", help="plain shuffled batches"
    )
    optimisation.add_argument("--seed", type=int, help="random seed (default: 42)")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval-every-steps", type=int, help="also evaluate every N steps (always every epoch)")
    evaluation.add_argument("--best-metric", choices=BEST_METRICS, help="metric choosing the best model (default: macro_f1)")
    evaluation.add_argument("--early-stopping-patience", type=int, help="stop after N evaluations without improvement")
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", help="where the trained model and metrics go (default: output)")
    output.add_argument("--metrics-dir", help="extra copy of metrics.json (SageMaker: SM_OUTPUT_DATA_DIR)")
    output.add_argument("--log-every-steps", type=int, help="progress line every N steps (default: 20)")
    checkpoints = parser.add_argument_group("checkpoints (spot interruptions)")
    checkpoints.add_argument("--checkpoint-dir", help="write and resume checkpoints here (SageMaker: /opt/ml/checkpoints)")
    checkpoints.add_argument("--checkpoint-every-steps", type=int, help="checkpoint every N optimizer steps")
    checkpoints.add_argument("--checkpoint-every-minutes", type=float, help="checkpoint every M minutes (default: 10)")
    checkpoints.add_argument("--keep-checkpoints", type=int, help="complete checkpoints kept (default: 2)")
    checkpoints.add_argument("--force-resume", action="store_true", help="resume despite a changed configuration")
    checkpoints.add_argument(
        "--cache-dir",
        help="keep the tokenised data here, built once per node and reused by every rank and restart "
        "(default: <checkpoint-dir>/token-cache; none without --checkpoint-dir)",
    )
    distributed = parser.add_argument_group("distributed")
    distributed.add_argument(
        "--nproc", type=int, help="processes (devices) on this machine; >1 launches torchrun (default: one per GPU)"
    )
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The user's flags over SageMaker's environment over TrainConfig's defaults."""
    from bert_classify.sagemaker.environment import training_defaults

    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("func", "command", "nproc", "raw_argv")}
    values: dict[str, Any] = {**training_defaults(), **given}
    return TrainConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    config.validate()
    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, not {nproc}.")
    if "LOCAL_RANK" not in os.environ:  # not yet inside torchrun: maybe launch it
        from bert_classify.sagemaker.environment import distributed_settings
        from bert_classify.training.distributed import launch_torchrun

        # one place maps hosts and devices: SM_HOSTS/SM_CURRENT_HOST/SM_NUM_GPUS, or local GPUs
        settings = distributed_settings()
        nproc_per_node = nproc if nproc is not None else settings["nproc_per_node"]
        if nproc_per_node > 1 or settings["nnodes"] > 1:
            rendezvous: dict[str, object] = {}
            if settings["nnodes"] > 1:
                rendezvous = {key: settings[key] for key in ("nnodes", "node_rank", "master_addr", "master_port")}
            return launch_torchrun(nproc_per_node, _argv_without_nproc(list(args.raw_argv)), **rendezvous)

    from bert_classify.training.loop import train
    from bert_classify.training.signals import exit_code_for

    result = train(config)
    if result.interrupted_by is not None:
        return exit_code_for(result.interrupted_by)
    metrics = result.metrics or {}
    print(
        f"done: {result.global_step} steps; val accuracy {metrics.get('accuracy', float('nan')):.4f}, "
        f"macro-F1 {metrics.get('macro_f1', float('nan')):.4f}; model in {result.output_dir}"
    )
    return 0


def _argv_without_nproc(argv: list[str]) -> list[str]:
    cleaned, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if item.startswith("--nproc="):
            continue
        cleaned.append(item)
    return cleaned
