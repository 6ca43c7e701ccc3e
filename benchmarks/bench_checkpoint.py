"""Checkpoint cost and work lost per interruption, through our real training path.

1. Write time and size: train the shared MiniLM a few steps with a checkpoint after every step.
2. Overhead at the default interval (every 10 minutes) from that write time, and, with
   --interval-steps N, measured directly on a run that checkpoints every N steps.
3. Work lost: `python -m bert_classify train` subprocesses interrupted by SIGTERM and by SIGKILL,
   then re-run with the same command; steps repeated = last completed step - resumed step.

    python benchmarks/bench_checkpoint.py
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, SHARED, write_result  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = SHARED / "data" / "dbpedia-10k"
MODEL_DIR = SHARED / "models" / "minilm-l6-h384-uncased"
DEFAULT_INTERVAL_SECONDS = 600.0  # TrainConfig.checkpoint_every_minutes = 10
STEP_LINE = re.compile(r"^step (\d+)/\d+")
STOPPED_LINE = re.compile(r"stopped by signal after step (\d+)")
RESUMED_LINE = re.compile(r"resumed from checkpoint at step (\d+)")


def write_subset(source: Path, target: Path, count: int) -> Path:
    with open(source, newline="", encoding="utf-8") as handle:
        rows = [row for _, row in zip(range(count), csv.reader(handle))]
    with open(target, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)
    return target


def directory_size(path: Path) -> dict[str, int]:
    return {item.name: item.stat().st_size for item in sorted(path.iterdir()) if item.is_file()}


# ------------------------------------------------------------------------------------ write cost
def measure_writes(args: argparse.Namespace, work: Path, train_csv: Path, val_csv: Path) -> dict[str, Any]:
    from bert_classify.config import TrainConfig
    from bert_classify.training.loop import train

    checkpoint_dir = work / "write_checkpoints"
    config = TrainConfig(
        train=str(train_csv), val=str(val_csv), classes=str(DATA_DIR / "classes.txt"), model=str(args.model),
        output_dir=str(work / "write_output"), epochs=1, max_steps=args.write_steps, batch_size=args.batch_size,
        learning_rate=2e-4, max_seq_len=args.max_seq_len, seed=42, checkpoint_dir=str(checkpoint_dir),
        checkpoint_every_steps=1, eval_every_steps=args.eval_at_step, log_every_steps=1_000_000,
    )
    result = train(config)
    newest = sorted(checkpoint_dir.glob("step-*"))[-1]
    files = directory_size(newest)
    seconds = result.checkpoint_seconds
    # from the evaluation at eval_at_step on, a checkpoint also holds the best model's weights
    with_best = seconds[args.eval_at_step - 1 :]
    without_best = seconds[: args.eval_at_step - 1]
    step_seconds = result.train_seconds / max(1, result.steps_this_run)
    typical = sorted(with_best)[len(with_best) // 2]
    return {
        "steps": result.steps_this_run,
        "checkpoint_seconds": seconds,
        "write_seconds_median_with_best_model": typical,
        "write_seconds_max_with_best_model": max(with_best),
        "write_seconds_without_best_model": without_best,
        "checkpoint_files_bytes": files,
        "checkpoint_bytes": sum(files.values()),
        "newest_checkpoint": newest.name,
        "train_seconds": result.train_seconds,
        "seconds_per_step": step_seconds,
        "default_interval_seconds": DEFAULT_INTERVAL_SECONDS,
        "overhead_at_default_interval": typical / (DEFAULT_INTERVAL_SECONDS + typical),
        "overhead_formula": "write / (600 s of training + write), median write of a checkpoint with the best model",
        "steps_lost_to_sigkill_at_default_interval_at_most": int(DEFAULT_INTERVAL_SECONDS // step_seconds),
    }


def measure_interval(args: argparse.Namespace, work: Path, train_csv: Path, val_csv: Path) -> dict[str, Any]:
    from bert_classify.config import TrainConfig
    from bert_classify.training.loop import train

    steps = args.interval_steps
    config = TrainConfig(
        train=str(train_csv), val=str(val_csv), classes=str(DATA_DIR / "classes.txt"), model=str(args.model),
        output_dir=str(work / "interval_output"), epochs=1, max_steps=steps, batch_size=args.batch_size,
        learning_rate=2e-4, max_seq_len=args.max_seq_len, seed=42, checkpoint_dir=str(work / "interval_checkpoints"),
        checkpoint_every_steps=steps, eval_every_steps=None, log_every_steps=1_000_000,
    )
    result = train(config)
    write = sum(result.checkpoint_seconds)
    return {
        "steps": result.steps_this_run,
        "checkpoint_every_steps": steps,
        "train_seconds": result.train_seconds,
        "checkpoint_seconds": result.checkpoint_seconds,
        "overhead": write / (result.train_seconds + write),
        "note": "one run; train_seconds excludes checkpoint writes and evaluation, so overhead = writes / (steps + writes)",
    }


# ------------------------------------------------------------------------------------ work lost
def _command(args: argparse.Namespace, train_csv: Path, val_csv: Path, work: Path, name: str, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "bert_classify", "train", "--train", str(train_csv), "--val", str(val_csv),
        "--classes", str(DATA_DIR / "classes.txt"), "--model", str(args.model), "--output-dir", str(work / f"{name}_out"),
        "--checkpoint-dir", str(work / f"{name}_checkpoints"), "--epochs", "1", "--max-steps", str(args.signal_steps),
        "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len), "--learning-rate", "2e-4",
        "--log-every-steps", "1", *extra,
    ]


def _run_until(command: list[str], after_step: int, signum: int) -> dict[str, Any]:
    """Start `command`, send `signum` once it logs step `after_step`, return what it logged."""
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert process.stdout is not None
    lines: list[str] = []
    sent_at = None
    step_when_sent = None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        match = STEP_LINE.match(line)
        if match and sent_at is None and int(match.group(1)) >= after_step:
            step_when_sent = int(match.group(1))
            sent_at = time.perf_counter()
            process.send_signal(signum)
    code = process.wait()
    exit_seconds = time.perf_counter() - sent_at if sent_at is not None else None
    steps = [int(m.group(1)) for m in map(STEP_LINE.match, lines) if m]
    stopped = [int(m.group(1)) for m in map(STOPPED_LINE.search, lines) if m]
    return {
        "exit_code": code,
        "signal_sent_after_logged_step": step_when_sent,
        "last_completed_step": max(steps) if steps else 0,
        "stopped_by_signal_after_step": stopped[0] if stopped else None,
        "seconds_from_signal_to_exit": exit_seconds,
        "tail": lines[-4:],
    }


def _rerun(command: list[str]) -> dict[str, Any]:
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    output = completed.stdout + completed.stderr
    resumed = RESUMED_LINE.search(output)
    steps = [int(m.group(1)) for m in map(STEP_LINE.match, output.splitlines()) if m]
    return {
        "exit_code": completed.returncode,
        "resumed_from_step": int(resumed.group(1)) if resumed else None,
        "resumed_line": resumed.string[resumed.start() : output.find("\n", resumed.start())] if resumed else None,
        "first_step_run": min(steps) if steps else None,
        "final_step": max(steps) if steps else None,
    }


def measure_interruptions(args: argparse.Namespace, work: Path, train_csv: Path, val_csv: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    cases = (
        ("sigterm", signal.SIGTERM, args.sigterm_after, []),  # default interval: only the signal saves
        ("sigkill", signal.SIGKILL, args.sigkill_after, ["--checkpoint-every-steps", str(args.sigkill_interval)]),
    )
    for name, signum, after, extra in cases:
        command = _command(args, train_csv, val_csv, work, name, extra)
        print(f"[interrupt] {name} after step {after}: {' '.join(command[1:4])} ... {' '.join(extra)}", flush=True)
        interrupted = _run_until(command, after, signum)
        resumed = _rerun(command)
        completed = interrupted["last_completed_step"]
        repeated = completed - resumed["resumed_from_step"] if resumed["resumed_from_step"] is not None else None
        results[name] = {
            "command": " ".join(command),
            "interrupted": interrupted,
            "rerun": resumed,
            "steps_repeated": repeated,
        }
        print(f"    completed {completed} steps, resumed at {resumed['resumed_from_step']}: {repeated} repeated", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--rows", type=int, default=400, help="first N rows of the shared train.csv")
    parser.add_argument("--val-rows", type=int, default=32, help="first N rows of the shared test.csv as --val")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--write-steps", type=int, default=6, help="steps, each followed by a checkpoint")
    parser.add_argument("--eval-at-step", type=int, default=2, help="first evaluation (then best model in checkpoints)")
    parser.add_argument("--interval-steps", type=int, default=0, help="also run N steps with a checkpoint every N (0: skip)")
    parser.add_argument("--signal-steps", type=int, default=12, help="--max-steps of the interrupted runs")
    parser.add_argument("--sigterm-after", type=int, default=4)
    parser.add_argument("--sigkill-after", type=int, default=8)
    parser.add_argument("--sigkill-interval", type=int, default=5)
    args = parser.parse_args()
    if not (args.model / "config.json").exists() or not (DATA_DIR / "train.csv").exists():
        raise SystemExit(f"skipped: needs the shared model ({args.model}) and data ({DATA_DIR})")

    with tempfile.TemporaryDirectory(prefix="bench_checkpoint_") as temporary:
        work = Path(temporary)
        train_csv = write_subset(DATA_DIR / "train.csv", work / "train.csv", args.rows)
        val_csv = write_subset(DATA_DIR / "test.csv", work / "val.csv", args.val_rows)
        writes = measure_writes(args, work, train_csv, val_csv)
        interval = measure_interval(args, work, train_csv, val_csv) if args.interval_steps else None
        interruptions = measure_interruptions(args, work, train_csv, val_csv)

    mib = writes["checkpoint_bytes"] / 2**20
    print(f"\nCheckpoint of {args.model.name} (batch {args.batch_size}, max len {args.max_seq_len})")
    print(f"  size {mib:.1f} MiB: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in writes["checkpoint_files_bytes"].items()))
    print(f"  write seconds per checkpoint: {', '.join(f'{s:.2f}' for s in writes['checkpoint_seconds'])}")
    print(f"  step time {writes['seconds_per_step']:.2f} s; overhead at the default 10-minute interval "
          f"{writes['overhead_at_default_interval']:.3%}")
    if interval:
        print(f"  every {interval['checkpoint_every_steps']} steps, measured: overhead {interval['overhead']:.2%}")
    print(f"{'interruption':<14}{'completed':>10}{'resumed at':>11}{'repeated':>9}{'exit s':>8}")
    for name, case in interruptions.items():
        exit_seconds = case["interrupted"]["seconds_from_signal_to_exit"]
        print(f"{name:<14}{case['interrupted']['last_completed_step']:>10}{str(case['rerun']['resumed_from_step']):>11}"
              f"{str(case['steps_repeated']):>9}{exit_seconds:>8.2f}")
    print(f"  SIGKILL at the default 10-minute interval loses at most "
          f"{writes['steps_lost_to_sigkill_at_default_interval_at_most']} steps (600 s / {writes['seconds_per_step']:.2f} s)")

    path = write_result("checkpoint", {
        "settings": {
            "model": str(args.model), "rows": args.rows, "val_rows": args.val_rows, "batch_size": args.batch_size,
            "max_seq_len": args.max_seq_len, "write_steps": args.write_steps, "eval_at_step": args.eval_at_step,
            "signal_steps": args.signal_steps, "sigterm_after": args.sigterm_after, "sigkill_after": args.sigkill_after,
            "sigkill_checkpoint_every_steps": args.sigkill_interval,
        },
        "note": "2 CPU cores shared with other developers' test runs: times vary with their load.",
        "writes": writes,
        "interval": interval,
        "interruptions": interruptions,
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
