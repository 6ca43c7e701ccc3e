"""Shared helpers for benchmark scripts: describe the machine and write results/NAME.json.

Every result records the machine, library versions and the exact command that produced it.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
# Taken when the script imports this module, i.e. when it starts (machine_info runs at the end).
LOAD_AVERAGE_AT_START = list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # a benchmark may run without an optional library
        return None


def _native_bf16() -> bool | None:
    try:
        from bert_classify.precision import native_bf16

        return native_bf16("cpu")
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, load average, Python and library versions."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": LOAD_AVERAGE_AT_START,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "native_bf16": _native_bf16(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "accelerate": _version("accelerate"),
    }


def command_line() -> str:
    """The command that ran this script, as one could paste it again from the repository root."""
    return " ".join(shlex.quote(part) for part in ["python", *sys.argv])


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write benchmarks/results/NAME.json with the machine, the command and the time added."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "command": command_line(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        **payload,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def read_rows(path: Path, count: int | None = None, skip: int = 0) -> list[tuple[int, str]]:
    """(1-based label, text) rows of a headerless `label,text` CSV (the shared DBpedia files), rows skip..skip+count."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        rows = [(int(label), text) for label, text in csv.reader(handle)]
    rows = rows[skip:]
    return rows if count is None else rows[:count]


def write_rows(path: Path, rows: list[tuple[int, str]]) -> Path:
    """Write (label, text) rows as the shared files are written: headerless, every field quoted."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)
    return path
