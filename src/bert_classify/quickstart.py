"""The offline end-to-end demo: sample data, a tiny local BERT, training with a simulated spot
interruption and its resume, evaluation and prediction. `--model`/`--data` run it on real ones.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bert_classify.config import TrainConfig
from bert_classify.errors import ConfigError


@dataclass
class QuickstartResult:
    output_dir: Path
    model_dir: Path
    evaluation_dir: Path
    interrupted_at_step: int | None
    resumed_from_step: int | None
    metrics: dict[str, Any]
    predictions: list[tuple[str, dict[str, Any]]]


def run_quickstart(
    output_dir: str | Path = "quickstart-output",
    *,
    model: str | None = None,
    data: str | Path | None = None,
    epochs: int = 6,
    max_steps: int | None = None,
    batch_size: int = 8,
    grad_accum_steps: int = 2,
    interrupt: bool = True,
    say: Any = print,
) -> QuickstartResult:
    from bert_classify.evaluation import evaluate_model
    from bert_classify.inference.predictor import Classifier
    from bert_classify.modeling import build_tiny_model
    from bert_classify.sample_data import write_sample_dataset
    from bert_classify.training.faults import FaultPlan
    from bert_classify.training.loop import train

    output_dir = Path(output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    if checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)  # the demo always starts fresh
    if data is None:
        files = write_sample_dataset(output_dir / "data")
        say(f"[1/5] wrote a sample data set in the DBpedia layout to {output_dir / 'data'}")
    else:
        data = Path(data)
        files = {split: data / f"{split}.csv" for split in ("train", "val", "test")}
        files["classes"] = data / "classes.txt"
        for required in ("train", "classes"):
            if not files[required].exists():
                raise ConfigError(f"--data {data}: expected {files[required].name} there (DBpedia layout).")
        say(f"[1/5] using the data in {data}")
    learning_rate = None  # auto, from the model's width
    if model is None:
        from bert_classify.data import load_labeled_data, read_class_names

        train_rows = load_labeled_data(str(files["train"]), class_names=read_class_names(files["classes"]))
        model = str(build_tiny_model(output_dir / "tiny-bert", train_rows.texts, train_rows.class_names,
                                     hidden_size=64, dropout=0.0))
        learning_rate = 3e-3  # a randomly initialised tiny model learns far faster at a high rate
        say(f"[2/5] built a tiny BERT (2 layers, hidden 64, WordPiece vocabulary trained on the data) in {model}")
    else:
        say(f"[2/5] fine-tuning {model}")
    config = TrainConfig(
        train=str(files["train"]),
        val=str(files["val"]) if files["val"].exists() else None,
        classes=str(files["classes"]),
        model=model,
        output_dir=str(output_dir / "model"),
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum_steps=grad_accum_steps,
        learning_rate=learning_rate,
        checkpoint_dir=str(checkpoint_dir),
        checkpoint_every_steps=10,
        log_every_steps=10,
    )
    interrupted_at = None
    resumed_from = None
    if interrupt:
        say("[3/5] training, with a simulated spot interruption (SIGTERM) part-way through")
        first = train(config, faults=FaultPlan(sigterm_at_step=13))
        interrupted_at = first.global_step if first.interrupted_by is not None else None
        if interrupted_at is not None:
            say(f"      interrupted after step {interrupted_at}; running the same job again resumes it")
    else:
        say("[3/5] training")
    result = train(config, faults=FaultPlan())
    resumed_from = result.resumed_from_step
    test_file = files["test"] if files["test"].exists() else files.get("val")
    evaluation_dir = output_dir / "evaluation"
    metrics: dict[str, Any] = result.metrics or {}
    if test_file is not None and Path(test_file).exists():
        metrics = evaluate_model(result.output_dir, str(test_file), classes=str(files["classes"]), output_dir=evaluation_dir)
        say(
            f"[4/5] test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
            f"(report and confusion matrix in {evaluation_dir})"
        )
    else:
        say("[4/5] no test file: skipped evaluation")
    classifier = Classifier.from_pretrained(result.output_dir)
    from bert_classify.data import load_labeled_data, read_class_names

    sample_file = test_file if test_file is not None and Path(test_file).exists() else files["train"]
    held_out = load_labeled_data(str(sample_file), class_names=read_class_names(files["classes"]))
    examples = held_out.texts[:3]
    predictions = list(zip(examples, classifier.predict(examples)))
    say(f"[5/5] predictions for the first texts of {sample_file}:")
    for (text, prediction), label in zip(predictions, held_out.labels[:3]):
        say(f"      {prediction['label']:<22} {prediction['score']:.3f}  (true: {held_out.class_names[label]})  "
            f"{text[:70]}")
    say(f"done. model: {result.output_dir}  checkpoints: {checkpoint_dir}  evaluation: {evaluation_dir}")
    return QuickstartResult(output_dir, Path(result.output_dir or ""), evaluation_dir, interrupted_at, resumed_from,
                            metrics, predictions)
