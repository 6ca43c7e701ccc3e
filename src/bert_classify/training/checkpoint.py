"""Checkpoints in one place: what a checkpoint holds (named keys), how it is captured, written in the
background, found, verified, loaded and pruned. The training loop only calls `Checkpointer`.

A checkpoint is a directory `step-NNNNNNNN/` of safe files (safetensors for weights, `torch.save`
state dicts read back with weights_only=True, JSON for metadata). It is written under a temporary
name, each file fsynced, a manifest with SHA-256 checksums written last, then renamed into place: a
reader never sees a half-written checkpoint. One whose files do not match its manifest (or that cannot
be read at all) is moved aside into `corrupt/`, reported in one line, and the newest verified one is
used; pruning never removes the checkpoint just written, which is the newest verified one.

Only one trainer may use a checkpoint directory at a time: `.lock` is held with `flock` for the run
(the kernel drops it when the process dies, so a SIGKILLed run never blocks its restart).
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import os
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors_file

from bert_classify.errors import CheckpointError, TrainingError

# ------------------------------------------------------------------------------------- the format
CHECKPOINT_PREFIX = "step-"
TEMPORARY_PREFIX = ".tmp-"
CORRUPT_DIRECTORY = "corrupt"  # damaged checkpoints are moved here, never deleted
LOCK_FILE = ".lock"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.safetensors"
BEST_MODEL_FILE = "best_model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINING_STATE_FILE = "training_state.pt"  # scheduler, gradient scaler, torch RNG states
STATE_FILE = "state.json"  # progress, best metric, early stopping, python/numpy RNG, fingerprint
FORMAT_VERSION = 1

# keys of training_state.pt
SCHEDULER_KEY = "scheduler"
SCALER_KEY = "scaler"
TORCH_RNG_KEY = "torch_rng"
CUDA_RNG_KEY = "cuda_rng"
# keys of state.json
PROGRESS_KEY = "progress"
FINGERPRINT_KEY = "fingerprint"
CONFIG_KEY = "config"
WORLD_SIZE_KEY = "world_size"
REASON_KEY = "reason"
RNG_KEY = "rng"
PYTHON_RNG_KEY = "python"
NUMPY_RNG_KEY = "numpy"

# Fingerprint fields that change tensor shapes or the meaning of saved state: never resumable across.
UNSAFE_TO_FORCE = ("model", "class_names", "freeze_encoder")
# Fields whose change alters the trajectory; a resume across them needs --force-resume.
FINGERPRINT_FIELDS = (
    "learning_rate",
    "weight_decay",
    "warmup_ratio",
    "max_grad_norm",
    "epochs",
    "max_steps",
    "effective_batch_size",
    "seed",
    "max_seq_len",
    "precision",
    "group_by_length",
    "best_metric",
    "early_stopping_patience",
    "eval_every_steps",
    "val_fraction",
)

# Benchmarks set this False to measure the synchronous write (capture, then write on the training path).
WRITE_IN_BACKGROUND = True
# A background write holds a staging copy of the model and optimizer state; it is made only while the
# memory left (MemAvailable, and the cgroup's limit inside a container) is at least this many copies.
STAGING_HEADROOM = 2.0


def memory_headroom() -> int | None:
    """Bytes this process may still allocate: /proc/meminfo MemAvailable, lowered to the cgroup v2 limit's
    remainder in a container. None where neither can be read (not Linux)."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text(encoding="ascii").strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text(encoding="ascii").strip())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


@dataclass
class FoundCheckpoint:
    path: Path
    step: int


@dataclass(frozen=True)
class Reuse:
    """A file to take unchanged from an earlier complete checkpoint (hard-linked, else copied).

    Best-model weights often stay the same across many checkpoints: linking them saves writing and
    storing the same bytes again. The entry (size, SHA-256) comes from the source's manifest. If the
    source cannot be reused (gone, or its manifest unreadable), `fallback()` gives the bytes to write.
    """

    source: Path
    fallback: Callable[[], bytes | Streamed]


@dataclass(frozen=True)
class Streamed:
    """A file written by `write(handle)` straight to disk, hashed as it goes: no copy of it in memory.

    Serialising a checkpoint into `bytes` first held one more copy of the model and optimizer state for the
    duration of the write; streamed, a write adds one tensor's worth at most.
    """

    write: Callable[[IO[bytes]], None]


class _HashingWriter:
    """A write-only file object that passes bytes on and keeps their SHA-256 and count."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.handle.write(view)
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self.handle.flush()


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


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def write_safetensors(tensors: dict[str, torch.Tensor], handle: IO[bytes]) -> None:
    """Write `tensors` in the safetensors format to `handle`, one tensor at a time (no whole-file buffer).

    The header lists the tensors in the given order with contiguous offsets, padded with spaces to a
    multiple of 8 bytes, as the format specifies; `safetensors.torch.load_file` reads the result.
    """
    header: dict[str, Any] = {}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"{name}: dtype {tensor.dtype} has no safetensors name")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    handle.write(len(encoded).to_bytes(8, "little"))
    handle.write(encoded)
    for tensor in tensors.values():
        if tensor.numel():
            flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # a view unless copied to CPU
            handle.write(memoryview(flat.numpy()))


def state_dict_to_bytes(state: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def streamed_tensors(tensors: dict[str, torch.Tensor]) -> Streamed:
    return Streamed(lambda handle: write_safetensors(tensors, handle))


def streamed_state_dict(state: Any) -> Streamed:
    return Streamed(lambda handle: torch.save(state, handle))


def write_checkpoint(
    directory: Path,
    step: int,
    files: dict[str, bytes | Streamed | Reuse],
    keep: int,
    *,
    after_file: Callable[[], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Atomically write `files` as checkpoint `step`, then prune to the newest `keep` (this one included).

    A `Reuse` value links (or, where links are impossible, copies) that file from an earlier
    checkpoint; its manifest entry is carried over, so verification still checks its bytes. A
    `Streamed` value is written (and hashed) as it is serialised, never held in memory whole. On any
    error (a full disk) the temporary directory is removed and the error raised: earlier checkpoints
    are untouched. `after_file` is a test hook run after each file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    if final.exists() and verify_checkpoint(final) is None:
        return final  # this exact step is already safely on disk (a resume that stopped again at once)
    temporary = directory / f"{TEMPORARY_PREFIX}{checkpoint_name(step)}-{os.getpid()}-{time.time_ns()}"
    try:
        temporary.mkdir()
        manifest: dict[str, Any] = {"format_version": FORMAT_VERSION, "step": step, "files": {}}
        for name, payload in files.items():
            if isinstance(payload, Reuse):
                try:
                    manifest["files"][name] = _reuse_file(payload.source, temporary / name)
                    continue
                except (OSError, KeyError, ValueError, TypeError):  # write the bytes instead: never lost to this
                    (temporary / name).unlink(missing_ok=True)
                    payload = payload.fallback()
            with open(temporary / name, "wb") as handle:
                writer = _HashingWriter(handle)
                if isinstance(payload, Streamed):
                    payload.write(writer)  # type: ignore[arg-type]
                else:
                    writer.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            manifest["files"][name] = {"size": writer.size, "sha256": writer.digest.hexdigest()}
            if after_file is not None:
                after_file()
        with open(temporary / MANIFEST_FILE, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_directory(temporary)
        if final.exists():  # an incomplete or corrupt leftover of the same step: kept aside, not deleted
            problem = verify_checkpoint(final) or "replaced"
            moved = move_aside(directory, final)
            if log:
                log(_moved_message(final, problem, moved))
            if moved is None:
                shutil.rmtree(final)
        os.replace(temporary, final)
        _fsync_directory(directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    prune_checkpoints(directory, keep, newest_step=step)
    return final


def _reuse_file(source: Path, target: Path) -> dict[str, Any]:
    """Link `source` (a file of a complete checkpoint) to `target`; its manifest entry, from the source's manifest."""
    entry = json.loads((source.parent / MANIFEST_FILE).read_text(encoding="utf-8"))["files"][source.name]
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise
        shutil.copyfile(source, target)  # a file system without hard links: copy (still no re-serialising)
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())
    if target.stat().st_size != entry["size"]:
        raise OSError(f"{source} changed size since its checkpoint was written")
    return {"size": int(entry["size"]), "sha256": str(entry["sha256"])}


def verify_checkpoint(path: Path) -> str | None:
    """None when complete and intact, else the reason it cannot be used (never raises)."""
    try:
        return _verify(path)
    except OSError as error:
        return f"unreadable ({error.strerror or error})"


def _verify(path: Path) -> str | None:
    manifest_path = path / MANIFEST_FILE
    os.listdir(path)  # an unreadable directory raises here, not as a misleading "no manifest"
    if not manifest_path.is_file():
        return "no manifest (the write did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        return f"unreadable manifest ({error})"
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, dict) or not entries:
        return f"unreadable manifest (its 'files' is {type(entries).__name__}, not a mapping of file entries)"
    for name, entry in entries.items():
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            return f"unreadable manifest (bad file name {name!r})"
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)):
            return f"unreadable manifest (the entry of {name} has no integer size and sha256)"
        file_path = path / name
        if not file_path.is_file():
            return f"{name} is missing"
        size = file_path.stat().st_size
        if size != entry["size"]:
            return f"{name} has {size} bytes, the manifest says {entry['size']}"
        digest = hashlib.sha256()
        with open(file_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _listed_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    found: list[tuple[int, Path]] = []
    try:
        children = list(directory.iterdir())
    except OSError:
        return found
    for child in children:
        if child.name.startswith(CHECKPOINT_PREFIX) and child.is_dir():
            try:
                found.append((int(child.name[len(CHECKPOINT_PREFIX) :]), child))
            except ValueError:
                continue
    return sorted(found, reverse=True)


def move_aside(directory: Path, path: Path) -> Path | None:
    """Move a damaged checkpoint into `directory/corrupt/` with a UTC time suffix; None if it cannot be moved."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = directory / CORRUPT_DIRECTORY / f"{path.name}-{stamp}"
    try:
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            target = target.with_name(f"{target.name}-{time.time_ns()}")
        os.replace(path, target)
    except OSError:
        return None
    _fsync_directory(directory)
    return target


def _moved_message(path: Path, problem: str, moved: Path | None) -> str:
    where = f"moved it to {moved}" if moved is not None else "it could not be moved aside and is skipped"
    return f"checkpoint {path} is incomplete or corrupt ({problem}); {where}"


def find_latest_checkpoint(
    directory: Path, log: Callable[[str], None] | None = None, *, move_damaged: bool = False
) -> FoundCheckpoint | None:
    """The newest complete, intact checkpoint. Newer damaged ones are reported (one line each) and,
    with `move_damaged` (the lock holder), moved aside into `corrupt/`."""
    for step, path in _listed_checkpoints(directory):
        problem = verify_checkpoint(path)
        if problem is None:
            return FoundCheckpoint(path, step)
        moved = move_aside(directory, path) if move_damaged else None
        message = _moved_message(path, problem, moved) if move_damaged else (
            f"checkpoint {path} is incomplete or corrupt ({problem}); skipped"
        )
        if log:
            log(message + "; falling back to an older one")
    return None


def prune_checkpoints(directory: Path, keep: int, newest_step: int) -> None:
    """Keep checkpoint `newest_step` (just written) and the `keep - 1` newest complete ones before it.

    Nothing newer than `newest_step` is touched, and the one just written is never removed, so a
    damaged checkpoint with a higher step can never push out the newest verified one.
    """
    older = [path for step, path in _listed_checkpoints(directory) if step < newest_step and _has_manifest(path)]
    for path in older[max(0, keep - 1) :]:
        shutil.rmtree(path, ignore_errors=True)
    remove_stale_temporaries(directory, up_to_step=newest_step)


def _has_manifest(path: Path) -> bool:
    try:
        return (path / MANIFEST_FILE).is_file()
    except OSError:  # an unreadable directory: not counted, not removed (the next start moves it aside)
        return False


def remove_stale_temporaries(directory: Path, up_to_step: int | None = None) -> None:
    """Remove `.tmp-*` leftovers of killed writes (all of them, or those up to a step)."""
    try:
        children = list(directory.iterdir())
    except OSError:
        return
    for child in children:
        if child.name.startswith(TEMPORARY_PREFIX) and child.is_dir():
            try:
                step = int(child.name[len(TEMPORARY_PREFIX) + len(CHECKPOINT_PREFIX) :].split("-")[0])
            except ValueError:
                step = -1
            if up_to_step is None or step <= up_to_step:
                shutil.rmtree(child, ignore_errors=True)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_safetensors_file(path)  # read through a mapping: no whole-file bytes object first


def read_state_dict(path: Path, map_location: torch.device | str = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------ the lock
class DirectoryLock:
    """An exclusive `flock` on `directory/.lock`, held open for the run; released by the kernel on death."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        self._handle: Any = None

    def acquire(self, log: Callable[[str], None] | None = None) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="utf-8")
        except OSError as error:
            raise CheckpointError(
                f"--checkpoint-dir {self.directory}: cannot create it or its lock file ({error.strerror or error}); "
                "give a writable directory."
            ) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise CheckpointError(
                f"another training run is using the checkpoint directory {self.directory} (lock {self.path} held by "
                f"{holder}); wait for it to finish or stop it, or give this run a different --checkpoint-dir."
            ) from None
        except OSError as error:  # a file system without locks: go on, but say so
            if log:
                log(f"warning: cannot lock {self.path} ({error.strerror or error}); make sure no other run uses it")
        try:  # who holds it, for the message another run shows (best effort: the disk may be full)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
            handle.flush()
        except OSError:
            pass
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None


# ------------------------------------------------------------------------------------ RNG states
def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    return value


def capture_rng() -> tuple[dict[str, Any], dict[str, Any]]:
    """(Python and NumPy RNG states for state.json, torch CPU and CUDA RNG states for training_state.pt)."""
    numpy_state = np.random.get_state()
    json_states = {
        PYTHON_RNG_KEY: _jsonable(random.getstate()),
        NUMPY_RNG_KEY: [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }
    tensor_states = {
        TORCH_RNG_KEY: torch.get_rng_state(),
        CUDA_RNG_KEY: torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return json_states, tensor_states


def restore_rng(json_states: dict[str, Any], tensor_states: dict[str, Any]) -> None:
    python_state = json_states[PYTHON_RNG_KEY]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = json_states[NUMPY_RNG_KEY]
    np.random.set_state((numpy_state[0], np.asarray(numpy_state[1], dtype=np.uint32), *numpy_state[2:]))
    torch.set_rng_state(tensor_states[TORCH_RNG_KEY])
    if torch.cuda.is_available() and tensor_states.get(CUDA_RNG_KEY):
        torch.cuda.set_rng_state_all(tensor_states[CUDA_RNG_KEY])


# ------------------------------------------------------------------------------------ fingerprints
def make_fingerprint(config: Any, **resolved: Any) -> dict[str, Any]:
    """What must match for a resume: FINGERPRINT_FIELDS of `config`, overridden by the resolved values
    (learning_rate, effective_batch_size, class_names, train_data and val_data digests from
    data.token_cache.data_digest, ...)."""
    values = {name: getattr(config, name) for name in FINGERPRINT_FIELDS if hasattr(config, name)}
    values["model"] = config.model
    values["freeze_encoder"] = config.freeze_encoder
    values.update(resolved)
    return values


def compare_fingerprints(
    saved: dict[str, Any], current: dict[str, Any], path: Path, force: bool, log: Callable[[str], None]
) -> None:
    """Refuse (CheckpointError) a resume across a changed fingerprint, unless `force` and the change is safe."""
    differences = []
    for name in sorted(set(saved) | set(current)):
        before, now = saved.get(name), current.get(name)
        if before != now:
            if name.endswith("_data"):
                label = f"{name.replace('_', ' ')} contents (sha256 {str(before)[:12]}… → {str(now)[:12]}…)"
            else:
                label = f"{name} {before!r} → {now!r}"
            differences.append((name, label))
    if not differences:
        return
    listed = "; ".join(label for _, label in differences)
    unsafe = [name for name, _ in differences if name in UNSAFE_TO_FORCE]
    if unsafe:
        raise CheckpointError(
            f"the checkpoint {path} was written for a different {', '.join(unsafe)} ({listed}); it cannot be "
            "resumed with these options. Use the original options, or point --checkpoint-dir at an empty "
            "directory to start a new run."
        )
    if not force:
        raise CheckpointError(
            f"the checkpoint {path} was written with a different configuration or data: {listed}. Re-run with "
            "the original options, point --checkpoint-dir at an empty directory to start fresh, or pass "
            "--force-resume to continue from it with the new settings."
        )
    log(f"warning: --force-resume: continuing from {path} despite: {listed}")


# ------------------------------------------------------------------------------------ the client
@dataclass
class Restored:
    """What a resume gives back to the loop beyond the tensors loaded in place."""

    step: int
    path: Path
    progress: dict[str, Any]
    best_state: dict[str, torch.Tensor] | None


@dataclass
class _Snapshot:
    """One checkpoint's contents, copied off the training path: CPU tensors and plain values only."""

    step: int
    reason: str
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    training_state: dict[str, Any]
    metadata: dict[str, Any]
    best_state: dict[str, torch.Tensor] | None
    best_step: int | None
    best_source: Path | None


@dataclass
class WriteRecord:
    """A finished write, as logged in the `checkpoint: {json}` line."""

    step: int
    reason: str
    path: str
    stall_seconds: float  # the training step was blocked this long (waiting for a previous write + the copy)
    write_seconds: float  # serialising, hashing, writing and fsyncing (in the background when asynchronous)
    bytes_written: int


class Checkpointer:
    """Owns a run's checkpoints: the lock, finding and loading the newest verified one, capturing the
    state at a step boundary and writing it in a background thread, and pruning.

    Asynchronous writes: `save()` waits for the previous write (at most one in flight; with the
    default intervals it has long finished), copies the state into reusable CPU buffers (pinned on
    CUDA), and hands the copy to a writer thread; the training step is blocked only for the copy.
    `save(wait=True)` (signal, final) also joins the write, then all ranks meet at a barrier. A write
    that failed (a full disk) raises CheckpointError at the next `save()`/`poll()`/`wait()`; the
    previous checkpoint is intact. Only rank 0 locks, moves aside, writes and prunes.

    Keys written: model.safetensors (MODEL_FILE), best_model.safetensors, optimizer.pt,
    training_state.pt {scheduler, scaler, torch_rng, cuda_rng}, state.json {progress, fingerprint,
    config, world_size, reason, rng {python, numpy}}, manifest.json.
    """

    def __init__(
        self,
        directory: Path | None,
        *,
        keep: int,
        fingerprint: dict[str, Any],
        config_values: dict[str, Any],
        force_resume: bool,
        context: Any,
        log: Callable[[str], None],
        after_file: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        self.keep = keep
        self.fingerprint = fingerprint
        self.config_values = config_values
        self.force_resume = force_resume
        self.context = context
        self.log = log
        self.after_file = after_file
        self.last_step: int | None = None  # the newest step written (or resumed from)
        self.last_time = time.monotonic()
        self.records: list[WriteRecord] = []
        self._lock = DirectoryLock(directory) if directory is not None else None
        self._staging: dict[str, torch.Tensor] = {}
        self._copy_cpu_tensors = True  # set per capture: False for a blocking save
        self._warned_memory = False
        self._thread: threading.Thread | None = None
        self._pending: tuple[_Snapshot, float, bool] | None = None  # snapshot, save() start, blocking
        self._error: BaseException | None = None
        self._stall = 0.0
        self._finished: tuple[Path, float, int] | None = None
        self._best_file: tuple[int, Path] | None = None  # (best_step, file) of the newest written best weights

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    # -------------------------------------------------------------------------------- start, end
    def open(self) -> None:
        """Rank 0 takes the directory's lock and removes leftovers of killed writes."""
        if self.directory is None or not self.context.is_main:
            return
        assert self._lock is not None
        self._lock.acquire(self.log)
        remove_stale_temporaries(self.directory)  # with the lock held, no other writer is alive

    def close(self) -> None:
        """Finish any write in flight (errors are logged, not raised: this runs on the way out), then unlock."""
        try:
            if self._thread is not None:
                self._thread.join()
                self._collect()
        except CheckpointError as error:
            self.log(f"error: {error}")
        finally:
            if self._lock is not None:
                self._lock.release()

    # -------------------------------------------------------------------------------- resume
    def resume(self, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any) -> Restored | None:
        """Load the newest verified checkpoint into the given objects (every rank); None if there is none.

        Rank 0 chooses (moving damaged newer ones aside) and every rank loads that step.
        """
        if self.directory is None:
            return None
        chosen = -1
        if self.context.is_main:
            listed = _listed_checkpoints(self.directory)
            found = find_latest_checkpoint(self.directory, log=self.log, move_damaged=True)
            if found is not None:
                chosen = found.step
            elif listed:
                self.log(f"no usable checkpoint in {self.directory}: starting from the beginning")
        chosen = self._agree_on_step(chosen)
        if chosen < 0:
            return None
        path = self.directory / checkpoint_name(chosen)
        if not self.context.is_main:
            problem = verify_checkpoint(path)
            if problem is not None:
                raise CheckpointError(f"checkpoint {path} (chosen by rank 0) is damaged on this node: {problem}.")
        try:
            restored = self._load(path, chosen, model, optimizer, scheduler, scaler)
        except CheckpointError:
            raise
        except (KeyError, ValueError, TypeError, RuntimeError, OSError) as error:
            raise CheckpointError(
                f"checkpoint {path} matches its manifest but cannot be loaded ({type(error).__name__}: {error}); "
                f"move it out of {self.directory} to resume from an older one."
            ) from None
        self.last_step = chosen
        if restored.best_state is not None:
            self._best_file = (int(restored.progress.get("best_step") or -1), path / BEST_MODEL_FILE)
        progress = restored.progress
        self.log(
            f"resumed from checkpoint at step {chosen} (epoch {progress['epoch'] + 1}, batch {progress['step_in_epoch']}) "
            f"from {path}"
        )
        self._log_event("resumed", step=chosen, epoch=progress["epoch"] + 1, batch=progress["step_in_epoch"], path=str(path))
        return restored

    def _agree_on_step(self, chosen: int) -> int:
        if not self.context.enabled:
            return chosen
        from bert_classify.training.distributed import all_reduce_max

        value = torch.tensor([float(chosen if self.context.is_main else -1)], dtype=torch.float64, device=self.context.device)
        all_reduce_max(self.context, value)
        return int(value.item())

    def _load(self, path: Path, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any) -> Restored:
        saved = read_json(path / STATE_FILE)
        compare_fingerprints(saved[FINGERPRINT_KEY], self.fingerprint, path, self.force_resume, self.log)
        model.load_state_dict(read_tensors(path / MODEL_FILE))
        optimizer.load_state_dict(read_state_dict(path / OPTIMIZER_FILE, self.context.device))
        training_state = read_state_dict(path / TRAINING_STATE_FILE)
        scheduler.load_state_dict(training_state[SCHEDULER_KEY])
        if training_state[SCALER_KEY]:
            scaler.load_state_dict(training_state[SCALER_KEY])
        best_state = read_tensors(path / BEST_MODEL_FILE) if (path / BEST_MODEL_FILE).exists() else None
        restore_rng(saved[RNG_KEY], training_state)
        return Restored(step=step, path=path, progress=dict(saved[PROGRESS_KEY]), best_state=best_state)

    # -------------------------------------------------------------------------------- save
    def due_by_time(self, minutes: float | None) -> bool:
        return self.enabled and minutes is not None and time.monotonic() - self.last_time >= minutes * 60

    def save(
        self,
        *,
        step: int,
        reason: str,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        progress: Any,
        best_state: dict[str, torch.Tensor] | None,
        wait: bool,
    ) -> float:
        """Checkpoint the state after optimizer step `step`. Every rank calls it when `wait` (it ends at a
        barrier); otherwise only rank 0 does any work. Returns the seconds the caller was blocked."""
        if self.directory is None:
            return 0.0
        started = time.perf_counter()
        if self.context.is_main:
            self._join()  # at most one write in flight; raises if the previous one failed
            if self.last_step != step:
                blocking = wait or not WRITE_IN_BACKGROUND or not self._room_for_staging(model, optimizer)
                snapshot = self._capture(
                    step, reason, model, optimizer, scheduler, scaler, progress, best_state, copy_tensors=not blocking
                )
                self._pending = (snapshot, started, blocking)
                self._stall = time.perf_counter() - started
                self._thread = threading.Thread(
                    target=self._write_in_background, args=(snapshot,), name="checkpoint-writer", daemon=True
                )
                self._thread.start()
                self.last_step = step
                if blocking:
                    self._join()
        self.last_time = time.monotonic()
        if wait:
            from bert_classify.training.distributed import barrier

            barrier(self.context)
        return time.perf_counter() - started

    def _room_for_staging(self, model: torch.nn.Module, optimizer: Any) -> bool:
        """Whether a background write's staging copy fits; once a CPU run has its buffers, they are reused.

        Without room the checkpoint is written while training waits, straight from the tensors (a CPU run)
        or through a one-off copy (CUDA): slower, but never the reason a job runs out of memory."""
        if self._staging:
            return True
        needed = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
        needed += sum(
            value.numel() * value.element_size()
            for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)
        )
        headroom = memory_headroom()
        if headroom is None or headroom >= STAGING_HEADROOM * needed:
            return True
        if not self._warned_memory:
            self._warned_memory = True
            self.log(
                f"checkpoints are written while training waits: a background write needs a {needed / 2**30:.2f} GiB "
                f"copy of the state and only {headroom / 2**30:.2f} GiB of memory is free"
            )
        return False

    def poll(self) -> None:
        """Log a write that has finished; raise CheckpointError for one that failed (rank 0; cheap)."""
        if self._thread is not None and not self._thread.is_alive():
            self._join()

    def wait(self) -> None:
        self._join()

    def _join(self) -> None:
        if self._thread is None:
            return
        self._thread.join()
        self._thread = None
        self._collect()

    def _collect(self) -> None:
        pending, self._pending = self._pending, None
        error, self._error = self._error, None
        finished, self._finished = self._finished, None
        if pending is None:
            return
        snapshot, started, blocking = pending
        # a blocking save stalled training for the whole write; an asynchronous one for the copy only
        stall = time.perf_counter() - started if blocking else self._stall
        if error is not None:
            previous = self._previous_checkpoint(snapshot.step)
            self.last_step = None
            detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise CheckpointError(
                f"could not write checkpoint {checkpoint_name(snapshot.step)} in {self.directory} ({detail}); "
                f"{previous}. Free space (or fix the directory) and run the same command again to resume."
            )
        assert finished is not None
        path, write_seconds, size = finished
        if snapshot.best_state is not None:
            self._best_file = (snapshot.best_step if snapshot.best_step is not None else -1, path / BEST_MODEL_FILE)
        record = WriteRecord(snapshot.step, snapshot.reason, str(path), stall, write_seconds, size)
        self.records.append(record)
        self.log(f"checkpoint written ({snapshot.reason}) at step {snapshot.step}: {path}")
        self._log_event("written", **dataclasses.asdict(record))

    def _previous_checkpoint(self, failed_step: int) -> str:
        assert self.directory is not None
        older = [path for step, path in _listed_checkpoints(self.directory) if step < failed_step]
        return f"the previous checkpoint {older[0]} is intact" if older else "no earlier checkpoint exists"

    def _log_event(self, event: str, **fields: Any) -> None:
        self.log("checkpoint: " + json.dumps({"event": event, **fields}, default=str))

    # -------------------------------------------------------------------------------- capture
    def _capture(
        self, step: int, reason: str, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
        progress: Any, best_state: dict[str, torch.Tensor] | None, *, copy_tensors: bool = True,
    ) -> _Snapshot:
        """The state to write. `copy_tensors=False` (a blocking save: training waits for the write) takes CPU
        tensors as they are instead of copying them into staging buffers, so a signal or final checkpoint of a
        CPU run adds no second copy of the model and optimizer state to memory; CUDA tensors are always copied."""
        model_state = model.state_dict()
        require_finite(model_state, f"the model after step {step}")
        rng_json, rng_tensors = capture_rng()
        self._copy_cpu_tensors = copy_tensors
        model_copy = {name: self._stage(f"model/{name}", tensor) for name, tensor in model_state.items()}
        optimizer_copy = self._copy_tree(optimizer.state_dict(), "optimizer")
        training_state = {
            SCHEDULER_KEY: copy.deepcopy(scheduler.state_dict()),
            SCALER_KEY: copy.deepcopy(scaler.state_dict()),
            **{key: self._copy_tree(value, key) for key, value in rng_tensors.items()},
        }
        if any(tensor.is_cuda for tensor in model_state.values()):
            torch.cuda.synchronize()  # the non-blocking copies into pinned memory are complete
        progress_values = dataclasses.asdict(progress) if dataclasses.is_dataclass(progress) else dict(progress)
        metadata = {
            PROGRESS_KEY: copy.deepcopy(progress_values),
            FINGERPRINT_KEY: self.fingerprint,
            CONFIG_KEY: self.config_values,
            WORLD_SIZE_KEY: self.context.world_size,
            REASON_KEY: reason,
            RNG_KEY: rng_json,
        }
        best_step = progress_values.get("best_step")
        best_source = None
        if best_state is not None and self._best_file is not None and self._best_file[0] == best_step:
            best_source = self._best_file[1]
        # best_state is never changed in place (a new best replaces the dict), so it is not copied
        return _Snapshot(step, reason, model_copy, optimizer_copy, training_state, metadata, best_state, best_step, best_source)

    def _stage(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """A CPU copy of `tensor` in a buffer reused from the previous checkpoint (pinned for CUDA tensors);
        the CPU tensor itself (detached) when this capture does not copy CPU tensors."""
        if not tensor.is_cuda and not self._copy_cpu_tensors:
            return tensor.detach()
        buffer = self._staging.get(key)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=tensor.is_cuda)
            self._staging[key] = buffer
        buffer.copy_(tensor.detach(), non_blocking=tensor.is_cuda)
        return buffer

    def _copy_tree(self, value: Any, key: str) -> Any:
        if isinstance(value, torch.Tensor):
            return self._stage(key, value)
        if isinstance(value, dict):
            return {name: self._copy_tree(item, f"{key}/{name}") for name, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._copy_tree(item, f"{key}/{index}") for index, item in enumerate(value))
        return copy.deepcopy(value)

    # -------------------------------------------------------------------------------- write (thread)
    def _write_in_background(self, snapshot: _Snapshot) -> None:
        # The writer yields the CPU to training: serialising and hashing a BERT-base checkpoint on a 2-core
        # CPU slowed the steps it overlapped by 2.6 s at normal priority (docs/benchmarks.md). A write that
        # the trainer waits for (signal, final) runs while training is stopped, so nothing is lost by it.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
        except (AttributeError, OSError):
            pass
        self._write(snapshot)

    def _write(self, snapshot: _Snapshot) -> None:
        try:
            started = time.perf_counter()
            files: dict[str, bytes | Streamed | Reuse] = {
                MODEL_FILE: streamed_tensors(snapshot.model),
                OPTIMIZER_FILE: streamed_state_dict(snapshot.optimizer),
                TRAINING_STATE_FILE: state_dict_to_bytes(snapshot.training_state),
                STATE_FILE: json.dumps(snapshot.metadata, indent=1, default=float).encode("utf-8"),
            }
            if snapshot.best_state is not None:
                best_state = snapshot.best_state
                files[BEST_MODEL_FILE] = (
                    Reuse(snapshot.best_source, fallback=lambda: streamed_tensors(best_state))
                    if snapshot.best_source is not None
                    else streamed_tensors(best_state)
                )
            assert self.directory is not None
            path = write_checkpoint(self.directory, snapshot.step, files, self.keep, after_file=self.after_file)
            size = sum(
                (path / name).stat().st_size for name, payload in files.items() if not isinstance(payload, Reuse)
            )
            self._finished = (path, time.perf_counter() - started, size)
        except BaseException as error:  # handed to the training thread, which raises it
            self._error = error


def require_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """Raise TrainingError if any floating tensor of `state` holds NaN or inf."""
    floating = [tensor for tensor in state.values() if tensor.is_floating_point()]
    if floating and not bool(torch.stack([torch.isfinite(tensor).all() for tensor in floating]).all()):
        raise TrainingError(
            f"{what} has non-finite (NaN or inf) weights; nothing was written, the last good checkpoint and the "
            "output are kept. Lower --learning-rate, check --max-grad-norm and --weight-decay, or use --precision fp32."
        )
