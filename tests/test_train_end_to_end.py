"""Training end to end on a tiny local BERT: output loads in a plain pipeline, metrics are written,
gradient accumulation equals one big step, and user mistakes exit 2 with a clear message."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bert_classify.cli import main
from bert_classify.config import TrainConfig
from bert_classify.training.loop import train
from conftest import CLASS_NAMES, make_rows, write_dbpedia_csv


def _config(data: Path, model: Path, output: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = dict(
        train=str(data / "train.csv"),
        val=str(data / "val.csv"),
        classes=str(data / "classes.txt"),
        model=str(model),
        output_dir=str(output),
        epochs=1,
        batch_size=8,
        learning_rate=1e-3,
        log_every_steps=2,
    )
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def test_cli_train_writes_a_model_that_plain_transformers_pipeline_loads(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "model"
    status = main([
        "train", "--train", str(tiny_data_dir / "train.csv"), "--val", str(tiny_data_dir / "val.csv"),
        "--classes", str(tiny_data_dir / "classes.txt"), "--model", str(tiny_model_dir),
        "--output-dir", str(output), "--max-steps", "4", "--batch-size", "4", "--grad-accum-steps", "2",
        "--log-every-steps", "2",
    ])
    assert status == 0
    printed = capsys.readouterr().out
    assert re.search(r"^metric: val_accuracy=\d\.\d{4} step=4 epoch=1$", printed, re.MULTILINE)
    assert re.search(r"^metric: train_loss=\d+\.\d{4} step=2 epoch=1$", printed, re.MULTILINE)
    assert "effective batch 8" in printed

    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(output))
    prediction = classifier("species genus habitat of the mammal")[0]
    assert prediction["label"] in CLASS_NAMES
    metrics = json.loads((output / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "loss", "per_class"} <= set(metrics)
    resolved = json.loads((output / "training_config.json").read_text())
    assert resolved["effective_batch_size"] == 8 and resolved["class_names"] == CLASS_NAMES
    assert (output / "model.safetensors").exists()


def test_val_fraction_split_when_no_validation_file(tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    result = train(_config(tiny_data_dir, tiny_model_dir, tmp_path / "out", val=None, val_fraction=0.25, max_steps=2))
    assert result.metrics is not None and result.metrics["num_examples"] == 15  # a quarter of 60 rows


@pytest.mark.parametrize(("batch_size", "accumulation"), [(4, 2), (2, 4), (1, 8)])
def test_gradient_accumulation_equals_one_step_on_the_whole_batch(
    tmp_path: Path, tiny_model_no_dropout_dir: Path, batch_size: int, accumulation: int
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_dbpedia_csv(data / "train.csv", make_rows(30, seed=4))  # 30 / 8: the last step has 6 examples
    write_dbpedia_csv(data / "val.csv", make_rows(6, seed=5))
    (data / "classes.txt").write_text("\n".join(CLASS_NAMES))
    # fp32: the comparison is of summation order, which bf16 autocast rounding would swamp
    common = dict(warmup_ratio=0.0, learning_rate=5e-3, max_grad_norm=1e9, precision="fp32")
    whole = train(_config(data, tiny_model_no_dropout_dir, tmp_path / "whole", batch_size=8, **common))
    accumulated = train(_config(
        data, tiny_model_no_dropout_dir, tmp_path / "accumulated", batch_size=batch_size,
        grad_accum_steps=accumulation, **common,
    ))
    assert whole.global_step == accumulated.global_step == 4
    expected = load_file(tmp_path / "whole" / "model.safetensors")
    actual = load_file(tmp_path / "accumulated" / "model.safetensors")
    initial = load_file(tiny_model_no_dropout_dir / "model.safetensors")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(expected[name], initial[name])  # training did move the weights
    # Adam turns float-summation-order differences of near-zero gradients into updates of up to
    # lr-scale; 2e-5 is 0.1% of the 0.02 a weight can move in these 4 steps
    for key, tensor in expected.items():
        torch.testing.assert_close(actual[key], tensor, rtol=1e-4, atol=2e-5, msg=key)


@pytest.mark.parametrize(("batch_size", "accumulation"), [(4, 2), (2, 3), (1, 8)])
def test_accumulated_gradient_is_the_mean_gradient_of_the_whole_step(
    tmp_path: Path, tiny_model_no_dropout_dir: Path, batch_size: int, accumulation: int
) -> None:
    """Adam and clipping hide a gradient's scale, so check the gradient itself, on a ragged step too."""
    from bert_classify.training.distributed import init_distributed
    from bert_classify.training.loop import Trainer, TrainResult

    data = tmp_path / "data"
    data.mkdir()
    write_dbpedia_csv(data / "train.csv", make_rows(30, seed=4))
    write_dbpedia_csv(data / "val.csv", make_rows(6, seed=5))
    (data / "classes.txt").write_text("\n".join(CLASS_NAMES))
    trainer = Trainer(
        _config(data, tiny_model_no_dropout_dir, tmp_path / "out", batch_size=batch_size, grad_accum_steps=accumulation,
                precision="fp32"),  # the reference below runs without autocast
        init_distributed(),
    )
    trainer.setup()
    for step in (np.arange(batch_size * accumulation), np.array([3, 17, 25, 8, 11])):  # full, then ragged
        trainer.model.zero_grad(set_to_none=True)
        interval_loss = torch.zeros(2, dtype=torch.float64)
        trainer.accumulate_gradients(step, interval_loss, TrainResult(None, 0, 0, None, None, None))
        accumulated = {name: p.grad.clone() for name, p in trainer.model.named_parameters()}
        trainer.model.zero_grad(set_to_none=True)
        input_ids, attention_mask, labels = trainer._collate(trainer.train_ids, trainer.train_labels, step)
        logits = trainer.model(input_ids=input_ids, attention_mask=attention_mask).logits
        torch.nn.functional.cross_entropy(logits, labels).backward()  # mean over the whole step
        for name, parameter in trainer.model.named_parameters():
            torch.testing.assert_close(accumulated[name], parameter.grad, rtol=1e-4, atol=1e-7, msg=name)
        assert int(interval_loss[1]) == len(step)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bert_classify", *args], capture_output=True, text=True, timeout=300)


def test_max_seq_len_beyond_the_model_limit_is_refused_without_traceback(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    completed = _run_cli(
        "train", "--train", str(tiny_data_dir / "train.csv"), "--classes", str(tiny_data_dir / "classes.txt"),
        "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "o"), "--max-seq-len", "4096",
    )
    assert completed.returncode == 2
    assert "--max-seq-len 4096" in completed.stderr and "limit of 128" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "o").exists()


def test_bad_data_is_reported_with_file_and_line_before_training(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text('1,"A title","fine text"\n9,"Other","label out of range"\n', encoding="utf-8")
    completed = _run_cli(
        "train", "--train", str(bad), "--classes", str(tiny_data_dir / "classes.txt"),
        "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "o"),
    )
    assert completed.returncode == 2
    assert "bad.csv" in completed.stderr and "2" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert "training" not in completed.stdout


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--grad-accum-steps", "0", "--grad-accum-steps must be a whole number >= 1"),
        ("--precision", "fp8", "invalid choice"),
        ("--warmup-ratio", "1.5", "--warmup-ratio must be in [0, 1)"),
        ("--learning-rate", "fast", "expected a number or 'auto'"),
        ("--learning-rate", "inf", "--learning-rate must be a finite number, not inf"),
        ("--weight-decay", "nan", "--weight-decay must be a finite number, not nan"),
        ("--max-grad-norm", "nan", "--max-grad-norm must be a finite number, not nan"),
        ("--max-grad-norm", "inf", "--max-grad-norm must be a finite number, not inf"),
        ("--warmup-ratio", "nan", "--warmup-ratio must be a finite number"),
        ("--val-fraction", "nan", "--val-fraction must be a finite number"),
        ("--checkpoint-every-minutes", "nan", "--checkpoint-every-minutes must be a finite number"),
        ("--seed", "-1", "--seed must be a whole number from 0 to 4294967295"),
        ("--seed", str(2**64), "--seed must be a whole number from 0 to 4294967295"),
        ("--max-seq-len", "1", "--max-seq-len must be at least 3"),
        ("--epoch", "2", "unrecognized arguments: --epoch 2"),  # no prefix matching of --epochs
    ],
)
def test_invalid_flags_are_refused_naming_the_flag(
    tiny_data_dir: Path, tmp_path: Path, flag: str, value: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--train", str(tiny_data_dir / "train.csv"), "--output-dir", str(tmp_path / "o"), flag, value]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = int(exit_.code or 0)
    assert status == 2
    assert expected in capsys.readouterr().err


def test_missing_training_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["train", "--train", str(tmp_path / "nope.csv"), "--output-dir", str(tmp_path / "o")])
    assert status == 2
    assert "nope.csv" in capsys.readouterr().err


def test_early_stopping_stops_after_patience_evaluations_without_improvement(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a learning rate this small cannot move the metric: the first evaluation stays the best
    result = train(_config(tiny_data_dir, tiny_model_dir, tmp_path / "out", epochs=5, learning_rate=1e-12,
                           eval_every_steps=1, early_stopping_patience=2, best_metric="accuracy"))
    assert result.early_stopped and result.global_step == 3 and result.best_step == 1
    assert "early stopping: val accuracy has not improved for 2 evaluations" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["early_stopped"] is True


def test_freeze_encoder_trains_only_the_head(tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    train(_config(tiny_data_dir, tiny_model_dir, tmp_path / "out", max_steps=3, freeze_encoder=True))
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    encoder = [name for name in after if name.startswith("bert.")]
    assert encoder and all(torch.equal(before[name], after[name]) for name in encoder)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_on_cpu(tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, precision: str) -> None:
    result = train(_config(tiny_data_dir, tiny_model_dir, tmp_path / "out", max_steps=2, precision=precision))
    assert result.global_step == 2 and result.metrics is not None
    resolved = json.loads((tmp_path / "out" / "training_config.json").read_text())
    assert resolved["precision"] == precision
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())  # master weights stay fp32


def test_checkpoints_link_best_weights_until_a_new_best(tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    train(_config(tiny_data_dir, tiny_model_dir, tmp_path / "out", checkpoint_dir=str(checkpoints), max_steps=6,
                  eval_every_steps=3, checkpoint_every_steps=1, keep_checkpoints=10))  # fmt: skip
    from bert_classify.training import checkpoint as ckpt

    paths = sorted(checkpoints.glob("step-*"))
    assert len(paths) >= 6 and all(ckpt.verify_checkpoint(path) is None for path in paths)
    with_best = [path for path in paths if (path / ckpt.BEST_MODEL_FILE).exists()]
    linked = 0
    for older, newer in zip(with_best, with_best[1:]):
        same_best = (
            json.loads((older / ckpt.STATE_FILE).read_text())["progress"]["best_step"]
            == json.loads((newer / ckpt.STATE_FILE).read_text())["progress"]["best_step"]
        )
        same_file = (older / ckpt.BEST_MODEL_FILE).stat().st_ino == (newer / ckpt.BEST_MODEL_FILE).stat().st_ino
        assert same_file == same_best, (older.name, newer.name)
        linked += same_file
    assert linked >= 2


def test_gradient_checkpointing_recomputes_activations_and_trains_the_same_weights(
    tiny_data_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers.models.bert import modeling_bert

    calls = {"layer": 0}
    original = modeling_bert.BertIntermediate.forward  # inside the layer that is checkpointed

    def counting(self: object, *args: object, **kwargs: object) -> object:
        calls["layer"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(modeling_bert.BertIntermediate, "forward", counting)
    train(_config(tiny_data_dir, tiny_model_dir, tmp_path / "plain", max_steps=3, precision="fp32"))
    plain_calls, calls["layer"] = calls["layer"], 0
    train(_config(tiny_data_dir, tiny_model_dir, tmp_path / "recomputed", max_steps=3, precision="fp32",
                  gradient_checkpointing=True))
    layers = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    assert calls["layer"] - plain_calls == 3 * layers  # each training step ran every layer once more in backward
    plain, recomputed = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "recomputed" / "model.safetensors")
    assert plain.keys() == recomputed.keys()
    assert all(torch.allclose(plain[name], recomputed[name], atol=1e-6) for name in plain)  # dropout replayed alike
