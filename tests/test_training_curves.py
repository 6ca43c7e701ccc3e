"""Training curves: training_curves.png/.json beside metrics.json, TensorBoard event files that
TensorBoard's own reader loads, and curves that continue across a real SIGTERM or SIGKILL and resume
with no gap and no duplicate step."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bert_classify.cli import main
from bert_classify.config import TrainConfig
from bert_classify.training.curves import (
    CURVES_JSON,
    CURVES_PNG,
    HISTORY_FILE,
    EventFileWriter,
    TrainingCurves,
    crc32c,
    read_history,
)
from bert_classify.training.loop import train
from conftest import CLASS_NAMES, make_rows, write_dbpedia_csv
from test_resume import _run_until  # start a run, signal it at a marker (test-only fault hooks on)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard's own reader loads the directory (purging included)."""
    accumulator_module = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="the tensorboard extra reads event files"
    )
    accumulator = accumulator_module.EventAccumulator(str(directory))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_crc32c_matches_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C (Castagnoli) check value


def test_event_files_load_in_tensorboard(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    writer.scalars(1, {"train/loss": 2.5, "train/learning_rate": 1e-4})
    writer.scalars(2, {"train/loss": 1.25})
    writer.scalars(2, {"val/accuracy": 0.75})
    assert writer.path.name.startswith("events.out.tfevents.")
    assert _scalars(tmp_path) == {
        "train/loss": [(1, 2.5), (2, 1.25)],
        "train/learning_rate": [(1, pytest.approx(1e-4))],
        "val/accuracy": [(2, 0.75)],
    }


def test_a_session_start_in_a_newer_file_drops_what_older_files_logged_from_that_step(tmp_path: Path) -> None:
    old = EventFileWriter(tmp_path)
    for step in range(1, 7):
        old.scalars(step, {"train/loss": float(step)})
    old.path.rename(tmp_path / old.path.name.replace(".tfevents.", ".tfevents.0", 1))  # sorts first, as older
    new = EventFileWriter(tmp_path)
    new.session_start(step=1)
    for step in range(1, 4):
        new.scalars(step, {"train/loss": 10.0 + step})
    assert _scalars(tmp_path)["train/loss"] == [(1, 11.0), (2, 12.0), (3, 13.0)]


def test_history_keeps_records_up_to_the_resumed_step_and_skips_a_torn_line(tmp_path: Path) -> None:
    history = tmp_path / HISTORY_FILE
    first = TrainingCurves(history_path=history)
    for step in range(1, 9):
        first.add(step, {"train/loss": 1.0 / step})
    with open(history, "a", encoding="utf-8") as handle:
        handle.write('{"step": 9, "scal')  # a kill mid-write
    resumed = TrainingCurves(history_path=history, start_step=5)
    assert [record["step"] for record in resumed.records] == [1, 2, 3, 4, 5]
    assert [record["step"] for record in read_history(history)] == [1, 2, 3, 4, 5]  # rewritten on disk
    resumed.add(6, {"train/loss": 0.5})
    assert resumed.series()["train/loss"][-2:] == [(5, 0.2), (6, 0.5)]
    assert TrainingCurves(history_path=history, enabled=False).records == []  # ranks other than 0


def _config(data: Path, model: Path, output: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = dict(
        train=str(data / "train.csv"), val=str(data / "val.csv"), classes=str(data / "classes.txt"),
        model=str(model), output_dir=str(output), epochs=1, max_steps=4, batch_size=8, learning_rate=1e-3,
        log_every_steps=1, eval_every_steps=2, checkpoint_every_minutes=None,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def test_training_writes_curves_beside_metrics_and_tensorboard_events(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, metrics_dir, board = tmp_path / "model", tmp_path / "metrics", tmp_path / "board"
    train(_config(tiny_data_dir, tiny_model_dir, output, metrics_dir=str(metrics_dir), tensorboard_dir=str(board)))
    assert f"TensorBoard event files in {board}" in capsys.readouterr().out
    for directory in (output, metrics_dir):
        assert (directory / "metrics.json").is_file()
        assert (directory / CURVES_PNG).read_bytes().startswith(PNG_MAGIC)
        curves = json.loads((directory / CURVES_JSON).read_text())
        assert [step for step, _ in curves["train/loss"]] == [1, 2, 3, 4]
        assert [step for step, _ in curves["val/macro_f1"]] == [2, 4]
    import matplotlib.image

    height, width = matplotlib.image.imread(output / CURVES_PNG).shape[:2]
    assert width > 800 and height > 300
    scalars = _scalars(board)
    assert set(scalars) == {"train/loss", "train/learning_rate", "val/loss", "val/accuracy", "val/macro_f1"}
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [value for _, value in scalars["val/accuracy"]] == pytest.approx([v for _, v in curves["val/accuracy"]])


def test_an_unwritable_tensorboard_dir_is_a_one_line_error(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    status = main([
        "train", "--train", str(tiny_data_dir / "train.csv"), "--val", str(tiny_data_dir / "val.csv"),
        "--classes", str(tiny_data_dir / "classes.txt"), "--model", str(tiny_model_dir),
        "--output-dir", str(tmp_path / "model"), "--max-steps", "1", "--tensorboard-dir", str(blocker / "board"),
    ])  # fmt: skip
    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --tensorboard-dir {blocker / 'board'}: cannot write event files there (")
    assert error.endswith("give a writable directory.\n") and "Traceback" not in error


# --------------------------------------------------------------------- resume (real subprocesses)
STEPS = 16  # 64 rows / batch 8, 2 epochs


@pytest.fixture(scope="module")
def curve_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("curve-data")
    write_dbpedia_csv(data / "train.csv", make_rows(64, seed=21))
    write_dbpedia_csv(data / "val.csv", make_rows(12, seed=22))
    (data / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return data


def _command(data: Path, model: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "bert_classify", "train",
        "--train", str(data / "train.csv"), "--val", str(data / "val.csv"), "--classes", str(data / "classes.txt"),
        "--model", str(model), "--output-dir", str(run_dir / "model"), "--checkpoint-dir", str(run_dir / "checkpoints"),
        "--tensorboard-dir", str(run_dir / "board"), "--epochs", "2", "--batch-size", "8", "--learning-rate", "2e-3",
        "--checkpoint-every-steps", "4", "--log-every-steps", "1", "--eval-every-steps", "3",
    ]  # fmt: skip


def _environment(**variables: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BERT_CLASSIFY_")}
    environment.update(variables)
    return environment


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=_environment())


@pytest.fixture(scope="module")
def reference_curves(curve_data: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference-curves")
    completed = _run(_command(curve_data, tiny_model_dir, run_dir))
    assert completed.returncode == 0, completed.stderr
    return run_dir


def _check_same_curves(run_dir: Path, reference: Path) -> None:
    expected = json.loads((reference / "model" / CURVES_JSON).read_text())
    actual = json.loads((run_dir / "model" / CURVES_JSON).read_text())
    assert [step for step, _ in actual["train/loss"]] == list(range(1, STEPS + 1))  # no gap, no duplicate
    assert [step for step, _ in actual["val/loss"]] == [3, 6, 8, 9, 12, 15, 16]  # every 3 steps and epoch ends
    assert actual == expected  # the resumed run's values are the uninterrupted run's, bit for bit
    assert (run_dir / "model" / CURVES_PNG).read_bytes().startswith(PNG_MAGIC)
    board = _scalars(run_dir / "board")
    assert board.keys() == expected.keys()
    for tag, points in expected.items():
        assert [step for step, _ in board[tag]] == [step for step, _ in points], tag
        assert [value for _, value in board[tag]] == pytest.approx([value for _, value in points], rel=1e-6), tag


@pytest.mark.slow
def test_sigterm_then_resume_continues_the_same_curves(
    curve_data: Path, tiny_model_dir: Path, tmp_path: Path, reference_curves: Path
) -> None:
    command = _command(curve_data, tiny_model_dir, tmp_path)
    status, output = _run_until(command, "step 6/", signal.SIGTERM, BERT_CLASSIFY_MICRO_STEP_DELAY_S="0.05")
    assert status == 128 + signal.SIGTERM, output
    stopped = int(output.split("stopped by signal after step ")[1].split(";")[0])
    assert [record["step"] for record in read_history(tmp_path / "checkpoints" / HISTORY_FILE)][-1] == stopped
    completed = _run(command)
    assert completed.returncode == 0, completed.stderr
    assert f"resumed from checkpoint at step {stopped}" in completed.stdout
    _check_same_curves(tmp_path, reference_curves)


@pytest.mark.slow
def test_sigkill_past_a_checkpoint_drops_the_repeated_steps_from_the_curves(
    curve_data: Path, tiny_model_dir: Path, tmp_path: Path, reference_curves: Path
) -> None:
    command = _command(curve_data, tiny_model_dir, tmp_path)
    status, _ = _run_until(command, "step 7/", signal.SIGKILL, BERT_CLASSIFY_MICRO_STEP_DELAY_S="0.05")
    assert status == -signal.SIGKILL
    logged = [record["step"] for record in read_history(tmp_path / "checkpoints" / HISTORY_FILE)]
    assert logged[-1] >= 6  # logged past the checkpoint at step 4: these steps will be trained again
    uploaded = tmp_path / "uploaded-board"  # what SageMaker would have copied to S3 before the kill
    shutil.copytree(tmp_path / "board", uploaded)
    completed = _run(command)
    assert completed.returncode == 0, completed.stderr
    assert "resumed from checkpoint at step 4" in completed.stdout
    _check_same_curves(tmp_path, reference_curves)
    assert len(list((tmp_path / "board").iterdir())) == 1  # the killed start's file was replaced
    # Old copies beside the new file: the new file's session start makes TensorBoard drop theirs.
    for event_file in (tmp_path / "board").iterdir():
        shutil.copy(event_file, uploaded / event_file.name)
    assert [step for step, _ in _scalars(uploaded)["train/loss"]] == list(range(1, STEPS + 1))
