"""Training throughput and accuracy: our `train` against `transformers.Trainer` + `DataCollatorWithPadding`.

Both fine-tune the same model on the same rows with the same batch size, sequence limit, epochs and
learning rate, in one process, alternating (ours, peer, ours, peer) so that machine load hits both.

    python benchmarks/bench_training.py                     # throughput, 1,000 rows, 2 rounds
    python benchmarks/bench_training.py --accuracy --no-throughput --train-rows 5000 --test-rows 5000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, SHARED, machine_info, read_rows, write_result, write_rows  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = SHARED / "data" / "dbpedia-10k"
MODEL_DIR = SHARED / "models" / "minilm-l6-h384-uncased"


# ------------------------------------------------------------------------------------------- ours
def run_ours(args: argparse.Namespace, train_csv: Path, val_csv: Path, output_dir: Path) -> dict[str, Any]:
    from bert_classify.config import TrainConfig
    from bert_classify.training.loop import train

    config = TrainConfig(
        train=str(train_csv),
        val=str(val_csv),
        classes=str(args.data_dir / "classes.txt"),
        model=str(args.model),
        output_dir=str(output_dir),
        epochs=1,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_seq_len=args.max_seq_len,
        seed=args.seed,
        checkpoint_dir=None,
        log_every_steps=1_000_000,
        eval_every_steps=None,
        precision=args.precision,
    )
    started = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - started
    return {
        "examples": result.examples_this_run,
        "steps": result.steps_this_run,
        "train_seconds": result.train_seconds,
        "examples_per_second": result.examples_per_second,
        "padded_fraction": 1.0 - result.real_tokens_this_run / max(1, result.padded_tokens_this_run),
        "real_tokens": result.real_tokens_this_run,
        "batch_tokens": result.padded_tokens_this_run,
        "train_call_wall_seconds": wall,
        "val_metrics": {k: result.metrics[k] for k in ("accuracy", "macro_f1", "loss")} if result.metrics else None,
    }


# ------------------------------------------------------------------------------------------- peer
def run_peer(
    args: argparse.Namespace, rows: list[tuple[int, str]], class_names: list[str], output_dir: Path, bf16: bool = False
) -> dict[str, Any]:
    """What a user would write with the Trainer: tokenise without padding, pad per batch in the collator.

    `bf16`: TrainingArguments(bf16=True), the Trainer's bf16 autocast (fp32 weights), for the same-precision ratio."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class CountingCollator(DataCollatorWithPadding):
        """DataCollatorWithPadding, also counting real and padded tokens of the batches it builds."""

        real_tokens = 0
        batch_tokens = 0

        def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
            batch = super().__call__(features)
            mask = batch["attention_mask"]
            type(self).real_tokens += int(mask.sum())
            type(self).batch_tokens += int(mask.numel())
            return batch

    class StepTimer(TrainerCallback):
        """Sum of on_step_begin..on_step_end: forward, backward and optimizer only (no data loading)."""

        def __init__(self) -> None:
            self.seconds = 0.0
            self.begun = 0.0

        def on_step_begin(self, *unused: Any, **kwargs: Any) -> None:
            self.begun = time.perf_counter()

        def on_step_end(self, *unused: Any, **kwargs: Any) -> None:
            self.seconds += time.perf_counter() - self.begun

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    encoded = tokenizer([text for _, text in rows], truncation=True, max_length=args.max_seq_len)
    dataset = [
        {**{key: encoded[key][i] for key in encoded.keys()}, "labels": label - 1} for i, (label, _) in enumerate(rows)
    ]
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: i for i, name in enumerate(class_names)},
    )
    training_args = TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        max_steps=args.max_steps or -1,
        learning_rate=args.learning_rate,
        seed=args.seed,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        bf16=bf16,
    )
    CountingCollator.real_tokens = CountingCollator.batch_tokens = 0
    timer = StepTimer()
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=CountingCollator(tokenizer),
        callbacks=[timer],
    )
    started = time.perf_counter()
    metrics = trainer.train().metrics
    wall = time.perf_counter() - started
    examples = min(len(rows), trainer.state.global_step * args.batch_size)
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    return {
        "examples": examples,
        "steps": trainer.state.global_step,
        "train_runtime": metrics["train_runtime"],
        "examples_per_second": examples / metrics["train_runtime"],
        "step_only_seconds": timer.seconds,
        "examples_per_second_step_only": examples / timer.seconds,
        "padded_fraction": 1.0 - CountingCollator.real_tokens / max(1, CountingCollator.batch_tokens),
        "real_tokens": CountingCollator.real_tokens,
        "batch_tokens": CountingCollator.batch_tokens,
        "train_call_wall_seconds": wall,
    }


# ---------------------------------------------------------------------------------------- scoring
def score(model_dir: Path, rows: list[tuple[int, str]], class_names: list[str]) -> dict[str, Any]:
    """Accuracy and macro-F1 on `rows`, through the same Classifier for both models."""
    from bert_classify.inference.predictor import Classifier

    classifier = Classifier.from_pretrained(str(model_dir), precision="fp32")
    started = time.perf_counter()
    probabilities = classifier.predict_proba([text for _, text in rows], batch_size=64)
    seconds = time.perf_counter() - started
    from transformers import AutoConfig

    id2label = AutoConfig.from_pretrained(str(model_dir)).id2label
    predicted_names = [str(id2label[int(i)]) for i in probabilities.argmax(axis=1)]
    index = {name: i for i, name in enumerate(class_names)}
    predicted = np.array([index[name] for name in predicted_names])
    truth = np.array([label - 1 for label, _ in rows])
    classes = len(class_names)
    confusion = np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(classes, classes)
    true_positive = np.diag(confusion).astype(float)
    precision = np.divide(true_positive, confusion.sum(axis=0), out=np.zeros(classes), where=confusion.sum(axis=0) > 0)
    recall = np.divide(true_positive, confusion.sum(axis=1), out=np.zeros(classes), where=confusion.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(classes), where=precision + recall > 0)
    return {
        "test_rows": len(rows),
        "accuracy": float(true_positive.sum() / len(rows)),
        "macro_f1": float(f1.mean()),
        "scoring_seconds": seconds,
    }


# ------------------------------------------------------------------------------------------ parts
def throughput(args: argparse.Namespace, work: Path, class_names: list[str]) -> dict[str, Any]:
    rows = read_rows(args.data_dir / "train.csv", args.rows)
    train_csv = write_rows(work / "throughput_train.csv", rows)
    # our loop evaluates once at the epoch end (outside its timed steps); a small val file keeps that short
    val_csv = write_rows(work / "throughput_val.csv", read_rows(args.data_dir / "test.csv", args.val_rows))
    rounds: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        for side in ("ours", "peer"):
            gc.collect()
            print(f"[throughput] round {round_index + 1}/{args.rounds}: {side} on {len(rows)} rows ...", flush=True)
            output = work / f"throughput_{side}_{round_index}"
            if side == "ours":
                figures = run_ours(args, train_csv, val_csv, output)
            else:
                figures = run_peer(args, rows, class_names, output)
            figures.update(side=side, round=round_index + 1, load_average_after=list(os.getloadavg()))
            print(f"    {side}: {figures['examples_per_second']:.2f} examples/s, padded {figures['padded_fraction']:.1%}", flush=True)
            rounds.append(figures)
    ours = [r for r in rounds if r["side"] == "ours"]
    peer = [r for r in rounds if r["side"] == "peer"]
    best_ours = max(r["examples_per_second"] for r in ours)
    best_peer = max(r["examples_per_second"] for r in peer)
    best_peer_step_only = max(r["examples_per_second_step_only"] for r in peer)
    median_ours = statistics.median(r["examples_per_second"] for r in ours)
    median_peer = statistics.median(r["examples_per_second"] for r in peer)
    return {
        "settings": {
            "rows": len(rows), "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "epochs": 1,
            "max_steps": args.max_steps, "learning_rate": args.learning_rate, "seed": args.seed,
            "model": str(args.model), "train_file": str(args.data_dir / "train.csv"), "first_rows": len(rows),
            "rounds": args.rounds, "order": "ours, peer, ours, peer, ... in one process",
        },
        "timing": {
            "ours": "TrainResult.train_seconds: the optimizer steps only (batch collation, forward, backward, "
            "clip, step), no evaluation, no checkpoint, no model loading or tokenisation",
            "peer": "Trainer.train() metrics['train_runtime'] (eval_strategy/save_strategy/logging 'no'); "
            "'step_only' is the sum of on_step_begin..on_step_end, which leaves out the peer's data loading "
            "and collation and so favours the peer",
        },
        "rounds": rounds,
        "best": {
            "ours_examples_per_second": best_ours,
            "peer_examples_per_second": best_peer,
            "ratio": best_ours / best_peer,
            "peer_step_only_examples_per_second": best_peer_step_only,
            "ratio_vs_peer_step_only": best_ours / best_peer_step_only,
        },
        "median": {"ours": median_ours, "peer": median_peer, "ratio": median_ours / median_peer},
        "padded_fraction": {
            "ours": statistics.mean(r["padded_fraction"] for r in ours),
            "peer": statistics.mean(r["padded_fraction"] for r in peer),
        },
        "target_ratio": 1.3,
    }


def accuracy(args: argparse.Namespace, work: Path, class_names: list[str]) -> dict[str, Any]:
    rows = read_rows(args.data_dir / "train.csv", args.train_rows)
    test_rows = read_rows(args.data_dir / "test.csv", args.test_rows)
    train_csv = write_rows(work / "accuracy_train.csv", rows)
    # Our loop needs a validation file; with one epoch and no --eval-every-steps it evaluates once, at the end,
    # so it selects nothing: the saved model is the final one. Taken from training rows to keep test rows unseen.
    val_csv = write_rows(work / "accuracy_val.csv", rows[: args.val_rows])
    figures: dict[str, Any] = {}
    for side in args.sides:
        gc.collect()
        output = work / f"accuracy_{side}"
        print(f"[accuracy] {side}: training on {len(rows)} rows ...", flush=True)
        if side == "ours":
            trained = run_ours(args, train_csv, val_csv, output)
        else:
            trained = run_peer(args, rows, class_names, output)
        print(f"    trained at {trained['examples_per_second']:.2f} examples/s; scoring {len(test_rows)} test rows ...", flush=True)
        scored = score(output, test_rows, class_names)
        print(f"    {side}: accuracy {scored['accuracy']:.4f}, macro-F1 {scored['macro_f1']:.4f}", flush=True)
        figures[side] = {"training": trained, "test": scored, "load_average_after": list(os.getloadavg())}
    return {
        "settings": {
            "train_rows": len(rows), "test_rows": len(test_rows), "val_rows_for_our_loop": min(args.val_rows, len(rows)),
            "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "epochs": 1, "max_steps": args.max_steps,
            "learning_rate": args.learning_rate, "seed": args.seed, "model": str(args.model),
            "schedules": "ours: linear warm-up over 6% of steps then linear decay (our default); "
            "peer: Trainer default, linear decay, no warm-up",
            "scoring": "bert_classify.inference.predictor.Classifier.predict_proba (fp32) on both saved models",
        },
        **figures,
    }


# ------------------------------------------------------------------------------- whole process
def matmul_peak(size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Best-of-`repeats` GFLOP/s of one size x size matrix product in fp32 and bf16 (torch, this process's threads)."""
    import torch

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - started)
        peaks[name] = 2 * size**3 / best / 1e9
    return peaks


def training_flops(model_dir: Path, figures: dict[str, Any]) -> dict[str, float]:
    """Training FLOPs (forward + backward = 3x forward) of our run: 6 x non-embedding parameters per token plus
    attention's 12 x layers x hidden x sequence length per token (mean padded length); on the padded tokens the
    hardware computed, and on the real tokens (the model-FLOPs convention)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    intermediate = config.get("intermediate_size", 4 * hidden)
    per_token_dense = 6 * layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    mean_length = figures["batch_tokens"] / max(1, figures["examples"])
    per_token = per_token_dense + 12 * layers * hidden * mean_length
    return {"padded_tokens": per_token * figures["batch_tokens"], "real_tokens": per_token * figures["real_tokens"]}


def child(args: argparse.Namespace) -> None:
    """One side of the whole-process comparison, in its own process; figures to --child-output/figures.json."""
    output = Path(args.child_output)
    class_names = (args.data_dir / "classes.txt").read_text(encoding="utf-8").split()
    if args.child == "ours":
        figures = run_ours(args, Path(args.child_train), Path(args.child_val), output)
    else:
        rows = read_rows(Path(args.child_train), None)
        figures = run_peer(args, rows, class_names, output, bf16=args.child == "peer-bf16")
    (output / "figures.json").write_text(json.dumps(figures, default=str), encoding="utf-8")


def whole_process(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Each side as a whole `python` process (imports, tokenisation, model load, training, saving), alternating."""
    import subprocess

    rows = read_rows(args.data_dir / "train.csv", args.rows)
    train_csv = write_rows(work / "whole_train.csv", rows)
    val_csv = write_rows(work / "whole_val.csv", read_rows(args.data_dir / "test.csv", args.val_rows))
    peaks_before = matmul_peak()
    runs: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        for side in args.whole_sides:
            output = work / f"whole_{side}_{round_index}"
            output.mkdir(parents=True, exist_ok=True)
            command = [
                sys.executable, str(Path(__file__).resolve()), "--child", side, "--child-train", str(train_csv),
                "--child-val", str(val_csv), "--child-output", str(output), "--model", str(args.model),
                "--data-dir", str(args.data_dir), "--batch-size", str(args.batch_size), "--max-seq-len",
                str(args.max_seq_len), "--learning-rate", str(args.learning_rate), "--seed", str(args.seed),
                "--precision", args.precision,
            ]
            print(f"[whole process] round {round_index + 1}/{args.rounds}: {side} on {len(rows)} rows ...", flush=True)
            started = time.perf_counter()
            completed = subprocess.run(command, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if completed.returncode != 0:
                raise SystemExit(f"{side} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
            figures = json.loads((output / "figures.json").read_text(encoding="utf-8"))
            figures.update(side=side, round=round_index + 1, process_wall_seconds=wall,
                           load_average_after=list(os.getloadavg()))
            if side == "ours":
                figures["precision"] = next(
                    (line.rsplit("precision ", 1)[1].strip() for line in completed.stdout.splitlines()
                     if ", precision " in line), args.precision)
                flops = training_flops(args.model, figures)
                figures["training_flop_per_second_padded"] = flops["padded_tokens"] / figures["train_seconds"]
                figures["training_flop_per_second_real"] = flops["real_tokens"] / figures["train_seconds"]
            print(f"    {side}: process {wall:.1f} s, {figures['examples_per_second']:.2f} examples/s in training", flush=True)
            runs.append(figures)
    peaks_after = matmul_peak()
    peaks = {name: max(peaks_before[name], peaks_after[name]) for name in peaks_before}
    best = {side: min(r["process_wall_seconds"] for r in runs if r["side"] == side) for side in args.whole_sides}
    ratios = {f"{side}_over_ours": best[side] / best["ours"] for side in best if side != "ours" and "ours" in best}
    ours = [r for r in runs if r["side"] == "ours"]
    fastest = min(ours, key=lambda r: r["train_seconds"]) if ours else None
    utilisation = None
    if fastest is not None:
        precision = fastest["precision"] if fastest["precision"] in peaks else "fp32"
        utilisation = {
            "precision": precision,
            "matmul_peak_gflops": peaks[precision],
            "training_gflops_padded": fastest["training_flop_per_second_padded"] / 1e9,
            "training_gflops_real": fastest["training_flop_per_second_real"] / 1e9,
            "fraction_of_peak_padded": fastest["training_flop_per_second_padded"] / 1e9 / peaks[precision],
            "fraction_of_peak_real": fastest["training_flop_per_second_real"] / 1e9 / peaks[precision],
        }
    return {
        "settings": {"rows": len(rows), "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "epochs": 1,
                     "learning_rate": args.learning_rate, "seed": args.seed, "model": str(args.model),
                     "our_precision_flag": args.precision, "rounds": args.rounds, "sides": args.whole_sides,
                     "timing": "wall time of each side's whole python process, start to exit (imports, "
                     "tokenisation, model load, training, our end-of-epoch evaluation on the val rows, saving)"},
        "matmul_peak_gflops": {"before": peaks_before, "after": peaks_after, "best": peaks},
        "runs": runs,
        "best_process_seconds": best,
        "ratios": ratios,
        "utilisation": utilisation,
        "targets": {"peer_over_ours": 2.0, "peer-bf16_over_ours": 1.3},
    }


def print_tables(results: dict[str, Any]) -> None:
    if "whole_process" in results:
        w = results["whole_process"]
        print(f"\nWhole process ({w['settings']['rows']} rows): best seconds {w['best_process_seconds']}, "
              f"ratios {w['ratios']}; matmul peak {w['matmul_peak_gflops']['best']} GFLOP/s; utilisation {w['utilisation']}")
    if "throughput" in results:
        t = results["throughput"]
        print(f"\nThroughput ({t['settings']['rows']} rows, batch {t['settings']['batch_size']}, max len "
              f"{t['settings']['max_seq_len']}, 1 epoch)")
        print(f"{'':<8}{'round':>6}{'examples/s':>12}{'padded':>9}{'seconds':>9}")
        for r in t["rounds"]:
            seconds = r.get("train_seconds", r.get("train_runtime"))
            print(f"{r['side']:<8}{r['round']:>6}{r['examples_per_second']:>12.2f}{r['padded_fraction']:>9.1%}{seconds:>9.1f}")
        b = t["best"]
        print(f"best: ours {b['ours_examples_per_second']:.2f}, peer {b['peer_examples_per_second']:.2f}, "
              f"ratio {b['ratio']:.2f}x (vs the peer's step-only time: {b['ratio_vs_peer_step_only']:.2f}x); "
              f"median ratio {t['median']['ratio']:.2f}x")
    if "accuracy" in results:
        a = results["accuracy"]
        s = a["settings"]
        print(f"\nAccuracy ({s['train_rows']} train rows, {s['test_rows']} test rows, batch {s['batch_size']}, "
              f"lr {s['learning_rate']}, 1 epoch)")
        print(f"{'':<8}{'accuracy':>10}{'macro-F1':>10}{'train ex/s':>12}")
        for side in [s for s in ("ours", "peer") if s in a]:
            f = a[side]
            print(f"{side:<8}{f['test']['accuracy']:>10.4f}{f['test']['macro_f1']:>10.4f}"
                  f"{f['training']['examples_per_second']:>12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--rows", type=int, default=1000, help="training rows for throughput (first N of train.csv)")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds, each ours then peer")
    parser.add_argument("--val-rows", type=int, default=64, help="rows of the validation file our loop requires")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-steps", type=int, default=None, help="cap both runs (smoke tests only)")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--accuracy", action="store_true", help="also fine-tune on --train-rows and score --test-rows")
    parser.add_argument("--precision", default="auto", help="our loop's --precision (auto, fp32, bf16)")
    parser.add_argument("--sides", nargs="+", default=["ours", "peer"], choices=["ours", "peer"],
                        help="accuracy: which sides to train and score")
    parser.add_argument("--whole-process", action="store_true",
                        help="also time each side as a whole process (ours, the Trainer, the Trainer with bf16=True)")
    parser.add_argument("--whole-sides", nargs="+", default=["ours", "peer", "peer-bf16"],
                        choices=["ours", "peer", "peer-bf16"])
    parser.add_argument("--child", choices=["ours", "peer", "peer-bf16"], help=argparse.SUPPRESS)
    parser.add_argument("--child-train", help=argparse.SUPPRESS)
    parser.add_argument("--child-val", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    parser.add_argument("--train-rows", type=int, default=5000)
    parser.add_argument("--test-rows", type=int, default=5000)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "training.json",
                        help="results file; a part not run this time is kept from the existing file")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not (args.model / "config.json").exists() or not (args.data_dir / "train.csv").exists():
        raise SystemExit(f"skipped: needs the shared model ({args.model}) and data ({args.data_dir})")

    class_names = (args.data_dir / "classes.txt").read_text(encoding="utf-8").split()
    previous = json.loads(args.output.read_text(encoding="utf-8")) if args.output.exists() else {}
    from _common import command_line

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_training_") as temporary:
        work = Path(temporary)
        if not args.no_throughput:
            results["throughput"] = {**throughput(args, work, class_names), "command": command_line(),
                                     "machine": machine_info()}
        if args.whole_process:
            results["whole_process"] = {**whole_process(args, work), "command": command_line(), "machine": machine_info()}
        if args.accuracy:
            results["accuracy"] = {**accuracy(args, work, class_names), "command": command_line(),
                                   "machine": machine_info()}
    print_tables(results)
    parts = ("throughput", "accuracy", "whole_process")
    kept = {part: previous[part] for part in parts if part in previous and part not in results}
    note = ("Each part carries its own command and machine. The machine has 2 CPU cores shared with other "
            "developers' test runs: ours and the peer run alternately in one process so that load affects both alike.")
    path = write_result(args.output.stem, {"note": note, **kept, **results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
