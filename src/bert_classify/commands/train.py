"""`bert-classify train`: parse flags into a TrainConfig and call the library's `train`.

`--nproc N` (N > 1) re-launches the same command under torchrun, one process per device.
Inside a SageMaker training container, unset flags are filled from the SM_* environment.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from bert_classify.config import TrainConfig, check_output_locations
from bert_classify.errors import ConfigError
from bert_classify.train_options import add_train_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model on labelled text",
        description="Fine-tune a BERT-family model for text classification. Unset options take the defaults "
        "shown; inside a SageMaker training job, data and output locations come from the SM_* environment.",
        argument_default=argparse.SUPPRESS,  # only flags the user gave reach the config
    )
    add_train_arguments(parser)  # every option is described once, in train_options.py
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
    check_output_locations(config)  # before torchrun starts: one clear line, not one per rank
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
    if metrics.get("multi_label"):
        print(
            f"done: {result.global_step} steps; val micro-F1 {metrics['micro_f1']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
            f"subset accuracy {metrics['subset_accuracy']:.4f} (at 0.5; per-label thresholds saved); model in {result.output_dir}"
        )
        return 0
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
