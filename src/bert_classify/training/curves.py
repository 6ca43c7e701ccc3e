"""Training curves: the scalars a run logs (train loss, learning rate, validation metrics) by step,
kept as a JSON Lines history that survives a resume, mirrored to TensorBoard and drawn as a PNG.

The history is the source of truth. It lives in the checkpoint directory when there is one (SageMaker
syncs that directory, so it survives a spot restart), and every record is written at the moment it is
logged, before any checkpoint of that step. On start, records after the step training resumes from
are dropped (they belong to steps that will be trained again), so a resumed run's curve has no gap
and no duplicate step. TensorBoard event files are written without the `tensorboard` package (a
SageMaker job installs only our core dependencies): one file per run start, which on a resume first
replays the kept history (replacing our event files of the interrupted starts), preceded by a
"session start" record at step 1, so that readers which honour it (TensorBoard does) also drop what
copies of earlier files elsewhere (SageMaker's S3 TensorBoard output) logged.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from bert_classify.errors import ConfigError

HISTORY_FILE = "training_history.jsonl"
CURVES_PNG = "training_curves.png"
CURVES_JSON = "training_curves.json"
EVENT_FILE_SUFFIX = ".bert-classify"  # our event files; others in the directory are left alone

TRAIN_LOSS = "train/loss"
LEARNING_RATE = "train/learning_rate"
VALIDATION_PREFIX = "val/"


class TrainingCurves:
    """Scalars by step for one run (rank 0 only; other ranks get a disabled instance)."""

    def __init__(
        self,
        history_path: Path | None = None,
        tensorboard_dir: Path | None = None,
        start_step: int = 0,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.history_path = history_path if enabled else None
        self.records: list[dict[str, Any]] = []  # {"step": int, "scalars": {tag: value}}
        self.tensorboard: EventFileWriter | None = None
        if not enabled:
            return
        if history_path is not None:
            self.records = [record for record in read_history(history_path) if record["step"] <= start_step]
            # drop what a killed run logged past its checkpoint
            self._keep_history(lambda: _write_history(history_path, self.records))
        if tensorboard_dir is not None:
            # On a resume the kept history is replayed into a new file, so this run's earlier files go.
            try:
                self.tensorboard = EventFileWriter(tensorboard_dir, replace_ours=start_step > 0)
            except OSError as error:
                raise ConfigError(
                    f"--tensorboard-dir {tensorboard_dir}: cannot write event files there "
                    f"({error.strerror or error}); give a writable directory."
                ) from None
            if self.records:
                self.tensorboard.session_start(step=1)
                for record in self.records:
                    self.tensorboard.scalars(record["step"], record["scalars"], record.get("time"))

    def add(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record `scalars` at `step` (appended to the history file and the event file at once)."""
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time(), "scalars": {tag: float(v) for tag, v in scalars.items()}}
        self.records.append(record)
        if self.history_path is not None:
            self._keep_history(lambda: self._append(record))
        if self.tensorboard is not None:
            self.tensorboard.scalars(record["step"], record["scalars"], record["time"])

    def _append(self, record: dict[str, Any]) -> None:
        assert self.history_path is not None
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.history_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=True) + "\n")

    def _keep_history(self, write: Callable[[], None]) -> None:
        """Run a history write; if the disk refuses it (full, read-only), say so once and stop keeping history.

        The history only feeds the curves: losing points of it is not worth stopping training for, and
        the checkpoint writes that follow report a full disk themselves.
        """
        try:
            write()
        except OSError as error:
            print(
                f"warning: cannot write the training history {self.history_path} ({error.strerror or error}); "
                "training goes on, but the curves will miss points from here on",
                file=sys.stderr,
                flush=True,
            )
            self.history_path = None

    def series(self) -> dict[str, list[tuple[int, float]]]:
        """tag -> [(step, value), ...] in logging order."""
        return series(self.records)

    def write_outputs(self, directories: Iterable[Path]) -> None:
        """training_curves.png and training_curves.json (tag -> [[step, value], ...]) in each directory."""
        if not self.enabled:
            return
        by_tag = self.series()
        for directory in directories:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / CURVES_JSON).write_text(
                json.dumps({tag: [list(point) for point in points] for tag, points in by_tag.items()}, indent=1) + "\n",
                encoding="utf-8",
            )
            plot_curves(by_tag, directory / CURVES_PNG)


def read_history(path: Path) -> list[dict[str, Any]]:
    """The records of a history file; a torn last line (a kill mid-write) is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and isinstance(record.get("scalars"), dict):
            records.append(record)
    return records


def _write_history(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    os.replace(temporary, path)


def series(records: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    by_tag: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for tag, value in record["scalars"].items():
            by_tag.setdefault(tag, []).append((int(record["step"]), float(value)))
    return by_tag


def plot_curves(by_tag: Mapping[str, list[tuple[int, float]]], path: Path) -> None:
    """Train and validation loss on the left, validation accuracy/macro-F1 and the learning rate on the right."""
    import matplotlib

    matplotlib.use("Agg")  # no display in containers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for tag, label, style in ((TRAIN_LOSS, "train loss", "-"), ("val/loss", "validation loss", "o-")):
        if by_tag.get(tag):
            steps, values = zip(*by_tag[tag])
            loss_axis.plot(steps, values, style, label=label, markersize=4)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    loss_axis.set_title("loss")
    loss_axis.grid(alpha=0.3)
    if loss_axis.lines:
        loss_axis.legend()
    metric_tags = [tag for tag in by_tag if tag.startswith(VALIDATION_PREFIX) and tag != "val/loss"]
    for tag in metric_tags:
        steps, values = zip(*by_tag[tag])
        metric_axis.plot(steps, values, "o-", label=tag.replace(VALIDATION_PREFIX, "validation "), markersize=4)
    metric_axis.set_xlabel("step")
    metric_axis.set_ylabel("score")
    metric_axis.set_title("validation metrics")
    metric_axis.grid(alpha=0.3)
    if by_tag.get(LEARNING_RATE):
        rate_axis = metric_axis.twinx()
        steps, values = zip(*by_tag[LEARNING_RATE])
        rate_axis.plot(steps, values, ":", color="grey", label="learning rate")
        rate_axis.set_ylabel("learning rate")
        rate_axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        handles = metric_axis.get_legend_handles_labels()
        more = rate_axis.get_legend_handles_labels()
        metric_axis.legend(handles[0] + more[0], handles[1] + more[1], loc="best")
    elif metric_tags:
        metric_axis.legend(loc="best")
    for axis in (loss_axis, metric_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ------------------------------------------------------------------------ TensorBoard event files
class EventFileWriter:
    """Writes TensorBoard scalar summaries: TFRecord-framed `Event` protocol buffers, encoded by hand.

    Each write is flushed at once (a few records per logging step), so a killed run loses nothing
    it logged and there is nothing to close.
    """

    def __init__(self, directory: Path, replace_ours: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if replace_ours:
            for old in directory.glob(f"events.out.tfevents.*{EVENT_FILE_SUFFIX}"):
                old.unlink(missing_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}{EVENT_FILE_SUFFIX}"
        self.path = directory / name
        self._write(_event(now, 0, _bytes_field(3, b"brain.Event:2")))

    def scalars(self, step: int, values: Mapping[str, float], wall_time: float | None = None) -> None:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode("utf-8")) + _float_field(2, value))
            for tag, value in values.items()
        )
        self._write(_event(time.time() if wall_time is None else wall_time, step, _bytes_field(5, summary)))

    def session_start(self, step: int) -> None:
        """A SessionLog START: TensorBoard discards earlier-logged points at steps >= `step`."""
        self._write(_event(time.time(), step, _bytes_field(7, _varint_field(1, 1))))  # Event.session_log = START

    def _write(self, event: bytes) -> None:
        header = struct.pack("<Q", len(event))
        record = header + struct.pack("<I", _masked_crc(header)) + event + struct.pack("<I", _masked_crc(event))
        with open(self.path, "ab") as handle:
            handle.write(record)


def _event(wall_time: float, step: int, payload: bytes) -> bytes:
    return b"\x09" + struct.pack("<d", wall_time) + _varint_field(2, step) + payload


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _float_field(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
