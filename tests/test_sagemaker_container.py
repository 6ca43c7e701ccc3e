"""Spot interruptions inside the real SageMaker training stack: the dry-run request run by the real
`sagemaker-training` and `sagemaker-pytorch-training` toolkits, its entrypoint as PID 1 of a PID namespace,
stopped as SageMaker stops a container (SIGTERM to PID 1), then a second container resuming from the
checkpoints carried over."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CLASS_NAMES, make_rows, write_dbpedia_csv
from sagemaker_container import Container, unavailable_reason

pytestmark = [pytest.mark.slow, pytest.mark.toolkit]

_REASON = unavailable_reason()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=f"real-toolkit container tests: {_REASON}"))

HYPERPARAMETERS = {
    "epochs": 2, "batch-size": 4, "learning-rate": "2e-3", "warmup-ratio": 0,
    "checkpoint-every-steps": 1000, "log-every-steps": 1,
}
SIGNAL_CHECKPOINT = re.compile(r"checkpoint written \(signal\) at step (\d+)")
RESUMED = re.compile(r"resumed from checkpoint at step (\d+)")
# Slows each micro-step so that the signal lands mid-training (test-only fault hook).
SLOW = {"BERT_CLASSIFY_TEST_FAULTS": "1", "BERT_CLASSIFY_MICRO_STEP_DELAY_S": "0.05"}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, tiny_model_no_dropout_dir: Path) -> dict:
    from bert_classify.sagemaker.source import build_sourcedir

    root = tmp_path_factory.mktemp("container-job")
    data = root / "data"
    data.mkdir()
    write_dbpedia_csv(data / "train.csv", make_rows(240, seed=31))
    write_dbpedia_csv(data / "val.csv", make_rows(12, seed=32))
    (data / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    channels = {
        "train": data / "train.csv", "val": data / "val.csv", "classes": data / "classes.txt",
        "model": tiny_model_no_dropout_dir,
    }
    return {"channels": channels, "source": build_sourcedir(root / "sourcedir.tar.gz"), "data": data}


def _request(job: dict, **options: object) -> dict:
    from bert_classify.sagemaker.launch import TrainingJobOptions, build_training_request

    channels = job["channels"]
    values = dict(
        role="arn:aws:iam::123456789012:role/SageMakerRole", train=str(channels["train"]), val=str(channels["val"]),
        classes=str(channels["classes"]), model=str(channels["model"]), s3_prefix="s3://bucket/prefix",
        image_uri="pytorch-training-image", instance_type="ml.m5.xlarge", hyperparameters=dict(HYPERPARAMETERS),
    )
    values.update(options)
    return build_training_request(TrainingJobOptions(**values), region="us-east-1").request


def _container(tmp_path: Path, name: str, job: dict, request: dict, **kwargs: object) -> Container:
    return Container(tmp_path / name, request, source_archive=job["source"], channels=job["channels"], **kwargs)


def _interrupt(container: Container) -> tuple[int, int, float]:
    """Start, let it train a few steps, SIGTERM PID 1; (signal-checkpoint step, exit status, seconds to checkpoint)."""
    container.start()
    try:
        container.wait_for(r"metric: train_loss=\S+ step=3 ", timeout=240)
        signalled_at = container.signal_pid1(signal.SIGTERM)
        written_at, match = container.wait_for(SIGNAL_CHECKPOINT.pattern, timeout=90)
        status = container.wait(timeout=90)
    finally:
        container.close()
    assert "pid1: received SIGTERM" in container.log()
    return int(match.group(1)), status, written_at - signalled_at


def _resume(tmp_path: Path, job: dict, request: dict, previous: Container, **kwargs: object) -> Container:
    resumed = _container(tmp_path, "second", job, request, checkpoints_from=previous.checkpoints, **kwargs)
    resumed.start()
    try:
        status = resumed.wait(timeout=300)
    finally:
        resumed.close()
    assert status == 0, resumed.log()[-4000:]
    return resumed


def _uninterrupted_weights(job: dict, tmp_path: Path) -> dict[str, torch.Tensor]:
    channels = job["channels"]
    command = [sys.executable, "-m", "bert_classify", "train", "--train", str(channels["train"]),
               "--val", str(channels["val"]), "--classes", str(channels["classes"]), "--model", str(channels["model"]),
               "--output-dir", str(tmp_path / "uninterrupted")]
    for key, value in HYPERPARAMETERS.items():
        command += [f"--{key}", str(value)]
    # The container runs one thread per process (OMP_NUM_THREADS=1); so must the reference, for equal sums.
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment = {key: value for key, value in environment.items() if not key.startswith("BERT_CLASSIFY_")}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return load_file(tmp_path / "uninterrupted" / "model.safetensors")


def test_sigterm_to_pid1_checkpoints_and_a_new_container_resumes_exactly(job: dict, tmp_path: Path) -> None:
    request = _request(job)
    first = _container(tmp_path, "first", job, request, environment=SLOW)
    step, status, seconds = _interrupt(first)
    assert step >= 3 and seconds < 30, (step, seconds)
    assert status != 0  # the toolkit reports the interrupted script as a failure; SageMaker restarts the job
    resumed = _resume(tmp_path, job, request, first)
    assert RESUMED.search(resumed.log()).group(1) == str(step)
    assert (resumed.model_dir / "code" / "inference.py").is_file()  # deployable as written
    weights = load_file(resumed.model_dir / "model.safetensors")
    expected = _uninterrupted_weights(job, tmp_path)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in expected)


def test_without_the_forwarder_sigterm_to_pid1_is_lost(job: dict, tmp_path: Path) -> None:
    """What the image does on its own (the reason the forwarder exists): PID 1 bash ignores SIGTERM."""
    request = _request(job, forward_signals=False)
    assert "ContainerEntrypoint" not in request["AlgorithmSpecification"]
    container = _container(tmp_path, "plain", job, request, environment={**SLOW, "BERT_CLASSIFY_MICRO_STEP_DELAY_S": "0.2"})
    container.start()
    try:
        container.wait_for(r"metric: train_loss=\S+ step=3 ", timeout=240)
        status = container.stop(grace_seconds=5)  # then SIGKILL, as SageMaker does after its grace period
    finally:
        container.close()
    log = container.log()
    # Killed while still training (unshare reports its PID 1's SIGKILL as -9, or as 1 where it cannot re-raise it).
    assert status != 0 and "saved model to" not in log, (status, log[-3000:])
    assert not SIGNAL_CHECKPOINT.search(log) and "received SIGTERM" not in log


def test_sigterm_under_the_toolkits_torchrun(job: dict, tmp_path: Path) -> None:
    """sagemaker_torch_distributed_enabled: the toolkit starts torchrun (2 processes, gloo) itself."""
    request = _request(job, distribution="torchrun")
    assert request["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
    two_processes = {"sagemaker_mpi_num_of_processes_per_host": "2"}
    first = _container(tmp_path, "first", job, request, extra_hyperparameters=two_processes, environment=SLOW)
    step, _, seconds = _interrupt(first)
    log = first.log()
    assert "torchrun" in log and "--nproc_per_node 2" in log, log[-3000:]
    assert seconds < 30, seconds
    resumed = _resume(tmp_path, job, request, first, extra_hyperparameters=two_processes)
    assert RESUMED.search(resumed.log()).group(1) == str(step)


def test_sigterm_under_our_own_per_gpu_torchrun(job: dict, tmp_path: Path) -> None:
    """One instance, several GPUs, no toolkit distribution: `train` launches torchrun itself (one process per
    GPU). Two GPUs are reported by a stand-in nvidia-smi; the processes then run on CPU with gloo."""
    request = _request(job)
    first = _container(tmp_path, "first", job, request, environment=SLOW)
    fake = first.root / "image-bin" / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: stand-in'\necho 'GPU 1: stand-in'\n")
    fake.chmod(0o755)
    step, _, seconds = _interrupt(first)
    log = first.log()
    assert "launching:" in log and "--nproc_per_node=2" in log, log[-3000:]
    assert seconds < 30, seconds
