"""Checkpoint files: atomic directories with a checksummed manifest, pruning, corrupt ones skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bert_classify.training import checkpoint as ckpt


def _write(directory: Path, step: int, keep: int = 2) -> Path:
    files = {
        ckpt.MODEL_FILE: ckpt.streamed_tensors({"weight": torch.full((3,), float(step))}),
        ckpt.STATE_FILE: b'{"step": %d}' % step,
    }
    return ckpt.write_checkpoint(directory, step, files, keep=keep)


def test_written_checkpoint_verifies_and_round_trips(tmp_path: Path) -> None:
    path = _write(tmp_path, 7)
    assert path.name == "step-00000007"
    assert ckpt.verify_checkpoint(path) is None
    assert torch.equal(ckpt.read_tensors(path / ckpt.MODEL_FILE)["weight"], torch.full((3,), 7.0))
    assert not list(tmp_path.glob(".tmp-*"))


def test_only_the_newest_complete_checkpoints_are_kept(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        _write(tmp_path, step, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-00000004"]


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    _write(tmp_path, 1)
    newest = _write(tmp_path, 2)
    model_file = newest / ckpt.MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:10])
    messages: list[str] = []
    found = ckpt.find_latest_checkpoint(tmp_path, log=messages.append)
    assert found is not None and found.step == 1
    assert "step-00000002" in messages[0] and "model.safetensors" in messages[0]


def test_checkpoint_without_manifest_is_not_used(tmp_path: Path) -> None:
    _write(tmp_path, 1)
    newest = _write(tmp_path, 2)
    (newest / ckpt.MANIFEST_FILE).unlink()
    messages: list[str] = []
    found = ckpt.find_latest_checkpoint(tmp_path, log=messages.append)
    assert found is not None and found.step == 1
    assert "no manifest" in messages[0]


def test_no_checkpoint_at_all(tmp_path: Path) -> None:
    assert ckpt.find_latest_checkpoint(tmp_path / "missing") is None


def _write_with_best(directory: Path, step: int, best: bytes | ckpt.Reuse, keep: int = 5) -> Path:
    files = {
        ckpt.MODEL_FILE: ckpt.streamed_tensors({"weight": torch.full((3,), float(step))}),
        ckpt.BEST_MODEL_FILE: best,
        ckpt.STATE_FILE: b'{"step": %d}' % step,
    }
    return ckpt.write_checkpoint(directory, step, files, keep=keep)


def _no_fallback() -> bytes:
    raise AssertionError("the source was usable: nothing should be re-serialised")


def test_unchanged_best_weights_are_linked_not_written_again(tmp_path: Path) -> None:
    best = ckpt.streamed_tensors({"weight": torch.arange(1000.0)})
    first = _write_with_best(tmp_path, 1, best)
    second = _write_with_best(tmp_path, 2, ckpt.Reuse(first / ckpt.BEST_MODEL_FILE, fallback=_no_fallback), keep=1)  # prunes the first
    assert not first.exists()
    assert ckpt.verify_checkpoint(second) is None  # the carried manifest entry still checks the bytes
    assert (second / ckpt.BEST_MODEL_FILE).stat().st_nlink == 1  # the link outlived its first directory
    assert torch.equal(ckpt.read_tensors(second / ckpt.BEST_MODEL_FILE)["weight"], torch.arange(1000.0))
    third = _write_with_best(tmp_path, 3, ckpt.Reuse(second / ckpt.BEST_MODEL_FILE, fallback=_no_fallback))
    assert (third / ckpt.BEST_MODEL_FILE).stat().st_ino == (second / ckpt.BEST_MODEL_FILE).stat().st_ino


def test_reuse_copies_where_hard_links_fail(tmp_path: Path, monkeypatch) -> None:
    first = _write_with_best(tmp_path, 1, ckpt.streamed_tensors({"weight": torch.ones(10)}))

    def no_links(source, target):
        raise OSError("hard links not supported")

    monkeypatch.setattr(ckpt.os, "link", no_links)
    second = _write_with_best(tmp_path, 2, ckpt.Reuse(first / ckpt.BEST_MODEL_FILE, fallback=_no_fallback))
    assert (second / ckpt.BEST_MODEL_FILE).stat().st_ino != (first / ckpt.BEST_MODEL_FILE).stat().st_ino
    assert ckpt.verify_checkpoint(second) is None
    # A copy that no longer matches would be caught like any corrupt file.
    (first / ckpt.BEST_MODEL_FILE).write_bytes(b"x" * 10)
    assert "best_model.safetensors" in (ckpt.verify_checkpoint(first) or "")


def test_reuse_of_a_vanished_source_writes_the_fallback_bytes(tmp_path: Path) -> None:
    best = ckpt.streamed_tensors({"weight": torch.full((4,), 2.0)})
    first = _write_with_best(tmp_path, 1, best)
    source = first / ckpt.BEST_MODEL_FILE
    source.unlink()  # e.g. removed by hand between two checkpoints
    second = _write_with_best(tmp_path, 2, ckpt.Reuse(source, fallback=lambda: best))
    assert ckpt.verify_checkpoint(second) is None
    assert torch.equal(ckpt.read_tensors(second / ckpt.BEST_MODEL_FILE)["weight"], torch.full((4,), 2.0))


def test_streamed_safetensors_read_back_by_safetensors_itself(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    tensors = {
        "fp32": torch.randn(3, 4), "bf16": torch.randn(5).bfloat16(), "int64": torch.arange(7),
        "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5), "transposed": torch.randn(4, 3).t(),
    }
    path = ckpt.write_checkpoint(tmp_path, 1, {ckpt.MODEL_FILE: ckpt.streamed_tensors(tensors)}, keep=1)
    assert ckpt.verify_checkpoint(path) is None  # the checksum taken while streaming matches the file
    loaded = load_file(path / ckpt.MODEL_FILE)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    (path / ckpt.MODEL_FILE).write_bytes((path / ckpt.MODEL_FILE).read_bytes()[:-1] + b"\x00")
    assert "checksum" in (ckpt.verify_checkpoint(path) or "")


def test_streamed_state_dict_round_trips(tmp_path: Path) -> None:
    state = {"state": {0: {"exp_avg": torch.randn(10), "step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]}
    path = ckpt.write_checkpoint(tmp_path, 2, {ckpt.OPTIMIZER_FILE: ckpt.streamed_state_dict(state)}, keep=1)
    assert ckpt.verify_checkpoint(path) is None
    loaded = ckpt.read_state_dict(path / ckpt.OPTIMIZER_FILE)
    assert torch.equal(loaded["state"][0]["exp_avg"], state["state"][0]["exp_avg"])


def _checkpointer(directory: Path) -> ckpt.Checkpointer:
    from bert_classify.training.distributed import DistributedContext

    context = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
    return ckpt.Checkpointer(directory, keep=2, fingerprint={}, config_values={}, force_resume=False,
                             context=context, log=lambda message: None)


def test_a_blocking_save_of_cpu_tensors_stages_no_copy_and_an_asynchronous_one_does(tmp_path: Path) -> None:
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    checkpointer = _checkpointer(tmp_path)
    arguments = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, progress={"epoch": 0},
                     best_state=None)
    checkpointer.save(step=1, reason="signal", wait=True, **arguments)
    assert checkpointer._staging == {}  # written from the tensors themselves: no second copy in memory
    written = ckpt.read_tensors(tmp_path / "step-00000001" / ckpt.MODEL_FILE)
    assert torch.equal(written["weight"], model.weight.detach())
    checkpointer.save(step=2, reason="periodic", wait=False, **arguments)
    checkpointer.wait()
    assert checkpointer._staging  # training goes on during an asynchronous write, so it writes a copy
    assert ckpt.verify_checkpoint(tmp_path / "step-00000002") is None


def test_without_memory_for_a_staging_copy_a_periodic_checkpoint_is_written_while_training_waits(
    tmp_path: Path, monkeypatch: Any
) -> None:
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    optimizer.step()
    messages: list[str] = []
    checkpointer = _checkpointer(tmp_path)
    checkpointer.log = messages.append
    monkeypatch.setattr(ckpt, "memory_headroom", lambda: 10_000)  # bytes: less than two copies of the state
    arguments = dict(model=model, optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                     scaler=torch.amp.GradScaler("cpu", enabled=False), progress={"epoch": 0}, best_state=None)
    checkpointer.save(step=1, reason="interval", wait=False, **arguments)
    assert checkpointer._thread is None and checkpointer._staging == {}  # written already, with no copy
    assert ckpt.verify_checkpoint(tmp_path / "step-00000001") is None
    assert sum("written while training waits" in message for message in messages) == 1
    monkeypatch.setattr(ckpt, "memory_headroom", lambda: None)  # unknown: write in the background as before
    checkpointer.save(step=2, reason="interval", wait=False, **arguments)
    checkpointer.wait()
    assert checkpointer._staging and ckpt.verify_checkpoint(tmp_path / "step-00000002") is None


def test_memory_headroom_reads_this_machine() -> None:
    headroom = ckpt.memory_headroom()
    assert headroom is None or headroom > 0
