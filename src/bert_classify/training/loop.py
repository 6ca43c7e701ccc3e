"""The training loop: one loop, explicit state, read top to bottom.

`train(config)` is what the CLI, torchrun workers and the SageMaker entry point all call.
"""

from __future__ import annotations

import json
import math
import os
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
from bert_classify.config import TRAINING_CONFIG_FILE, TrainConfig, auto_learning_rate, check_output_locations
from bert_classify.data.collate import pad_batch
from bert_classify.errors import ConfigError, TrainingError
from bert_classify.training.batching import plan_epoch, rank_micro_batches, steps_per_epoch
from bert_classify.training.checkpoint import Checkpointer, make_fingerprint, require_finite
from bert_classify.training.distributed import (
    DistributedContext,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from bert_classify.training.faults import FaultPlan, faults_for_tests
from bert_classify.training.signals import GracefulStop


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
    checkpoint_seconds: list[float] = field(default_factory=list)  # time each checkpoint blocked training
    checkpoint_write_seconds: list[float] = field(default_factory=list)  # time each write took (in the background)
    checkpoint_bytes: list[int] = field(default_factory=list)  # bytes serialised per checkpoint (linked files excluded)

    @property
    def examples_per_second(self) -> float:
        return self.examples_this_run / self.train_seconds if self.train_seconds > 0 else 0.0


def train(config: TrainConfig, *, faults: FaultPlan | None = None) -> TrainResult:
    """Fine-tune `config.model` on `config.train`; see `Trainer` for the features and errors.

    `faults` injects a SIGTERM or an error at a given step (tests, the quickstart's demo). Without it,
    none are injected unless the test-only switch BERT_CLASSIFY_TEST_FAULTS=1 is set (training/faults.py).
    """
    config.validate()
    check_output_locations(config)
    context = init_distributed()
    trainer = None
    try:
        trainer = Trainer(config, context, faults=faults)
        trainer.setup()
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.close()
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
    CheckpointError when the newest checkpoint was written with a different configuration or data,
    when another run holds the checkpoint directory, or when a checkpoint cannot be written (disk full);
    TrainingError when the loss, the gradients or the weights become non-finite (nothing more is written).
    """

    def __init__(self, config: TrainConfig, context: DistributedContext, faults: FaultPlan | None = None) -> None:
        self.config = config
        self.context = context
        self.state = TrainingState()
        self.resumed_from_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.faults = faults if faults is not None else faults_for_tests() or FaultPlan()
        self.checkpointer: Checkpointer | None = None

    def close(self) -> None:
        """Finish a checkpoint write in flight and release the checkpoint directory's lock."""
        if self.checkpointer is not None:
            self.checkpointer.close()

    # ----------------------------------------------------------------------------------- logging
    def log(self, message: str) -> None:
        if self.context.is_main:
            print(message, flush=True)

    # ------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        self._setup_model_config()
        self._setup_data()
        self._setup_class_weights()
        self._setup_model()
        self._setup_optimizer()
        self._setup_precision()
        self._setup_checkpointing()
        self._setup_curves()

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
        self.windowing = long_texts_windowing(config, self.tokenizer)
        tokens = token_cache.load_or_build(
            self._read_data, self.tokenizer, config.max_seq_len, cache_root=cache_root,
            key_inputs=self._data_key_inputs() if cache_root is not None else None,
            log=lambda message: print(f"rank {rank}: {message}" if self.context.enabled else message, flush=True),
            windowing=self.windowing,
        )
        if self.windowing is not None:
            self.log(
                f"--long-texts chunk: {tokens.train.num_documents} training texts in {len(tokens.train)} windows, "
                f"{tokens.val.num_documents} validation texts in {len(tokens.val)} windows (windows of "
                f"{config.max_seq_len} tokens sharing {self.windowing.stride}; validation by {config.chunk_aggregation})"
            )
        self.class_names = tokens.class_names
        self.multi_label = tokens.multi_label
        if self.multi_label:
            how = "--multi-label" if config.multi_label else f"detected: the labels in {config.train or 'the data'} are lists"
            self.log(
                f"multi-label classification ({how}): sigmoid outputs with binary cross-entropy, per-label thresholds "
                "tuned on the validation data"
            )
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
            # absent in single-label mode, so that the entries of earlier versions are still found
            **({"multi_label": True, "label_separator": config.label_separator} if config.multi_label else {}),
        }

    def _read_data(self) -> tuple[Any, Any]:
        from bert_classify.data import load_labeled_data, read_class_names, stratified_split
        from bert_classify.data.labels import describe_classes, unused_classes

        config = self.config
        class_names = read_class_names(config.classes) if config.classes else None
        options = dict(data_format=config.data_format, text_column=config.text_column, label_column=config.label_column,
                       label_separator=config.label_separator)
        train_data = load_labeled_data(
            config.train, class_names=class_names, reader=config.reader, multi_label=config.multi_label or None, **options
        )
        unused = unused_classes(train_data)
        if unused:
            self.log(f"warning: {len(unused)} classes have no training examples in {train_data.source}: {describe_classes(unused)}")
        if config.val:
            val_data = load_labeled_data(
                config.val, class_names=train_data.class_names, reader=config.reader,
                multi_label=train_data.multi_label, **options,
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
        model = modeling.load_for_training(
            self.config.model, self.class_names, self.config.freeze_encoder, multi_label=self.multi_label
        )
        if self.multi_label and len(self.train_labels):
            modeling.set_output_bias_to_label_prior(model, np.asarray(self.train_labels, dtype=np.float64).mean(axis=0))
        if self.config.gradient_checkpointing:
            # non-reentrant: works with DDP and frozen layers, and restores the RNG so dropout recomputes alike
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
        self.step_loss = torch.zeros((), dtype=torch.float64, device=device)  # this rank's summed loss of the step

    def _setup_checkpointing(self) -> None:
        config = self.config
        fingerprint = make_fingerprint(
            config,
            learning_rate=self.learning_rate,
            effective_batch_size=self.effective_batch_size,
            precision=self.precision,  # resolved: "auto" means different things on different machines
            class_names=self.class_names,
            train_data=self.data_digests["train"],
            val_data=self.data_digests["val"],
            **class_weights_fingerprint(config),
            **({"multi_label": True} if self.multi_label else {}),
            **long_texts_fingerprint(config, self.windowing),
        )
        self.checkpointer = Checkpointer(
            Path(config.checkpoint_dir) if config.checkpoint_dir else None,
            keep=config.keep_checkpoints,
            fingerprint=fingerprint,
            config_values=config.to_dict(),
            force_resume=config.force_resume,
            context=self.context,
            log=self.log,
            after_file=self.faults.during_checkpoint_write,
        )
        self.checkpointer.open()
        restored = self.checkpointer.resume(self.model, self.optimizer, self.scheduler, self.scaler)
        if restored is not None:
            self.state = TrainingState(**restored.progress)
            self.best_state = restored.best_state
            self.resumed_from_step = restored.step
        barrier(self.context)

    def _save_checkpoint(self, reason: str, *, wait: bool) -> float:
        """Hand the state after this step to the checkpointer; returns the seconds training was blocked."""
        assert self.checkpointer is not None
        return self.checkpointer.save(
            step=self.state.global_step, reason=reason, model=self.model, optimizer=self.optimizer,
            scheduler=self.scheduler, scaler=self.scaler, progress=self.state, best_state=self.best_state, wait=wait,
        )

    # ---------------------------------------------------------------------------------- batches
    def _collate(self, ids: list[np.ndarray], labels: np.ndarray, indices: np.ndarray) -> tuple[torch.Tensor, ...]:
        input_ids, attention_mask = pad_batch([ids[index] for index in indices], self.pad_id)
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

        if self.multi_label:
            return self._evaluate_multilabel()
        if self.val_ids.documents is not None:
            return self._evaluate_documents()
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

    @torch.inference_mode()
    def _evaluate_multilabel(self) -> dict[str, Any]:
        """Metrics at the 0.5 threshold, plus the per-label thresholds these weights score best with on validation.

        One pass counts true/false positives and false negatives at every threshold of the grid (reduced over
        ranks like the confusion matrix); the thresholds travel with the best metrics into the saved model.
        """
        from bert_classify.evaluation import (
            DEFAULT_THRESHOLD,
            THRESHOLD_GRID,
            f1_at_thresholds,
            metrics_from_label_counts,
            tune_thresholds,
        )

        self.model.eval()
        classes, device = len(self.class_names), self.context.device
        grid = torch.tensor(THRESHOLD_GRID, dtype=torch.float32, device=device)
        half = THRESHOLD_GRID.index(DEFAULT_THRESHOLD)
        counts = torch.zeros(len(THRESHOLD_GRID) * classes * 3 + 3, dtype=torch.float64, device=device)
        shard = np.arange(self.context.rank, len(self.val_ids), self.context.world_size)
        shard = shard[np.argsort([len(self.val_ids[i]) for i in shard], kind="stable")]
        eval_batch = self.config.batch_size * 2
        for start in range(0, len(shard), eval_batch):
            input_ids, attention_mask, labels = self._collate(self.val_ids, self.val_labels, shard[start : start + eval_batch])
            with self.autocast():
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
            truth = labels.bool()
            predicted = torch.sigmoid(logits)[None] >= grid[:, None, None]  # (grid, batch, classes)
            by_threshold = torch.stack(
                [(predicted & truth).sum(1), (predicted & ~truth).sum(1), (~predicted & truth).sum(1)], dim=-1
            )
            counts[:-3] += by_threshold.flatten().double()
            counts[-3] += (predicted[half] == truth).all(dim=1).sum().double()
            counts[-2] += self._loss_sum(logits, labels, weighted=False).double()
            counts[-1] += len(labels)
        all_reduce_sum(self.context, counts)
        grid_counts = counts[:-3].reshape(len(THRESHOLD_GRID), classes, 3).cpu().numpy()
        examples = int(counts[-1].item())
        at_half = grid_counts[half]
        metrics = metrics_from_label_counts(
            at_half[:, 0], at_half[:, 1], at_half[:, 2], int(counts[-3].item()), examples, self.class_names
        )
        metrics["loss"] = float(counts[-2].item() / max(1, examples))
        thresholds = tune_thresholds(grid_counts)
        metrics["label_thresholds"] = {name: float(value) for name, value in zip(self.class_names, thresholds)}
        metrics["tuned_thresholds"] = f1_at_thresholds(grid_counts, thresholds)  # optimistic: tuned on these examples
        self.model.train()
        return metrics

    def _evaluate_documents(self) -> dict[str, Any]:
        """Validation with --long-texts chunk: each rank runs the windows of its share of the documents, combines
        them per document (inference/windows.py, as predict and serve do) and counts documents, not windows."""
        from bert_classify.evaluation import metrics_from_confusion
        from bert_classify.inference.windows import aggregate_windows

        self.model.eval()
        classes = len(self.class_names)
        documents = np.asarray(self.val_ids.documents)
        mine = np.flatnonzero(documents % self.context.world_size == self.context.rank)
        order = mine[np.argsort(self.val_ids.lengths[mine], kind="stable")]
        window_logits = np.zeros((len(documents), classes), dtype=np.float32)
        eval_batch = self.config.batch_size * 2
        for start in range(0, len(order), eval_batch):
            indices = order[start : start + eval_batch]
            input_ids, attention_mask, _ = self._collate(self.val_ids, self.val_labels, indices)
            with self.autocast():
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
            window_logits[indices] = logits.cpu().numpy()
        confusion = np.zeros(classes * classes + 1, dtype=np.float64)
        if len(mine):
            present, first, inverse = np.unique(documents[mine], return_index=True, return_inverse=True)
            probabilities = aggregate_windows(
                window_logits[mine], inverse, len(present), self.config.chunk_aggregation
            ).astype(np.float64)
            labels = np.asarray(self.val_labels)[mine[first]]
            confusion[-1] = -np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, None)).sum()
            confusion[:-1] = np.bincount(labels * classes + probabilities.argmax(axis=1), minlength=classes * classes)
        totals = torch.from_numpy(confusion).to(self.context.device)
        all_reduce_sum(self.context, totals)
        matrix = totals[:-1].reshape(classes, classes).cpu().numpy().astype(np.int64)
        metrics = metrics_from_confusion(matrix, self.class_names)
        metrics["loss"] = float(totals[-1].item() / max(1, matrix.sum()))
        self.model.train()
        return metrics

    def _evaluate_and_select(self) -> None:
        metrics = self.evaluate()
        state = self.state
        if not math.isfinite(metrics["loss"]):
            raise TrainingError(
                f"the validation loss became non-finite ({metrics['loss']}) at step {state.global_step}: the weights "
                "have diverged; nothing more is written. Lower --learning-rate, check --max-grad-norm and "
                "--weight-decay, or use --precision fp32."
            )
        state.last_eval_step = state.global_step
        epoch_label = state.epoch + (0 if state.step_in_epoch == 0 else 1)
        for name in ("loss", "accuracy", "macro_f1"):
            self.log(f"metric: val_{name}={metrics[name]:.4f} step={state.global_step} epoch={epoch_label}")
        self.curves.add(state.global_step, {f"val/{name}": metrics[name] for name in ("loss", "accuracy", "macro_f1")})
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
        checkpointer = self.checkpointer
        assert checkpointer is not None
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
                    self.step_loss.zero_()
                    self.accumulate_gradients(step, interval_loss, result)
                    self.scaler.unscale_(self.optimizer)
                    gradient_norm = torch.nn.utils.clip_grad_norm_(self.trainable, config.max_grad_norm)
                    self._stop_if_not_finite(gradient_norm)  # before the update: the weights stay good
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
                    checkpointer.poll()  # logs a finished background write; raises if it failed
                    time_due = checkpointer.due_by_time(config.checkpoint_every_minutes)
                    stop_now, time_due = self._agree(stop.requested is not None, time_due)
                    steps_due = bool(config.checkpoint_every_steps) and state.global_step % config.checkpoint_every_steps == 0
                    if stop_now or time_due or steps_due or epoch_done or state.early_stopped:
                        reason = "signal" if stop_now else "epoch end" if epoch_done else "interval"
                        # the signal checkpoint is written in full before the process goes on to exit
                        result.checkpoint_seconds.append(self._save_checkpoint(reason, wait=stop_now))
                    if stop_now:
                        progress.close()
                        signum = stop.requested or 15
                        self._collect_checkpoint_records(result)
                        if not checkpointer.enabled:
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
        if checkpointer.enabled:  # the final checkpoint (unless this step's is written), joined on every rank
            result.checkpoint_seconds.append(self._save_checkpoint("final", wait=True))
        self._collect_checkpoint_records(result)
        result.global_step = state.global_step
        result.early_stopped = state.early_stopped
        result.best_step = state.best_step
        result.metrics = state.best_metrics
        if self.context.is_main:
            require_finite(self.best_state or self.model.state_dict(), "the final model")
        try:
            result.output_dir = self._write_output()
        except OSError as error:
            kept = (
                "the checkpoints are kept: free space and run the same command again (it resumes and only writes the model)"
                if checkpointer.enabled
                else "no --checkpoint-dir was given, so this run's training is lost"
            )
            raise TrainingError(
                f"could not write the model to --output-dir {config.output_dir} ({error.strerror or error}); {kept}."
            ) from None
        return result

    def _collect_checkpoint_records(self, result: TrainResult) -> None:
        assert self.checkpointer is not None
        result.checkpoint_write_seconds = [record.write_seconds for record in self.checkpointer.records]
        result.checkpoint_bytes = [record.bytes_written for record in self.checkpointer.records]

    def _stop_if_not_finite(self, gradient_norm: torch.Tensor) -> None:
        """Stop (TrainingError, on every rank alike) before an update from a non-finite loss or gradient.

        With fp16 an infinite gradient is expected now and then (the gradient scaler skips that step),
        so only the loss counts there.
        """
        bad = ~torch.isfinite(self.step_loss)
        if not self.scaler.is_enabled():
            bad = bad | ~torch.isfinite(gradient_norm.detach().to(bad.device))
        flag = bad.to(torch.float32).reshape(1)
        all_reduce_max(self.context, flag)
        if flag.item() > 0:
            step = self.state.global_step + 1
            checkpoint = (
                f"the last good checkpoint (step {self.checkpointer.last_step}) is kept"
                if self.checkpointer is not None and self.checkpointer.last_step is not None
                else "no checkpoint was written after it"
            )
            raise TrainingError(
                f"the training loss became non-finite (loss {float(self.step_loss):.4g}, gradient norm "
                f"{float(gradient_norm):.4g}) at step {step}; stopped before updating the weights, {checkpoint} and "
                "--output-dir is not written. Lower --learning-rate, check --max-grad-norm and --weight-decay, "
                "or use --precision fp32."
            )

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
                loss_sum = self._loss_sum(logits.float(), batch[2])
                if empty:
                    loss_sum = loss_sum * 0.0  # keeps every rank in the same collectives
                self.scaler.scale(loss_sum * (world / len(step))).backward()
            if not empty:
                self.step_loss += loss_sum.detach().double()
                interval_loss[0] += loss_sum.detach().double()
                interval_loss[1] += len(indices)
                result.examples_this_run += len(indices)
                result.real_tokens_this_run += int(batch[1].sum())
                result.padded_tokens_this_run += int(batch[1].numel())
            self.faults.after_micro_step()

    def _loss_sum(self, logits: torch.Tensor, labels: torch.Tensor, *, weighted: bool = True) -> torch.Tensor:
        """The batch's summed loss: cross-entropy, or for multi-label binary cross-entropy averaged over labels
        (per example, as transformers' BCEWithLogitsLoss; --class-weights balanced: a pos_weight per label,
        left out of the validation loss as the class weights are)."""
        if not self.multi_label:
            return F.cross_entropy(logits, labels, weight=self.class_weights, reduction="sum")
        per_label = F.binary_cross_entropy_with_logits(
            logits, labels.to(logits.dtype), pos_weight=self.class_weights if weighted else None, reduction="sum"
        )
        return per_label / logits.shape[-1]

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
            resolved = {**self.config.to_dict(), "learning_rate": self.learning_rate, "precision": self.precision,
                        "world_size": self.context.world_size, "effective_batch_size": self.effective_batch_size,
                        "class_names": self.class_names}
            # Written first, and whole or not at all (temporary file, rename): a re-run after a kill or a full
            # disk mid-write recognises the half-written model as its own.
            temporary = output_dir / f".{TRAINING_CONFIG_FILE}.tmp"
            try:
                temporary.write_text(json.dumps(resolved, indent=2) + "\n", encoding="utf-8")
                os.replace(temporary, output_dir / TRAINING_CONFIG_FILE)
            finally:
                temporary.unlink(missing_ok=True)
            if self.best_state is not None:
                self.model.load_state_dict(self.best_state)
            if self.multi_label:  # the best weights' thresholds, tuned on validation: inference applies them
                thresholds = (self.state.best_metrics or {}).get("label_thresholds") or {}
                self.model.config.label_thresholds = {name: float(thresholds.get(name, 0.5)) for name in self.class_names}
            save_long_texts_settings(self.model.config, self.config, self.windowing)
            self.model.save_pretrained(output_dir, safe_serialization=True)
            # The truncation length travels with the model (tokenizer_config.json model_max_length): our
            # predict/serve/evaluate/handler and a plain transformers pipeline apply what training used.
            self.tokenizer.model_max_length = self.config.max_seq_len
            self.tokenizer.save_pretrained(output_dir)
            metrics = {
                **(self.state.best_metrics or {}),
                "best_metric": self.config.best_metric,
                "final_step": self.state.global_step,
                "early_stopped": self.state.early_stopped,
            }
            for directory in {output_dir, Path(self.config.metrics_dir or output_dir)}:
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
            self.curves.write_outputs(sorted({output_dir, Path(self.config.metrics_dir or output_dir)}))
            self.log(
                f"saved model to {output_dir} (best val {self.config.best_metric} "
                f"{self.state.best_metric_value:.4f} at step {self.state.best_step})"
            )
        barrier(self.context)
        return str(output_dir)

    # ------------------------------------------------------------- class weights, training curves
    def _setup_class_weights(self) -> None:
        """Warn about imbalanced classes; with --class-weights balanced, weight the loss per class."""
        from bert_classify.training import class_balance

        self.class_weights: torch.Tensor | None = None
        if self.multi_label:  # counts: positive examples per label
            counts = np.asarray(self.train_labels, dtype=np.int64).sum(axis=0)
            warning = class_balance.imbalance_warning(counts, self.class_names, self.config.class_weights)
            if warning:
                self.log(warning)
            if self.config.class_weights == "balanced":
                weights = class_balance.multilabel_pos_weights(counts, len(self.train_labels))
                self.class_weights = torch.tensor(weights, dtype=torch.float32, device=self.context.device)
                self.log(f"positive weights per label (balanced): from {weights.min():.3g} to {weights.max():.3g}")
            return
        counts = class_balance.class_counts(self.train_labels, len(self.class_names))
        warning = class_balance.imbalance_warning(counts, self.class_names, self.config.class_weights)
        if warning:
            self.log(warning)
        if self.config.class_weights == "balanced":
            weights = class_balance.balanced_class_weights(counts)
            self.class_weights = torch.tensor(weights, dtype=torch.float32, device=self.context.device)
            self.log(f"class weights (balanced): from {weights[weights > 0].min():.3g} to {weights.max():.3g}")

    def _setup_curves(self) -> None:
        """Scalars by step for training_curves.png and TensorBoard; the history resumes with the checkpoint."""
        from bert_classify.training.curves import HISTORY_FILE, TrainingCurves

        config = self.config
        self.curves = TrainingCurves(
            history_path=Path(config.checkpoint_dir) / HISTORY_FILE if config.checkpoint_dir else None,
            tensorboard_dir=Path(config.tensorboard_dir) if config.tensorboard_dir else None,
            start_step=self.state.global_step,
            enabled=self.context.is_main,
        )
        if config.tensorboard_dir:
            self.log(f"TensorBoard event files in {config.tensorboard_dir} (tensorboard --logdir {config.tensorboard_dir})")


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
        trainer.curves.add(state.global_step, {"train/loss": loss, "train/learning_rate": learning_rate})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def long_texts_windowing(config: TrainConfig, tokenizer: Any) -> Any:
    """The Windowing of --long-texts chunk (inference/windows.py), None for truncation. Training keeps every
    window of a text (no max_windows cap: the data is the user's own); ConfigError for an impossible stride."""
    if config.long_texts != "chunk":
        return None
    from bert_classify.inference.windows import Windowing

    return Windowing.for_tokenizer(tokenizer, config.max_seq_len, config.chunk_stride)


def long_texts_fingerprint(config: TrainConfig, windowing: Any) -> dict[str, Any]:
    """Mode, resolved stride and aggregation for the resume fingerprint; absent for truncation (older checkpoints match)."""
    if windowing is None:
        return {}
    return {"long_texts": config.long_texts, "chunk_stride": windowing.stride, "chunk_aggregation": config.chunk_aggregation}


def save_long_texts_settings(model_config: Any, config: TrainConfig, windowing: Any) -> None:
    """How training handled long texts, as extra attributes of the model's config.json (`long_texts`,
    `chunk_stride`, `chunk_aggregation`): Classifier.from_pretrained applies them by default."""
    model_config.long_texts = config.long_texts
    if windowing is not None:
        model_config.chunk_stride = windowing.stride
        model_config.chunk_aggregation = config.chunk_aggregation


def class_weights_fingerprint(config: TrainConfig) -> dict[str, Any]:
    """The class-weight mode for the resume fingerprint; absent at its default, so older checkpoints still match."""
    return {"class_weights": config.class_weights} if config.class_weights != "none" else {}
