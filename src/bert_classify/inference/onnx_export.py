"""Export a classification model to ONNX (optionally int8 dynamic-quantised) for `--runtime onnx`.

Needs the `onnx` extra. The export is checked against the PyTorch model, through the `Classifier`'s
public API, on padded and unpadded batches of other shapes than the tracing sample before it is kept.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bert_classify.errors import BertClassifyError, ConfigError
from bert_classify.inference.onnx_runtime import OnnxBackend, require_onnxruntime
from bert_classify.inference.predictor import Classifier

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
OPSET = 17
# Largest |logit difference| between PyTorch and the fp32 export that we accept as the same model.
PARITY_TOLERANCE = 1e-3


def export_onnx(model_dir: Path, output_dir: Path | None = None, *, quantize: bool = False) -> list[Path]:
    """Write `<output_dir>/model.onnx` (fp32) and with `quantize` also `model_int8.onnx`.

    `output_dir` defaults to `<model_dir>/onnx`, where `--runtime onnx` looks. Returns the paths
    written. Raises ConfigError when the export's logits differ from PyTorch's.
    """
    require_onnxruntime()
    try:
        import onnx  # noqa: F401  (the exporter and the quantiser need it)
    except ImportError:
        raise ConfigError("export-onnx needs the onnx package: pip install 'bert-classify[onnx]'.") from None
    import torch

    model_dir = Path(model_dir)
    output_dir = Path(output_dir) if output_dir is not None else model_dir / ONNX_DIR
    # truncate: the traced graph and the parity check need plain token-id rows, not per-text windows
    classifier = Classifier.from_pretrained(model_dir, device="cpu", precision="fp32", long_texts="truncate")
    model = classifier.torch_model
    # Eager attention traces to plain MatMul/Softmax with the padding mask kept as a graph input.
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:
        model.config._attn_implementation = "eager"

    # A padded sample, so that the traced graph keeps the attention-mask path.
    sample_texts = ["a short text", "a somewhat longer text so that the batch needs padding " * 3]
    input_ids, attention_mask = (torch.from_numpy(array) for array in classifier.pad(classifier.encode(sample_texts)))

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


def _check_parity(classifier: Classifier, onnx_path: Path) -> None:
    """The export must give the PyTorch logits on batches of other sizes and lengths than the sample."""
    texts = ["one", "two words", "a longer sentence with several more words in it " * 4, "x y z"]
    encoded = classifier.encode(texts)
    backend = OnnxBackend(onnx_path, device="cpu")
    for group in (encoded, encoded[:1], encoded[1:3]):
        input_ids, attention_mask = classifier.pad(group)
        expected = classifier.logits(input_ids, attention_mask)
        actual = backend.logits(input_ids, attention_mask)
        difference = float(np.abs(expected - actual).max())
        if difference > PARITY_TOLERANCE:
            raise BertClassifyError(
                f"export-onnx: the exported model's logits differ from PyTorch's by {difference:.2e} "
                f"(tolerance {PARITY_TOLERANCE}); '{onnx_path}' is not usable. Please report this model type."
            )
