"""`bert-classify evaluate`: run a saved model over labelled data and write metrics, a report and a plot.

Thin: parses flags and calls `bert_classify.evaluation.evaluate_model`, which holds the logic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bert_classify.data import DATA_FORMATS
from bert_classify.errors import ConfigError
from bert_classify.inference.predictor import INFERENCE_PRECISIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure a trained model on labelled data",
        description="Predict every example of a labelled file with a saved model and write metrics.json, "
        "report.txt (per-class precision/recall/F1) and confusion_matrix.png to --output-dir. Labels are "
        "read with the model's class names (config.json id2label). A multi-label model reads list labels, applies "
        "its saved per-label thresholds, reports micro_f1, macro_f1 and subset_accuracy, and plots per_label_f1.png.",
    )
    parser.add_argument("--model", required=True, help="model directory (save_pretrained) or model.tar.gz")
    parser.add_argument("--data", help="labelled data: DBpedia-layout CSV, CSV with header, or JSON Lines")
    parser.add_argument("--classes", help="classes.txt to check against the model's labels (must match them)")
    parser.add_argument("--data-format", choices=DATA_FORMATS, default="auto", help="input format (default: auto)")
    parser.add_argument("--text-column", help="text field for CSV with header / JSON Lines (default: text)")
    parser.add_argument("--label-column", help="label field for CSV with header / JSON Lines (default: label)")
    parser.add_argument("--reader", help="plug-in reader 'package.module:ClassName' yielding (text, label) records")
    parser.add_argument(
        "--label-separator", default="|",
        help="multi-label models, CSV with a header: the labels in one label cell are joined by this (default: '|')",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    parser.add_argument("--max-seq-len", type=int, help="truncate inputs to this many tokens (default: the model's limit)")
    parser.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        default="auto",
        help="as for predict: auto = bf16 autocast where the device has native bf16, else fp32 (default: auto)",
    )
    from bert_classify.commands.inference import add_long_texts_options

    add_long_texts_options(parser)
    parser.add_argument("--output-dir", required=True, help="where metrics.json, report.txt and confusion_matrix.png go")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bert_classify.evaluation import (
        CONFUSION_PLOT_FILE,
        METRICS_FILE,
        PER_LABEL_PLOT_FILE,
        REPORT_FILE,
        evaluate_model,
    )

    if args.data is None and args.reader is None:
        raise ConfigError("evaluate needs --data FILE (or a plug-in --reader that finds its own data).")
    metrics = evaluate_model(
        args.model,
        args.data,
        classes=args.classes,
        output_dir=args.output_dir,
        data_format=args.data_format,
        text_column=args.text_column,
        label_column=args.label_column,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        reader=args.reader,
        label_separator=args.label_separator,
        precision=args.precision,
        long_texts=args.long_texts,
        chunk_aggregation=args.chunk_aggregation,
        max_windows=args.max_windows_per_text,
    )
    output = Path(args.output_dir)
    print(f"examples: {metrics['num_examples']}")
    if metrics.get("multi_label"):
        fixed = metrics["at_threshold_0.5"]
        for name in ("micro_f1", "macro_f1", "subset_accuracy"):
            print(f"{name}: {metrics[name]:.4f} (at threshold 0.5: {fixed[name]:.4f})")
        print(f"wrote {output / METRICS_FILE}, {output / REPORT_FILE}, {output / PER_LABEL_PLOT_FILE}")
        return 0
    print(f"accuracy: {metrics['accuracy']:.4f}")
    print(f"macro_f1: {metrics['macro_f1']:.4f}")
    print(f"wrote {output / METRICS_FILE}, {output / REPORT_FILE}, {output / CONFUSION_PLOT_FILE}")
    return 0
