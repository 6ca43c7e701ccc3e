"""Export a classification model to ONNX (optionally int8 dynamic-quantised) and run it with ONNX Runtime.

Needs the `onnx` extra (`pip install bert-classify[onnx]`). The export is checked against the
PyTorch model on padded and unpadded batches before it is kept.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bert_classify.errors import BertClassifyError, ConfigError

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
OPSET = 17
# Largest |logit difference| between PyTorch and the fp32 export that we accept as the same model.
PARITY_TOLERANCE = 1e-3


def _require_onnxruntime() -> Any:
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
        onnxruntime = _require_onnxruntime()
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


def export_onnx(model_dir: Path, output_dir: Path | None = None, *, quantize: bool = False) -> list[Path]:
    """Write `<output_dir>/model.onnx` (fp32) and with `quantize` also `model_int8.onnx`.

    `output_dir` defaults to `<model_dir>/onnx`, where `--runtime onnx` looks. Returns the paths
    written. Raises ConfigError when the export's logits differ from PyTorch's.
    """
    _require_onnxruntime()
    try:
        import onnx  # noqa: F401  (the exporter and the quantiser need it)
    except ImportError:
        raise ConfigError("export-onnx needs the onnx package: pip install 'bert-classify[onnx]'.") from None
    import torch

    from bert_classify.inference.predictor import Classifier

    model_dir = Path(model_dir)
    output_dir = Path(output_dir) if output_dir is not None else model_dir / ONNX_DIR
    classifier = Classifier.from_pretrained(model_dir, device="cpu", precision="fp32")
    model = classifier.backend.model  # type: ignore[attr-defined]
    # Eager attention traces to plain MatMul/Softmax with the padding mask kept as a graph input.
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:
        model.config._attn_implementation = "eager"

    # A padded sample, so that the traced graph keeps the attention-mask path.
    sample_texts = ["a short text", "a somewhat longer text so that the batch needs padding " * 3]
    sample_ids = classifier.tokenizer(sample_texts, truncation=True, max_length=64)["input_ids"]
    input_ids, attention_mask = (torch.from_numpy(array) for array in classifier._pad(sample_ids))

    class _LogitsOnly(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    output_dir.mkdir(parents=True, exist_ok=True)
    fp32_path = output_dir / FP32_FILE
    with warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation and about traced shape checks;
        # the parity check below is what decides whether the export is right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LogitsOnly(model).eval(),
            (input_ids, attention_mask),
            str(fp32_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "logits": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    _check_parity(classifier, fp32_path)
    written = [fp32_path]
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8_path = output_dir / INT8_FILE
        root_logger = logging.getLogger()
        previous_level = root_logger.level
        root_logger.setLevel(logging.ERROR)  # the quantiser logs a generic pre-processing tip on root
        try:
            quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
        finally:
            root_logger.setLevel(previous_level)
        written.append(int8_path)
    return written


def _check_parity(classifier: Any, onnx_path: Path) -> None:
    """The export must give the PyTorch logits on batches of other sizes and lengths than the sample."""
    texts = ["one", "two words", "a longer sentence with several more words in it " * 4, "x y z"]
    encoded = classifier.tokenizer(texts, truncation=True, max_length=classifier.max_length)["input_ids"]
    backend = OnnxBackend(onnx_path, device="cpu")
    for group in (encoded, encoded[:1], encoded[1:3]):
        input_ids, attention_mask = classifier._pad(group)
        expected = classifier.backend.logits(input_ids, attention_mask)
        actual = backend.logits(input_ids, attention_mask)
        difference = float(np.abs(expected - actual).max())
        if difference > PARITY_TOLERANCE:
            raise BertClassifyError(
                f"export-onnx: the exported model's logits differ from PyTorch's by {difference:.2e} "
                f"(tolerance {PARITY_TOLERANCE}); '{onnx_path}' is not usable. Please report this model type."
            )
