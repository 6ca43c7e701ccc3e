"""Multi-label: micro-F1, macro-F1 and subset accuracy with per-label thresholds tuned on validation against a
fixed 0.5, on documents made of one or two shared DBpedia abstracts of different classes (labels = their classes).

Documents: half hold one abstract, half two abstracts of different classes in random order. Training
documents come from the first rows of the shared train.csv, validation documents from the rows after
them, test documents from test.csv. One `train` run (MiniLM, one epoch by default) tunes the per-label
thresholds on the validation documents and saves them in config.json; `evaluate_model` then scores
the test documents at those thresholds and at 0.5 (the same model and probabilities, so the two
figures differ only by the thresholds).

    python benchmarks/bench_multilabel.py     # 2,000 train, 300 validation, 1,000 test documents, 1 epoch, 256 tokens
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, read_rows, write_result  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = SHARED / "data" / "dbpedia-10k"
MODEL_DIR = SHARED / "models" / "minilm-l6-h384-uncased"


def make_documents(
    rows: list[tuple[int, str]], count: int, class_names: list[str], rng: random.Random, two_fraction: float
) -> tuple[list[dict[str, Any]], int]:
    """`count` documents from `rows` in order: one abstract, or (with probability `two_fraction`) two of
    different classes; returns the documents and the number of rows used."""
    documents, position = [], 0
    while len(documents) < count:
        label, text = rows[position]
        position += 1
        if rng.random() < two_fraction:
            # the next row of another class (rows are shuffled, so this one is near)
            partner = next(index for index in range(position, len(rows)) if rows[index][0] != label)
            other_label, other_text = rows.pop(partner)
            pair = [(label, text), (other_label, other_text)]
            rng.shuffle(pair)
            documents.append({
                "text": " ".join(part for _, part in pair),
                "label": sorted(class_names[index - 1] for index, _ in pair),
            })
        else:
            documents.append({"text": text, "label": [class_names[label - 1]]})
    return documents, position


def write_jsonl(path: Path, documents: list[dict[str, Any]]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for document in documents:
            handle.write(json.dumps(document, ensure_ascii=False) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-docs", type=int, default=2000)
    parser.add_argument("--val-docs", type=int, default=300)
    parser.add_argument("--test-docs", type=int, default=1000)
    parser.add_argument("--two-fraction", type=float, default=0.5, help="share of documents with two abstracts")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: auto (2e-4 for MiniLM)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--no-prior-init", action="store_true",
        help="ablation: leave the fresh head's biases at zero instead of the label prior (patches the library)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--name", default="multilabel")
    args = parser.parse_args()
    if not (args.model / "config.json").exists() or not (DATA_DIR / "train.csv").exists():
        sys.exit(f"needs the shared model and data under {SHARED}")

    import torch

    from bert_classify.config import TrainConfig
    from bert_classify.evaluation import evaluate_model
    from bert_classify.training.loop import train

    if args.no_prior_init:
        from bert_classify import modeling

        modeling.set_output_bias_to_label_prior = lambda *_, **__: False  # type: ignore[assignment]
    if args.threads:
        torch.set_num_threads(args.threads)
    class_names = (DATA_DIR / "classes.txt").read_text(encoding="utf-8").split()
    rng = random.Random(args.seed)
    train_rows, test_rows = read_rows(DATA_DIR / "train.csv"), read_rows(DATA_DIR / "test.csv")
    rng.shuffle(train_rows)
    rng.shuffle(test_rows)
    train_docs, used = make_documents(train_rows, args.train_docs, class_names, rng, args.two_fraction)
    val_docs, _ = make_documents(train_rows[used:], args.val_docs, class_names, rng, args.two_fraction)
    test_docs, _ = make_documents(test_rows, args.test_docs, class_names, rng, args.two_fraction)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        config = TrainConfig(
            train=str(write_jsonl(work / "train.jsonl", train_docs)), val=str(write_jsonl(work / "val.jsonl", val_docs)),
            model=str(args.model), output_dir=str(work / "model"), epochs=args.epochs, batch_size=args.batch_size,
            max_seq_len=args.max_seq_len, seed=args.seed, log_every_steps=25, checkpoint_every_minutes=None,
            learning_rate=args.learning_rate,
        )  # fmt: skip
        started = time.perf_counter()
        result = train(config)
        train_seconds = time.perf_counter() - started
        saved = json.loads((work / "model" / "config.json").read_text(encoding="utf-8"))
        metrics = evaluate_model(
            work / "model", write_jsonl(work / "test.jsonl", test_docs), output_dir=work / "test",
            precision="fp32", max_seq_len=args.max_seq_len,
        )  # fmt: skip
    tuned = {key: metrics[key] for key in ("micro_f1", "macro_f1", "subset_accuracy")}
    fixed = metrics["at_threshold_0.5"]
    validation = result.metrics or {}
    payload = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "documents": {
            "train": len(train_docs), "validation": len(val_docs), "test": len(test_docs),
            "test_with_two_labels": sum(len(document["label"]) == 2 for document in test_docs),
        },
        "problem_type": saved.get("problem_type"),
        "label_thresholds": saved.get("label_thresholds"),
        "test_tuned_thresholds": tuned,
        "test_threshold_0_5": fixed,
        "gain": {key: tuned[key] - fixed[key] for key in tuned},
        "validation_at_0_5": {key: validation.get(key) for key in ("micro_f1", "macro_f1", "subset_accuracy")},
        "validation_tuned_thresholds": validation.get("tuned_thresholds"),
        "test_per_label_f1": {name: values["f1"] for name, values in metrics["per_class"].items()},
        "train_seconds": train_seconds,
        "train_examples_per_second": result.examples_per_second,
    }
    print(f"{'thresholds':<22} {'micro-F1':>9} {'macro-F1':>9} {'subset acc':>11}")
    for name, values in (("tuned on validation", tuned), ("fixed 0.5", fixed)):
        print(f"{name:<22} {values['micro_f1']:>9.4f} {values['macro_f1']:>9.4f} {values['subset_accuracy']:>11.4f}")
    print(f"wrote {write_result(args.name, payload)}")


if __name__ == "__main__":
    main()
