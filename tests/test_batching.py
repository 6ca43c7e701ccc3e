"""The batch plan: deterministic, length-grouped, covering every example once, world-size invariant."""

from __future__ import annotations

import numpy as np

from bert_classify.training.batching import plan_epoch, rank_micro_batches, split_step, steps_per_epoch


def test_plan_covers_every_example_once_with_a_ragged_last_step() -> None:
    lengths = np.random.default_rng(0).integers(3, 120, size=103)
    plan = plan_epoch(lengths, step_batch_size=16, seed=1, epoch=0)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(103))
    assert sorted(len(step) for step in plan) == [7] + [16] * 6
    assert len(plan) == steps_per_epoch(103, 16)


def test_plan_is_deterministic_per_seed_and_epoch_and_reshuffles_across_epochs() -> None:
    lengths = np.random.default_rng(0).integers(3, 120, size=200)
    first = plan_epoch(lengths, 8, seed=5, epoch=2)
    again = plan_epoch(lengths, 8, seed=5, epoch=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other_epoch = plan_epoch(lengths, 8, seed=5, epoch=3)
    other_seed = plan_epoch(lengths, 8, seed=6, epoch=2)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other_epoch))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other_seed))


def test_length_grouping_reduces_padding() -> None:
    lengths = np.random.default_rng(1).integers(5, 128, size=2000)

    def padded_tokens(plan: list[np.ndarray]) -> int:
        return sum(int(lengths[step].max()) * len(step) for step in plan)

    grouped = padded_tokens(plan_epoch(lengths, 16, seed=0, epoch=0, group_by_length=True))
    plain = padded_tokens(plan_epoch(lengths, 16, seed=0, epoch=0, group_by_length=False))
    assert grouped < 0.75 * plain


def test_micro_batches_are_the_same_examples_whatever_the_split_between_ranks_and_accumulation() -> None:
    step = np.arange(100, 116)
    one_process = [part.tolist() for part in rank_micro_batches(step, grad_accum_steps=2, world_size=1, rank=0)]
    two_processes = [rank_micro_batches(step, grad_accum_steps=1, world_size=2, rank=r)[0].tolist() for r in (0, 1)]
    assert one_process == two_processes
    assert [len(part) for part in one_process] == [8, 8]


def test_ragged_step_splits_evenly_and_may_leave_empty_parts() -> None:
    assert [len(part) for part in split_step(np.arange(5), 4)] == [2, 1, 1, 1]
    assert [len(part) for part in split_step(np.arange(2), 4)] == [1, 1, 0, 0]
