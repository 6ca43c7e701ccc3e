"""Checkpoints under hostile conditions, with real training subprocesses and real damage: corrupt
newer checkpoints never push out the newest good one, a full disk, an unreadable checkpoint, two
trainers on one directory, a non-finite loss, and signals or SIGKILL during a background write."""

# ruff: noqa: F811  (the fixtures imported from test_resume are used as test arguments)

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from bert_classify.training import checkpoint as ckpt
from test_resume import (  # the same data, command and reference run as the resume tests
    STEPS_PER_EPOCH,
    _assert_identical,
    _command,
    _environment,
    _run,
    _weights,
    checkpoint_events,
    reference,  # noqa: F401  (a fixture)
    resume_data,  # noqa: F401  (a fixture)
    resumed_step,
)

pytestmark = pytest.mark.slow

SIGTERM_STATUS = 128 + signal.SIGTERM


def _with(command: list[str], flag: str, value: str) -> list[str]:
    command = list(command)
    if flag in command:
        command[command.index(flag) + 1] = value
    else:
        command += [flag, value]
    return command


def _checkpoints(run_dir: Path) -> list[str]:
    return sorted(path.name for path in (run_dir / "checkpoints").glob("step-*"))


def _corrupt(run_dir: Path) -> list[str]:
    corrupt = run_dir / "checkpoints" / ckpt.CORRUPT_DIRECTORY
    return sorted(path.name.rsplit("-", 1)[0] for path in corrupt.iterdir()) if corrupt.is_dir() else []


def _no_traceback(completed: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in completed.stderr + completed.stdout, completed.stderr
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, completed.stderr


# ---------------------------------------------------------------------------- issue 11, item 1
def test_keep_one_a_corrupt_newer_checkpoint_never_prunes_the_fresh_one(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    command = _with(_command(resume_data, tiny_model_dir, tmp_path), "--keep-checkpoints", "1")
    assert _run(command, BERT_CLASSIFY_SIGTERM_AT_STEP="20").returncode == SIGTERM_STATUS
    assert _checkpoints(tmp_path) == ["step-00000020"]
    model_file = tmp_path / "checkpoints" / "step-00000020" / ckpt.MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:1000])  # truncated, as a full disk or a bad copy leaves it

    second = _run(command, BERT_CLASSIFY_SIGTERM_AT_STEP="12")
    assert second.returncode == SIGTERM_STATUS, second.stderr
    assert "step-00000020 is incomplete or corrupt (model.safetensors has 1000 bytes" in second.stdout
    assert _corrupt(tmp_path) == ["step-00000020"]  # moved aside, not deleted
    assert _checkpoints(tmp_path) == ["step-00000012"]  # the fresh one survived pruning

    third = _run(command)
    assert third.returncode == 0, third.stderr
    assert resumed_step(third.stdout) == 12
    _assert_identical(reference, _weights(tmp_path))


def test_keep_two_both_newer_checkpoints_corrupt_including_a_numeric_files_manifest(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    command = _command(resume_data, tiny_model_dir, tmp_path)  # keep 2, a checkpoint every 5 steps
    assert _run(command, BERT_CLASSIFY_SIGTERM_AT_STEP="22").returncode == SIGTERM_STATUS
    assert _checkpoints(tmp_path) == ["step-00000020", "step-00000022"]
    newest = tmp_path / "checkpoints" / "step-00000022"
    (newest / ckpt.MANIFEST_FILE).write_text('{"format_version": 1, "step": 22, "files": 7}')
    older = tmp_path / "checkpoints" / "step-00000020" / ckpt.OPTIMIZER_FILE
    damaged = bytearray(older.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte: same size, wrong checksum
    older.write_bytes(bytes(damaged))

    second = _run(command, BERT_CLASSIFY_SIGTERM_AT_STEP="12")
    assert second.returncode == SIGTERM_STATUS, second.stderr
    assert "its 'files' is int" in second.stdout and "optimizer.pt does not match its checksum" in second.stdout
    assert resumed_step(second.stdout) is None  # nothing usable: started over, and said so
    assert _corrupt(tmp_path) == ["step-00000020", "step-00000022"]
    assert _checkpoints(tmp_path) == ["step-00000010", "step-00000012"]

    third = _run(command)
    assert third.returncode == 0, third.stderr
    assert resumed_step(third.stdout) == 12
    _assert_identical(reference, _weights(tmp_path))


def test_unreadable_newest_checkpoint_directory_falls_back(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    # root reads any directory; in a new user namespace without a mapping it keeps its uid but loses
    # that override, so a mode-000 directory is really unreadable there
    if os.geteuid() == 0:
        probe = subprocess.run(["unshare", "--user", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"running as root and cannot drop the permission override with unshare --user: {probe.stderr}")
        prefix = ["unshare", "--user"]
    else:
        prefix = []
    command = [*prefix, *_command(resume_data, tiny_model_dir, tmp_path)]
    assert _run(command, BERT_CLASSIFY_SIGTERM_AT_STEP="11").returncode == SIGTERM_STATUS
    newest = tmp_path / "checkpoints" / "step-00000011"
    os.chmod(newest, 0)  # unreadable (and, as a directory without write permission, not movable either)
    try:
        completed = _run(command)
    finally:
        os.chmod(newest, 0o755)
    assert completed.returncode == 0, completed.stderr
    assert "step-00000011 is incomplete or corrupt (unreadable (Permission denied))" in completed.stdout
    assert "could not be moved aside and is skipped" in completed.stdout
    assert resumed_step(completed.stdout) == 10
    _assert_identical(reference, _weights(tmp_path))


def test_manifest_checks_never_raise() -> None:
    for manifest in ('{"files": 3}', '{"files": {"model.safetensors": 5}}', "[]", "{", '{"files": {"../x": {}}}'):
        directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"bad-manifest-{os.getpid()}"
        directory.mkdir(exist_ok=True)
        (directory / ckpt.MANIFEST_FILE).write_text(manifest)
        assert ckpt.verify_checkpoint(directory) is not None
        shutil.rmtree(directory)


# ---------------------------------------------------------------------------- issue 11, item 7: full disk
@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    completed = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if completed.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({completed.stderr.strip()}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for block in (65536, 4096, 1):
            try:
                while True:
                    handle.write(b"\0" * block)
            except OSError:
                pass
    return filler


def test_disk_full_during_a_checkpoint_write_is_one_line_and_resume_is_exact(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, small_disk: Path,
    reference: dict[str, torch.Tensor],
) -> None:
    command = _with(_command(resume_data, tiny_model_dir, tmp_path), "--checkpoint-dir", str(small_disk / "checkpoints"))
    assert _run(command, BERT_CLASSIFY_SIGTERM_AT_STEP="3").returncode == SIGTERM_STATUS
    filler = _fill(small_disk)
    full = _run(command)
    assert full.returncode == 2
    _no_traceback(full)
    assert "could not write checkpoint step-00000005" in full.stderr and "No space left on device" in full.stderr
    assert "the previous checkpoint" in full.stderr and "step-00000003 is intact" in full.stderr
    assert not list((small_disk / "checkpoints").glob(".tmp-*"))  # the half-written one was removed
    assert ckpt.verify_checkpoint(small_disk / "checkpoints" / "step-00000003") is None
    filler.unlink()
    completed = _run(command)
    assert completed.returncode == 0, completed.stderr
    assert resumed_step(completed.stdout) == 3
    _assert_identical(reference, _weights(tmp_path))


def test_disk_full_during_the_output_write_is_one_line_and_rerun_writes_it(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, small_disk: Path,
    reference: dict[str, torch.Tensor],
) -> None:
    output = small_disk / "model"
    command = _with(_command(resume_data, tiny_model_dir, tmp_path), "--output-dir", str(output))
    filler = _fill(small_disk)
    full = _run(command)
    assert full.returncode == 2
    _no_traceback(full)
    assert f"could not write the model to --output-dir {output}" in full.stderr and "the checkpoints are kept" in full.stderr
    filler.unlink()
    completed = _run(command)
    assert completed.returncode == 0, completed.stderr
    assert resumed_step(completed.stdout) == 2 * STEPS_PER_EPOCH  # nothing trained again
    _assert_identical(reference, {key: value for key, value in _weights_at(output).items()})


def _weights_at(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


# ---------------------------------------------------------------------------- issue 11, item 8: the lock
def test_a_second_trainer_on_the_same_directory_refuses_and_a_killed_ones_lock_is_gone(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    command = _command(resume_data, tiny_model_dir, tmp_path)
    first = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_environment(BERT_CLASSIFY_MICRO_STEP_DELAY_S="1.0"),  # 4 s a step: still running when the second starts
    )
    assert first.stdout is not None
    for line in first.stdout:
        if line.startswith("step 1/"):
            break
    second = _run(_with(command, "--output-dir", str(tmp_path / "other-model")))
    first.kill()  # SIGKILL: no chance to unlock; the kernel drops the flock
    first.wait(timeout=60)
    assert second.returncode == 2
    _no_traceback(second)
    assert f"another training run is using the checkpoint directory {tmp_path / 'checkpoints'}" in second.stderr
    assert "pid " in second.stderr  # says who holds it
    restarted = _run(command)
    assert restarted.returncode == 0, restarted.stderr
    _assert_identical(reference, _weights(tmp_path))


# ---------------------------------------------------------------------------- issue 11, item 3: NaN loss
def test_a_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # a learning rate that blows the weights up: step 1 is finite (and checkpointed), step 2's loss is NaN
    command = _with(_with(_command(resume_data, tiny_model_dir, tmp_path), "--learning-rate", "1e30"),
                    "--checkpoint-every-steps", "1")
    completed = _run(command)
    assert completed.returncode == 2, completed.stdout
    _no_traceback(completed)
    assert "the training loss became non-finite (loss nan" in completed.stderr and "at step 2;" in completed.stderr
    assert "the last good checkpoint (step 1) is kept and --output-dir is not written" in completed.stderr
    assert not (tmp_path / "model").exists()
    assert _checkpoints(tmp_path) == ["step-00000001"]  # nothing written from the non-finite state
    path = tmp_path / "checkpoints" / "step-00000001"
    assert ckpt.verify_checkpoint(path) is None
    assert all(torch.isfinite(t).all() for t in ckpt.read_tensors(path / ckpt.MODEL_FILE).values())


# ---------------------------------------------------------------------------- issue 10, item 3: async writes
def _start(command: list[str], **variables: str) -> subprocess.Popen[str]:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_environment(**variables))


def test_a_second_sigterm_during_the_signal_checkpoint_write_changes_nothing(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    command = _command(resume_data, tiny_model_dir, tmp_path)
    process = _start(command, BERT_CLASSIFY_SIGTERM_AT_STEP="7", BERT_CLASSIFY_CHECKPOINT_WRITE_DELAY_S="0.5")
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "received SIGTERM" in line:
            time.sleep(0.6)  # the writer is inside the checkpoint now (0.5 s after each file)
            process.send_signal(signal.SIGTERM)
            break
    lines.extend(process.stdout)
    output = "".join(lines)
    assert process.wait(timeout=120) == SIGTERM_STATUS, output
    assert "received SIGTERM again" in output
    assert checkpoint_events(output, "written")[-1]["step"] == 7
    completed = _run(command)
    assert completed.returncode == 0, completed.stderr
    assert resumed_step(completed.stdout) == 7
    _assert_identical(reference, _weights(tmp_path))


def test_sigkill_during_the_signal_checkpoint_write_falls_back_and_stays_exact(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    command = _command(resume_data, tiny_model_dir, tmp_path)
    process = _start(command, BERT_CLASSIFY_SIGTERM_AT_STEP="7", BERT_CLASSIFY_CHECKPOINT_WRITE_DELAY_S="1.0")
    deadline = time.monotonic() + 120
    temporaries: list[Path] = []
    while not temporaries and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)  # until the signal checkpoint's write has begun (after step 5's has finished)
        temporaries = list((tmp_path / "checkpoints").glob(".tmp-step-00000007-*"))
    time.sleep(0.5)  # inside the write: the first file is there, no manifest yet (1 s after each file)
    process.kill()
    process.wait(timeout=60)
    assert temporaries, "the kill did not land inside the write"
    assert _checkpoints(tmp_path) == ["step-00000005"]  # the half-written step 7 never became a checkpoint
    completed = _run(command)
    assert completed.returncode == 0, completed.stderr
    assert resumed_step(completed.stdout) == 5
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # the leftover was cleaned up under the lock
    _assert_identical(reference, _weights(tmp_path))


def test_periodic_checkpoints_are_written_in_the_background(
    resume_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # each file takes 0.3 s more to write; the steps go on meanwhile (the write finishes steps later)
    command = _with(_command(resume_data, tiny_model_dir, tmp_path), "--max-steps", "9")
    completed = _run(command, BERT_CLASSIFY_CHECKPOINT_WRITE_DELAY_S="0.3")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    written_at_5 = next(i for i, line in enumerate(lines) if line.startswith("checkpoint written (interval) at step 5"))
    step_6 = next(i for i, line in enumerate(lines) if line.startswith("step 6/"))
    assert step_6 < written_at_5  # step 6 ran while step 5's checkpoint was being written
    record = checkpoint_events(completed.stdout, "written")[0]
    assert record["step"] == 5 and record["write_seconds"] >= 1.2 and record["stall_seconds"] < record["write_seconds"]
