"""Run an exported ONNX classification model with ONNX Runtime: the backend `Classifier(runtime="onnx")` uses.

Needs the `onnx` extra (`pip install bert-classify[onnx]`). Writing the file is `onnx_export.py`'s job;
this module imports nothing of ours but the error types, so the predictor can import it freely.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bert_classify.errors import ConfigError


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "--runtime onnx needs ONNX Runtime: pip install 'bert-classify[onnx]' (or use --runtime torch)."
        ) from None
    return onnxruntime


class OnnxBackend:
    """An ONNX Runtime session over a model with inputs input_ids, attention_mask and output logits."""

    def __init__(self, path: Path, device: str | None = None, num_threads: int | None = None) -> None:
        onnxruntime = require_onnxruntime()
        if not Path(path).is_file():
            raise ConfigError(
                f"--runtime onnx: no ONNX model at '{path}'. Write it first with "
                "`bert-classify export-onnx --model DIR` (add --quantize for the int8 file)."
            )
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads:
            options.intra_op_num_threads = num_threads
        providers = ["CPUExecutionProvider"]
        if device in (None, "cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif device not in (None, "cpu"):
            raise ConfigError(f"--device '{device}': ONNX Runtime here offers {onnxruntime.get_available_providers()}.")
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # ORT raises its own untyped errors for bad files
            raise ConfigError(f"--runtime onnx: '{path}' is not a loadable ONNX model ({error}).") from None
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.input_names = {item.name for item in self.session.get_inputs()}

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return self.session.run(["logits"], feeds)[0].astype(np.float32, copy=False)
