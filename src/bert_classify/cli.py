"""Command-line entry point: parse arguments, call the library, print results.

Each command lives in its own module that exposes `register(subparsers)`; the module sets
`func` on its parser. User mistakes (BertClassifyError) print one line and exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bert_classify.errors import BertClassifyError

# One module per command family; each has register(subparsers).
COMMAND_MODULES = (
    "bert_classify.commands.train",
    "bert_classify.commands.quickstart",
    "bert_classify.commands.evaluate",
    "bert_classify.commands.inference",
    "bert_classify.commands.sagemaker",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert-classify",
        description="Fine-tune, evaluate and serve BERT-family text classifiers.",
        allow_abbrev=False,
    )
    from bert_classify import __version__

    parser.add_argument("--version", action="version", version=f"bert-classify {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Only whole flag names: `--epoch 2` must be an error, not a silent `--epochs 2` (argparse's prefix match)."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _no_abbreviations(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.raw_argv = argv  # for commands that re-launch themselves (train --nproc)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except BertClassifyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
