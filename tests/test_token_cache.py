"""The tokenised-data cache: built once, reused, rebuilt when anything that decides it changes or it is damaged,
shared by torchrun ranks, and used by a resumed run that stays bitwise-identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bert_classify.data import load_labeled_data
from bert_classify.data import token_cache as tc
from bert_classify.data.labels import LabeledData
from conftest import CLASS_NAMES, make_rows, write_dbpedia_csv


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    write_dbpedia_csv(data / "train.csv", make_rows(40, seed=31))
    write_dbpedia_csv(data / "val.csv", make_rows(10, seed=32))
    (data / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return data


def _tokenizer(model_dir: Path) -> Any:
    from bert_classify.modeling import load_tokenizer

    return load_tokenizer(str(model_dir))


class _Reader:
    """The loop's read step for `data`, counting its calls (a mapped cache never reads the texts). The count is
    kept in a file: the build reads in a forked child process, whose attributes the parent never sees."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.counter = data.parent / f"reads-{os.getpid()}-{id(self)}"
        self.counter.write_text("")

    @property
    def calls(self) -> int:
        return len(self.counter.read_text())

    def __call__(self) -> tuple[LabeledData, LabeledData]:
        with open(self.counter, "a") as handle:
            handle.write("x")
        train = load_labeled_data(self.data / "train.csv", class_names=CLASS_NAMES)
        return train, load_labeled_data(self.data / "val.csv", class_names=CLASS_NAMES)


def _build(data: Path, tokenizer: Any, root: Path, max_length: int = 16, **extra: Any) -> tuple[tc.TokenData, _Reader, list[str]]:
    reader, messages = _Reader(data), []
    inputs = {"train": tc.file_digest(data / "train.csv"), "val": tc.file_digest(data / "val.csv"), **extra}
    tokens = tc.load_or_build(reader, tokenizer, max_length, cache_root=root, key_inputs=inputs, log=messages.append)
    return tokens, reader, messages


def test_cached_arrays_equal_the_tokenizers_own_output(data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    identity = tc.tokenizer_identity(tokenizer)
    tokens, reader, _ = _build(data_dir, tokenizer, tmp_path / "cache", max_length=8)
    # the tokenizer saved with the model keeps no truncation from the cache build
    assert tokenizer.backend_tokenizer.truncation is None
    train = load_labeled_data(data_dir / "train.csv", class_names=CLASS_NAMES)
    expected = tokenizer(train.texts, truncation=True, max_length=8)["input_ids"]
    assert tokens.built and reader.calls == 1
    assert len(tokens.train) == 40 and len(tokens.val) == 10
    assert [tokens.train[i].tolist() for i in range(40)] == expected
    assert tokens.train.ids.dtype == np.int32 and isinstance(tokens.train.ids, np.memmap)
    assert tokens.train.lengths.tolist() == [len(ids) for ids in expected] and max(tokens.train.lengths) == 8
    assert tokens.train.labels.tolist() == train.labels
    assert tokens.digests["train"] == tc.data_digest(train.texts, train.labels)
    assert tokens.class_names == CLASS_NAMES
    assert tc.tokenizer_identity(tokenizer) == identity  # a truncating call leaves the identity alone


def test_reused_without_reading_the_data(data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    first, _, _ = _build(data_dir, tokenizer, tmp_path / "cache")
    second, reader, messages = _build(data_dir, tokenizer, tmp_path / "cache")
    assert not second.built and reader.calls == 0 and second.path == first.path
    assert any("token cache: using" in message for message in messages)
    assert np.array_equal(second.train.ids, first.train.ids) and second.digests == first.digests


def test_changed_data_tokenizer_or_length_builds_a_new_entry(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    root = tmp_path / "cache"
    base, _, _ = _build(data_dir, tokenizer, root)
    longer, reader, _ = _build(data_dir, tokenizer, root, max_length=32)
    assert longer.built and reader.calls == 1 and longer.path != base.path
    assert longer.train.lengths.max() > base.train.lengths.max()
    changed_tokenizer = _tokenizer(tiny_model_dir)
    changed_tokenizer.add_tokens(["newword"])
    other, reader, _ = _build(data_dir, changed_tokenizer, root)
    assert other.built and reader.calls == 1 and other.path not in (base.path, longer.path)
    write_dbpedia_csv(data_dir / "train.csv", make_rows(41, seed=31))
    edited, reader, _ = _build(data_dir, tokenizer, root)
    assert edited.built and reader.calls == 1 and len(edited.train) == 41
    assert edited.path not in (base.path, longer.path, other.path)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete", "bad header"])
def test_a_damaged_entry_is_rebuilt_not_trusted(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path, damage: str
) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    good, _, _ = _build(data_dir, tokenizer, tmp_path / "cache")
    expected = np.array(good.train.ids)
    assert good.path is not None
    target = good.path / "train.ids.bin"
    if damage == "flip a byte":
        raw = bytearray(target.read_bytes())
        raw[5] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-4])
    elif damage == "delete":
        target.unlink()
    else:
        (good.path / tc.META_FILE).write_text("{not json")
    rebuilt, reader, messages = _build(data_dir, tokenizer, tmp_path / "cache")
    assert rebuilt.built and reader.calls == 1
    assert any("is damaged" in message and "rebuilding" in message for message in messages)
    assert np.array_equal(np.array(rebuilt.train.ids), expected)


def test_without_a_cache_directory_the_arrays_are_built_in_a_temporary_and_nothing_is_kept(
    data_dir: Path, tiny_model_dir: Path
) -> None:
    tokens = tc.load_or_build(_Reader(data_dir), _tokenizer(tiny_model_dir), 16, cache_root=None, key_inputs=None)
    assert tokens.path is None and tokens.built and len(tokens.train) == 40
    assert tokens.train[0].tolist()  # still readable after its files were unlinked


# ------------------------------------------------------------------------------ real processes
def _train_command(data: Path, model: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "train", "--train", str(data / "train.csv"), "--val", str(data / "val.csv"),
        "--classes", str(data / "classes.txt"), "--model", str(model), "--output-dir", str(run_dir / "model"),
        "--epochs", "1", "--batch-size", "4", "--learning-rate", "3e-3", "--log-every-steps", "1",
        "--checkpoint-every-minutes", "60", *extra,
    ]


def _environment(**variables: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BERT_CLASSIFY_")}
    environment.update(OMP_NUM_THREADS="1", **variables)
    return environment


def _run(arguments: list[str], prefix: list[str] | None = None, **variables: str) -> subprocess.CompletedProcess[str]:
    command = [*(prefix or [sys.executable]), "-m", "bert_classify", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=_environment(**variables))


@pytest.mark.slow
def test_restart_maps_the_cache_and_stays_bitwise_identical(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    reference = _run(_train_command(data_dir, tiny_model_dir, tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    assert "token cache" not in reference.stdout  # no --checkpoint-dir, no --cache-dir: nothing kept
    run_dir = tmp_path / "interrupted"
    command = _train_command(data_dir, tiny_model_dir, run_dir, "--checkpoint-dir", str(run_dir / "checkpoints"))
    first = _run(command, BERT_CLASSIFY_TEST_FAULTS="1", BERT_CLASSIFY_SIGTERM_AT_STEP="4")
    assert first.returncode != 0 and "checkpoint written (signal)" in first.stdout, first.stdout + first.stderr
    assert "token cache: built" in first.stdout
    assert (run_dir / "checkpoints" / tc.CHECKPOINT_SUBDIRECTORY).is_dir()
    second = _run(command)
    assert second.returncode == 0, second.stderr
    assert "token cache: using" in second.stdout and "token cache: built" not in second.stdout
    assert "resumed from checkpoint at step 4" in second.stdout
    expected = load_file(tmp_path / "reference" / "model" / "model.safetensors")
    actual = load_file(run_dir / "model" / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


@pytest.mark.slow
def test_two_torchrun_ranks_share_one_cache_entry(data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "shared-cache"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    completed = _run(_train_command(data_dir, tiny_model_dir, tmp_path / "run", "--cache-dir", str(cache)), torchrun)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = [line for line in completed.stdout.splitlines() if "token cache:" in line]
    built = [line for line in lines if "token cache: built" in line]
    used = [line for line in lines if "token cache: using" in line]
    assert len(built) == 1 and len(used) == 1, lines  # one rank tokenised, the other waited and mapped
    assert {line.split(":")[0] for line in lines} == {"rank 0", "rank 1"}
    entries = [path for path in cache.iterdir() if path.is_dir()]
    assert len(entries) == 1 and str(entries[0]) in built[0] and str(entries[0]) in used[0]


def test_the_build_runs_in_a_child_process_and_leaves_the_texts_there(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    parent = os.getpid()
    seen: list[int] = []

    def read() -> tuple[LabeledData, LabeledData]:
        (tmp_path / "reader-pid").write_text(str(os.getpid()))
        seen.append(os.getpid())
        return _Reader(data_dir)()

    tokens = tc.load_or_build(read, _tokenizer(tiny_model_dir), 16, cache_root=tmp_path / "cache", key_inputs={"k": 1})
    assert tokens.built and len(tokens.train) == 40
    assert int((tmp_path / "reader-pid").read_text()) != parent and not seen  # read in the child only
    in_process = tc.load_or_build(read, _tokenizer(tiny_model_dir), 16, cache_root=None, key_inputs=None, in_child=False)
    assert seen == [parent]
    assert np.array_equal(np.asarray(in_process.train.ids), np.asarray(tokens.train.ids))


def test_a_data_error_in_the_builder_process_is_raised_as_itself(data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from bert_classify.errors import DataError

    (data_dir / "train.csv").write_text('"1","Title","text"\n"x","Title","text"\n')
    with pytest.raises(DataError, match=r"train\.csv:2: class index 'x' is not an integer"):
        _build(data_dir, _tokenizer(tiny_model_dir), tmp_path / "cache")
    assert not [path for path in (tmp_path / "cache").iterdir() if path.is_dir()]  # nothing half-built is kept


def test_a_builder_process_killed_by_a_signal_is_reported_and_nothing_is_kept(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import signal

    def read() -> tuple[LabeledData, LabeledData]:
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
        raise AssertionError("unreachable")

    with pytest.raises(RuntimeError, match="stopped by SIGKILL in its builder process"):
        tc.load_or_build(read, _tokenizer(tiny_model_dir), 16, cache_root=tmp_path / "cache", key_inputs={"k": 2})
    assert not [path for path in (tmp_path / "cache").iterdir() if path.is_dir()]
