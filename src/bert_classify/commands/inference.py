"""`bert-classify predict|serve|package|export-onnx`: parse flags and call the inference library.

Each parses its flags and calls the library (predictor, server, package, onnx_export); no logic here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from bert_classify.inference.codec import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TEXTS
from bert_classify.inference.predictor import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ONNX_FILE,
    INFERENCE_PRECISIONS,
    RUNTIMES,
)
from bert_classify.inference.windows import AGGREGATIONS, DEFAULT_MAX_WINDOWS, LONG_TEXT_MODES

# Where SageMaker hosting extracts model.tar.gz; the default model of `serve` in a container.
SAGEMAKER_MODEL_DIR = "/opt/ml/model"


def _add_model_options(parser: argparse.ArgumentParser, *, model_required: bool = True) -> None:
    model = parser.add_argument_group("model")
    if model_required:
        model.add_argument("--model", required=True, help="model directory (or model.tar.gz) written by train/package")
    else:
        model.add_argument(
            "--model",
            default=os.environ.get("SM_MODEL_DIR", SAGEMAKER_MODEL_DIR),
            help="model directory or model.tar.gz (default: $SM_MODEL_DIR or /opt/ml/model)",
        )
    model.add_argument("--runtime", choices=RUNTIMES, default="torch", help="inference engine (default: torch)")
    model.add_argument(
        "--onnx-file",
        default=None,
        help=f"with --runtime onnx: the ONNX file, relative to --model (default: {DEFAULT_ONNX_FILE}; "
        "the int8 export is onnx/model_int8.onnx)",
    )
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present, else cpu)")
    model.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        default="auto",
        help="torch runtime: auto = bf16 autocast where the device has native bf16 (bf16 GPUs, CPUs with "
        "AVX512-BF16/AMX), else fp32 (default: auto)",
    )
    model.add_argument(
        "--max-seq-len",
        type=int,
        default=None,
        help="truncate texts to this many tokens (default: the model's own, which train sets to its --max-seq-len)",
    )
    # The old name, kept working but out of --help.
    model.add_argument("--max-length", dest="max_seq_len", type=int, default=None, help=argparse.SUPPRESS)
    add_long_texts_options(model)


def add_long_texts_options(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """--long-texts, --chunk-aggregation, --max-windows-per-text of predict, serve and evaluate."""
    group.add_argument(
        "--long-texts",
        choices=LONG_TEXT_MODES,
        default=None,
        help="texts longer than --max-seq-len: truncate, or chunk into overlapping windows combined per text "
        "(default: what the model was trained with)",
    )
    group.add_argument(
        "--chunk-aggregation",
        choices=AGGREGATIONS,
        default=None,
        help="with chunk: how the windows' outputs make one prediction (default: the model's)",
    )
    group.add_argument(
        "--max-windows-per-text",
        type=int,
        default=DEFAULT_MAX_WINDOWS,
        help=f"with chunk: a longer text is classified from its first windows, with a warning (default: {DEFAULT_MAX_WINDOWS})",
    )


def _load(args: argparse.Namespace):  # -> Classifier; import kept lazy so that --help stays fast
    from bert_classify.inference.predictor import Classifier

    return Classifier.from_pretrained(
        args.model,
        args.device,
        runtime=args.runtime,
        onnx_file=args.onnx_file,
        max_length=args.max_seq_len,
        precision=args.precision,
        long_texts=args.long_texts,
        chunk_aggregation=args.chunk_aggregation,
        max_windows=args.max_windows_per_text,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's commands to the CLI."""
    from bert_classify.data import TEXT_FORMATS

    predict = subparsers.add_parser(
        "predict",
        help="classify texts from a file or standard input",
        description="Classify texts; writes one JSON line per input text, in input order: "
        '{"label": ..., "score": ...} (with "top_k": [...] when --top-k > 1); for a multi-label model '
        '{"labels": [...], "scores": {label: score}}: every label at or above its saved threshold.',
    )
    _add_model_options(predict)
    predict.add_argument("--input", required=True, help="texts to classify: a file, or '-' for standard input")
    predict.add_argument("--output", default="-", help="where to write JSON lines (default: '-', standard output)")
    predict.add_argument("--text-column", default=None, help="text field for CSV with a header / JSON Lines")
    predict.add_argument("--data-format", choices=TEXT_FORMATS, default="auto", help="input format (default: auto)")
    predict.add_argument("--top-k", type=int, default=1, help="also list the K most likely labels (default: 1)")
    predict.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="texts per forward pass")
    predict.set_defaults(func=run_predict)

    serve = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (SageMaker container contract)",
        description="HTTP server: GET /ping, POST /invocations (text/csv, application/json, application/jsonlines), "
        "GET /metrics. Requests arriving together are batched into one forward pass. SIGTERM drains in-flight requests.",
    )
    _add_model_options(serve, model_required=False)
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 in a container)")
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080, SageMaker's)")
    serve.add_argument("--max-batch-size", type=int, default=32, help="texts per merged forward pass; 1 turns batching off")
    serve.add_argument(
        "--max-batch-delay-ms", type=float, default=5.0, help="longest wait for more requests to fill a batch (default: 5)"
    )
    serve.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger bodies get 413 (default: 6 MB)"
    )
    serve.add_argument(
        "--max-texts-per-request", type=int, default=DEFAULT_MAX_TEXTS, help=f"more get 413 (default: {DEFAULT_MAX_TEXTS})"
    )
    serve.add_argument(
        "--forward-batch-size",
        type=int,
        default=None,
        help="texts per forward pass within a merged batch, length-sorted (default: 8 on CPU, all on GPU)",
    )
    serve.add_argument("--request-timeout-s", type=float, default=60.0, help="unanswered by then: 503 (default: 60)")
    serve.add_argument(
        "--header-timeout-s", type=float, default=10.0, help="request headers not complete by then: 408 (default: 10)"
    )
    serve.add_argument("--no-access-log", dest="access_log", action="store_false", help="no per-request log line")
    serve.set_defaults(func=run_serve)

    package = subparsers.add_parser(
        "package",
        help="build the model.tar.gz that SageMaker deploys",
        description="Write model.tar.gz: the model's files at the root, code/inference.py, code/requirements.txt "
        "and the bert_classify package vendored in code/.",
    )
    package.add_argument("--model", required=True, help="model directory written by train")
    package.add_argument("--output", default="model.tar.gz", help="archive to write (default: model.tar.gz)")
    package.set_defaults(func=run_package)

    export = subparsers.add_parser(
        "export-onnx",
        help="export a model to ONNX (optionally int8) for --runtime onnx",
        description="Export to <model>/onnx/model.onnx (checked against PyTorch); --quantize also writes the int8 "
        "dynamic-quantised onnx/model_int8.onnx. Needs the onnx extra.",
    )
    export.add_argument("--model", required=True, help="model directory written by train")
    export.add_argument("--output-dir", default=None, help="where to write the files (default: <model>/onnx)")
    export.add_argument("--quantize", action="store_true", help="also write the int8 dynamic-quantised model")
    export.set_defaults(func=run_export_onnx)


@contextlib.contextmanager
def _open_output(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        yield handle
    os.replace(partial, path)


def run_predict(args: argparse.Namespace) -> int:
    from bert_classify.data import read_texts
    from bert_classify.errors import ConfigError

    if args.top_k < 1:
        raise ConfigError(f"--top-k {args.top_k}: must be at least 1.")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be at least 1.")
    texts = read_texts(args.input, data_format=args.data_format, text_column=args.text_column)
    classifier = _load(args)
    predictions = classifier.predict(texts, top_k=args.top_k, batch_size=args.batch_size)
    with _open_output(args.output) as handle:
        for prediction in predictions:
            handle.write(json.dumps(prediction, ensure_ascii=False) + "\n")
    if args.output != "-":
        print(f"wrote {len(predictions)} predictions to {args.output}", file=sys.stderr)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from bert_classify.errors import ConfigError
    from bert_classify.inference.server import ServerConfig, serve

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be a TCP port from 0 to 65535 (0: the system picks a free one).")
    for flag, value in (("--request-timeout-s", args.request_timeout_s), ("--max-batch-delay-ms", args.max_batch_delay_ms)):
        if not math.isfinite(value):
            raise ConfigError(f"{flag} {value}: must be a finite number.")
    config = ServerConfig(
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        max_body_bytes=args.max_body_bytes,
        max_texts_per_request=args.max_texts_per_request,
        request_timeout_s=args.request_timeout_s,
        header_timeout_s=args.header_timeout_s,
        forward_batch_size=args.forward_batch_size,
    )
    config.validate()  # before loading the model: a bad flag fails in milliseconds
    classifier = _load(args)
    serve(classifier, host=args.host, port=args.port, config=config, access_log_enabled=args.access_log)
    return 0


def run_package(args: argparse.Namespace) -> int:
    from bert_classify.inference.package import build_package

    output = build_package(Path(args.model), Path(args.output))
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
    return 0


def run_export_onnx(args: argparse.Namespace) -> int:
    from bert_classify.inference.onnx_export import export_onnx

    written = export_onnx(
        Path(args.model), Path(args.output_dir) if args.output_dir else None, quantize=args.quantize
    )
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
