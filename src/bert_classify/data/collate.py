"""Padding token-id sequences into one rectangular batch: the one collation of training and inference.

Training (`training/loop.py`) and prediction (`inference/predictor.py`) both call `pad_batch`, so
a text is fed to the model in the same form in both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_batch(
    sequences: Sequence[Sequence[int] | np.ndarray], pad_token_id: int, *, pad_left: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 arrays of shape (len(sequences), longest length).

    Each row holds one sequence followed by `pad_token_id` (preceded by it with `pad_left`, for
    tokenizers whose `padding_side` is "left"); the mask is 1 on real tokens and 0 on padding.
    """
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    width = max(len(ids) for ids in sequences)
    input_ids = np.full((len(sequences), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, ids in enumerate(sequences):
        length = len(ids)
        if pad_left:
            input_ids[row, width - length :] = ids
            attention_mask[row, width - length :] = 1
        else:
            input_ids[row, :length] = ids
            attention_mask[row, :length] = 1
    return input_ids, attention_mask
