"""`Classifier`: load a sequence-classification model directory and predict labels for texts.

Texts are tokenised once, sorted by length into batches (little padding) and the results put back
in input order. Runs on PyTorch (GPU when present; bf16 autocast where the hardware has native bf16,
fp32 elsewhere) or on an exported ONNX model (`runtime="onnx"`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bert_classify import precision as precisions
from bert_classify.data.collate import pad_batch
from bert_classify.errors import BertClassifyError, ConfigError
from bert_classify.inference.windows import (
    AGGREGATIONS,
    DEFAULT_AGGREGATION,
    DEFAULT_MAX_WINDOWS,
    LONG_TEXT_MODES,
    Windowing,
    Windows,
    aggregate_windows,
)

RUNTIMES = ("torch", "onnx")
# Numeric precision of the torch runtime: the choices and the "auto" rule live in bert_classify.precision.
INFERENCE_PRECISIONS = precisions.INFERENCE_PRECISIONS
DEFAULT_BATCH_SIZE = 32
# The file `export-onnx` writes inside the model directory, and the one `--runtime onnx` loads.
DEFAULT_ONNX_FILE = "onnx/model.onnx"


class _Backend(Protocol):
    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


class _TorchBackend:
    """A transformers model in eval mode: fp32 weights, with bf16 autocast when `precision` is bf16."""

    def __init__(self, model: Any, device: str, precision: str = "fp32") -> None:
        import torch

        from bert_classify.inference.first_token import FirstTokenHead

        self.model = model
        self.device = torch.device(device)
        self.precision = precision
        self.autocast_dtype = precisions.autocast_dtype(precision)
        # BERT classifiers: the last layer runs for the [CLS] token only (what the head reads).
        self.first_token_head = FirstTokenHead.build(model)

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self.device, non_blocking=True)
            mask = torch.from_numpy(attention_mask).to(self.device, non_blocking=True)
            autocast = (
                torch.autocast(self.device.type, dtype=self.autocast_dtype)
                if self.autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with autocast:
                if self.first_token_head is not None:
                    output = self.first_token_head.logits(ids, mask)
                else:
                    output = self.model(input_ids=ids, attention_mask=mask).logits
            return output.float().cpu().numpy()


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _class_names(model_config: Any) -> list[str]:
    id2label = getattr(model_config, "id2label", None) or {}
    num_labels = int(getattr(model_config, "num_labels", len(id2label)) or len(id2label))
    return [str(id2label.get(index, id2label.get(str(index), f"LABEL_{index}"))) for index in range(num_labels)]


class Classifier:
    """Predict class labels and probabilities for texts with a fine-tuned model.

    Build it with `Classifier.from_pretrained(directory)`. `predict_proba` returns an (n, C) array
    of probabilities in input order (softmax; sigmoid for multi-label models); `predict` returns one
    `{"label", "score"}` dict per text, plus `"top_k"` (a list of `{"label", "score"}`, best first)
    when `top_k > 1`. A multi-label model (config.problem_type "multi_label_classification") returns
    `{"labels": [...], "scores": {label: score}}` instead: every label whose score reaches its
    threshold (config.label_thresholds, tuned by `train`; 0.5 where absent), highest score first. `encode` + `predict_encoded` split `predict_proba` in two, so that the server
    tokenises (and refuses) each request on its own before merging requests into one batch.

    Long texts follow the model's training (config.json `long_texts`): truncated at `max_length`, or, for a
    model trained with `--long-texts chunk`, cut into overlapping windows (at most `max_windows` per text;
    beyond that the text's first windows are used and a warning is logged) whose outputs are combined into
    one prediction per text by `aggregation` (inference/windows.py). `encode` then returns a `Windows` per
    text, which the server's batcher counts as one text.

    Raises `BertClassifyError` (ConfigError) for a directory that is not a classification model,
    a runtime it does not know, a missing ONNX file, or bad arguments (non-string texts, texts
    that are not valid Unicode, `top_k < 1`, `batch_size < 1`).
    """

    def __init__(
        self,
        backend: _Backend,
        tokenizer: Any,
        class_names: Sequence[str],
        *,
        max_length: int,
        multi_label: bool = False,
        label_thresholds: Sequence[float] | None = None,
        runtime: str = "torch",
        device: str = "cpu",
        precision: str = "fp32",
        windowing: Windowing | None = None,
        aggregation: str = DEFAULT_AGGREGATION,
    ) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.class_names: list[str] = list(class_names)
        self.max_length = int(max_length)
        self.multi_label = multi_label
        self.label_thresholds = np.asarray(
            label_thresholds if label_thresholds is not None else [0.5] * len(self.class_names), dtype=np.float32
        )
        self.runtime = runtime
        self.device = device
        self.precision = precision  # what runs: "fp32", "bf16" (torch autocast) or the ONNX file's own
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        self.windowing = windowing  # None: truncate long texts
        self.aggregation = aggregation

    # --------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike[str],
        device: str | None = None,
        *,
        runtime: str = "torch",
        onnx_file: str | os.PathLike[str] | None = None,
        max_length: int | None = None,
        precision: str = "auto",
        long_texts: str | None = None,
        chunk_aggregation: str | None = None,
        max_windows: int = DEFAULT_MAX_WINDOWS,
    ) -> Classifier:
        """Load a `save_pretrained` directory (or a `model.tar.gz` built by `bert-classify package`).

        `device`: None picks CUDA when available, else CPU. `runtime`: "torch" or "onnx" (needs the
        `onnx` extra and a file written by `bert-classify export-onnx`; `onnx_file` is relative to
        the model directory unless absolute, default `onnx/model.onnx`). `max_length` (`--max-seq-len`):
        truncate inputs to this many tokens; default: the tokenizer's `model_max_length`, which
        `bert-classify train` sets to its `--max-seq-len`, capped by the model's position table.
        `precision` (torch runtime): "auto" runs bf16 autocast where the device computes bf16 natively
        (bf16 GPUs; CPUs with AVX512-BF16/AMX), else fp32; "fp32" or "bf16" forces one.
        `long_texts` ("truncate" or "chunk"), `chunk_aggregation`: default the model's own (config.json, written
        by `train --long-texts`); `max_windows`: windows per text at most with chunk (default 64).
        """
        if runtime not in RUNTIMES:
            raise ConfigError(f"--runtime: '{runtime}' is not one of {', '.join(RUNTIMES)}.")
        if precision not in INFERENCE_PRECISIONS:
            raise ConfigError(f"--precision: '{precision}' is not one of {', '.join(INFERENCE_PRECISIONS)}.")
        if runtime == "onnx" and precision == "bf16":
            raise ConfigError(
                "--precision bf16 applies to --runtime torch; an ONNX file runs at the precision it was exported "
                "with (fp32, or int8 with `export-onnx --quantize`)."
            )
        path = Path(model_dir)
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
            from bert_classify.inference.package import extract_archive

            with tempfile.TemporaryDirectory(prefix="bert-classify-model-") as extracted:
                extract_archive(path, Path(extracted))
                return cls.from_pretrained(
                    extracted, device, runtime=runtime, onnx_file=onnx_file, max_length=max_length, precision=precision,
                    long_texts=long_texts, chunk_aggregation=chunk_aggregation, max_windows=max_windows,
                )
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"--model: '{model_dir}' is not a model directory (no config.json). Give a directory "
                "written by `bert-classify train` or save_pretrained, or a model.tar.gz from `bert-classify package`."
            )
        from bert_classify.config import MIN_SEQ_LEN
        from bert_classify.modeling import load_model_config, load_tokenizer, max_sequence_length

        model_config = load_model_config(str(path))
        tokenizer = load_tokenizer(str(path))
        limit = max_sequence_length(model_config)
        tokenizer_limit = getattr(tokenizer, "model_max_length", limit) or limit
        if max_length is None:
            max_length = min(limit, int(tokenizer_limit) if tokenizer_limit < 10**6 else limit)
        elif not MIN_SEQ_LEN <= max_length <= limit:
            raise ConfigError(
                f"--max-seq-len {max_length}: must be between {MIN_SEQ_LEN} and the model's limit of {limit} tokens."
            )
        class_names = _class_names(model_config)
        multi_label = getattr(model_config, "problem_type", None) == "multi_label_classification"
        windowing, aggregation = _long_texts_settings(
            model_config, tokenizer, max_length, long_texts, chunk_aggregation, max_windows, path
        )

        if runtime == "onnx":
            from bert_classify.inference.onnx_runtime import OnnxBackend

            onnx_path = Path(onnx_file) if onnx_file is not None else Path(DEFAULT_ONNX_FILE)
            if not onnx_path.is_absolute():
                onnx_path = path / onnx_path
            backend: _Backend = OnnxBackend(onnx_path, device=device)
            device_name = backend.device  # type: ignore[attr-defined]
            resolved = "onnx"  # the ONNX file's own (fp32 or int8)
        else:
            device_name = device or _default_device()
            model = _load_torch_model(path, device_name)
            resolved = precisions.resolve_precision(precision, device_name, INFERENCE_PRECISIONS)
            if resolved == "bf16" and not precisions.native_bf16(device_name):
                logging.getLogger(__name__).warning(
                    "--precision bf16 on %s: this device has no native bf16, so it is emulated and slower than fp32.",
                    device_name,
                )
            backend = _TorchBackend(model, device_name, resolved)
        return cls(
            backend,
            tokenizer,
            class_names,
            max_length=max_length,
            multi_label=multi_label,
            label_thresholds=_label_thresholds(model_config, class_names) if multi_label else None,
            runtime=runtime,
            device=device_name,
            precision=resolved,
            windowing=windowing,
            aggregation=aggregation,
        )

    # ------------------------------------------------------------------------------ prediction
    @property
    def torch_model(self) -> Any:
        """The transformers model of the torch runtime (None for ONNX): what `export-onnx` traces."""
        return getattr(self.backend, "model", None)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated at `max_length`, unpadded (with chunk: a `Windows` of token-id lists
        per text). Raises BertClassifyError for bad texts."""
        texts = _check_texts(texts)
        if not texts:
            return []
        if self.windowing is not None:
            return self._encode_windows(texts)
        return list(
            self.tokenizer(
                texts, truncation=True, max_length=self.max_length, padding=False, return_attention_mask=False
            )["input_ids"]
        )

    def _encode_windows(self, texts: list[str]) -> list[Any]:
        windowing = self.windowing
        assert windowing is not None
        contents = self.tokenizer(
            texts, add_special_tokens=False, truncation=False, padding=False, return_attention_mask=False,
            return_token_type_ids=False, verbose=False,
        )["input_ids"]
        encoded = []
        for number, content in enumerate(contents):
            windows = Windows(windowing.split(content), tokens=len(content))
            full = windowing.count(len(content))
            if full > len(windows):
                windows.truncated_from = full
                logging.getLogger(__name__).warning(
                    "text %d has %d tokens, %d windows: over the limit of %d windows per text, so only its first "
                    "%d windows (about %d tokens) are classified; raise --max-windows-per-text to read it all.",
                    number + 1, len(content), full, len(windows), len(windows),
                    windowing.content_length + (len(windows) - 1) * (windowing.content_length - windowing.stride),
                )
            encoded.append(windows)
        return encoded

    def pad(self, sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) for token-id sequences, padded as this model's tokenizer pads."""
        return pad_batch(sequences, self.pad_token_id, pad_left=self.pad_left)

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Raw logits (float32, shape (batch, classes)) of one padded batch, on this classifier's runtime."""
        return self.backend.logits(input_ids, attention_mask)

    def predict_proba(self, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Probabilities, shape (len(texts), len(class_names)), rows in input order."""
        texts = _check_texts(texts)
        _check_batch_size(batch_size)
        return self.predict_encoded(self.encode(texts), batch_size=batch_size)

    def predict_encoded(self, encoded: Sequence[Sequence[int]], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """`predict_proba` for texts already `encode`d: probabilities in input order."""
        _check_batch_size(batch_size)
        probabilities = np.zeros((len(encoded), len(self.class_names)), dtype=np.float32)
        if not len(encoded):
            return probabilities
        if any(isinstance(entry, Windows) for entry in encoded):
            return self._predict_windows(encoded, batch_size)
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        # Longest first: the slowest batch runs while memory is fresh, and padding is minimal.
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            input_ids, attention_mask = self.pad([encoded[index] for index in indices])
            logits = self.backend.logits(input_ids, attention_mask)
            probabilities[indices] = _sigmoid(logits) if self.multi_label else _softmax(logits)
        return probabilities

    def _predict_windows(self, encoded: Sequence[Any], batch_size: int) -> np.ndarray:
        """Every window of every text in length-sorted forward passes, then one row per text (inference/windows.py)."""
        rows: list[Sequence[int]] = []
        documents: list[int] = []
        for number, entry in enumerate(encoded):
            windows = entry if isinstance(entry, Windows) else [entry]
            rows.extend(windows)
            documents.extend([number] * len(windows))
        lengths = np.fromiter((len(ids) for ids in rows), dtype=np.int64, count=len(rows))
        order = np.argsort(-lengths, kind="stable")
        window_logits = np.zeros((len(rows), len(self.class_names)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            window_logits[indices] = self.backend.logits(*self.pad([rows[index] for index in indices]))
        return aggregate_windows(window_logits, documents, len(encoded), self.aggregation, multi_label=self.multi_label)

    def predict(
        self, texts: Sequence[str], top_k: int = 1, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[dict[str, Any]]:
        """One `{"label", "score"}` per text in input order; with top_k > 1 also `"top_k"`."""
        if not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"--top-k {top_k}: must be a whole number of at least 1.")
        return self.format_predictions(self.predict_proba(texts, batch_size=batch_size), top_k)

    def _format_multilabel(self, probabilities: np.ndarray, ranked: np.ndarray, top_k: int) -> list[dict[str, Any]]:
        """`{"labels", "scores"}` per row: the labels at or above their thresholds, highest score first."""
        results = []
        for row, indices in zip(probabilities, ranked):
            chosen = [int(index) for index in np.argsort(-row, kind="stable") if row[index] >= self.label_thresholds[index]]
            prediction: dict[str, Any] = {
                "labels": [self.class_names[index] for index in chosen],
                "scores": {self.class_names[index]: float(row[index]) for index in chosen},
            }
            if top_k > 1:
                prediction["top_k"] = [
                    {"label": self.class_names[int(index)], "score": float(row[int(index)])} for index in indices
                ]
            results.append(prediction)
        return results

    def format_predictions(self, probabilities: np.ndarray, top_k: int = 1) -> list[dict[str, Any]]:
        """Turn rows of probabilities into prediction dicts (shared with the server's batcher)."""
        top_k = min(top_k, len(self.class_names))
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
        if self.multi_label:
            return self._format_multilabel(probabilities, ranked, top_k)
        results = []
        for row, indices in zip(probabilities, ranked):
            best = int(indices[0])
            prediction: dict[str, Any] = {"label": self.class_names[best], "score": float(row[best])}
            if top_k > 1:
                prediction["top_k"] = [
                    {"label": self.class_names[int(index)], "score": float(row[int(index)])} for index in indices
                ]
            results.append(prediction)
        return results


def _long_texts_settings(
    model_config: Any, tokenizer: Any, max_length: int, long_texts: str | None, chunk_aggregation: str | None,
    max_windows: int, path: Path,
) -> tuple[Windowing | None, str]:
    """(Windowing or None for truncation, aggregation): the flags given, else what training saved in config.json."""
    saved_mode = getattr(model_config, "long_texts", None) or "truncate"
    saved_aggregation = getattr(model_config, "chunk_aggregation", None) or DEFAULT_AGGREGATION
    for field, value, choices in (("long_texts", saved_mode, LONG_TEXT_MODES), ("chunk_aggregation", saved_aggregation, AGGREGATIONS)):
        if value not in choices:
            raise ConfigError(
                f"--model: {path}/config.json has {field} '{value}', not one of {', '.join(choices)}; fix the file or "
                f"pass --{field.replace('_', '-')}."
            )
    mode = long_texts if long_texts is not None else saved_mode
    aggregation = chunk_aggregation if chunk_aggregation is not None else saved_aggregation
    if mode not in LONG_TEXT_MODES:
        raise ConfigError(f"--long-texts: '{mode}' is not one of {', '.join(LONG_TEXT_MODES)}.")
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"--chunk-aggregation: '{aggregation}' is not one of {', '.join(AGGREGATIONS)}.")
    if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
        raise ConfigError(f"--max-windows-per-text {max_windows}: must be a whole number of at least 1.")
    if mode != "chunk":
        return None, aggregation
    stride = getattr(model_config, "chunk_stride", None)
    if not isinstance(stride, int) or isinstance(stride, bool) or not 0 <= stride <= max_length // 2:
        stride = None  # not saved (a model trained with truncation), or too wide for this --max-seq-len: the default
    return Windowing.for_tokenizer(tokenizer, max_length, stride, max_windows), aggregation


def _load_torch_model(path: Path, device: str) -> Any:
    from bert_classify.modeling import _quiet_transformers

    _quiet_transformers()
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"--model: '{path}' could not be loaded as a sequence-classification model "
            f"({type(error).__name__}: {str(error).splitlines()[0]})."
        ) from None
    try:
        model.float().to(device)  # fp32 weights; bf16 precision adds autocast on top
    except (RuntimeError, AssertionError) as error:
        raise ConfigError(f"--device: '{device}' is not usable here ({error}).") from None
    return model.eval()


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise BertClassifyError("texts must be a list of strings, not a single string: wrap it as [text].")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise BertClassifyError(f"texts[{index}] is a {type(text).__name__}, not a string.")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                # A lone surrogate (JSON can spell one, e.g. "\ud800") is not text; the tokenizer raises on it.
                raise BertClassifyError(
                    f"texts[{index}] is not valid Unicode (a lone surrogate U+{ord(text[error.start]):04X} at "
                    f"character {error.start}); send whole characters (a surrogate pair or the character itself)."
                ) from None
    return texts


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be a whole number of at least 1.")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def _label_thresholds(model_config: Any, class_names: Sequence[str]) -> list[float]:
    """Per-label thresholds from config.json's `label_thresholds` ({name: threshold}); 0.5 for labels it lacks."""
    saved = getattr(model_config, "label_thresholds", None)
    if not isinstance(saved, dict):
        return [0.5] * len(class_names)
    thresholds = []
    for name in class_names:
        value = saved.get(name, 0.5)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ConfigError(
                f"--model: config.json label_thresholds['{name}'] is {value!r}; each threshold must be a number "
                "from 0 to 1 (fix or remove it: 0.5 is used where absent)."
            )
        thresholds.append(float(value))
    return thresholds
