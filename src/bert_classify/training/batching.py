"""The batch plan: which examples make up each optimizer step, and which rank takes which part.

The plan is a pure function of (seed, epoch, lengths, effective batch size), so every rank computes
the same plan without communication, a resume jumps straight to any step without replaying batches,
and one process with accumulation 2 sees the same examples per step as two processes without.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Examples are sorted by length inside windows of this many step batches: large enough that
# neighbours have similar lengths (little padding), small enough that steps stay well mixed.
LENGTH_GROUP_WINDOW_STEPS = 50


def plan_epoch(
    lengths: Sequence[int] | np.ndarray,
    step_batch_size: int,
    seed: int,
    epoch: int,
    group_by_length: bool = True,
) -> list[np.ndarray]:
    """Split one epoch into optimizer steps (arrays of example indices).

    With length grouping, a seeded permutation is cut into windows, each window is sorted by length
    (longest first) and cut into steps, and the order of the steps is shuffled. The last step of the
    epoch may be smaller than `step_batch_size`; it is its own step, never carried into the next epoch.
    """
    lengths = np.asarray(lengths)
    count = len(lengths)
    if count == 0:
        return []
    generator = np.random.default_rng([seed, epoch])
    order = generator.permutation(count)
    if group_by_length:
        window = step_batch_size * LENGTH_GROUP_WINDOW_STEPS
        pieces = []
        for start in range(0, count, window):
            chunk = order[start : start + window]
            # stable sort keeps the permutation's random order among equal lengths
            pieces.append(chunk[np.argsort(-lengths[chunk], kind="stable")])
        order = np.concatenate(pieces)
    steps = [order[start : start + step_batch_size] for start in range(0, count, step_batch_size)]
    if group_by_length:
        steps = [steps[index] for index in generator.permutation(len(steps))]
    return steps


def split_step(step: np.ndarray, num_micro_batches: int) -> list[np.ndarray]:
    """Cut one step into `num_micro_batches` parts whose sizes differ by at most one.

    A full step gives parts of exactly the per-device batch size; a ragged last step gives smaller
    parts (some possibly empty when the step has fewer examples than parts).
    """
    return list(np.array_split(step, num_micro_batches))


def rank_micro_batches(step: np.ndarray, grad_accum_steps: int, world_size: int, rank: int) -> list[np.ndarray]:
    """The micro-batches this rank runs for one step: part a*world_size + rank at micro-step a."""
    parts = split_step(step, grad_accum_steps * world_size)
    return [parts[micro_step * world_size + rank] for micro_step in range(grad_accum_steps)]


def steps_per_epoch(num_examples: int, step_batch_size: int) -> int:
    return -(-num_examples // step_batch_size)
