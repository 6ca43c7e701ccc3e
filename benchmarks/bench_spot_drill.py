"""Spot drill: one training job run through the real SageMaker toolkit chain, interrupted again and again.

The job's dry-run request (the PID-1 forwarder included) runs as in tests/sagemaker_container.py: the real
`sagemaker-training` + `sagemaker-pytorch-training` toolkits, the request's entrypoint as PID 1 of a PID
namespace. Each container is stopped at a random moment, either as a reclaim with warning (SIGTERM to PID 1,
SIGKILL after the grace period) or with no warning at all (SIGKILL), and a new container starts with the
checkpoints carried over as SageMaker's S3 sync would. Reported: steps repeated per interruption, time from
container start to the first new step, wall-time overhead against the same job never interrupted, and
whether the final weights are bitwise equal to it.

Uses the real MiniLM and DBpedia rows from ../shared (exits with a message when absent). Needs root,
`unshare` and the `toolkits` extra, like the tests.

    python benchmarks/bench_spot_drill.py                       # 4 interruptions, 2 of each kind
    python benchmarks/bench_spot_drill.py --interruptions 6 --train-rows 1600 --seed 3
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import SHARED, write_result  # noqa: E402
from sagemaker_container import Container, unavailable_reason  # noqa: E402

STEP_LINE = re.compile(r"metric: train_loss=\S+ step=(\d+) ")
RESUMED = re.compile(r"resumed from checkpoint at step (\d+)")


def _steps_seen(log: str) -> list[int]:
    return [int(match.group(1)) for match in STEP_LINE.finditer(log)]


def _first_step_after(container: Container, timeout: float) -> tuple[float, int]:
    seconds, match = container.wait_for(STEP_LINE.pattern, timeout)
    return seconds, int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interruptions", type=int, default=4, help="containers stopped before the last one")
    parser.add_argument("--train-rows", type=int, default=960)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--checkpoint-every-steps", type=int, default=10,
                        help="periodic checkpoints (stands in for --checkpoint-every-minutes at this scale)")
    parser.add_argument("--grace-seconds", type=float, default=30.0, help="SIGTERM-to-SIGKILL grace period")
    parser.add_argument("--seed", type=int, default=1, help="chooses the moments and kinds of interruption")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS inside the containers")
    parser.add_argument("--workdir", type=Path, help="keep containers here (default: a temporary directory)")
    args = parser.parse_args()

    reason = unavailable_reason()
    model = SHARED / "models" / "minilm-l6-h384-uncased"
    data = SHARED / "data" / "dbpedia-10k"
    if reason or not (model / "config.json").exists():
        print(f"cannot run the drill: {reason or f'no shared model at {model}'}", file=sys.stderr)
        return 2

    from bert_classify.sagemaker.launch import TrainingJobOptions, build_training_request
    from bert_classify.sagemaker.source import build_sourcedir

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spot-drill-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = (data / "train.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (workdir / "train.csv").write_text("".join(rows[: args.train_rows]), encoding="utf-8")
    test_rows = (data / "test.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (workdir / "val.csv").write_text("".join(test_rows[:200]), encoding="utf-8")
    channels = {"train": workdir / "train.csv", "val": workdir / "val.csv", "classes": data / "classes.txt",
                "model": model}
    hyperparameters = {"epochs": args.epochs, "batch-size": args.batch_size, "learning-rate": "2e-4",
                       "checkpoint-every-steps": args.checkpoint_every_steps, "log-every-steps": 1}
    request = build_training_request(
        TrainingJobOptions(
            role="arn:aws:iam::123456789012:role/SageMakerRole", train=str(channels["train"]), val=str(channels["val"]),
            classes=str(channels["classes"]), model=str(model), s3_prefix="s3://bucket/drill", image_uri="image",
            instance_type="ml.m5.xlarge", hyperparameters=hyperparameters,
        ),
        region="us-east-1",
    ).request
    source = build_sourcedir(workdir / "sourcedir.tar.gz")

    def container(name: str, checkpoints: Path | None) -> Container:
        target = workdir / name
        shutil.rmtree(target, ignore_errors=True)
        return Container(target, request, source_archive=source, channels=channels, checkpoints_from=checkpoints,
                         environment={"OMP_NUM_THREADS": str(args.threads)})

    # The same job never interrupted.
    print("uninterrupted run ...", flush=True)
    reference = container("uninterrupted", None)
    reference.start()
    reference_first_step, _ = _first_step_after(reference, 3600)
    status = reference.wait(timeout=3600)
    reference_seconds = time.monotonic() - reference.started_at
    reference_log = reference.log()
    if status != 0:
        print(reference_log[-4000:], file=sys.stderr)
        return 1
    total_steps = max(_steps_seen(reference_log))
    reference_training = reference_seconds - reference_first_step
    print(f"  {total_steps} steps, {reference_seconds:.1f} s wall, first step at {reference_first_step:.1f} s", flush=True)

    rng = random.Random(args.seed)
    kinds = ["sigterm", "sigkill"] * ((args.interruptions + 1) // 2)
    rng.shuffle(kinds)
    kinds = kinds[: args.interruptions]
    interruptions: list[dict[str, Any]] = []
    checkpoints: Path | None = None
    wall = 0.0
    for index, kind in enumerate(kinds):
        current = container(f"interrupted-{index}", checkpoints)
        current.start()
        first_step_seconds, first_step = _first_step_after(current, 1800)
        # A random moment within the part of the job still to run (leaving some for the next containers).
        remaining = max(1, total_steps - first_step)
        target_step = first_step + max(1, int(remaining * rng.uniform(0.15, 0.5) / max(1, args.interruptions - index)))
        current.wait_for(rf"metric: train_loss=\S+ step={target_step} ", 3600)
        time.sleep(rng.uniform(0.0, 0.5))  # not always right at a step boundary
        if kind == "sigterm":
            current.signal_pid1(15)
            status = current.wait(args.grace_seconds)
        else:
            status = current.kill()
        wall += time.monotonic() - current.started_at
        log = current.log()
        last_seen = max(_steps_seen(log))
        resumed_match = RESUMED.search(log)
        record = {
            "kind": kind,
            "resumed_from_step": int(resumed_match.group(1)) if resumed_match else 0,
            "container_start_to_first_new_step_s": round(first_step_seconds, 2),
            "last_step_before_interruption": last_seen,
            "signal_checkpoint": "checkpoint written (signal)" in log,
            "exit_status": status,
        }
        interruptions.append(record)
        checkpoints = current.checkpoints
        print(f"  {index}: {kind} after step {last_seen} (started at step {record['resumed_from_step']}, "
              f"first new step {record['container_start_to_first_new_step_s']} s after start)", flush=True)
    final = container("final", checkpoints)
    final.start()
    final_first, _ = _first_step_after(final, 1800)
    status = final.wait(timeout=3600)
    wall += time.monotonic() - final.started_at
    final_log = final.log()
    if status != 0:
        print(final_log[-4000:], file=sys.stderr)
        return 1
    resumed_at = int(RESUMED.search(final_log).group(1)) if RESUMED.search(final_log) else 0
    restarts = [*interruptions[1:], {"resumed_from_step": resumed_at, "container_start_to_first_new_step_s": round(final_first, 2)}]
    for record, restart in zip(interruptions, restarts):
        record["next_container_resumed_from"] = restart["resumed_from_step"]
        record["steps_repeated"] = record["last_step_before_interruption"] - restart["resumed_from_step"]
        record["next_container_start_to_first_new_step_s"] = restart["container_start_to_first_new_step_s"]
    expected = load_file(reference.model_dir / "model.safetensors")
    weights = load_file(final.model_dir / "model.safetensors")
    bitwise = weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in expected)
    by_kind = {
        kind: [record["steps_repeated"] for record in interruptions if record["kind"] == kind] for kind in ("sigterm", "sigkill")
    }
    restart_times = [record["next_container_start_to_first_new_step_s"] for record in interruptions]
    seconds_per_step = reference_training / max(1, total_steps)
    payload = {
        "model": "minilm-l6-h384-uncased",
        "train_rows": args.train_rows,
        "total_steps": total_steps,
        "checkpoint_every_steps": args.checkpoint_every_steps,
        "grace_seconds": args.grace_seconds,
        "seed": args.seed,
        "uninterrupted_wall_s": round(reference_seconds, 2),
        "uninterrupted_start_to_first_step_s": round(reference_first_step, 2),
        "seconds_per_step": round(seconds_per_step, 3),
        "interrupted_wall_s": round(wall, 2),
        "wall_overhead_s": round(wall - reference_seconds, 2),
        "wall_overhead_ratio": round(wall / reference_seconds, 3),
        "steps_repeated_sigterm": by_kind["sigterm"],
        "steps_repeated_sigkill": by_kind["sigkill"],
        "restart_to_first_new_step_s": restart_times,
        "final_weights_bitwise_equal": bitwise,
        "interruptions": interruptions,
    }
    path = write_result("spot_drill", payload)
    print()
    print(f"{'kind':8} {'after step':>10} {'resumed at':>10} {'repeated':>8} {'restart->step (s)':>18}")
    for record in interruptions:
        print(f"{record['kind']:8} {record['last_step_before_interruption']:>10} {record['next_container_resumed_from']:>10} "
              f"{record['steps_repeated']:>8} {record['next_container_start_to_first_new_step_s']:>18}")
    print(f"wall: {wall:.1f} s interrupted vs {reference_seconds:.1f} s uninterrupted "
          f"(+{wall - reference_seconds:.1f} s, {len(interruptions)} restarts); final weights bitwise equal: {bitwise}")
    print(f"wrote {path}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if bitwise else 1


if __name__ == "__main__":
    raise SystemExit(main())
