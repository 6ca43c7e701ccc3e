"""Tokenised training data as flat memory-mapped arrays, built once per node and reused on restart.

Layout of one cache entry `<cache-root>/<key>/`: `meta.json` (the header: key inputs, class names,
data digests, and for each array its dtype, shape, size and sha256) and raw little-endian arrays
`{train,val}.{ids,offsets,labels}.bin` (token ids int32, row offsets int64, labels int64; for
multi-label data, meta "multi_label": true, the labels are an N x C uint8 multi-hot array) read with
np.memmap: no pickle, no code in the files. With `--long-texts chunk` a row is one window of a
document and `{train,val}.documents.bin` (int64) holds each row's 0-based document, so validation can
combine a document's windows (inference/windows.py). The key is a digest of the data files' bytes, the reading
options, the tokenizer's full serialisation, the truncation length and the long-text mode and stride,
so a change to any of them selects a different entry. A file lock lets one process per node build while the others wait and
then map the same files read-only (the OS page cache holds one copy per node). An entry is verified
(sizes, checksums, offsets) before use; a damaged one is removed and rebuilt, never trusted.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bert_classify.data.labels import LabeledData
from bert_classify.errors import ConfigError
from bert_classify.inference.windows import Windowing

CACHE_FORMAT = 1
# The cache directory inside --checkpoint-dir (SageMaker copies it to S3 and back with the checkpoints).
CHECKPOINT_SUBDIRECTORY = "token-cache"
META_FILE = "meta.json"
SPLITS = ("train", "val")
_ARRAYS = {"ids": np.int32, "offsets": np.int64, "labels": np.int64}
DOCUMENTS_ARRAY = "documents"  # int64, one per row, only in entries built with --long-texts chunk
# Texts per call of the tokenizer's batch encoder: big enough to keep every core busy, small enough
# that one chunk's encodings (ids, tokens, offsets per token) stay a few tens of MB.
TOKENIZE_CHUNK = 4096
_HASH_BLOCK = 1 << 22


class CacheDamaged(Exception):
    """An entry failed verification (internal; the caller rebuilds it)."""


@dataclass
class TokenArrays:
    """Token ids of N texts, flat: text i is ids[offsets[i]:offsets[i+1]]; labels[i] its 0-based label
    (multi-label: labels is N x C uint8, row i the multi-hot vector of text i's labels).

    With --long-texts chunk the rows are windows and documents[i] is row i's 0-based document (rows of a
    document are consecutive); None when every row is a whole (truncated) document."""

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    documents: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.ids[self.offsets[index] : self.offsets[index + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_documents(self) -> int:
        if self.documents is None:
            return len(self.labels)
        return int(self.documents[-1]) + 1 if len(self.documents) else 0


@dataclass
class TokenData:
    """What training needs from the data: tokens, labels, class names and the data digests for resume checks."""

    train: TokenArrays
    val: TokenArrays
    class_names: list[str]
    digests: dict[str, str]  # "train"/"val" -> data_digest(texts, labels)
    path: Path | None  # the cache entry mapped, or None when built without a cache directory
    built: bool  # True when this process tokenised, False when it mapped an existing entry
    multi_label: bool = False  # labels are N x C multi-hot rows


def data_digest(texts: Sequence[str], labels: Sequence[int]) -> str:
    """sha256 over (label, length, text) of every example: what a checkpoint's data fingerprint holds."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels):
        digest.update(f"{label}\t{len(text)}\t".encode())
        digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_identity(tokenizer: Any) -> str:
    """sha256 of everything that decides the tokenizer's output: its class and full serialisation (vocabulary,
    normaliser, pre-tokeniser, special tokens). Slow tokenizers: the files save_pretrained writes."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # truncation/padding are per-call settings that transformers leaves behind, not the tokenizer's identity
        serialised = {**json.loads(backend.to_str()), "truncation": None, "padding": None}
        digest.update(json.dumps(serialised, sort_keys=True).encode("utf-8"))
        return digest.hexdigest()
    with tempfile.TemporaryDirectory(prefix="bert-classify-tokenizer-") as directory:
        tokenizer.save_pretrained(directory)
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file():
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **inputs}, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------ tokenising
def tokenize_to_files(
    texts: Sequence[str], tokenizer: Any, max_length: int, ids_path: Path, offsets_path: Path
) -> tuple[int, int]:
    """Tokenise `texts` (truncated to `max_length`, with special tokens, no padding) chunk by chunk with the
    tokenizer's parallel batch encoder, appending int32 ids to `ids_path` and int64 offsets (N+1) to
    `offsets_path`. Returns (rows, tokens). Only one chunk's ids are ever held in memory."""
    encode = _batch_encoder(tokenizer, max_length)
    total = 0
    with open(ids_path, "wb") as ids_file, open(offsets_path, "wb") as offsets_file, _parallel_tokenizers():
        np.zeros(1, dtype=np.int64).tofile(offsets_file)
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            sequences = encode(list(texts[start : start + TOKENIZE_CHUNK]))
            lengths = np.fromiter((len(ids) for ids in sequences), dtype=np.int64, count=len(sequences))
            flat = np.fromiter((i for ids in sequences for i in ids), dtype=np.int32, count=int(lengths.sum()))
            flat.tofile(ids_file)
            (total + np.cumsum(lengths)).tofile(offsets_file)
            total += int(lengths.sum())
    return len(texts), total


def tokenize_windows_to_files(
    texts: Sequence[str], tokenizer: Any, windowing: Windowing, ids_path: Path, offsets_path: Path, documents_path: Path
) -> tuple[int, int]:
    """`tokenize_to_files` for --long-texts chunk: each text tokenised whole (no special tokens), cut into the
    windows of `windowing`, one row per window; `documents_path` gets each row's 0-based text (int64).
    Returns (rows, tokens)."""
    encode = _batch_encoder(tokenizer, None)
    rows = total = 0
    with (
        open(ids_path, "wb") as ids_file, open(offsets_path, "wb") as offsets_file,
        open(documents_path, "wb") as documents_file, _parallel_tokenizers(),
    ):
        np.zeros(1, dtype=np.int64).tofile(offsets_file)
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            windows, documents = [], []
            for number, content in enumerate(encode(list(texts[start : start + TOKENIZE_CHUNK])), start=start):
                split = windowing.split(content)
                windows.extend(split)
                documents.extend([number] * len(split))
            lengths = np.fromiter((len(ids) for ids in windows), dtype=np.int64, count=len(windows))
            flat = np.fromiter((i for ids in windows for i in ids), dtype=np.int32, count=int(lengths.sum()))
            flat.tofile(ids_file)
            (total + np.cumsum(lengths)).tofile(offsets_file)
            np.asarray(documents, dtype=np.int64).tofile(documents_file)
            total += int(lengths.sum())
            rows += len(windows)
    return rows, total


def _batch_encoder(tokenizer: Any, max_length: int | None) -> Callable[[list[str]], list[list[int]]]:
    """Token ids per text: truncated to `max_length` with special tokens, or (None) whole, without them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        # a private copy: truncation settings never leak into the tokenizer that is saved with the model
        private = Tokenizer.from_str(backend.to_str())
        private.no_padding()
        if max_length is None:
            private.no_truncation()
        else:
            private.enable_truncation(max_length=max_length)
        special = max_length is not None
        return lambda texts: [encoding.ids for encoding in private.encode_batch(texts, add_special_tokens=special)]

    def slow(texts: list[str]) -> list[list[int]]:
        whole = {"add_special_tokens": False, "verbose": False} if max_length is None else {}
        encoded = tokenizer(
            texts, truncation=max_length is not None, max_length=max_length, padding=False,
            return_attention_mask=False, return_token_type_ids=False, **whole,
        )
        return list(encoded["input_ids"])

    return slow


# Whether this process has run the fast tokenizer's thread pool (below), and whether it is a builder child
# forked after that: the pool's threads do not survive a fork, so such a child must tokenise on one thread
# (forcing parallelism there deadlocks, e.g. a second train() in one process, or a test session).
_POOL_STARTED = False
_POOL_LOST_IN_FORK = False


@contextmanager
def _parallel_tokenizers() -> Iterator[None]:
    """The fast tokenizer's batch encoder over all cores, even where TOKENIZERS_PARALLELISM=false was set to
    silence its fork warning (nothing forks while we tokenise); one thread in a child forked after the pool ran."""
    global _POOL_STARTED
    if _POOL_LOST_IN_FORK:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        yield
        return
    _POOL_STARTED = True
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _return_freed_memory() -> None:
    """Hand the texts' freed heap back to the OS (glibc keeps it otherwise, and training would stack on top)."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


# --------------------------------------------------------------------------------- entry on disk
def _label_array(data: LabeledData) -> np.ndarray:
    """int64 label ids, or for multi-label data the N x C uint8 multi-hot rows."""
    if not data.multi_label:
        return np.asarray(data.labels, dtype=np.int64)
    rows = np.zeros((len(data.labels), len(data.class_names)), dtype=np.uint8)
    for row, ids in enumerate(data.labels):
        rows[row, ids] = 1
    return rows


def _multi_hot_rows(flat: np.ndarray, class_count: int, split: str) -> np.ndarray:
    if flat.dtype != np.uint8 or len(flat) % class_count:
        raise CacheDamaged(f"{split} multi-hot labels do not fit {class_count} classes")
    if len(flat) and flat.max() > 1:
        raise CacheDamaged(f"{split} multi-hot labels hold values other than 0 and 1")
    return flat.reshape(-1, class_count)


def _write_entry(
    directory: Path, read: Callable[[], tuple[LabeledData, LabeledData]], tokenizer: Any, max_length: int,
    key: str, key_inputs: dict[str, Any], windowing: Windowing | None = None,
) -> None:
    train_data, val_data = read()
    class_names = list(train_data.class_names)
    digests, arrays = {}, {}
    for split, data in (("train", train_data), ("val", val_data)):
        digests[split] = data_digest(data.texts, data.labels)
        if windowing is None:
            tokenize_to_files(
                data.texts, tokenizer, max_length, directory / f"{split}.ids.bin", directory / f"{split}.offsets.bin"
            )
            _label_array(data).tofile(directory / f"{split}.labels.bin")
        else:  # single-label only: multi-label data with --long-texts chunk is refused before this
            _write_windows(directory, split, data, tokenizer, windowing)
    multi_label = train_data.multi_label
    del train_data, val_data, data  # the texts go now; only the arrays on disk remain
    _return_freed_memory()
    names = {**_ARRAYS, DOCUMENTS_ARRAY: np.int64} if windowing is not None else _ARRAYS
    for split in SPLITS:
        for name, dtype in names.items():
            dtype = np.uint8 if multi_label and name == "labels" else dtype
            path = directory / f"{split}.{name}.bin"
            size = path.stat().st_size
            arrays[f"{split}.{name}"] = {
                "file": path.name, "dtype": np.dtype(dtype).str, "count": size // np.dtype(dtype).itemsize,
                "bytes": size, "sha256": file_digest(path),
            }
    meta = {
        "format": CACHE_FORMAT, "key": key, "key_inputs": key_inputs, "class_names": class_names,
        "digests": digests, "arrays": arrays, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"multi_label": True} if multi_label else {}),  # absent: single-label (entries written before it verify)
    }
    with open(directory / META_FILE, "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def _write_windows(directory: Path, split: str, data: LabeledData, tokenizer: Any, windowing: Windowing) -> None:
    """One split as windows: ids/offsets per window, documents per window, each window labelled as its document."""
    if data.multi_label:  # list labels detected in the data, without --multi-label on the command line
        from bert_classify.config import MULTI_LABEL_CHUNK_REFUSED

        raise ConfigError(f"{data.source}: {MULTI_LABEL_CHUNK_REFUSED}")
    documents_path = directory / f"{split}.{DOCUMENTS_ARRAY}.bin"
    tokenize_windows_to_files(
        data.texts, tokenizer, windowing, directory / f"{split}.ids.bin", directory / f"{split}.offsets.bin", documents_path
    )
    documents = np.fromfile(documents_path, dtype=np.int64)
    np.asarray(data.labels, dtype=np.int64)[documents].tofile(directory / f"{split}.labels.bin")


def _map_entry(directory: Path, key: str | None, verify: bool = True) -> TokenData:
    """Map a finished entry read-only; raise CacheDamaged when anything does not match its header."""
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CacheDamaged(f"{META_FILE} unreadable ({error})") from None
    if meta.get("format") != CACHE_FORMAT or (key is not None and meta.get("key") != key):
        raise CacheDamaged(f"{META_FILE} is for another key or format")
    mapped: dict[str, np.ndarray] = {}
    try:
        for name, spec in meta["arrays"].items():
            path = directory / spec["file"]
            if not path.is_file() or path.stat().st_size != spec["bytes"]:
                raise CacheDamaged(f"{spec['file']} is missing or has the wrong size")
            if verify and file_digest(path) != spec["sha256"]:
                raise CacheDamaged(f"{spec['file']} does not match its checksum")
            dtype = np.dtype(spec["dtype"])
            mapped[name] = (
                np.memmap(path, dtype=dtype, mode="r", shape=(spec["count"],)) if spec["count"] else np.zeros(0, dtype)
            )
        splits = {}
        multi_label = bool(meta.get("multi_label", False))
        for split in SPLITS:
            ids, offsets, labels = (mapped[f"{split}.{name}"] for name in _ARRAYS)
            if multi_label:
                labels = _multi_hot_rows(labels, len(meta["class_names"]), split)
            if len(offsets) != len(labels) + 1 or offsets[0] != 0 or offsets[-1] != len(ids):
                raise CacheDamaged(f"{split} offsets do not match the ids")
            if not multi_label and len(labels) and (labels.min() < 0 or labels.max() >= len(meta["class_names"])):
                raise CacheDamaged(f"{split} labels outside the class list")
            documents = mapped.get(f"{split}.{DOCUMENTS_ARRAY}")
            if documents is not None and not _documents_sound(documents, len(labels)):
                raise CacheDamaged(f"{split} document indices do not match the windows")
            splits[split] = TokenArrays(ids=ids, offsets=offsets, labels=labels, documents=documents)
    except (KeyError, TypeError, ValueError) as error:
        raise CacheDamaged(f"{META_FILE} is malformed ({error})") from None
    return TokenData(
        train=splits["train"], val=splits["val"], class_names=list(meta["class_names"]),
        digests=dict(meta["digests"]), path=directory, built=False, multi_label=multi_label,
    )


def _documents_sound(documents: np.ndarray, rows: int) -> bool:
    """One index per row, starting at 0 and each row's the same as or one more than the row before."""
    if len(documents) != rows:
        return False
    if not rows:
        return True
    steps = np.diff(documents)
    return bool(documents[0] == 0 and ((steps == 0) | (steps == 1)).all())


def _write_entry_in_child(
    directory: Path, read: Callable[[], tuple[LabeledData, LabeledData]], tokenizer: Any, max_length: int,
    key: str, key_inputs: dict[str, Any], windowing: Windowing | None = None,
) -> None:
    """`_write_entry` in a forked child process, so that the heap the texts took (hundreds of MB at 560,000
    rows, which glibc does not fully hand back) leaves with the child instead of staying under training.

    The child reads, tokenises and writes; the parent waits. A user error in the child (a DataError naming
    file and line) is raised again in the parent with the same type and message; anything else is raised
    as a RuntimeError carrying the child's traceback. A child killed by a signal (the kernel's OOM killer)
    is reported as such; nothing half-written is used (the caller removes the directory). What the child
    prints (the data warnings of the read step) is captured and printed by the parent when the child ends.
    """
    import signal
    import traceback

    from bert_classify import errors

    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        global _POOL_LOST_IN_FORK
        _POOL_LOST_IN_FORK = _POOL_STARTED  # this process ran the tokenizer's pool: its threads are not here
        status = 0
        report: dict[str, Any] = {}
        # what the child prints (warnings about the data) is handed to the parent, which prints it as its own
        captured_out, captured_err = io.StringIO(), io.StringIO()
        sys.stdout, sys.stderr = captured_out, captured_err
        try:
            os.close(reader)
            _write_entry(directory, read, tokenizer, max_length, key, key_inputs, windowing)
        except BaseException as error:  # noqa: BLE001 - everything goes back to the parent
            status = 1
            report = {"type": type(error).__name__, "message": str(error), "traceback": traceback.format_exc()}
        finally:
            report.update(stdout=captured_out.getvalue(), stderr=captured_err.getvalue())
            try:
                with os.fdopen(writer, "wb") as channel:
                    channel.write(json.dumps(report).encode("utf-8"))
            except OSError:
                pass
            os._exit(status)
    os.close(writer)
    try:
        chunks = []
        while chunk := os.read(reader, 1 << 16):
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
    except BaseException:  # interrupted here (Ctrl-C): the child goes too, and the half-built entry with it
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
        raise
    finally:
        os.close(reader)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        raise RuntimeError(
            f"tokenising the data was stopped by {name} in its builder process (killed for lack of memory?)"
        )
    report = json.loads(b"".join(chunks).decode("utf-8") or "{}")
    for stream, text in ((sys.stdout, report.get("stdout")), (sys.stderr, report.get("stderr"))):
        if text:
            stream.write(text)
            stream.flush()
    if os.waitstatus_to_exitcode(status) == 0:
        return
    error_type = getattr(errors, str(report.get("type")), None)
    if isinstance(error_type, type) and issubclass(error_type, errors.BertClassifyError):
        raise error_type(report.get("message", ""))
    raise RuntimeError(f"tokenising the data failed in its builder process:\n{report.get('traceback', report)}")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def load_or_build(
    read: Callable[[], tuple[LabeledData, LabeledData]],
    tokenizer: Any,
    max_length: int,
    *,
    cache_root: Path | None,
    key_inputs: dict[str, Any] | None,
    log: Callable[[str], None] = print,
    in_child: bool | None = None,
    windowing: Windowing | None = None,
) -> TokenData:
    """The tokenised train/val data: mapped from `cache_root` when a sound entry exists, else built there.

    `read()` returns (train, val) LabeledData and is called only when building. `key_inputs` describes the
    data (file digests, reading options); None (a plug-in reader, data that is not a file) or no
    `cache_root` builds into a temporary directory that is mapped and then unlinked, so the same flat
    arrays are used and the texts are still dropped, but nothing is kept for a restart. `in_child` (default:
    wherever `os.fork` exists) reads and tokenises in a forked child process, so the texts' heap never
    stays in this one; BERT_CLASSIFY_TOKENIZE_IN_PROCESS=1 turns that off. `windowing` (--long-texts chunk)
    stores each text as its windows, with the per-row document index.
    """
    if in_child is None:
        in_child = hasattr(os, "fork") and os.environ.get("BERT_CLASSIFY_TOKENIZE_IN_PROCESS", "") in ("", "0")
    write = _write_entry_in_child if in_child else _write_entry
    if cache_root is None or key_inputs is None:
        with tempfile.TemporaryDirectory(prefix="bert-classify-tokens-") as temporary:
            write(Path(temporary), read, tokenizer, max_length, "uncached", {}, windowing)
            data = _map_entry(Path(temporary), None, verify=False)
        data.path, data.built = None, True  # the mapping outlives the unlinked files
        return data
    inputs = {**key_inputs, "tokenizer": tokenizer_identity(tokenizer), "max_length": max_length}
    if windowing is not None:  # absent for truncation: the keys of existing entries stay the same
        inputs["long_texts"] = {"mode": "chunk", "stride": windowing.stride, "max_windows": windowing.max_windows}
    key = cache_key(inputs)
    cache_root.mkdir(parents=True, exist_ok=True)
    entry = cache_root / key[:32]
    with _file_lock(cache_root / f"{key[:32]}.lock"):
        if entry.exists():
            try:
                data = _map_entry(entry, key)
                log(f"token cache: using {entry} ({len(data.train)} train, {len(data.val)} validation rows)")
                return data
            except CacheDamaged as reason:
                log(f"token cache: {entry} is damaged ({reason}); rebuilding it")
                shutil.rmtree(entry, ignore_errors=True)
        for stale in cache_root.glob(f".{key[:32]}.building-*"):  # a builder killed mid-way (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        started = time.perf_counter()
        temporary = Path(tempfile.mkdtemp(prefix=f".{key[:32]}.building-", dir=cache_root))
        try:
            write(temporary, read, tokenizer, max_length, key, inputs, windowing)
            os.replace(temporary, entry)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        data = _map_entry(entry, key, verify=False)  # just written and checksummed by this process
        data.built = True
        log(
            f"token cache: built {entry} in {time.perf_counter() - started:.1f} s "
            f"({len(data.train)} train, {len(data.val)} validation rows)"
        )
        return data
