"""Peak memory of training when every batch is as long as --max-seq-len: what a whole epoch reaches.

Start-up figures (bench_startup.py) stop after the first steps, whose batches may happen to be short;
over an epoch the length-grouped plan always reaches batches of the full --max-seq-len, whose
activations are the largest allocation of a step. This runs the real `bert-classify train` on rows
that are all longer than --max-seq-len (three shared DBpedia texts joined per row), so every
batch is 16 x 128 tokens, for a few steps and a final checkpoint, and samples peak RSS (VmHWM) from
/proc every 0.1 s. Variants, one after another in one run: precision auto (bf16 on this CPU), auto
with --gradient-checkpointing, fp32, fp32 with --gradient-checkpointing. The step rate of each is
the mean over steps after the first, from the run's own log.

    python benchmarks/bench_step_memory.py --steps 6
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, write_result  # noqa: E402
from bench_startup import DATA_DIR, GIB, MODEL_DIR, environment, run  # noqa: E402

VARIANTS = {
    "auto (bf16)": [],
    "auto (bf16) + --gradient-checkpointing": ["--gradient-checkpointing"],
    "fp32": ["--precision", "fp32"],
    "fp32 + --gradient-checkpointing": ["--precision", "fp32", "--gradient-checkpointing"],
}


def long_rows(path: Path, rows: int) -> None:
    with open(DATA_DIR / "train.csv", newline="", encoding="utf-8") as handle:
        source = list(csv.reader(handle))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for index in range(rows):
            parts = [source[(3 * index + offset) % len(source)] for offset in range(3)]
            writer.writerow([parts[0][0], " ".join(part[-1] for part in parts)])  # (class index, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_step_memory"))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").exists() or not (DATA_DIR / "train.csv").exists():
        raise SystemExit(f"skipped: needs the shared model ({MODEL_DIR}) and data ({DATA_DIR})")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    train, val = args.work / "train.csv", args.work / "val.csv"
    long_rows(train, args.batch_size * (args.steps + 2))
    long_rows(val, 32)
    from bert_classify.modeling import load_tokenizer

    with open(train, newline="", encoding="utf-8") as handle:
        texts = [row[1] for row in csv.reader(handle)]
    lengths = [len(ids) for ids in load_tokenizer(str(MODEL_DIR))(texts)["input_ids"]]
    full = sum(length >= args.max_seq_len for length in lengths) / len(lengths)
    print(f"{full:.0%} of the training rows are at least {args.max_seq_len} tokens long", flush=True)
    src = Path(__file__).resolve().parents[1] / "src"
    results: dict[str, Any] = {}
    for name, extra in VARIANTS.items():
        run_dir = args.work / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        command = [
            sys.executable, "-m", "bert_classify", "train", "--train", str(train), "--val", str(val),
            "--classes", str(DATA_DIR / "classes.txt"), "--model", str(MODEL_DIR), "--output-dir", str(run_dir / "model"),
            "--checkpoint-dir", str(run_dir / "checkpoints"), "--max-steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len), "--log-every-steps", "1",
            *extra,
        ]
        figures = run(command, environment(src), "done:", args.work / f"{run_dir.name}.log")
        log = (args.work / f"{run_dir.name}.log").read_text()
        rates = [float(value) for value in re.findall(r"\| ([0-9.]+) examples/s", log)]
        figures["examples_per_second_after_step_1"] = sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else None
        figures["peak_rss_gib"] = max(process.get("VmHWM", 0.0) for process in figures["processes"])
        results[name] = figures
        rate = figures["examples_per_second_after_step_1"]
        print(f"{name}: peak RSS {figures['peak_rss_gib']:.2f} GiB, "
              f"{'?' if rate is None else f'{rate:.1f}'} examples/s after step 1, exit {figures['returncode']}", flush=True)
    name = args.output.stem if args.output else "step_memory"
    path = write_result(name, {"settings": {"model": str(MODEL_DIR), "batch_size": args.batch_size,
                                            "max_seq_len": args.max_seq_len, "steps": args.steps,
                                            "share_of_rows_at_max_seq_len": full, "gib": GIB}, "variants": results, "command": command_line()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
