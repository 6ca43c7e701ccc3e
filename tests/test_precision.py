"""One precision rule for training and inference: auto = bf16 autocast where the device has native bf16."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bert_classify import precision as precisions
from bert_classify.config import TrainConfig
from bert_classify.errors import CheckpointError, ConfigError


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_exactly_on_cpus_with_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(precisions, "_cpu_has_native_bf16", lambda: native)
    expected = "bf16" if native else "fp32"
    assert precisions.native_bf16("cpu") is native
    # the same answer for training's and inference's choices
    assert precisions.resolve_precision("auto", "cpu") == expected
    assert precisions.resolve_precision("auto", torch.device("cpu"), precisions.INFERENCE_PRECISIONS) == expected
    assert precisions.resolve_precision("fp32", "cpu") == "fp32"
    assert precisions.resolve_precision("bf16", "cpu") == "bf16"


def test_cpu_detection_reads_cpuinfo_flags_without_torch_probes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    real_read_text = Path.read_text

    def fake_read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        if str(self) == "/proc/cpuinfo":
            return fake_read_text.flags  # type: ignore[attr-defined]
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", fake_read_text)
    fake_read_text.flags = "flags : fpu sse avx2 avx512f amx_bf16\n"  # type: ignore[attr-defined]
    assert precisions.native_bf16("cpu") is True
    fake_read_text.flags = "flags : fpu sse avx2 avx512f\n"  # type: ignore[attr-defined]
    assert precisions.native_bf16("cpu") is False


def test_other_devices_and_bad_choices() -> None:
    assert precisions.native_bf16("mps") is False
    with pytest.raises(ConfigError, match="--precision: 'fp8' is not one of auto, fp32, bf16, fp16"):
        precisions.resolve_precision("fp8", "cpu")
    with pytest.raises(ConfigError, match="--precision: 'fp16' is not one of auto, fp32, bf16"):
        precisions.resolve_precision("fp16", "cpu", precisions.INFERENCE_PRECISIONS)
    assert precisions.needs_loss_scale("fp16") and not precisions.needs_loss_scale("bf16")
    # the training config and the inference CLI take their lists from this one module
    from bert_classify import config
    from bert_classify.inference import predictor

    assert config.PRECISIONS is precisions.PRECISIONS
    assert predictor.INFERENCE_PRECISIONS is precisions.INFERENCE_PRECISIONS
    with pytest.raises(ConfigError, match="--precision"):
        TrainConfig(train=__file__, precision="fp8").validate()


def _config(data: Path, model: Path, output: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        train=str(data / "train.csv"), val=str(data / "val.csv"), classes=str(data / "classes.txt"),
        model=str(model), output_dir=str(output / "model"), epochs=1, max_steps=2, batch_size=8,
        learning_rate=1e-3, log_every_steps=1000, checkpoint_every_minutes=None,
    )
    values.update(overrides)
    return TrainConfig(**values)


def _train_watching_matmuls(config: TrainConfig) -> tuple[set[torch.dtype], Any]:
    """Run `config` and collect the dtypes of every nn.Linear output seen in the training forwards."""
    from bert_classify.training.distributed import init_distributed, shutdown_distributed
    from bert_classify.training.loop import Trainer

    seen: set[torch.dtype] = set()
    config.validate()
    trainer = Trainer(config, init_distributed())
    try:
        trainer.setup()
        for module in trainer.model.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(
                    lambda _module, _inputs, output: seen.add(output.dtype) if _module.training else None
                )
        trainer.run()
    finally:
        shutdown_distributed()
    return seen, trainer


@pytest.mark.parametrize("native", [True, False])
def test_training_under_auto_runs_bf16_autocast_where_native(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(precisions, "_cpu_has_native_bf16", lambda: native)
    seen, trainer = _train_watching_matmuls(_config(tiny_data_dir, tiny_model_dir, tmp_path))
    assert trainer.precision == ("bf16" if native else "fp32")
    assert seen == ({torch.bfloat16} if native else {torch.float32})
    # master weights and optimizer state stay fp32; no loss scale for bf16
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    moments = [v for state in trainer.optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.ndim]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    assert not trainer.scaler.is_enabled()


def test_fp32_is_one_flag_away(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precisions, "_cpu_has_native_bf16", lambda: True)
    seen, trainer = _train_watching_matmuls(_config(tiny_data_dir, tiny_model_dir, tmp_path, precision="fp32"))
    assert trainer.precision == "fp32" and seen == {torch.float32}


def test_resume_across_precisions_is_refused_unless_forced(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bert_classify.training.loop import train

    monkeypatch.setattr(precisions, "_cpu_has_native_bf16", lambda: True)
    checkpoints = str(tmp_path / "checkpoints")
    train(_config(tiny_data_dir, tiny_model_dir, tmp_path, max_steps=2, checkpoint_dir=checkpoints, precision="fp32"))
    # "auto" now resolves to bf16 here: the fingerprint holds the resolved precision, so this is a change
    with pytest.raises(CheckpointError, match=r"precision 'fp32' → 'bf16'.*--force-resume"):
        train(_config(tiny_data_dir, tiny_model_dir, tmp_path, max_steps=4, checkpoint_dir=checkpoints))
    result = train(
        _config(tiny_data_dir, tiny_model_dir, tmp_path, max_steps=4, checkpoint_dir=checkpoints, force_resume=True)
    )
    assert result.resumed_from_step == 2 and result.global_step == 4
