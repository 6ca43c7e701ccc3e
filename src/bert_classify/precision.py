"""Numeric precision: the choices, and the one rule for what "auto" means, for training and inference.

auto = bf16 autocast wherever the device computes bf16 natively (bf16 CUDA GPUs; CPUs with AVX512-BF16
or AMX-BF16), else fp32. Weights, gradients and optimizer state stay fp32 in every mode.

Why this is safe for training: autocast runs the matrix products in bf16 on bf16 copies of the fp32
weights; the weights themselves, their gradients and AdamW's moments stay fp32 ("master weights"), so
updates smaller than bf16's resolution are not lost. bf16 has fp32's exponent range, so gradients do
not underflow and no loss scale is needed; the gradient scaler is enabled for fp16 only, whose
5-bit exponent does underflow. Accuracy on the shared DBpedia rows: docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bert_classify.errors import ConfigError

if TYPE_CHECKING:
    import torch

# Training choices. fp16 is training-only (GPU, with a gradient scaler); inference offers the rest.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")
# /proc/cpuinfo flags of CPUs that multiply bf16 in hardware.
_NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def native_bf16(device: str | torch.device) -> bool:
    """Whether `device` computes bf16 matrix products in hardware (so bf16 autocast is faster, not emulated)."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind != "cpu":
        return False
    return _cpu_has_native_bf16()


def _cpu_has_native_bf16() -> bool:
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe is not None for probe in probes):  # private torch helpers; /proc/cpuinfo without them
        try:
            return any(bool(probe()) for probe in probes)  # type: ignore[misc]
        except Exception:  # pragma: no cover - depends on the torch build
            pass
    try:
        flags = set(Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split())
    except OSError:
        return False
    return bool(flags & _NATIVE_BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: str | torch.device, choices: tuple[str, ...] = PRECISIONS) -> str:
    """"auto" -> "bf16" where `device` has native bf16, else "fp32"; any other choice passes through.

    Raises ConfigError naming --precision when `precision` is not one of `choices`.
    """
    if precision not in choices:
        raise ConfigError(f"--precision: '{precision}' is not one of {', '.join(choices)}.")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; None for fp32 (no autocast)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast_factory(precision: str, device: str | torch.device) -> Callable[[], AbstractContextManager[Any]]:
    """A callable returning a fresh autocast context for a resolved precision (a no-op for fp32)."""
    import torch

    dtype = autocast_dtype(precision)
    kind = torch.device(device).type
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device_type=kind, dtype=dtype)


def needs_loss_scale(precision: str) -> bool:
    """Only fp16 needs a gradient (loss) scaler; bf16 shares fp32's exponent range."""
    return precision == "fp16"
