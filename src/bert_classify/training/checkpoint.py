"""The checkpoint format, in one place: what a checkpoint holds and how it is written and found.

A checkpoint is a directory `step-NNNNNNNN/` of safe files (safetensors for weights, `torch.save`
state dicts read back with weights_only=True, JSON for metadata). It is written under a temporary
name, each file fsynced, a manifest with SHA-256 checksums written last, then renamed into place: a
reader never sees a half-written checkpoint, and one whose files do not match its manifest is skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

CHECKPOINT_PREFIX = "step-"
TEMPORARY_PREFIX = ".tmp-"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.safetensors"
BEST_MODEL_FILE = "best_model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINING_STATE_FILE = "training_state.pt"  # scheduler, gradient scaler, torch RNG states
STATE_FILE = "state.json"  # progress, best metric, early stopping, python/numpy RNG, fingerprint
FORMAT_VERSION = 1


@dataclass
class FoundCheckpoint:
    path: Path
    step: int
    skipped: list[str]  # human-readable reasons newer checkpoints were not used


@dataclass(frozen=True)
class Reuse:
    """A file to take unchanged from an earlier complete checkpoint (hard-linked, else copied).

    Best-model weights often stay the same across many checkpoints: linking them saves writing and
    storing the same bytes again. The entry (size, SHA-256) comes from the source's manifest. If the
    source cannot be reused (gone, or its manifest unreadable), `fallback()` gives the bytes to write.
    """

    source: Path
    fallback: Callable[[], bytes]


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def _fsync_directory(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors_bytes({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()})


def state_dict_to_bytes(state: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_checkpoint(directory: Path, step: int, files: dict[str, bytes | Reuse], keep: int) -> Path:
    """Atomically write `files` as checkpoint `step`, then prune to the newest `keep` complete ones.

    A `Reuse` value links (or, where links are impossible, copies) that file from an earlier
    checkpoint; its manifest entry is carried over, so verification still checks its bytes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    if final.exists() and verify_checkpoint(final) is None:
        return final  # this exact step is already safely on disk (a resume that stopped again at once)
    temporary = directory / f"{TEMPORARY_PREFIX}{checkpoint_name(step)}-{os.getpid()}-{time.time_ns()}"
    temporary.mkdir()
    manifest: dict[str, Any] = {"format_version": FORMAT_VERSION, "step": step, "files": {}}
    for name, payload in files.items():
        if isinstance(payload, Reuse):
            try:
                manifest["files"][name] = _reuse_file(payload.source, temporary / name)
                continue
            except (OSError, KeyError, ValueError):  # write the bytes instead: a checkpoint is never lost to this
                (temporary / name).unlink(missing_ok=True)
                payload = payload.fallback()
        with open(temporary / name, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        manifest["files"][name] = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    with open(temporary / MANIFEST_FILE, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_directory(temporary)
    if final.exists():  # an incomplete or corrupt leftover of the same step
        shutil.rmtree(final)
    os.replace(temporary, final)
    _fsync_directory(directory)
    prune_checkpoints(directory, keep)
    return final


def _reuse_file(source: Path, target: Path) -> dict[str, Any]:
    """Link `source` (a file of a complete checkpoint) to `target`; its manifest entry, from the source's manifest."""
    entry = json.loads((source.parent / MANIFEST_FILE).read_text(encoding="utf-8"))["files"][source.name]
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links: copy (still no re-serialising)
        shutil.copyfile(source, target)
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())
    if target.stat().st_size != entry["size"]:
        raise OSError(f"{source} changed size since its checkpoint was written")
    return dict(entry)


def verify_checkpoint(path: Path) -> str | None:
    """None when complete and intact, else the reason it cannot be used."""
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        return "no manifest (the write did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entries = manifest["files"]
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable manifest ({error})"
    for name, entry in entries.items():
        file_path = path / name
        if not file_path.is_file():
            return f"{name} is missing"
        if file_path.stat().st_size != entry["size"]:
            return f"{name} has {file_path.stat().st_size} bytes, the manifest says {entry['size']}"
        digest = hashlib.sha256()
        with open(file_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _listed_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    found = []
    if not directory.is_dir():
        return found
    for child in directory.iterdir():
        if child.is_dir() and child.name.startswith(CHECKPOINT_PREFIX):
            try:
                found.append((int(child.name[len(CHECKPOINT_PREFIX) :]), child))
            except ValueError:
                continue
    return sorted(found, reverse=True)


def find_latest_checkpoint(directory: Path, log: Callable[[str], None] | None = None) -> FoundCheckpoint | None:
    """The newest complete, intact checkpoint; newer broken ones are reported and skipped."""
    skipped: list[str] = []
    for step, path in _listed_checkpoints(directory):
        problem = verify_checkpoint(path)
        if problem is None:
            return FoundCheckpoint(path, step, skipped)
        message = f"checkpoint {path} is incomplete or corrupt ({problem}); falling back to an older one"
        skipped.append(message)
        if log:
            log(message)
    return None


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; remove older ones and stale temporaries."""
    complete = [(step, path) for step, path in _listed_checkpoints(directory) if (path / MANIFEST_FILE).is_file()]
    for _, path in complete[keep:]:
        shutil.rmtree(path, ignore_errors=True)
    newest = complete[0][0] if complete else None
    for child in directory.iterdir():
        if child.name.startswith(TEMPORARY_PREFIX) and child.is_dir():
            # a temporary of another live writer would be newer than the newest complete checkpoint
            try:
                step = int(child.name[len(TEMPORARY_PREFIX) + len(CHECKPOINT_PREFIX) :].split("-")[0])
            except ValueError:
                step = -1
            if newest is not None and step <= newest:
                shutil.rmtree(child, ignore_errors=True)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_safetensors_bytes(path.read_bytes())


def read_state_dict(path: Path, map_location: torch.device | str = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
