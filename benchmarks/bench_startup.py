"""Start-up time and memory of `bert-classify train` on a large file: cold start, restart, torchrun ranks.

Makes a ROWS-row DBpedia file by repeating the shared train.csv rows (under --work, not in the repo) and
runs the real CLI as subprocesses, timing each from process start to its first optimizer step line and
sampling every process's memory (/proc: VmHWM, RssAnon, RssFile) every 0.1 s:

- cold: empty checkpoint directory; the run tokenises into <checkpoint-dir>/token-cache and is stopped
  (BERT_CLASSIFY_SIGTERM_AT_STEP=1) after step 1 with a checkpoint;
- restart: the same command again: resumes, maps the cache; timed to the first new step (step 2);
- torchrun (--nproc N): a fresh directory, N ranks on this node, per-rank anonymous and file-backed memory;
- baseline (--baseline-src DIR): the cold start of another checkout (e.g. main before the cache).

    python benchmarks/bench_startup.py --rows 560000 --nproc 2 --baseline-src /work/main/src
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, SHARED, command_line, write_result  # noqa: E402

DATA_DIR = SHARED / "data" / "dbpedia-10k"
MODEL_DIR = SHARED / "models" / "minilm-l6-h384-uncased"
GIB = 1024**3


def make_file(rows: int, work: Path) -> Path:
    path = work / f"train_{rows}.csv"
    if path.exists():
        return path
    lines = (DATA_DIR / "train.csv").read_bytes().splitlines(keepends=True)
    with open(path, "wb") as handle:
        for index in range(rows):
            handle.write(lines[index % len(lines)])
    return path


def _memory(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmHWM", "RssAnon", "RssFile", "RssShmem"):
                values[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return values


def _children(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                found.extend(int(child) for child in children)
                stack.extend(int(child) for child in children)
        except OSError:
            pass
    return found


def run(command: list[str], environment: dict[str, str], marker: str, log: Path) -> dict[str, Any]:
    """Run `command`; seconds until a stdout line contains `marker`; peak memory of each process in its tree."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    marker_seconds: list[float] = []
    lines: list[str] = []

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if not marker_seconds and marker in line:
                marker_seconds.append(time.perf_counter() - started)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    peaks: dict[int, dict[str, int]] = {}
    while process.poll() is None:
        for pid in [process.pid, *_children(process.pid)]:
            sample = _memory(pid)
            if sample:
                peak = peaks.setdefault(pid, {})
                for name, value in sample.items():
                    peak[name] = max(peak.get(name, 0), value)
        time.sleep(0.1)
    thread.join()
    wall = time.perf_counter() - started
    log.write_text("".join(lines))
    return {
        "seconds_to_marker": marker_seconds[0] if marker_seconds else None,
        "marker": marker,
        "wall_seconds": wall,
        "returncode": process.returncode,
        "processes": [{"pid": pid, **{k: v / GIB for k, v in peak.items()}} for pid, peak in peaks.items()],
        "token_cache_lines": [line.strip() for line in lines if "token cache:" in line],
        "log": str(log),
    }


def train_command(train: Path, val: Path, run_dir: Path, max_steps: int) -> list[str]:
    return [
        "-m", "bert_classify", "train", "--train", str(train), "--val", str(val),
        "--classes", str(DATA_DIR / "classes.txt"), "--model", str(MODEL_DIR), "--output-dir", str(run_dir / "model"),
        "--checkpoint-dir", str(run_dir / "checkpoints"), "--max-steps", str(max_steps), "--batch-size", "16",
        "--log-every-steps", "1", "--checkpoint-every-minutes", "60",
    ]


def environment(src: Path, **extra: str) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("BERT_CLASSIFY_")}
    values.update(PYTHONPATH=str(src), HF_HUB_OFFLINE="1", **extra)
    return values


def summarise(name: str, figures: dict[str, Any]) -> None:
    biggest = max((p.get("VmHWM", 0.0) for p in figures["processes"]), default=0.0)
    seconds = figures["seconds_to_marker"]
    print(f"  {name}: first step after {'(never)' if seconds is None else f'{seconds:.1f} s'}, peak RSS of the largest process "
          f"{biggest:.2f} GiB, exit {figures['returncode']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[560_000])
    parser.add_argument("--nproc", type=int, default=0, help="also a torchrun run with this many ranks (0: none)")
    parser.add_argument("--baseline-src", type=Path, default=None, help="also time a cold start of this src/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_startup"))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").exists() or not (DATA_DIR / "train.csv").exists():
        raise SystemExit(f"skipped: needs the shared model ({MODEL_DIR}) and data ({DATA_DIR})")
    args.work.mkdir(parents=True, exist_ok=True)
    val = args.work / "val.csv"
    val.write_bytes(b"".join((DATA_DIR / "test.csv").read_bytes().splitlines(keepends=True)[:64]))
    src = REPO_ROOT / "src"
    python = [sys.executable]
    results: dict[str, Any] = {"settings": {"model": str(MODEL_DIR), "batch_size": 16, "max_seq_len": 128,
                                            "val_rows": 64, "source_rows": str(DATA_DIR / "train.csv")}, "runs": {}}
    for rows in args.rows:
        train = make_file(rows, args.work)
        figures: dict[str, Any] = {"file_bytes": train.stat().st_size}
        print(f"[{rows} rows] {train} ({train.stat().st_size / GIB:.2f} GiB)", flush=True)
        run_dir = args.work / f"run_{rows}"
        shutil.rmtree(run_dir, ignore_errors=True)
        command = python + train_command(train, val, run_dir, max_steps=3)
        # the fault-injection variable acts only with BERT_CLASSIFY_TEST_FAULTS=1 (training/faults.py)
        stop_after_step_1 = {"BERT_CLASSIFY_TEST_FAULTS": "1", "BERT_CLASSIFY_SIGTERM_AT_STEP": "1"}
        figures["cold"] = run(command, environment(src, **stop_after_step_1), "step 1/",
                              args.work / f"cold_{rows}.log")
        summarise("cold", figures["cold"])
        figures["restart"] = run(command, environment(src), "step 2/", args.work / f"restart_{rows}.log")
        summarise("restart", figures["restart"])
        cold, restart = figures["cold"]["seconds_to_marker"], figures["restart"]["seconds_to_marker"]
        if cold and restart:
            figures["restart_over_cold"] = restart / cold
            print(f"  restart / cold = {restart / cold:.1%}", flush=True)
        if args.nproc > 1:
            torchrun_dir = args.work / f"torchrun_{rows}"
            shutil.rmtree(torchrun_dir, ignore_errors=True)
            torchrun = python + ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
            command = torchrun + train_command(train, val, torchrun_dir, max_steps=1)[0:]
            figures["torchrun"] = run(command, environment(src, OMP_NUM_THREADS="1"), "step 1/",
                                      args.work / f"torchrun_{rows}.log")
            summarise(f"torchrun x{args.nproc}", figures["torchrun"])
            for process in figures["torchrun"]["processes"]:
                print(f"    pid {process['pid']}: VmHWM {process.get('VmHWM', 0):.2f} GiB, RssAnon "
                      f"{process.get('RssAnon', 0):.2f}, RssFile {process.get('RssFile', 0):.2f}", flush=True)
            cache = torchrun_dir / "checkpoints" / "token-cache"
            figures["torchrun"]["cache_entries"] = sorted(p.name for p in cache.iterdir() if p.is_dir())
            figures["torchrun"]["cache_bytes"] = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        if args.baseline_src is not None:
            baseline_dir = args.work / f"baseline_{rows}"
            shutil.rmtree(baseline_dir, ignore_errors=True)
            command = python + train_command(train, val, baseline_dir, max_steps=1)
            figures["baseline_cold"] = run(command, environment(args.baseline_src), "step 1/",
                                           args.work / f"baseline_{rows}.log")
            figures["baseline_src"] = str(args.baseline_src)
            summarise("baseline cold", figures["baseline_cold"])
        results["runs"][str(rows)] = figures
    name = args.output.stem if args.output else "startup"
    path = write_result(name, {**results, "command": command_line()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
