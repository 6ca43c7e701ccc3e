"""Offline inference throughput: our `Classifier.predict` against `transformers.pipeline`, plus ONNX fp32/int8.

Same model, same texts, same batch size and truncation, in one process. Our default precision is
"auto" (bf16 autocast on CPUs with native bf16, fp32 elsewhere); where it resolves to bf16, our fp32
path and the pipeline under the same bf16 autocast run too, so that every precision is also compared
with its equal. The paths take turns on
chunks of 250 texts so that load from other jobs on a shared machine hits them alike. The ONNX paths report their
accuracy on the real labels when the model is fine-tuned (--finetuned DIR, or --finetune-rows N to
fine-tune the MiniLM first with `bert-classify train`); otherwise their agreement with the PyTorch
predictions, labelled as such.

    python benchmarks/bench_inference.py                          # 2,000 texts, batch 32
    python benchmarks/bench_inference.py --finetune-rows 2000     # + accuracy of fp32/int8
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, read_rows, write_result  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TORCH_NAME = "bert-classify predict (torch)"
PEER_NAME = "transformers.pipeline (fp32, default)"
PEER_BF16_NAME = "transformers.pipeline (bf16 autocast)"
DATA_DIR = SHARED / "data" / "dbpedia-10k"
MODEL_DIR = SHARED / "models" / "minilm-l6-h384-uncased"


def class_names() -> list[str]:
    return [line.strip() for line in (DATA_DIR / "classes.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


def untrained_classifier_dir(target: Path, seed: int) -> Path:
    """The MiniLM with a seeded random 14-class head, saved once so that every path uses the same weights."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    names = class_names()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        MODEL_DIR, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(MODEL_DIR).save_pretrained(target)
    return target


def finetune(target: Path, rows: int, scratch: Path) -> Path:
    """Fine-tune the MiniLM on the first `rows` training rows, one epoch (the README's reference recipe)."""
    train_csv = scratch / "train.csv"
    with open(DATA_DIR / "train.csv", newline="", encoding="utf-8") as source, open(
        train_csv, "w", newline="", encoding="utf-8"
    ) as sink:
        csv.writer(sink).writerows(row for _, row in zip(range(rows), csv.reader(source)))
    command = [
        sys.executable, "-m", "bert_classify", "train", "--train", str(train_csv),
        "--classes", str(DATA_DIR / "classes.txt"), "--model", str(MODEL_DIR), "--epochs", "1",
        "--batch-size", "16", "--learning-rate", "2e-4", "--max-seq-len", "128", "--output-dir", str(target),
    ]  # fmt: skip
    print("fine-tuning:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return target


def timed(function: Any) -> tuple[Any, float]:
    gc.collect()
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="test texts to classify (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--max-seq-len", "--max-length", dest="max_length", type=int, default=None, help="truncation for every path (default: the model's limit, 512)"
    )
    parser.add_argument("--finetuned", type=Path, default=None, help="a fine-tuned DBpedia model directory")
    parser.add_argument("--finetune-rows", type=int, default=0, help="fine-tune the MiniLM on this many rows first")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX paths")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the texts per path")
    parser.add_argument(
        "--chunk", type=int, default=250, help="texts per turn: the paths take turns on chunks (default: 250)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").exists() or not (DATA_DIR / "test.csv").exists():
        print(f"skipped: needs {MODEL_DIR} and {DATA_DIR}", file=sys.stderr)
        return 2

    import torch
    import transformers
    from transformers import pipeline

    from bert_classify.inference.predictor import Classifier

    transformers.logging.set_verbosity_error()
    rows = read_rows(DATA_DIR / "test.csv", args.rows)
    texts = [text for _, text in rows]
    names = class_names()
    true_labels = np.array([names[label - 1] for label, _ in rows])
    scratch = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    if args.finetuned is not None:
        model_dir, model_kind = args.finetuned, f"fine-tuned ({args.finetuned})"
    elif args.finetune_rows:
        model_dir = finetune(scratch / "finetuned", args.finetune_rows, scratch)
        model_kind = f"MiniLM fine-tuned by `bert-classify train` on {args.finetune_rows} train rows, 1 epoch"
    else:
        model_dir = untrained_classifier_dir(scratch / "minilm-random-head", args.seed)
        model_kind = "MiniLM encoder with a random 14-class head (no accuracy: agreement is reported instead)"
    fine_tuned = args.finetuned is not None or args.finetune_rows > 0

    warmup = texts[:64]
    ours = Classifier.from_pretrained(model_dir, device="cpu", max_length=args.max_length)  # precision auto
    ours_fp32 = Classifier.from_pretrained(model_dir, device="cpu", max_length=args.max_length, precision="fp32")
    max_length = ours.max_length  # the pipeline truncates at the same length
    peer = pipeline("text-classification", model=str(model_dir), device="cpu")
    peer_options = {"batch_size": args.batch_size, "truncation": True, "max_length": max_length}

    def peer_bf16(chunk: list[str]) -> list[Any]:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the same autocast our bf16 path runs
            return peer(chunk, **peer_options)

    default_name = f"{TORCH_NAME} (default: {ours.precision})"
    runners: dict[str, Any] = {
        default_name: lambda chunk: [item["label"] for item in ours.predict(chunk, batch_size=args.batch_size)],
        PEER_NAME: lambda chunk: [item["label"] for item in peer(chunk, **peer_options)],
    }
    if ours.precision != "fp32":  # the same precision side by side too
        runners[f"{TORCH_NAME} (fp32)"] = lambda chunk: [
            item["label"] for item in ours_fp32.predict(chunk, batch_size=args.batch_size)
        ]
        runners[PEER_BF16_NAME] = lambda chunk: [item["label"] for item in peer_bf16(chunk)]
        ours_fp32.predict(warmup, batch_size=args.batch_size)
        peer_bf16(warmup)
    ours.predict(warmup, batch_size=args.batch_size)
    peer(warmup, **peer_options)
    extras: dict[str, dict[str, Any]] = {}
    if not args.no_onnx:
        from bert_classify.inference.onnx_export import export_onnx

        (fp32_path, int8_path), export_seconds = timed(lambda: export_onnx(model_dir, scratch / "onnx", quantize=True))
        print(f"  exported ONNX fp32 + int8 in {export_seconds:.1f} s", flush=True)
        for name, path in (("onnx fp32", fp32_path), ("onnx int8 (dynamic)", int8_path)):
            classifier = Classifier.from_pretrained(model_dir, runtime="onnx", onnx_file=path, max_length=max_length)
            classifier.predict(warmup, batch_size=args.batch_size)
            runners[name] = lambda chunk, c=classifier: [
                item["label"] for item in c.predict(chunk, batch_size=args.batch_size)
            ]
            extras[name] = {"file_mb": round(path.stat().st_size / 1e6, 1)}

    # The paths take turns on chunks of the texts (order alternating chunk by chunk), so that load from
    # other jobs on the shared cores lands on every path alike; texts/s is total texts over total time.
    chunks = [texts[start : start + args.chunk] for start in range(0, len(texts), args.chunk)]
    seconds_by_path: dict[str, float] = {name: 0.0 for name in runners}
    labels_by_path: dict[str, list[str]] = {name: [] for name in runners}
    for round_number in range(args.rounds):
        for chunk_number, chunk in enumerate(chunks):
            names = list(runners) if (round_number * len(chunks) + chunk_number) % 2 == 0 else list(reversed(runners))
            for name in names:
                labels, seconds = timed(lambda name=name, chunk=chunk: runners[name](chunk))
                seconds_by_path[name] += seconds
                if round_number == 0:
                    labels_by_path[name].extend(labels)
        print(f"  round {round_number + 1} done, load average {os.getloadavg()[0]:.2f}", flush=True)

    torch_name, peer_name = default_name, PEER_NAME
    peer_same_precision = PEER_BF16_NAME if PEER_BF16_NAME in runners else PEER_NAME
    total_texts = len(texts) * args.rounds
    results: list[dict[str, Any]] = []
    for name in runners:
        labels_array = np.array(labels_by_path[name])
        entry: dict[str, Any] = {
            "path": name,
            "texts": total_texts,
            "seconds": round(seconds_by_path[name], 3),
            "texts_per_s": round(total_texts / seconds_by_path[name], 2),
            "ratio_vs_pipeline": round(seconds_by_path[peer_name] / seconds_by_path[name], 3),
            # against the pipeline at this path's own precision (bf16 paths vs the bf16 pipeline)
            "ratio_vs_pipeline_same_precision": round(
                seconds_by_path[peer_same_precision if "bf16" in name else peer_name] / seconds_by_path[name], 3
            ),
            "ratio_vs_torch": round(seconds_by_path[torch_name] / seconds_by_path[name], 3),
            "agreement_with_torch": round(float((labels_array == np.array(labels_by_path[torch_name])).mean()), 4),
            **extras.get(name, {}),
        }
        if fine_tuned:
            entry["accuracy"] = round(float((labels_array == true_labels).mean()), 4)
        results.append(entry)

    print()
    header = (f"{'path':<44}{'texts/s':>9}{'vs pipeline':>13}{'same prec.':>12}"
              f"{'accuracy' if fine_tuned else 'agree w/ torch':>16}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for entry in results:
        quality = entry["accuracy"] if fine_tuned else entry["agreement_with_torch"]
        print(f"{entry['path']:<44}{entry['texts_per_s']:>9.1f}{entry['ratio_vs_pipeline']:>12.2f}x"
              f"{entry['ratio_vs_pipeline_same_precision']:>11.2f}x{quality:>16}")  # fmt: skip
    path = write_result(
        "inference",
        {
            "model": model_kind,
            "training_config": _training_config(model_dir),
            "rounds": args.rounds,
            "chunk": args.chunk,
            "timing": "paths take turns chunk by chunk in alternating order; texts/s = all texts / total seconds",
            "texts": len(texts),
            "data": str(DATA_DIR / "test.csv"),
            "batch_size": args.batch_size,
            "max_length": max_length,
            "onnxruntime": _onnxruntime_version(),
            "torch_threads": torch.get_num_threads(),
            "default_precision": ours.precision,
            "load_average_at_end": list(os.getloadavg()),
            "results": results,
            "note": "2 shared CPU cores: other developers' jobs ran on them at the same time; "
            "see load_average_at_start/at_end.",
        },
    )
    print(f"\nwrote {path}")
    return 0


def _training_config(model_dir: Path) -> dict[str, Any] | None:
    """How a model written by `bert-classify train` was trained (its training_config.json), if it was."""
    path = Path(model_dir) / "training_config.json"
    if not path.is_file():
        return None
    import json

    config = json.loads(path.read_text(encoding="utf-8"))
    keys = ("model", "train", "epochs", "batch_size", "learning_rate", "max_seq_len", "seed", "precision")
    return {key: config.get(key) for key in keys}


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
