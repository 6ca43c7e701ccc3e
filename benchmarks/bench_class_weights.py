"""Imbalanced classes: macro-F1 with `--class-weights balanced` against `none`, side by side.

The first --train-rows shared DBpedia training rows with a few classes cut to 2 % of their examples;
both runs use the same cut data, model, seed and schedule (one epoch of MiniLM by default), a
balanced validation set taken from the shared test file's tail, and are then scored on the first
--test-rows test rows. The two runs go side by side, as two processes of one torch thread each, so
that the load of a shared machine falls on both alike.

    python benchmarks/bench_class_weights.py      # 2,000 rows, 3 classes cut to 2 %, 1 epoch, 1,000 test rows
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, read_rows, write_result, write_rows  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = SHARED / "data" / "dbpedia-10k"
MODEL_DIR = SHARED / "models" / "minilm-l6-h384-uncased"


def cut_classes(rows: list[tuple[int, str]], labels: list[int], fraction: float, seed: int) -> list[tuple[int, str]]:
    """Keep `fraction` of the rows of each class in `labels` (at least one), all rows of the others."""
    rng = random.Random(seed)
    kept = [row for row in rows if row[0] not in labels]
    for label in labels:
        members = [row for row in rows if row[0] == label]
        kept.extend(rng.sample(members, max(1, round(fraction * len(members)))))
    rng.shuffle(kept)
    return kept


def run_one(args: argparse.Namespace, cut: list[int], class_names: list[str]) -> None:
    """One mode's training and test scoring, in its own process; writes SCRATCH/MODE.json."""
    import torch

    from bert_classify.config import TrainConfig
    from bert_classify.evaluation import evaluate_model
    from bert_classify.training.loop import train

    torch.set_num_threads(1)
    work, mode = args.scratch, args.mode
    config = TrainConfig(
        train=str(work / "train.csv"), val=str(work / "val.csv"), classes=str(DATA_DIR / "classes.txt"),
        model=str(args.model), output_dir=str(work / mode), epochs=args.epochs, batch_size=args.batch_size,
        max_seq_len=args.max_seq_len, seed=args.seed, class_weights=mode, log_every_steps=25,
        checkpoint_every_minutes=None,
    )  # fmt: skip
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    metrics = evaluate_model(
        work / mode, work / "test.csv", output_dir=work / f"{mode}-test", precision="fp32", max_seq_len=args.max_seq_len
    )
    run = {
        "test_macro_f1": metrics["macro_f1"],
        "test_accuracy": metrics["accuracy"],
        "cut_class_f1": {class_names[label - 1]: metrics["per_class"][class_names[label - 1]]["f1"] for label in cut},
        "cut_class_recall": {class_names[label - 1]: metrics["per_class"][class_names[label - 1]]["recall"] for label in cut},
        "val_macro_f1": (result.metrics or {}).get("macro_f1"),
        "train_examples_per_second": result.examples_per_second,
        "train_seconds": seconds,
    }
    (work / f"{mode}.json").write_text(json.dumps(run), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cut-labels", default="3,7,11", help="1-based labels cut to --fraction (default: 3,7,11)")
    parser.add_argument("--fraction", type=float, default=0.02)
    parser.add_argument("--train-rows", type=int, default=2000, help="first N shared training rows, before the cut")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=64)
    parser.add_argument("--val-rows", type=int, default=280, help="validation rows from the test file's tail")
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--name", default="class_weights")
    parser.add_argument("--mode", choices=("both", "none", "balanced"), default="both", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.model / "config.json").exists() or not (DATA_DIR / "train.csv").exists():
        sys.exit(f"needs the shared model and data under {SHARED}")

    cut = [int(label) for label in args.cut_labels.split(",")]
    class_names = (DATA_DIR / "classes.txt").read_text(encoding="utf-8").split()
    if args.mode != "both":
        run_one(args, cut, class_names)
        return
    test_rows = read_rows(DATA_DIR / "test.csv")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        train_rows = cut_classes(read_rows(DATA_DIR / "train.csv")[: args.train_rows], cut, args.fraction, args.seed)
        write_rows(work / "train.csv", train_rows)
        write_rows(work / "val.csv", test_rows[-args.val_rows :])
        write_rows(work / "test.csv", test_rows[: args.test_rows])
        counts = {class_names[label - 1]: sum(1 for row in train_rows if row[0] == label) for label in range(1, 15)}
        print(f"training rows per class: {counts}", flush=True)
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        processes = {
            mode: subprocess.Popen(
                [sys.executable, __file__, *sys.argv[1:], "--mode", mode, "--scratch", str(work)],
                stdout=open(work / f"{mode}.log", "w"), stderr=subprocess.STDOUT, env=environment,  # noqa: SIM115
            )
            for mode in ("none", "balanced")
        }
        runs: dict[str, Any] = {}
        for mode, process in processes.items():
            if process.wait() != 0:
                sys.exit(f"the {mode} run failed:\n{(work / f'{mode}.log').read_text()[-3000:]}")
            runs[mode] = json.loads((work / f"{mode}.json").read_text())
            print(f"--- {mode} run log (tail)\n" + "\n".join((work / f"{mode}.log").read_text().splitlines()[-6:]))
    payload = {
        "cut_labels": {str(label): class_names[label - 1] for label in cut},
        "fraction": args.fraction,
        "training_rows_per_class": counts,
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("mode", "scratch")},
        "runs": runs,
        "macro_f1_gain": runs["balanced"]["test_macro_f1"] - runs["none"]["test_macro_f1"],
    }
    print(f"{'class weights':<14} {'test macro-F1':>14} {'accuracy':>9}  cut-class F1")
    for mode, run in runs.items():
        cut_f1 = ", ".join(f"{name} {value:.3f}" for name, value in run["cut_class_f1"].items())
        print(f"{mode:<14} {run['test_macro_f1']:>14.4f} {run['test_accuracy']:>9.4f}  {cut_f1}")
    print(f"wrote {write_result(args.name, payload)}")


if __name__ == "__main__":
    main()
