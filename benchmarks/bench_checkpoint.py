"""Checkpoint cost and work lost per interruption, through our real training path.

Asynchronous checkpoints (`--async-models minilm,bert-base`, the default): for the shared MiniLM and a
randomly initialised BERT-base-size model (`transformers.BertConfig()` defaults, no download), train a
few steps in-process three ways, alternating: no checkpoints; a checkpoint every K steps written
synchronously (the whole write blocks the step); the same, written in the background (the step waits
only for the copy). Reports bytes per checkpoint, the step stall of each, the background write time,
the per-checkpoint cost measured as (training time with checkpoints - without) / checkpoints + stall,
and the overhead and work lost at the default interval.

The older measurements stay available: `--writes` (write time per checkpoint, MiniLM), and
`--interruptions` (subprocesses interrupted by SIGTERM and by SIGKILL, then re-run with the same
command; steps repeated = last completed step - resumed step).

    python benchmarks/bench_checkpoint.py                      # async figures, both models
    python benchmarks/bench_checkpoint.py --interruptions --async-models none
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, SHARED, write_result  # noqa: E402
from bert_classify.config import TrainConfig  # noqa: E402

DEFAULT_INTERVAL_SECONDS = float(TrainConfig().checkpoint_every_minutes or 0) * 60

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = SHARED / "data" / "dbpedia-10k"
MODEL_DIR = SHARED / "models" / "minilm-l6-h384-uncased"
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
        "overhead_formula": "write / (default interval of training + write), median write of a checkpoint with the best model",
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


# ------------------------------------------------------------------------------------ async writes
def build_bert_base(work: Path, num_labels: int) -> Path:
    """A randomly initialised BertConfig() classifier (110M parameters) with MiniLM's uncased vocabulary."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    target = work / "bert-base-random"
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=num_labels))
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(MODEL_DIR).save_pretrained(target)  # bert-base-uncased's 30522-word vocabulary
    return target


def _train_once(args: argparse.Namespace, model: Path, work: Path, train_csv: Path, val_csv: Path, mode: str, round_: int) -> dict[str, Any]:
    from bert_classify.training import checkpoint
    from bert_classify.training.loop import train

    checkpoint.WRITE_IN_BACKGROUND = mode != "sync"
    name = f"{model.name}-{mode}-{round_}"
    config = TrainConfig(
        train=str(train_csv), val=str(val_csv), classes=str(DATA_DIR / "classes.txt"), model=str(model),
        output_dir=str(work / f"{name}-out"), epochs=1, max_steps=args.async_steps, batch_size=args.async_batch_size,
        learning_rate=2e-5, max_seq_len=args.async_max_seq_len, seed=42,
        checkpoint_dir=None if mode == "none" else str(work / f"{name}-checkpoints"),
        checkpoint_every_steps=args.async_every, checkpoint_every_minutes=None, eval_every_steps=args.async_every,
        log_every_steps=1_000_000,
    )
    result = train(config)
    # the last checkpoint is the final one, joined before train() returns: not a periodic one
    periodic = len(result.checkpoint_write_seconds) - 1 if mode != "none" else 0
    stalls = result.checkpoint_seconds[:periodic]
    newest = sorted((work / f"{name}-checkpoints").glob("step-*"))[-1] if mode != "none" else None
    shutil.rmtree(work / f"{name}-out", ignore_errors=True)
    files = directory_size(newest) if newest is not None else {}
    if newest is not None:
        shutil.rmtree(newest.parent, ignore_errors=True)
    return {
        "mode": mode,
        "steps": result.steps_this_run,
        "train_seconds": result.train_seconds,
        "periodic_checkpoints": periodic,
        "stall_seconds": stalls,
        "write_seconds": result.checkpoint_write_seconds[:periodic],
        "bytes_serialised": result.checkpoint_bytes[:periodic],
        "newest_checkpoint_files_bytes": files,
    }


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def measure_async(args: argparse.Namespace, model: Path, work: Path, train_csv: Path, val_csv: Path) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for round_ in range(args.async_rounds):
        for mode in ("none", "sync", "async"):
            print(f"[async] {model.name}: round {round_ + 1}, checkpoints {mode}", flush=True)
            runs.append(_train_once(args, model, work, train_csv, val_csv, mode, round_))
    by_mode = {mode: [run for run in runs if run["mode"] == mode] for mode in ("none", "sync", "async")}
    baseline = _median([run["train_seconds"] for run in by_mode["none"]]) or 0.0
    summary: dict[str, Any] = {"model": str(model), "runs": runs}
    interval = DEFAULT_INTERVAL_SECONDS
    for mode in ("sync", "async"):
        stalls = [s for run in by_mode[mode] for s in run["stall_seconds"]]
        writes = [s for run in by_mode[mode] for s in run["write_seconds"]]
        # steps slowed by the writer thread competing for the CPU show up as more training seconds
        slowdowns = [
            (run["train_seconds"] - baseline) / run["periodic_checkpoints"] for run in by_mode[mode] if run["periodic_checkpoints"]
        ]
        stall = _median(stalls) or 0.0
        slowdown = max(0.0, _median(slowdowns) or 0.0)
        write = _median(writes) or 0.0
        summary[mode] = {
            "stall_seconds_median": stall,
            "stall_seconds_max": max(stalls) if stalls else None,
            "write_seconds_median": write,
            "step_slowdown_seconds_per_checkpoint_median": slowdown,
            "cost_seconds_per_checkpoint": stall + slowdown,
            "overhead_at_default_interval": (stall + slowdown) / interval if interval else None,
            # the bound: the whole write taken from training (as if the writer had stolen every core meanwhile)
            "overhead_bound_at_default_interval": (stall + write) / interval if interval else None,
        }
    bytes_serialised = [b for run in by_mode["async"] for b in run["bytes_serialised"]]
    summary["bytes_serialised_per_checkpoint_max"] = max(bytes_serialised) if bytes_serialised else None
    summary["newest_checkpoint_files_bytes"] = by_mode["async"][-1]["newest_checkpoint_files_bytes"]
    summary["baseline_train_seconds_median"] = baseline
    summary["seconds_per_step"] = baseline / max(1, args.async_steps)
    summary["default_interval_seconds"] = interval
    summary["work_lost_to_sigkill_at_most_seconds"] = interval + (summary["async"]["write_seconds_median"] or 0.0)
    return summary


# ------------------------------------------------------------------------------------ direct (no loop)
def measure_direct(args: argparse.Namespace, model_dir: Path, work: Path) -> dict[str, Any]:
    """Checkpointer.save() alone on a model with AdamW state after one step: stall and write, sync vs async.

    Faster than the in-loop runs (no training steps between saves), so it fits a BERT-base-size model
    on a slow machine. A synchronous save is also exactly what a signal checkpoint costs.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    from bert_classify.training import checkpoint
    from bert_classify.training.distributed import DistributedContext

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=14)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    input_ids = torch.randint(1000, 2000, (4, 32))
    model(input_ids=input_ids, labels=torch.zeros(4, dtype=torch.long)).loss.backward()
    optimizer.step()  # AdamW's two moments now exist: a checkpoint of a model in training
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    context = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
    best = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    results: dict[str, Any] = {"model": str(model_dir), "parameters": sum(p.numel() for p in model.parameters())}
    for mode in ("sync", "async"):
        checkpoint.WRITE_IN_BACKGROUND = mode == "async"
        directory = work / f"direct-{model_dir.name}-{mode}"
        checkpointer = checkpoint.Checkpointer(
            directory, keep=2, fingerprint={}, config_values={}, force_resume=False, context=context, log=lambda line: None,
        )
        checkpointer.open()
        stalls = []
        for step in range(1, args.direct_saves + 1):
            progress = {"global_step": step, "best_step": 1}  # best weights unchanged after the first: linked
            print(f"[direct] {model_dir.name} {mode} save {step}", flush=True)
            stalls.append(checkpointer.save(
                step=step, reason="interval", model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                progress=progress, best_state=best, wait=False,
            ))
            checkpointer.wait()  # the next save would wait anyway; here each is timed alone
        signal_started = time.perf_counter()
        checkpointer.save(
            step=args.direct_saves + 1, reason="signal", model=model, optimizer=optimizer, scheduler=scheduler,
            scaler=scaler, progress={"global_step": args.direct_saves + 1, "best_step": 1}, best_state=best, wait=True,
        )
        signal_seconds = time.perf_counter() - signal_started
        checkpointer.close()
        newest = sorted(directory.glob("step-*"))[-1]
        records = checkpointer.records
        results[mode] = {
            "stall_seconds": stalls,
            "write_seconds": [record.write_seconds for record in records[: args.direct_saves]],
            "bytes_serialised": [record.bytes_written for record in records[: args.direct_saves]],
            "signal_checkpoint_seconds": signal_seconds,
            "newest_checkpoint_files_bytes": directory_size(newest),
        }
        shutil.rmtree(directory, ignore_errors=True)
    return results


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
    parser.add_argument("--async-models", default="minilm,bert-base", help="comma list of minilm, bert-base; or none")
    parser.add_argument("--direct-models", default="minilm,bert-base", help="Checkpointer.save() alone: minilm, bert-base; or none")
    parser.add_argument("--direct-saves", type=int, default=3, help="saves per mode in the direct measurement")
    parser.add_argument("--async-steps", type=int, default=12, help="steps per run of the async comparison")
    parser.add_argument("--async-every", type=int, default=4, help="a checkpoint every N steps in that comparison")
    parser.add_argument("--async-rounds", type=int, default=2, help="rounds of (none, sync, async) runs")
    parser.add_argument("--async-batch-size", type=int, default=8)
    parser.add_argument("--async-max-seq-len", type=int, default=64)
    parser.add_argument("--writes", action="store_true", help="also the older write-time measurement")
    parser.add_argument("--write-steps", type=int, default=6, help="steps, each followed by a checkpoint")
    parser.add_argument("--eval-at-step", type=int, default=2, help="first evaluation (then best model in checkpoints)")
    parser.add_argument("--interval-steps", type=int, default=0, help="also run N steps with a checkpoint every N (0: skip)")
    parser.add_argument("--interruptions", action="store_true", help="also the SIGTERM/SIGKILL work-lost runs")
    parser.add_argument("--signal-steps", type=int, default=12, help="--max-steps of the interrupted runs")
    parser.add_argument("--sigterm-after", type=int, default=4)
    parser.add_argument("--sigkill-after", type=int, default=8)
    parser.add_argument("--sigkill-interval", type=int, default=5)
    parser.add_argument("--output", default="checkpoint_async", help="results/NAME.json")
    args = parser.parse_args()
    if not (args.model / "config.json").exists() or not (DATA_DIR / "train.csv").exists():
        raise SystemExit(f"skipped: needs the shared model ({args.model}) and data ({DATA_DIR})")

    async_results: dict[str, Any] = {}
    direct_results: dict[str, Any] = {}
    writes = interval = interruptions = None
    with tempfile.TemporaryDirectory(prefix="bench_checkpoint_") as temporary:
        work = Path(temporary)
        train_csv = write_subset(DATA_DIR / "train.csv", work / "train.csv", args.rows)
        val_csv = write_subset(DATA_DIR / "test.csv", work / "val.csv", args.val_rows)
        for name in [item for item in args.direct_models.split(",") if item and item != "none"]:
            model = MODEL_DIR if name == "minilm" else build_bert_base(work, num_labels=14)
            direct_results[name] = measure_direct(args, model, work)
        for name in [item for item in args.async_models.split(",") if item and item != "none"]:
            model = MODEL_DIR if name == "minilm" else build_bert_base(work, num_labels=14)
            async_results[name] = measure_async(args, model, work, train_csv, val_csv)
        if args.writes:
            writes = measure_writes(args, work, train_csv, val_csv)
            interval = measure_interval(args, work, train_csv, val_csv) if args.interval_steps else None
        if args.interruptions:
            interruptions = measure_interruptions(args, work, train_csv, val_csv)

    for name, summary in direct_results.items():
        print(f"\n{name} ({summary['parameters'] / 1e6:.1f}M parameters), Checkpointer.save() alone:")
        print(f"{'mode':<7}{'stall s (each)':>26}{'write s (each)':>26}{'signal ckpt s':>15}{'MiB written':>12}")
        for mode in ("sync", "async"):
            row = summary[mode]
            print(f"{mode:<7}{', '.join(f'{v:.2f}' for v in row['stall_seconds']):>26}"
                  f"{', '.join(f'{v:.2f}' for v in row['write_seconds']):>26}{row['signal_checkpoint_seconds']:>15.2f}"
                  f"{max(row['bytes_serialised']) / 2**20:>12.1f}")
        stall = _median(summary["async"]["stall_seconds"]) or 0.0
        write = _median(summary["async"]["write_seconds"]) or 0.0
        summary["overhead_at_default_interval"] = stall / DEFAULT_INTERVAL_SECONDS
        summary["overhead_bound_at_default_interval"] = (stall + write) / DEFAULT_INTERVAL_SECONDS
        print(f"  at the default {DEFAULT_INTERVAL_SECONDS:.0f} s interval: stall {summary['overhead_at_default_interval']:.3%} "
              f"of training; with the whole background write counted as lost too {summary['overhead_bound_at_default_interval']:.2%}")
    for name, summary in async_results.items():
        files = summary["newest_checkpoint_files_bytes"]
        print(f"\n{name}: checkpoint {sum(files.values()) / 2**20:.1f} MiB on disk ("
              + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in files.items()) + f"), serialised at most "
              f"{(summary['bytes_serialised_per_checkpoint_max'] or 0) / 2**20:.1f} MiB; step {summary['seconds_per_step']:.2f} s")
        print(f"{'mode':<7}{'stall s':>9}{'write s':>9}{'slowdown s':>12}{'cost s':>8}{'overhead':>10}{'bound':>8}")
        for mode in ("sync", "async"):
            row = summary[mode]
            print(f"{mode:<7}{row['stall_seconds_median']:>9.2f}{row['write_seconds_median']:>9.2f}"
                  f"{row['step_slowdown_seconds_per_checkpoint_median']:>12.2f}{row['cost_seconds_per_checkpoint']:>8.2f}"
                  f"{row['overhead_at_default_interval']:>10.3%}{row['overhead_bound_at_default_interval']:>8.2%}")
        print(f"  at the default interval ({DEFAULT_INTERVAL_SECONDS:.0f} s) a SIGKILL loses at most "
              f"{summary['work_lost_to_sigkill_at_most_seconds']:.0f} s of training")
    if writes:
        print(f"\nwrite seconds per checkpoint (MiniLM, every step): {', '.join(f'{s:.2f}' for s in writes['checkpoint_seconds'])}")
    if interruptions:
        print(f"{'interruption':<14}{'completed':>10}{'resumed at':>11}{'repeated':>9}{'exit s':>8}")
        for name, case in interruptions.items():
            exit_seconds = case["interrupted"]["seconds_from_signal_to_exit"]
            print(f"{name:<14}{case['interrupted']['last_completed_step']:>10}{str(case['rerun']['resumed_from_step']):>11}"
                  f"{str(case['steps_repeated']):>9}{exit_seconds:>8.2f}")

    path = write_result(args.output, {
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "note": "2 CPU cores shared with other developers' test runs: times vary with their load.",
        "direct": direct_results,
        "async": async_results,
        "writes": writes,
        "interval": interval,
        "interruptions": interruptions,
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
