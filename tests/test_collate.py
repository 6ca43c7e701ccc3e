"""One padding function for training and inference: it pads exactly as the model's tokenizer does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bert_classify.data.collate import pad_batch


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_batch_matches_the_tokenizers_own_padding(tiny_model_dir: Path, side: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side=side)
    texts = ["species", "a company founded with headquarters and shares", "painter singer"]
    sequences = tokenizer(texts)["input_ids"]
    reference = tokenizer(texts, padding=True, return_tensors="np")
    input_ids, attention_mask = pad_batch(sequences, tokenizer.pad_token_id, pad_left=side == "left")
    assert input_ids.dtype == np.int64 and attention_mask.dtype == np.int64
    np.testing.assert_array_equal(input_ids, reference["input_ids"])
    np.testing.assert_array_equal(attention_mask, reference["attention_mask"])


def test_pad_batch_takes_arrays_and_lists_alike() -> None:
    from_lists = pad_batch([[5, 6, 7], [8]], 0)
    from_arrays = pad_batch([np.array([5, 6, 7]), np.array([8])], 0)
    for left, right in zip(from_lists, from_arrays):
        np.testing.assert_array_equal(left, right)
    np.testing.assert_array_equal(from_lists[0], [[5, 6, 7], [8, 0, 0]])
    np.testing.assert_array_equal(from_lists[1], [[1, 1, 1], [1, 0, 0]])
    with pytest.raises(ValueError):
        pad_batch([], 0)


def test_training_and_inference_share_the_one_padding_function() -> None:
    from bert_classify.inference import predictor
    from bert_classify.training import loop

    assert loop.pad_batch is pad_batch and predictor.pad_batch is pad_batch
