"""The training loop: one loop, explicit state, read top to bottom.

`train(config)` is what the CLI, torchrun workers and the SageMaker entry point all call.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bert_classify import modeling
from bert_classify import precision as precisions
from bert_classify.config import TrainConfig, auto_learning_rate
from bert_classify.errors import CheckpointError, ConfigError
from bert_classify.training import checkpoint as ckpt
from bert_classify.training.batching import plan_epoch, rank_micro_batches, steps_per_epoch
from bert_classify.training.distributed import (
    DistributedContext,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from bert_classify.training.faults import FaultPlan
from bert_classify.training.signals import GracefulStop

# Fingerprint fields that change tensor shapes or the meaning of saved state: never resumable across.
UNSAFE_TO_FORCE = ("model", "class_names", "freeze_encoder")
# Fields whose change alters the trajectory; a resume across them needs --force-resume.
FINGERPRINT_FIELDS = (
    "learning_rate",
    "weight_decay",
    "warmup_ratio",
    "max_grad_norm",
    "epochs",
    "max_steps",
    "effective_batch_size",
    "seed",
    "max_seq_len",
    "precision",
    "group_by_length",
    "best_metric",
    "early_stopping_patience",
    "eval_every_steps",
    "val_fraction",
)


@dataclass
class TrainingState:
    """Progress that a resume restores (everything but tensors)."""

    global_step: int = 0
    epoch: int = 0  # 0-based epoch being trained
    step_in_epoch: int = 0  # optimizer steps of `epoch` already done
    best_metric_value: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, Any] | None = None
    evaluations_without_improvement: int = 0
    early_stopped: bool = False
    last_eval_step: int | None = None


@dataclass
class TrainResult:
    output_dir: str | None
    global_step: int
    total_steps: int
    metrics: dict[str, Any] | None
    best_step: int | None
    resumed_from_step: int | None
    interrupted_by: int | None = None  # signal number when stopped by SIGTERM/SIGINT
    early_stopped: bool = False
    steps_this_run: int = 0
    examples_this_run: int = 0
    train_seconds: float = 0.0
    padded_tokens_this_run: int = 0
    real_tokens_this_run: int = 0
    checkpoint_seconds: list[float] = field(default_factory=list)

    @property
    def examples_per_second(self) -> float:
        return self.examples_this_run / self.train_seconds if self.train_seconds > 0 else 0.0


def train(config: TrainConfig, *, faults: FaultPlan | None = None) -> TrainResult:
    """Fine-tune `config.model` on `config.train`; see `Trainer` for the features and errors.

    `faults` injects a SIGTERM or an error at a given step (tests, the quickstart's demo); by default
    it is read from BERT_CLASSIFY_* variables, which are unset in normal use.
    """
    config.validate()
    context = init_distributed()
    try:
        trainer = Trainer(config, context, faults=faults)
        trainer.setup()
        return trainer.run()
    finally:
        shutdown_distributed()


class Trainer:
    """Fine-tunes a sequence classifier, on CPU, one GPU, or one process per GPU under torchrun.

    Features, in the order `setup()` builds them:
    - data: reads train/val (or splits a seeded, stratified --val-fraction), tokenises once, no padding;
    - model: any BERT-family checkpoint, head sized to the classes, optional frozen encoder;
    - optimizer: AdamW (no decay on biases/LayerNorm), linear warm-up then linear decay, clipping;
    - precision: fp32, bf16 autocast, or fp16 autocast with a gradient scaler;
    - batches: length-grouped, seeded plan of optimizer steps, split into micro-batches across
      accumulation and ranks; the loss is normalised by the number of examples in the whole step;
    - evaluation every epoch and every --eval-every-steps; best model kept; early stopping;
    - checkpoints every N steps / M minutes / epoch end / on SIGTERM-SIGINT, atomic, resumed exactly.

    Errors (all BertClassifyError, raised before training starts): ConfigError for invalid options
    or a --max-seq-len beyond the model's position limit; DataError for bad data (file and line);
    CheckpointError when the newest checkpoint was written with a different configuration or data.
    """

    def __init__(self, config: TrainConfig, context: DistributedContext, faults: FaultPlan | None = None) -> None:
        self.config = config
        self.context = context
        self.state = TrainingState()
        self.resumed_from_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        # The newest checkpoint file holding exactly best_state: later checkpoints link it.
        self.best_state_file: Path | None = None
        self.last_checkpoint_step: int | None = None
        self.faults = faults if faults is not None else FaultPlan.from_environment()

    # ----------------------------------------------------------------------------------- logging
    def log(self, message: str) -> None:
        if self.context.is_main:
            print(message, flush=True)

    # ------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        self._setup_model_config()
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()
        self._setup_precision()
        self._setup_checkpointing()

    def _setup_model_config(self) -> None:
        config = self.config
        self.model_config = modeling.load_model_config(config.model)
        limit = modeling.max_sequence_length(self.model_config)
        if config.max_seq_len > limit:
            raise ConfigError(
                f"--max-seq-len {config.max_seq_len} is longer than the model's position limit of {limit} tokens "
                f"({config.model}); use --max-seq-len {limit} or less."
            )
        hidden = int(getattr(self.model_config, "hidden_size", 768))
        self.learning_rate = config.learning_rate if config.learning_rate is not None else auto_learning_rate(hidden)
        self.effective_batch_size = config.batch_size * config.grad_accum_steps * self.context.world_size

    def _setup_data(self) -> None:
        """Token ids of train/val as flat arrays, mapped from the token cache (tokenised once per node)."""
        from bert_classify.data import token_cache

        config = self.config
        self.tokenizer = modeling.load_tokenizer(config.model)
        self.pad_id = int(self.tokenizer.pad_token_id)
        cache_root = (
            Path(config.cache_dir) if config.cache_dir
            else Path(config.checkpoint_dir) / token_cache.CHECKPOINT_SUBDIRECTORY if config.checkpoint_dir
            else None
        )
        rank = self.context.rank
        tokens = token_cache.load_or_build(
            self._read_data, self.tokenizer, config.max_seq_len, cache_root=cache_root,
            key_inputs=self._data_key_inputs() if cache_root is not None else None,
            log=lambda message: print(f"rank {rank}: {message}" if self.context.enabled else message, flush=True),
        )
        self.class_names = tokens.class_names
        self.data_digests = tokens.digests
        self.train_ids, self.val_ids = tokens.train, tokens.val
        self.train_lengths = tokens.train.lengths
        self.train_labels, self.val_labels = tokens.train.labels, tokens.val.labels

    def _data_key_inputs(self) -> dict[str, Any] | None:
        """What identifies the data for the token cache; None (no cache) for plug-in readers."""
        from bert_classify.data.token_cache import file_digest

        config = self.config
        files = {"train": config.train, "val": config.val, "classes": config.classes}
        if config.reader or not all(path is None or Path(path).is_file() for path in files.values()):
            return None
        return {
            **{name: file_digest(path) if path else None for name, path in files.items()},
            "data_format": config.data_format, "text_column": config.text_column, "label_column": config.label_column,
            "split": None if config.val else [config.val_fraction, config.seed],
        }

    def _read_data(self) -> tuple[Any, Any]:
        from bert_classify.data import load_labeled_data, read_class_names, stratified_split

        config = self.config
        class_names = read_class_names(config.classes) if config.classes else None
        options = dict(data_format=config.data_format, text_column=config.text_column, label_column=config.label_column)
        train_data = load_labeled_data(config.train, class_names=class_names, reader=config.reader, **options)
        if config.val:
            val_data = load_labeled_data(
                config.val, class_names=train_data.class_names, reader=config.reader, **options
            )
        else:
            train_data, val_data = stratified_split(train_data, config.val_fraction, config.seed)
        if len(train_data) == 0:
            raise ConfigError(f"--train: no training examples in {train_data.source}.")
        if len(train_data.class_names) < 2:
            raise ConfigError(
                f"--train: {train_data.source} has {len(train_data.class_names)} class; a classifier needs at least 2 "
                "(check --classes and the label column)."
            )
        return train_data, val_data

    def _setup_model(self) -> None:
        torch.manual_seed(self.config.seed)  # the fresh head's initialisation is reproducible
        model = modeling.load_for_training(self.config.model, self.class_names, self.config.freeze_encoder)
        self.model = model.to(self.context.device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.context.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.context.device.index] if self.context.device.type == "cuda" else None
            self.ddp_model: torch.nn.Module = DistributedDataParallel(self.model, device_ids=device_ids)
        else:
            self.ddp_model = self.model

    def _setup_optimizer(self) -> None:
        config = self.config
        decay, no_decay = [], []
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            (no_decay if parameter.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(parameter)
        # fused: one kernel over all parameters instead of ~10 ops per tensor (docs/benchmarks.md: the for-loop
        # AdamW was the largest single cost of a MiniLM step on CPU); same state_dict, so checkpoints carry over
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.learning_rate,
            fused=self.context.device.type in ("cpu", "cuda"),
        )
        self.steps_per_epoch = steps_per_epoch(len(self.train_ids), self.effective_batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.warmup_steps = math.ceil(config.warmup_ratio * self.total_steps)
        total, warmup = self.total_steps, self.warmup_steps

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    def _setup_precision(self) -> None:
        # One rule for training and inference (bert_classify.precision): weights, gradients and AdamW
        # state stay fp32; autocast runs the products in bf16/fp16; only fp16 needs a loss scale.
        device = self.context.device
        self.precision = precisions.resolve_precision(self.config.precision, device)
        if self.precision == "bf16" and not precisions.native_bf16(device):
            self.log(f"warning: --precision bf16 on {device}: no native bf16 here, so it is emulated and slower than fp32")
        self.autocast: Callable[[], Any] = precisions.autocast_factory(self.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precisions.needs_loss_scale(self.precision))

    def _setup_checkpointing(self) -> None:
        config = self.config
        self.checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
        self.fingerprint = self._fingerprint()
        if self.checkpoint_dir is not None:
            found = ckpt.find_latest_checkpoint(self.checkpoint_dir, log=self.log)
            if found is not None:
                self._resume(found)
            elif any(self.checkpoint_dir.glob(f"{ckpt.CHECKPOINT_PREFIX}*")):
                self.log(f"no usable checkpoint in {self.checkpoint_dir}: starting from the beginning")
        barrier(self.context)

    # ----------------------------------------------------------------------------- fingerprints
    def _fingerprint(self) -> dict[str, Any]:
        config = self.config
        values = {name: getattr(config, name) for name in FINGERPRINT_FIELDS if hasattr(config, name)}
        values["learning_rate"] = self.learning_rate
        values["effective_batch_size"] = self.effective_batch_size
        values["precision"] = self.precision  # resolved: "auto" means different things on different machines
        values["model"] = config.model
        values["class_names"] = self.class_names
        values["freeze_encoder"] = config.freeze_encoder
        values["train_data"] = self.data_digests["train"]
        values["val_data"] = self.data_digests["val"]
        return values

    def _check_fingerprint(self, saved: dict[str, Any], path: Path) -> None:
        differences = []
        for name in sorted(set(saved) | set(self.fingerprint)):
            before, now = saved.get(name), self.fingerprint.get(name)
            if before != now:
                if name.endswith("_data"):
                    label = f"{name.replace('_', ' ')} contents (sha256 {str(before)[:12]}… → {str(now)[:12]}…)"
                else:
                    label = f"{name} {before!r} → {now!r}"
                differences.append((name, label))
        if not differences:
            return
        listed = "; ".join(label for _, label in differences)
        unsafe = [name for name, _ in differences if name in UNSAFE_TO_FORCE]
        if unsafe:
            raise CheckpointError(
                f"the checkpoint {path} was written for a different {', '.join(unsafe)} ({listed}); it cannot be "
                "resumed with these options. Use the original options, or point --checkpoint-dir at an empty "
                "directory to start a new run."
            )
        if not self.config.force_resume:
            raise CheckpointError(
                f"the checkpoint {path} was written with a different configuration or data: {listed}. Re-run with "
                "the original options, point --checkpoint-dir at an empty directory to start fresh, or pass "
                "--force-resume to continue from it with the new settings."
            )
        self.log(f"warning: --force-resume: continuing from {path} despite: {listed}")

    # -------------------------------------------------------------------------------- checkpoints
    def _resume(self, found: ckpt.FoundCheckpoint) -> None:
        path = found.path
        saved = ckpt.read_json(path / ckpt.STATE_FILE)
        self._check_fingerprint(saved["fingerprint"], path)
        device = self.context.device
        self.model.load_state_dict(ckpt.read_tensors(path / ckpt.MODEL_FILE))
        self.optimizer.load_state_dict(ckpt.read_state_dict(path / ckpt.OPTIMIZER_FILE, device))
        training_state = ckpt.read_state_dict(path / ckpt.TRAINING_STATE_FILE)
        self.scheduler.load_state_dict(training_state["scheduler"])
        if training_state["scaler"]:
            self.scaler.load_state_dict(training_state["scaler"])
        if (path / ckpt.BEST_MODEL_FILE).exists():
            self.best_state = ckpt.read_tensors(path / ckpt.BEST_MODEL_FILE)
            self.best_state_file = path / ckpt.BEST_MODEL_FILE
        _restore_rng(saved["rng"], training_state)
        self.state = TrainingState(**saved["progress"])
        self.last_checkpoint_step = self.state.global_step
        self.resumed_from_step = self.state.global_step
        self.log(
            f"resumed from checkpoint at step {self.state.global_step} "
            f"(epoch {self.state.epoch + 1}, batch {self.state.step_in_epoch}) from {path}"
        )

    def _save_checkpoint(self, reason: str) -> float:
        """Rank 0 writes; every rank waits at the barrier. Returns seconds spent."""
        if self.checkpoint_dir is None:
            return 0.0
        started = time.perf_counter()
        if self.context.is_main:
            training_state = {
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
            numpy_state = np.random.get_state()
            metadata = {
                "progress": dataclasses.asdict(self.state),
                "fingerprint": self.fingerprint,
                "config": self.config.to_dict(),
                "world_size": self.context.world_size,
                "reason": reason,
                "rng": {
                    "python": _jsonable(random.getstate()),
                    "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
                },
            }
            files = {
                ckpt.MODEL_FILE: ckpt.tensors_to_bytes(self.model.state_dict()),
                ckpt.OPTIMIZER_FILE: ckpt.state_dict_to_bytes(self.optimizer.state_dict()),
                ckpt.TRAINING_STATE_FILE: ckpt.state_dict_to_bytes(training_state),
                ckpt.STATE_FILE: json.dumps(metadata, indent=1, default=float).encode("utf-8"),
            }
            if self.best_state is not None:
                best_state = self.best_state
                files[ckpt.BEST_MODEL_FILE] = (
                    ckpt.Reuse(self.best_state_file, fallback=lambda: ckpt.tensors_to_bytes(best_state))
                    if self.best_state_file is not None
                    else ckpt.tensors_to_bytes(best_state)
                )
            path = ckpt.write_checkpoint(self.checkpoint_dir, self.state.global_step, files, self.config.keep_checkpoints)
            if self.best_state is not None:
                self.best_state_file = path / ckpt.BEST_MODEL_FILE
            self.log(f"checkpoint written ({reason}) at step {self.state.global_step}: {path}")
        barrier(self.context)
        self.last_checkpoint_time = time.monotonic()
        self.last_checkpoint_step = self.state.global_step
        return time.perf_counter() - started

    # ---------------------------------------------------------------------------------- batches
    def _collate(self, ids: list[np.ndarray], labels: np.ndarray, indices: np.ndarray) -> tuple[torch.Tensor, ...]:
        longest = max(len(ids[i]) for i in indices)
        input_ids = np.full((len(indices), longest), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(indices), longest), dtype=np.int64)
        for row, index in enumerate(indices):
            sequence = ids[index]
            input_ids[row, : len(sequence)] = sequence
            attention_mask[row, : len(sequence)] = 1
        device = self.context.device
        return (
            torch.from_numpy(input_ids).to(device, non_blocking=True),
            torch.from_numpy(attention_mask).to(device, non_blocking=True),
            torch.from_numpy(labels[indices]).to(device, non_blocking=True),
        )

    def _reseed(self, global_step: int) -> None:
        """Dropout masks depend only on (seed, rank, step): a resumed run draws the same ones."""
        seed = int(np.random.SeedSequence([self.config.seed, self.context.rank, global_step]).generate_state(1)[0])
        torch.manual_seed(seed)

    # ------------------------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def evaluate(self) -> dict[str, Any]:
        from bert_classify.evaluation import metrics_from_confusion

        self.model.eval()
        classes = len(self.class_names)
        confusion = torch.zeros(classes * classes + 1, dtype=torch.float64, device=self.context.device)
        shard = np.arange(self.context.rank, len(self.val_ids), self.context.world_size)
        shard = shard[np.argsort([len(self.val_ids[i]) for i in shard], kind="stable")]
        eval_batch = self.config.batch_size * 2
        for start in range(0, len(shard), eval_batch):
            input_ids, attention_mask, labels = self._collate(self.val_ids, self.val_labels, shard[start : start + eval_batch])
            with self.autocast():
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
            confusion[-1] += F.cross_entropy(logits, labels, reduction="sum").double()
            flat = labels * classes + logits.argmax(dim=-1)
            confusion[:-1] += torch.bincount(flat, minlength=classes * classes).double()
        all_reduce_sum(self.context, confusion)
        matrix = confusion[:-1].reshape(classes, classes).cpu().numpy().astype(np.int64)
        metrics = metrics_from_confusion(matrix, self.class_names)
        metrics["loss"] = float(confusion[-1].item() / max(1, matrix.sum()))
        self.model.train()
        return metrics

    def _evaluate_and_select(self) -> None:
        metrics = self.evaluate()
        state = self.state
        state.last_eval_step = state.global_step
        epoch_label = state.epoch + (0 if state.step_in_epoch == 0 else 1)
        for name in ("loss", "accuracy", "macro_f1"):
            self.log(f"metric: val_{name}={metrics[name]:.4f} step={state.global_step} epoch={epoch_label}")
        value = float(metrics[self.config.best_metric])
        better = (
            state.best_metric_value is None
            or (value < state.best_metric_value if self.config.best_metric == "loss" else value > state.best_metric_value)
        )
        if better:
            state.best_metric_value, state.best_step = value, state.global_step
            state.best_metrics = {**metrics, "step": state.global_step}
            state.evaluations_without_improvement = 0
            if self.context.is_main:
                self.best_state = {name: t.detach().to("cpu", copy=True) for name, t in self.model.state_dict().items()}
                self.best_state_file = None  # new best weights: the next checkpoint writes them
        else:
            state.evaluations_without_improvement += 1
            patience = self.config.early_stopping_patience
            if patience is not None and state.evaluations_without_improvement >= patience:
                state.early_stopped = True
                self.log(
                    f"early stopping: val {self.config.best_metric} has not improved for {patience} evaluations "
                    f"(best {state.best_metric_value:.4f} at step {state.best_step})"
                )

    # ------------------------------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        config, context, state = self.config, self.context, self.state
        result = TrainResult(
            output_dir=None,
            global_step=state.global_step,
            total_steps=self.total_steps,
            metrics=None,
            best_step=None,
            resumed_from_step=self.resumed_from_step,
        )
        self.log(
            f"training {config.model} on {len(self.train_ids)} examples ({len(self.val_ids)} validation), "
            f"{len(self.class_names)} classes, device {context.device}, precision {self.precision}"
        )
        self.log(
            f"world size {context.world_size}, per-device batch {config.batch_size}, gradient accumulation {config.grad_accum_steps}, "
            f"effective batch {self.effective_batch_size}; {self.steps_per_epoch} steps per epoch, "
            f"{self.total_steps} steps in all, learning rate {self.learning_rate:.2e}, warm-up {self.warmup_steps} steps"
        )
        self.last_checkpoint_time = time.monotonic()
        self.model.train()  # from_pretrained returns a model in eval mode (dropout off)
        progress = _Progress(self, enabled=context.is_main)
        interval_loss = torch.zeros(2, dtype=torch.float64, device=context.device)  # loss sum, examples
        with GracefulStop() as stop:
            while state.epoch < config.epochs and state.global_step < self.total_steps and not state.early_stopped:
                plan = plan_epoch(self.train_lengths, self.effective_batch_size, config.seed, state.epoch, config.group_by_length)
                while state.step_in_epoch < len(plan) and state.global_step < self.total_steps:
                    step = plan[state.step_in_epoch]
                    self.faults.before_step(state.global_step, context.rank)
                    started = time.perf_counter()
                    self._reseed(state.global_step)
                    self.accumulate_gradients(step, interval_loss, result)
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.trainable, config.max_grad_norm)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scheduler.step()
                    if context.device.type == "cuda":
                        torch.cuda.synchronize(context.device)
                    result.train_seconds += time.perf_counter() - started
                    result.steps_this_run += 1
                    state.global_step += 1
                    state.step_in_epoch += 1
                    self.faults.after_step(state.global_step)
                    progress.step(interval_loss)
                    if config.eval_every_steps and state.global_step % config.eval_every_steps == 0:
                        self._evaluate_and_select()
                    epoch_done = state.step_in_epoch >= len(plan)
                    if epoch_done:
                        if state.last_eval_step != state.global_step:
                            self._evaluate_and_select()
                        state.epoch += 1
                        state.step_in_epoch = 0
                    stop_now, time_due = self._agree(stop.requested is not None, self._checkpoint_time_due())
                    steps_due = bool(config.checkpoint_every_steps) and state.global_step % config.checkpoint_every_steps == 0
                    if stop_now or time_due or steps_due or epoch_done or state.early_stopped:
                        reason = "signal" if stop_now else "epoch end" if epoch_done else "interval"
                        result.checkpoint_seconds.append(self._save_checkpoint(reason))
                    if stop_now:
                        progress.close()
                        signum = stop.requested or 15
                        if self.checkpoint_dir is None:
                            self.log("stopping: no --checkpoint-dir was given, so this run's progress is not saved")
                        else:
                            self.log(
                                f"stopped by signal after step {state.global_step}; checkpoint saved, run the same "
                                "command again to resume"
                            )
                        result.interrupted_by = signum
                        result.global_step = state.global_step
                        return result
                    if state.early_stopped or epoch_done:
                        break  # a new epoch needs its own plan
        progress.close()
        if state.last_eval_step != state.global_step or state.best_metrics is None:
            self._evaluate_and_select()
        if self.checkpoint_dir is not None and self.last_checkpoint_step != state.global_step:
            result.checkpoint_seconds.append(self._save_checkpoint("final"))
        result.global_step = state.global_step
        result.early_stopped = state.early_stopped
        result.best_step = state.best_step
        result.metrics = state.best_metrics
        result.output_dir = self._write_output()
        return result

    def accumulate_gradients(self, step: np.ndarray, interval_loss: torch.Tensor, result: TrainResult) -> None:
        """Run this rank's micro-batches of one optimizer step, leaving the step's gradient in .grad.

        Each micro-batch's loss is its examples' summed loss over the number of examples in the
        whole step, so the accumulated gradient is the mean gradient of the concatenated step, also
        when the step is ragged. DDP averages over ranks, hence the factor world_size; the all-reduce
        runs on the last micro-step only (no_sync before it).
        """
        accumulation, world, context = self.config.grad_accum_steps, self.context.world_size, self.context
        for micro_step, indices in enumerate(rank_micro_batches(step, accumulation, world, context.rank)):
            empty = len(indices) == 0
            batch = self._collate(self.train_ids, self.train_labels, step[:1] if empty else indices)
            sync = micro_step == accumulation - 1 or not context.enabled
            with nullcontext() if sync else self.ddp_model.no_sync():  # type: ignore[operator]
                with self.autocast():
                    logits = self.ddp_model(input_ids=batch[0], attention_mask=batch[1]).logits
                loss_sum = F.cross_entropy(logits.float(), batch[2], reduction="sum")
                if empty:
                    loss_sum = loss_sum * 0.0  # keeps every rank in the same collectives
                self.scaler.scale(loss_sum * (world / len(step))).backward()
            if not empty:
                interval_loss[0] += loss_sum.detach().double()
                interval_loss[1] += len(indices)
                result.examples_this_run += len(indices)
                result.real_tokens_this_run += int(batch[1].sum())
                result.padded_tokens_this_run += int(batch[1].numel())
            self.faults.after_micro_step()

    def _checkpoint_time_due(self) -> bool:
        minutes = self.config.checkpoint_every_minutes
        return (
            self.checkpoint_dir is not None
            and minutes is not None
            and time.monotonic() - self.last_checkpoint_time >= minutes * 60
        )

    def _agree(self, stop: bool, time_due: bool) -> tuple[bool, bool]:
        """Every rank takes the same decision (rank 0's clock; any rank's signal)."""
        if not self.context.enabled:
            return stop, time_due
        flags = torch.tensor(
            [float(stop), float(time_due and self.context.is_main)], device=self.context.device
        )
        all_reduce_max(self.context, flags)
        return bool(flags[0].item()), bool(flags[1].item())

    # ----------------------------------------------------------------------------------- output
    def _write_output(self) -> str:
        output_dir = Path(self.config.output_dir)
        if self.context.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            if self.best_state is not None:
                self.model.load_state_dict(self.best_state)
            self.model.save_pretrained(output_dir, safe_serialization=True)
            self.tokenizer.save_pretrained(output_dir)
            metrics = {
                **(self.state.best_metrics or {}),
                "best_metric": self.config.best_metric,
                "final_step": self.state.global_step,
                "early_stopped": self.state.early_stopped,
            }
            resolved = {**self.config.to_dict(), "learning_rate": self.learning_rate, "precision": self.precision,
                        "world_size": self.context.world_size, "effective_batch_size": self.effective_batch_size,
                        "class_names": self.class_names}
            for directory in {output_dir, Path(self.config.metrics_dir or output_dir)}:
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
            (output_dir / "training_config.json").write_text(json.dumps(resolved, indent=2) + "\n", encoding="utf-8")
            self.log(
                f"saved model to {output_dir} (best val {self.config.best_metric} "
                f"{self.state.best_metric_value:.4f} at step {self.state.best_step})"
            )
        barrier(self.context)
        return str(output_dir)


class _Progress:
    """A progress bar on a terminal; plain periodic lines (and train_loss metric lines) otherwise."""

    def __init__(self, trainer: Trainer, enabled: bool) -> None:
        self.trainer = trainer
        self.started = time.perf_counter()
        self.first_step = trainer.state.global_step
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=trainer.total_steps, initial=trainer.state.global_step, unit="step", dynamic_ncols=True)

    def step(self, interval_loss: torch.Tensor) -> None:
        trainer = self.trainer
        state = trainer.state
        every = trainer.config.log_every_steps
        if self.bar is not None:
            self.bar.update(1)
        if state.global_step % every and state.global_step != trainer.total_steps:
            return
        all_reduce_sum(trainer.context, interval_loss)  # every rank reaches this at the same steps
        loss = float(interval_loss[0] / max(1.0, float(interval_loss[1])))
        interval_loss.zero_()
        elapsed = time.perf_counter() - self.started
        done = state.global_step - self.first_step
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (trainer.total_steps - state.global_step) / rate if rate > 0 else 0.0
        examples_per_second = rate * trainer.effective_batch_size
        learning_rate = trainer.scheduler.get_last_lr()[0]
        epoch = state.epoch + (0 if state.step_in_epoch == 0 else 1)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{examples_per_second:.1f}")
        else:
            trainer.log(
                f"step {state.global_step}/{trainer.total_steps} | epoch {epoch}/{trainer.config.epochs} | "
                f"loss {loss:.4f} | lr {learning_rate:.2e} | {examples_per_second:.1f} examples/s | "
                f"eta {_duration(eta)}"
            )
        trainer.log(f"metric: train_loss={loss:.4f} step={state.global_step} epoch={epoch}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    return value


def _restore_rng(saved: dict[str, Any], training_state: dict[str, Any]) -> None:
    python_state = saved["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = saved["numpy"]
    np.random.set_state((numpy_state[0], np.asarray(numpy_state[1], dtype=np.uint32), *numpy_state[2:]))
    torch.set_rng_state(training_state["torch_rng"])
    if torch.cuda.is_available() and training_state.get("cuda_rng"):
        torch.cuda.set_rng_state_all(training_state["cuda_rng"])
