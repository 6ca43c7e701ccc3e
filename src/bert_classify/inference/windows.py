"""Long documents as overlapping windows (`--long-texts chunk`), and the one rule that turns the windows'
outputs back into one prediction per document.

The token cache (training), the training loop's validation and `Classifier` (evaluate, predict, serve,
the SageMaker handler) all split with `Windowing` and combine with `aggregate_windows`, so a document is
cut and judged the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bert_classify.errors import ConfigError

if TYPE_CHECKING:  # numpy is imported where it is used: the CLI's option table imports this module
    import numpy as np

LONG_TEXT_MODES = ("truncate", "chunk")
# How the windows' logits become one document's probabilities (docs/training.md, "Long documents"):
# mean_logits: softmax of the mean of the windows' logits; max_logits: softmax of each class's largest
# logit over the windows; max_probability: each class's largest probability over the windows,
# renormalised to sum to 1 (multi-label: not renormalised).
AGGREGATIONS = ("mean_logits", "max_logits", "max_probability")
# Chosen by measurement (docs/benchmarks.md, "Long documents"): on documents whose informative part is
# one window among boilerplate windows, the max rules let that window decide.
DEFAULT_AGGREGATION = "max_probability"
# A text that would give more windows than this is classified from its first windows (a warning is
# logged): one huge request cannot hold the server for minutes. `--max-windows-per-text` changes it.
DEFAULT_MAX_WINDOWS = 64


def default_chunk_stride(max_length: int) -> int:
    """Tokens shared by consecutive windows when --chunk-stride is not given: a quarter of the window."""
    return max(0, int(max_length) // 4)


def special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one text ([CLS] and [SEP] for BERT, <s> and </s> for
    RoBERTa), found by encoding a word with and without special tokens; works for fast and slow tokenizers."""
    for probe in ("a", "hello", "x"):
        plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
        if not plain:
            continue
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start], full[start + len(plain) :]
    raise ConfigError(
        "--long-texts chunk: cannot tell which special tokens this tokenizer adds around a text; "
        "use --long-texts truncate with this model."
    )


@dataclass(frozen=True)
class Windowing:
    """Cut a text's token ids (without special tokens) into windows of at most `max_length` tokens,
    each wrapped in the tokenizer's special tokens, consecutive windows sharing `stride` tokens (the
    meaning of `stride` in the tokenizers' `return_overflowing_tokens`). A text that fits gives one
    window, identical to what truncation gives."""

    max_length: int
    stride: int
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    max_windows: int | None = None

    @classmethod
    def for_tokenizer(
        cls, tokenizer: Any, max_length: int, stride: int | None = None, max_windows: int | None = None
    ) -> Windowing:
        """Raises ConfigError (naming --chunk-stride) when the overlap leaves no room for new text."""
        prefix, suffix = special_tokens_around(tokenizer)
        stride = default_chunk_stride(max_length) if stride is None else int(stride)
        content = int(max_length) - len(prefix) - len(suffix)
        if content < 1:
            raise ConfigError(
                f"--max-seq-len {max_length} leaves no room for text beside the {len(prefix) + len(suffix)} special "
                "tokens; raise --max-seq-len."
            )
        if not 0 <= stride < content:
            raise ConfigError(
                f"--chunk-stride {stride}: the overlap must be from 0 to {content - 1} tokens (windows of {max_length} "
                f"tokens hold {content} tokens of text); lower --chunk-stride."
            )
        if max_windows is not None and max_windows < 1:
            raise ConfigError(f"--max-windows-per-text {max_windows}: must be a whole number of at least 1.")
        return cls(int(max_length), stride, tuple(prefix), tuple(suffix), max_windows)

    @property
    def content_length(self) -> int:
        """Tokens of text per window."""
        return self.max_length - len(self.prefix) - len(self.suffix)

    def count(self, content_tokens: int) -> int:
        """Windows a text of this many tokens (without special tokens) gives, before the max_windows cap."""
        width, step = self.content_length, self.content_length - self.stride
        return 1 if content_tokens <= width else 1 + -(-(content_tokens - width) // step)

    def split(self, content: Sequence[int]) -> list[list[int]]:
        """The windows of one text, in order, at most `max_windows` of them (the first ones)."""
        width, step = self.content_length, self.content_length - self.stride
        windows = []
        start = 0
        prefix, suffix = list(self.prefix), list(self.suffix)
        while True:
            windows.append(prefix + list(content[start : start + width]) + suffix)
            if start + width >= len(content) or (self.max_windows is not None and len(windows) >= self.max_windows):
                return windows
            start += step


# ------------------------------------------------------------------------------------ aggregation
def aggregate_windows(
    window_logits: np.ndarray,
    documents: Sequence[int] | np.ndarray,
    num_documents: int,
    method: str = DEFAULT_AGGREGATION,
    *,
    multi_label: bool = False,
) -> np.ndarray:
    """One row of probabilities per document, shape (num_documents, classes), from the logits of its windows.

    `documents[i]` is the 0-based document of window i; every document needs at least one window.
    Single-label rows sum to 1 (softmax); `multi_label` rows are per-class sigmoid probabilities.
    """
    import numpy as np

    if method not in AGGREGATIONS:
        raise ConfigError(f"--chunk-aggregation '{method}' is not one of {', '.join(AGGREGATIONS)}.")
    logits = np.asarray(window_logits, dtype=np.float64)
    documents = np.asarray(documents, dtype=np.int64)
    if len(documents) != len(logits):
        raise ValueError(f"{len(logits)} windows but {len(documents)} document indices")
    counts = np.bincount(documents, minlength=num_documents)
    if len(counts) > num_documents or (num_documents and counts.min() == 0):
        raise ValueError("every document needs at least one window, and document indices below num_documents")
    classes = logits.shape[1] if logits.ndim == 2 else 0
    if method == "mean_logits":
        combined = np.zeros((num_documents, classes))
        np.add.at(combined, documents, logits)
        return _probabilities(combined / counts[:, None], multi_label).astype(np.float32)
    if method == "max_logits":
        combined = np.full((num_documents, classes), -np.inf)
        np.maximum.at(combined, documents, logits)
        return _probabilities(combined, multi_label).astype(np.float32)
    best = np.zeros((num_documents, classes))
    np.maximum.at(best, documents, _probabilities(logits, multi_label))
    if not multi_label:
        best /= best.sum(axis=1, keepdims=True)
    return best.astype(np.float32)


def _probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    import numpy as np

    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


class Windows(list):  # type: ignore[type-arg]
    """The windows (token-id lists) of one text, as `Classifier.encode` returns them with --long-texts chunk.

    The server's batcher counts it as one text; `Classifier.predict_encoded` runs its windows and combines
    their outputs into that text's one row of probabilities."""

    def __init__(self, windows: Sequence[Sequence[int]] = (), *, tokens: int = 0, truncated_from: int | None = None) -> None:
        super().__init__(windows)
        self.tokens = tokens  # the text's tokens, without special tokens
        self.truncated_from = truncated_from  # windows the text would have given above the max_windows cap
