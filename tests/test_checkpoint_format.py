"""Checkpoint files: atomic directories with a checksummed manifest, pruning, corrupt ones skipped."""

from __future__ import annotations

from pathlib import Path

import torch

from bert_classify.training import checkpoint as ckpt


def _write(directory: Path, step: int, keep: int = 2) -> Path:
    files = {
        ckpt.MODEL_FILE: ckpt.tensors_to_bytes({"weight": torch.full((3,), float(step))}),
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
    found = ckpt.find_latest_checkpoint(tmp_path)
    assert found is not None and found.step == 1
    assert "no manifest" in found.skipped[0]


def test_no_checkpoint_at_all(tmp_path: Path) -> None:
    assert ckpt.find_latest_checkpoint(tmp_path / "missing") is None
