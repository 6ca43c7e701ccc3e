"""DDP under real torchrun processes (gloo on CPU): world-size invariance, interruption and resume,
and a failing rank ending the job quickly with its error shown."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("ddp-data")
    write_dbpedia_csv(data / "train.csv", make_rows(45, seed=21))  # 45 / 8: a ragged last step of 5
    write_dbpedia_csv(data / "val.csv", make_rows(9, seed=22))
    (data / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return data


def _train_args(data: Path, model: Path, run_dir: Path, batch_size: int, accumulation: int, *extra: str) -> list[str]:
    return [
        "train", "--train", str(data / "train.csv"), "--val", str(data / "val.csv"),
        "--classes", str(data / "classes.txt"), "--model", str(model), "--output-dir", str(run_dir / "model"),
        "--epochs", "2", "--batch-size", str(batch_size), "--grad-accum-steps", str(accumulation),
        "--learning-rate", "3e-3", "--warmup-ratio", "0", "--log-every-steps", "1",
        # fp32: these compare summation orders across world sizes, which bf16 autocast rounding would swamp
        # (DDP under bf16 auto: tests/test_token_cache.py's torchrun test)
        "--precision", "fp32", *extra,
    ]


def _torchrun(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "bert_classify", *args]


def _environment(**variables: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BERT_CLASSIFY_")}
    environment.update(OMP_NUM_THREADS="1", BERT_CLASSIFY_TEST_FAULTS="1", **variables)  # test-only fault hooks on
    return environment


def _run(command: list[str], **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=_environment(**variables))


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def test_two_processes_equal_one_process_with_accumulation(
    ddp_data: Path, tiny_model_no_dropout_dir: Path, tmp_path: Path
) -> None:
    single = _run([sys.executable, "-m", "bert_classify",
                   *_train_args(ddp_data, tiny_model_no_dropout_dir, tmp_path / "single", 4, 2)])
    assert single.returncode == 0, single.stderr
    # --nproc 2 makes bert-classify launch torchrun itself
    double = _run([sys.executable, "-m", "bert_classify",
                   *_train_args(ddp_data, tiny_model_no_dropout_dir, tmp_path / "double", 4, 1), "--nproc", "2"])
    assert double.returncode == 0, double.stderr
    assert "world size 2, per-device batch 4, gradient accumulation 1, effective batch 8" in double.stdout
    assert double.stdout.count("world size 2") == 1  # rank 0 alone logs
    expected, actual = _weights(tmp_path / "single"), _weights(tmp_path / "double")
    initial = load_file(tiny_model_no_dropout_dir / "model.safetensors")
    name = "bert.encoder.layer.1.output.dense.weight"
    assert not torch.equal(expected[name], initial[name])
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_sigterm_to_a_two_process_run_then_resume_is_identical(
    ddp_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    reference = _run(_torchrun(2, _train_args(ddp_data, tiny_model_dir, tmp_path / "reference", 4, 1,
                                              "--checkpoint-dir", str(tmp_path / "reference-checkpoints"))))
    assert reference.returncode == 0, reference.stderr

    args = _train_args(ddp_data, tiny_model_dir, tmp_path / "interrupted", 4, 1,
                       "--checkpoint-dir", str(tmp_path / "checkpoints"))
    process = subprocess.Popen(
        _torchrun(2, args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_environment(BERT_CLASSIFY_MICRO_STEP_DELAY_S="0.1"),
    )
    assert process.stdout is not None
    output = []
    for line in process.stdout:
        output.append(line)
        if "step 2/" in line:
            process.send_signal(signal.SIGTERM)  # to torchrun, which passes it to both workers
            break
    output.extend(process.stdout)
    assert process.wait(timeout=120) != 0
    assert "checkpoint written (signal)" in "".join(output)

    resumed = _run(_torchrun(2, args))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoint at step" in resumed.stdout
    expected, actual = _weights(tmp_path / "reference"), _weights(tmp_path / "interrupted")
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_a_failing_rank_ends_the_job_quickly_with_its_error(
    ddp_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    completed = _run(
        _torchrun(2, _train_args(ddp_data, tiny_model_dir, tmp_path / "failing", 4, 1)),
        BERT_CLASSIFY_FAIL_AT_STEP="2", BERT_CLASSIFY_FAIL_RANK="1",
    )
    assert completed.returncode != 0
    assert "injected failure on rank 1 at step 2" in completed.stderr
    assert time.monotonic() - started < 120  # far below the 600 s collective timeout: no hang
    assert not (tmp_path / "failing" / "model").exists()


def test_resume_with_a_different_number_of_processes_and_the_same_effective_batch(
    ddp_data: Path, tiny_model_no_dropout_dir: Path, tmp_path: Path
) -> None:
    # written by 2 processes x accumulation 1, resumed by 1 process x accumulation 2 (dropout off:
    # dropout masks are drawn per rank, so only a dropout-free model can match across world sizes)
    reference = _run(_torchrun(2, _train_args(ddp_data, tiny_model_no_dropout_dir, tmp_path / "reference", 4, 1)))
    assert reference.returncode == 0, reference.stderr
    checkpoints = ["--checkpoint-dir", str(tmp_path / "checkpoints")]
    interrupted = _run(
        _torchrun(2, _train_args(ddp_data, tiny_model_no_dropout_dir, tmp_path / "resumed", 4, 1, *checkpoints)),
        BERT_CLASSIFY_SIGTERM_AT_STEP="4",
    )
    assert interrupted.returncode != 0 and "stopped by signal after step 4" in interrupted.stdout
    resumed = _run([sys.executable, "-m", "bert_classify",
                    *_train_args(ddp_data, tiny_model_no_dropout_dir, tmp_path / "resumed", 4, 2, *checkpoints)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoint at step 4" in resumed.stdout
    expected, actual = _weights(tmp_path / "reference"), _weights(tmp_path / "resumed")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
