"""Spot-proof training: real training subprocesses interrupted by real SIGTERM/SIGKILL and resumed
with the same command end with weights bitwise-identical to a run never interrupted."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CLASS_NAMES, make_rows, write_dbpedia_csv

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 12  # 96 rows / effective batch 8
EPOCHS = 2


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("resume-data")
    write_dbpedia_csv(data / "train.csv", make_rows(96, seed=11))
    write_dbpedia_csv(data / "val.csv", make_rows(12, seed=12))
    (data / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return data


def _command(data: Path, model: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "bert_classify", "train",
        "--train", str(data / "train.csv"), "--val", str(data / "val.csv"), "--classes", str(data / "classes.txt"),
        "--model", str(model), "--output-dir", str(run_dir / "model"), "--checkpoint-dir", str(run_dir / "checkpoints"),
        "--epochs", str(EPOCHS), "--batch-size", "2", "--grad-accum-steps", "4", "--learning-rate", "2e-3",
        "--checkpoint-every-steps", "5", "--log-every-steps", "1", "--eval-every-steps", "7", *extra,
    ]


def _environment(**variables: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BERT_CLASSIFY_")}
    environment.update(BERT_CLASSIFY_TEST_FAULTS="1", **variables)  # the test-only fault hooks are switched on
    return environment


def checkpoint_events(output: str, event: str) -> list[dict]:
    """The `checkpoint: {json}` lines of one kind ("resumed", "written") in a run's output."""
    prefix = "checkpoint: "
    records = [json.loads(line[len(prefix) :]) for line in output.splitlines() if line.startswith(prefix)]
    return [record for record in records if record["event"] == event]


def resumed_step(output: str) -> int | None:
    resumed = checkpoint_events(output, "resumed")
    return resumed[0]["step"] if resumed else None


def _run(command: list[str], **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=_environment(**variables))


def _run_until(command: list[str], marker: str, sig: int, **variables: str) -> tuple[int, str]:
    """Start a run, send `sig` once its output shows `marker`; return (exit status, output)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_environment(**{"BERT_CLASSIFY_MICRO_STEP_DELAY_S": "0.02", **variables}),
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            process.send_signal(sig)
            break
    lines.extend(process.stdout)
    return process.wait(timeout=300), "".join(lines)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def _assert_identical(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    different = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not different, f"tensors differ after resume: {different[:5]}"


@pytest.fixture(scope="module")
def reference(resume_data: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("reference")
    completed = _run(_command(resume_data, tiny_model_dir, run_dir))
    assert completed.returncode == 0, completed.stderr
    return _weights(run_dir)


def test_sigterm_mid_epoch_then_resume_is_bitwise_identical(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    command = _command(resume_data, tiny_model_dir, tmp_path)
    status, output = _run_until(command, "step 3/", signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, output
    assert "checkpoint written (signal)" in output and "run the same command again to resume" in output
    completed = _run(command)
    assert completed.returncode == 0, completed.stderr
    step = resumed_step(completed.stdout)
    assert step is not None and 3 <= step < STEPS_PER_EPOCH  # lost at most the step in flight
    _assert_identical(reference, _weights(tmp_path))


def test_sigterm_at_the_epoch_boundary_then_twice_more(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    command = _command(resume_data, tiny_model_dir, tmp_path)
    for step in (STEPS_PER_EPOCH, STEPS_PER_EPOCH + 2, STEPS_PER_EPOCH + 9):  # three interruptions in a row
        completed = _run(command, BERT_CLASSIFY_SIGTERM_AT_STEP=str(step))
        assert completed.returncode == 128 + signal.SIGTERM, completed.stderr
        assert f"stopped by signal after step {step};" in completed.stdout
    completed = _run(command)
    assert f"resumed from checkpoint at step {STEPS_PER_EPOCH + 9} (epoch 2, batch 9)" in completed.stdout
    _assert_identical(reference, _weights(tmp_path))


def test_sigkill_between_checkpoints_loses_at_most_the_interval(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    command = _command(resume_data, tiny_model_dir, tmp_path)
    status, output = _run_until(command, "step 8/", signal.SIGKILL)
    assert status == -signal.SIGKILL
    completed = _run(command)
    assert completed.returncode == 0, completed.stderr
    step = resumed_step(completed.stdout)
    assert step is not None and step >= 5  # the checkpoint every 5 steps: at most 5 steps repeated
    _assert_identical(reference, _weights(tmp_path))


def test_sigkill_at_random_moments_including_during_checkpoint_writes(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    # checkpoint every step so that many kills land inside a write
    command = _command(resume_data, tiny_model_dir, tmp_path)
    command[command.index("--checkpoint-every-steps") + 1] = "1"
    generator = random.Random(1234)
    checkpoints = tmp_path / "checkpoints"
    newest_after_each_kill = []
    for _ in range(4):
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=_environment(BERT_CLASSIFY_MICRO_STEP_DELAY_S="0.02"),
        )
        assert process.stdout is not None
        # start-up takes from seconds to a minute on a busy machine: kill only once this run has
        # written 1 to 3 checkpoints, then at a random moment (inside a step or inside the next write)
        wanted, seen = generator.randint(1, 3), 0
        for line in process.stdout:
            seen += bool(checkpoint_events(line, "written"))
            if seen == wanted:
                break
        time.sleep(generator.uniform(0.0, 0.4))
        process.kill()
        process.wait(timeout=60)
        steps = [int(path.name.removeprefix("step-")) for path in checkpoints.glob("step-*")]
        newest_after_each_kill.append(max(steps, default=0))
    # every kill landed after that run's own checkpoints, so each run moved the newest checkpoint on
    assert all(b > a for a, b in zip([0, *newest_after_each_kill], newest_after_each_kill)), newest_after_each_kill
    written = sorted(int(path.name.removeprefix("step-")) for path in checkpoints.glob("step-*"))
    completed = _run(command)
    assert completed.returncode == 0, completed.stderr
    assert resumed_step(completed.stdout) == written[-1]
    _assert_identical(reference, _weights(tmp_path))


def test_sigterm_inside_an_accumulation_window(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    # 4 micro-batches a step with a pause after each: the signal lands between micro-batches
    command = _command(resume_data, tiny_model_dir, tmp_path)
    status, output = _run_until(command, "step 16/", signal.SIGTERM, BERT_CLASSIFY_MICRO_STEP_DELAY_S="0.2")
    assert status == 128 + signal.SIGTERM
    stopped = int(output.split("stopped by signal after step ")[1].split(";")[0])
    assert stopped in (16, 17)  # the step in flight was finished, and no more
    completed = _run(command)
    assert f"resumed from checkpoint at step {stopped} (epoch 2, batch {stopped - STEPS_PER_EPOCH})" in completed.stdout
    _assert_identical(reference, _weights(tmp_path))


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    command = _command(resume_data, tiny_model_dir, tmp_path)
    completed = _run(command, BERT_CLASSIFY_SIGTERM_AT_STEP="11")
    assert completed.returncode == 128 + signal.SIGTERM
    checkpoints = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert [path.name for path in checkpoints] == ["step-00000010", "step-00000011"]
    model_file = checkpoints[-1] / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])  # truncated
    completed = _run(command)
    assert "step-00000011 is incomplete or corrupt (model.safetensors has 100 bytes" in completed.stdout
    assert resumed_step(completed.stdout) == 10
    assert [path.name.rsplit("-", 1)[0] for path in (tmp_path / "checkpoints" / "corrupt").iterdir()] == ["step-00000011"]
    _assert_identical(reference, _weights(tmp_path))


def test_resume_with_changed_learning_rate_or_data_is_refused(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    command = _command(resume_data, tiny_model_dir, tmp_path)
    assert _run(command, BERT_CLASSIFY_SIGTERM_AT_STEP="3").returncode == 128 + signal.SIGTERM

    changed_rate = list(command)
    changed_rate[changed_rate.index("--learning-rate") + 1] = "1e-3"
    completed = _run(changed_rate)
    assert completed.returncode == 2
    assert "learning_rate 0.002 → 0.001" in completed.stderr and "--force-resume" in completed.stderr
    assert "Traceback" not in completed.stderr

    other_data = tmp_path / "other.csv"
    write_dbpedia_csv(other_data, make_rows(96, seed=99))
    changed_data = list(command)
    changed_data[changed_data.index("--train") + 1] = str(other_data)
    completed = _run(changed_data)
    assert completed.returncode == 2 and "train data contents" in completed.stderr

    forced = _run([*changed_rate, "--force-resume", "--max-steps", "5"])
    assert forced.returncode == 0, forced.stderr
    assert "--force-resume: continuing" in forced.stdout and "resumed from checkpoint at step 3" in forced.stdout
