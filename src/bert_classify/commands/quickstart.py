"""`bert-classify quickstart`: the offline end-to-end demo (see bert_classify.quickstart)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="train, interrupt, resume, evaluate and predict end to end, offline",
        description="Writes a sample data set in the DBpedia layout, builds a tiny BERT locally (no download), "
        "trains it with gradient accumulation, interrupts and resumes the run, evaluates and predicts. "
        "--model and --data run the same steps on a real model and real data.",
    )
    parser.add_argument("--output-dir", default="quickstart-output", help="where everything goes")
    parser.add_argument("--model", help="Hugging Face id or local directory (default: a tiny BERT built locally)")
    parser.add_argument("--data", help="directory with train.csv, classes.txt and optionally val.csv, test.csv")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--no-interrupt", dest="interrupt", action="store_false", help="skip the interruption demo")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bert_classify.quickstart import run_quickstart

    run_quickstart(args.output_dir, model=args.model, data=args.data, epochs=args.epochs,
                   max_steps=args.max_steps, interrupt=args.interrupt)
    return 0
