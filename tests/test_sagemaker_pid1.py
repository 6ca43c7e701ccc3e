"""The PID-1 signal forwarder on its own (real processes, no namespace): exit status, forwarding to the
command's process group, waiting for orphans, and the inlined form the job request carries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import botocore.session
import pytest

from bert_classify.errors import ConfigError
from bert_classify.sagemaker import pid1
from bert_classify.sagemaker.forwarding import IMAGE_ENTRY, MAX_ITEM_LENGTH, container_command

PID1 = Path(pid1.__file__)


def _start(command: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PID1), "--", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=tmp_path,
    )


def _wait_for_file(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_exit_status_is_the_commands(tmp_path: Path) -> None:
    process = _start(["sh", "-c", "exit 7"], tmp_path)
    assert process.wait(20) == 7


def test_sigterm_is_forwarded_while_the_commands_shell_keeps_ignoring_it(tmp_path: Path) -> None:
    # Like the image: a shell (ignoring SIGTERM, as inherited) runs a child that handles SIGTERM itself.
    trainer = (
        "import signal,sys,time,pathlib;"
        "signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path('stopped').write_text('yes'), sys.exit(143)));"
        "pathlib.Path('ready').write_text('');"
        "time.sleep(60)"
    )
    process = _start(["sh", "-c", f'{sys.executable} -c "{trainer}"; echo shell-still-here $?'], tmp_path)
    _wait_for_file(tmp_path / "ready")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=20)
    assert (tmp_path / "stopped").read_text() == "yes"
    assert "shell-still-here 143" in output  # the shell survived the signal and saw the trainer's status
    assert "pid1: received SIGTERM" in output
    assert process.returncode == 0  # the shell's own status


def test_waits_for_orphans_still_writing_after_the_command_exits(tmp_path: Path) -> None:
    """A process left behind (say a checkpoint writer whose parent died) is waited for, not torn down."""
    writer = (
        "import signal,time,pathlib;"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "pathlib.Path('ready').write_text('');"
        "time.sleep(1.5);"
        "pathlib.Path('written').write_text('done')"
    )
    process = _start(["sh", "-c", f'{sys.executable} -c "{writer}" & exit 3'], tmp_path)
    assert process.wait(20) == 3
    assert (tmp_path / "written").read_text() == "done"  # pid1 outlived its command until the orphan finished


def test_a_command_that_cannot_start_is_reported(tmp_path: Path) -> None:
    process = _start(["/nonexistent/entry"], tmp_path)
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 127 and "pid1: cannot run /nonexistent/entry" in output


def test_the_inlined_entrypoint_fits_the_api_and_runs(tmp_path: Path) -> None:
    entrypoint, arguments = container_command(["sh", "-c", "echo from-image-entry; exit 5"])
    shape = botocore.session.get_session().get_service_model("sagemaker").shape_for("TrainingContainerEntrypoint")
    assert len(entrypoint) <= shape.metadata["max"]
    assert all(len(item) <= MAX_ITEM_LENGTH for item in entrypoint + arguments)
    # exactly what the container runs: ContainerEntrypoint followed by ContainerArguments
    completed = subprocess.run(
        [sys.executable if item == "python3" else item for item in entrypoint] + arguments,
        capture_output=True, text=True, timeout=20, cwd=tmp_path,
    )
    assert completed.returncode == 5 and "from-image-entry" in completed.stdout


def test_default_arguments_are_the_images_entry() -> None:
    _, arguments = container_command()
    assert tuple(arguments) == IMAGE_ENTRY == ("bash", "-m", "start_with_right_hostname.sh", "train")


@pytest.mark.parametrize("entry", [[], ["x" * 300], ["bash", "--", "train"]])
def test_unusable_container_entries_are_refused(entry: list[str]) -> None:
    with pytest.raises(ConfigError, match="--container-entry"):
        container_command(entry)


def test_dry_run_shows_the_forwarder_and_the_opt_out_removes_it(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "bert_classify", "sagemaker", "train", "--role", "arn:aws:iam::123456789012:role/R",
            "--train", "s3://bucket/train.csv", "--s3-prefix", "s3://bucket/prefix", "--region", "us-east-1",
            "--image-uri", "image", "--dry-run"]
    environment = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    shown = subprocess.run(base, capture_output=True, text=True, timeout=60, env=environment)
    assert shown.returncode == 0, shown.stderr
    specification = json.loads(shown.stdout)["AlgorithmSpecification"]
    assert specification["ContainerEntrypoint"][:2] == ["python3", "-c"]
    assert specification["ContainerArguments"] == list(IMAGE_ENTRY)
    plain = subprocess.run([*base, "--no-forward-signals"], capture_output=True, text=True, timeout=60, env=environment)
    assert plain.returncode == 0, plain.stderr
    assert "ContainerEntrypoint" not in json.loads(plain.stdout)["AlgorithmSpecification"]
