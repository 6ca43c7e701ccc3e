"""Long documents: `--long-texts chunk` against `truncate`, and the window aggregation rules, side by side.

Documents are built from the shared DBpedia rows: ~130 tokens (115 to 145, drawn per document) of
class-neutral boilerplate (cookie-notice, legal and site-footer sentences from one pool for every class,
shuffled per document) and then the row's abstract. At --max-seq-len 128 truncation sees little of the
abstract; chunk sees all of it in overlapping windows. Both runs train the shared MiniLM on the same
documents with the same seed and schedule (one epoch), as two processes of one torch thread each started
together, so that the load of a shared machine falls on both alike. Each model is then scored on
--test-rows documents built from the shared test rows; the chunk model's window logits are computed once
and combined by every aggregation rule (mean_logits, max_logits, max_probability).

The two accuracy runs do not end together (chunk has more windows), so their wall-clock rates are
skewed by whatever else runs after the first ends. `--cost` measures the cost fairly instead: one
process alternates the two modes round by round (training --cost-steps optimizer steps from the base
model, then predicting --cost-documents test documents with each trained model), best of --rounds.

    python benchmarks/bench_long_texts.py          # 1,500 training documents, 300 validation, 1,000 test, 1 epoch
    python benchmarks/bench_long_texts.py --cost   # the cost in documents/s, alternating rounds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, read_rows, write_result, write_rows  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = SHARED / "data" / "dbpedia-10k"
MODEL_DIR = SHARED / "models" / "minilm-l6-h384-uncased"
MODES = ("truncate", "chunk")

# One pool for every class: what sits above the text on many crawled pages.
BOILERPLATE = [
    "We use cookies and similar technologies to improve your experience on our website.",
    "By continuing to browse this site you agree to our use of cookies.",
    "You can change your cookie settings at any time in your browser preferences.",
    "This website is provided on an as is basis without warranties of any kind.",
    "All content on this page is subject to the terms of use and the privacy policy.",
    "We may share information about your use of our site with our analytics partners.",
    "Please read these terms carefully before using the services described below.",
    "Copyright notice: reproduction of this material requires prior written permission.",
    "Your continued use of the service constitutes acceptance of the updated terms.",
    "For questions about this notice please contact the site administrator by email.",
    "Some features may not work correctly if you disable cookies in your browser.",
    "The operator of this website is not responsible for the content of external links.",
    "Personal data is processed in accordance with the applicable data protection laws.",
    "You have the right to request access to and deletion of your personal data.",
    "This notice was last updated at the beginning of the current calendar year.",
    "Advertising partners may place cookies to measure the effectiveness of campaigns.",
    "Sign in or create an account to save your preferences across devices.",
    "Accept all cookies, reject optional cookies, or manage your choices individually.",
    "Nothing on this page constitutes legal, financial or professional advice.",
    "Skip to main content. Menu. Search. Home. About. Contact. Help.",
    "Subscribe to our newsletter to receive updates, offers and announcements.",
    "The information below is provided for general reference purposes only.",
    "Use of this site is governed by the laws of the jurisdiction stated in the terms.",
    "Strictly necessary cookies are required for the website to function and cannot be switched off.",
]


def build_documents(rows: list[tuple[int, str]], tokenizer: Any, low: int, high: int, seed: int) -> tuple[list[tuple[int, str]], dict[str, float]]:
    """Each row's abstract after boilerplate sentences (shuffled, from the one pool) of low..high tokens."""
    rng = random.Random(seed)
    sizes = {sentence: len(tokenizer(sentence, add_special_tokens=False)["input_ids"]) for sentence in BOILERPLATE}
    documents, prefix_tokens, total_tokens = [], [], []
    for label, abstract in rows:
        target = rng.randint(low, high)
        pool = BOILERPLATE[:]
        rng.shuffle(pool)
        chosen, tokens = [], 0
        while tokens < target:
            if not pool:
                pool = BOILERPLATE[:]
                rng.shuffle(pool)
            sentence = pool.pop()
            chosen.append(sentence)
            tokens += sizes[sentence]
        text = " ".join(chosen) + " " + abstract
        documents.append((label, text))
        prefix_tokens.append(tokens)
        total_tokens.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    stats = {
        "boilerplate_tokens_mean": sum(prefix_tokens) / len(prefix_tokens),
        "boilerplate_tokens_min": min(prefix_tokens),
        "boilerplate_tokens_max": max(prefix_tokens),
        "document_tokens_mean": sum(total_tokens) / len(total_tokens),
        "document_tokens_max": max(total_tokens),
    }
    return documents, stats


def run_one(args: argparse.Namespace) -> None:
    """One mode's training and test scoring, in its own process; writes SCRATCH/MODE.json."""
    import numpy as np
    import torch

    from bert_classify.config import TrainConfig
    from bert_classify.data import load_labeled_data
    from bert_classify.evaluation import classification_metrics
    from bert_classify.inference.predictor import Classifier
    from bert_classify.inference.windows import AGGREGATIONS, Windows, aggregate_windows
    from bert_classify.training.loop import train

    torch.set_num_threads(1)
    work, mode = args.scratch, args.mode
    config = TrainConfig(
        train=str(work / "train.csv"), val=str(work / "val.csv"), classes=str(DATA_DIR / "classes.txt"),
        model=str(args.model), output_dir=str(work / mode), epochs=args.epochs, batch_size=args.batch_size,
        max_seq_len=args.max_seq_len, seed=args.seed, long_texts=mode, log_every_steps=25,
        checkpoint_every_minutes=None,
    )  # fmt: skip
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    test = load_labeled_data(work / "test.csv", class_names=(DATA_DIR / "classes.txt").read_text().split())
    classifier = Classifier.from_pretrained(work / mode, device="cpu", precision=args.inference_precision)
    predict_started = time.perf_counter()
    encoded = classifier.encode(test.texts)
    rows = [window for entry in encoded for window in (entry if isinstance(entry, Windows) else [entry])]
    documents = [number for number, entry in enumerate(encoded) for _ in (entry if isinstance(entry, Windows) else [entry])]
    lengths = np.array([len(row) for row in rows])
    order = np.argsort(-lengths, kind="stable")
    logits = np.zeros((len(rows), len(classifier.class_names)), dtype=np.float32)
    for start in range(0, len(order), 32):
        indices = order[start : start + 32]
        logits[indices] = classifier.logits(*classifier.pad([rows[index] for index in indices]))
    predict_seconds = time.perf_counter() - predict_started
    scores = {}
    for method in AGGREGATIONS if mode == "chunk" else ("mean_logits",):
        probabilities = aggregate_windows(logits, documents, len(test), method)
        metrics = classification_metrics(test.labels, probabilities.argmax(axis=1).tolist(), test.class_names)
        scores[method if mode == "chunk" else "truncate"] = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    run = {
        "val_accuracy": (result.metrics or {}).get("accuracy"),
        "val_macro_f1": (result.metrics or {}).get("macro_f1"),
        "val_aggregation": config.chunk_aggregation if mode == "chunk" else None,
        "test": scores,
        "train_documents": args.train_rows,
        "train_windows": result.examples_this_run,
        "train_seconds_in_loop": result.train_seconds,
        "train_documents_per_second": args.train_rows * args.epochs / result.train_seconds,
        "train_windows_per_second": result.examples_per_second,
        "train_process_seconds": seconds,
        "test_windows": len(rows),
        "predict_seconds": predict_seconds,
        "predict_documents_per_second": len(test) / predict_seconds,
        "inference_precision": classifier.precision,
    }
    (work / f"{mode}.json").write_text(json.dumps(run), encoding="utf-8")


def measure_cost(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Documents/s of training and of prediction for both modes, alternating in this process, best of --rounds."""
    from bert_classify.config import TrainConfig
    from bert_classify.data import load_labeled_data
    from bert_classify.inference.predictor import Classifier
    from bert_classify.training.loop import train

    classes = DATA_DIR / "classes.txt"
    test = load_labeled_data(work / "test.csv", class_names=classes.read_text().split()).texts[: args.cost_documents]
    best: dict[str, dict[str, float]] = {mode: {} for mode in MODES}
    windows_per_document: dict[str, float] = {}
    for round_number in range(args.rounds):
        for mode in MODES:
            config = TrainConfig(
                train=str(work / "train.csv"), val=str(work / "val.csv"), classes=str(classes), model=str(args.model),
                output_dir=str(work / f"cost-{mode}-{round_number}"), epochs=1, max_steps=args.cost_steps,
                batch_size=args.batch_size, max_seq_len=args.max_seq_len, seed=args.seed, long_texts=mode,
                log_every_steps=1000, checkpoint_every_minutes=None, cache_dir=str(work / "cache"),
            )  # fmt: skip
            result = train(config)
            classifier = Classifier.from_pretrained(config.output_dir, device="cpu", precision=args.inference_precision)
            encoded = classifier.encode(test)
            windows = sum(len(entry) if mode == "chunk" else 1 for entry in encoded)
            windows_per_document[mode] = windows / len(test)
            started = time.perf_counter()
            classifier.predict_encoded(encoded, batch_size=32)
            predict_seconds = time.perf_counter() - started
            rates = {
                "train_windows_per_second": result.examples_per_second,
                "predict_documents_per_second": len(test) / predict_seconds,
            }
            for name, value in rates.items():
                best[mode][name] = max(best[mode].get(name, 0.0), value)
            print(f"round {round_number + 1} {mode}: {rates}", flush=True)
    from bert_classify.inference.windows import Windowing
    from bert_classify.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(args.model))
    windowing = Windowing.for_tokenizer(tokenizer, args.max_seq_len)
    train_texts = load_labeled_data(work / "train.csv", class_names=classes.read_text().split()).texts
    contents = tokenizer(train_texts, add_special_tokens=False, verbose=False)["input_ids"]
    train_windows = {"truncate": 1.0, "chunk": sum(windowing.count(len(ids)) for ids in contents) / len(contents)}
    for mode in MODES:  # training documents/s: windows/s over the training set's windows per document
        best[mode]["train_windows_per_document"] = train_windows[mode]
        best[mode]["train_documents_per_second"] = best[mode]["train_windows_per_second"] / train_windows[mode]
        best[mode]["test_windows_per_document"] = windows_per_document[mode]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=1500, help="first N shared training rows")
    parser.add_argument("--val-rows", type=int, default=300, help="validation rows from the test file's tail")
    parser.add_argument("--test-rows", type=int, default=1000, help="first N shared test rows")
    parser.add_argument("--boilerplate-tokens", default="115,145", help="boilerplate before each abstract: low,high tokens")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--inference-precision", default="auto")
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--name", default="long_texts")
    parser.add_argument("--cost", action="store_true", help="measure the cost (documents/s) in alternating rounds instead")
    parser.add_argument("--cost-steps", type=int, default=30, help="with --cost: optimizer steps per training round")
    parser.add_argument("--cost-documents", type=int, default=300, help="with --cost: test documents predicted per round")
    parser.add_argument("--rounds", type=int, default=2, help="with --cost: rounds, best of")
    parser.add_argument("--mode", choices=("both", *MODES), default="both", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.model / "config.json").exists() or not (DATA_DIR / "train.csv").exists():
        sys.exit(f"needs the shared model and data under {SHARED}")
    if args.mode != "both":
        run_one(args)
        return

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    low, high = (int(value) for value in args.boilerplate_tokens.split(","))
    test_rows = read_rows(DATA_DIR / "test.csv")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        train_docs, stats = build_documents(read_rows(DATA_DIR / "train.csv")[: args.train_rows], tokenizer, low, high, args.seed)
        write_rows(work / "train.csv", train_docs)
        write_rows(work / "val.csv", build_documents(test_rows[-args.val_rows :], tokenizer, low, high, args.seed + 1)[0])
        write_rows(work / "test.csv", build_documents(test_rows[: args.test_rows], tokenizer, low, high, args.seed + 2)[0])
        print(f"training documents: {stats}", flush=True)
        if args.cost:
            import torch

            cost = measure_cost(args, work)
            uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            settings = {k: str(v) for k, v in vars(args).items() if k not in ("mode", "scratch")}
            payload = {"documents": stats, "settings": settings, "torch_threads": torch.get_num_threads(), "cost": cost,
                       "uptime_at_end": uptime}  # fmt: skip
            for mode, rates in cost.items():
                print(
                    f"{mode}: training {rates['train_documents_per_second']:.2f} documents/s "
                    f"({rates['train_windows_per_second']:.2f} windows/s, {rates['train_windows_per_document']:.2f} "
                    f"windows per document); predict {rates['predict_documents_per_second']:.2f} documents/s"
                )
            print(uptime)
            print(f"wrote {write_result(args.name + '_cost', payload)}")
            return
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        processes = {
            mode: subprocess.Popen(
                [sys.executable, __file__, *sys.argv[1:], "--mode", mode, "--scratch", str(work)],
                stdout=open(work / f"{mode}.log", "w"), stderr=subprocess.STDOUT, env=environment,  # noqa: SIM115
            )
            for mode in MODES
        }
        runs: dict[str, Any] = {}
        for mode, process in processes.items():
            if process.wait() != 0:
                sys.exit(f"the {mode} run failed:\n{(work / f'{mode}.log').read_text()[-3000:]}")
            runs[mode] = json.loads((work / f"{mode}.json").read_text())
            print(f"--- {mode} run log (tail)\n" + "\n".join((work / f"{mode}.log").read_text().splitlines()[-6:]))
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    payload = {
        "documents": stats,
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("mode", "scratch")},
        "runs": runs,
        "uptime_at_end": uptime,
    }
    print(f"{'mode / aggregation':<28} {'test accuracy':>13} {'macro-F1':>9}")
    for mode, run in runs.items():
        for method, score in run["test"].items():
            name = mode if mode == "truncate" else f"chunk, {method}"
            print(f"{name:<28} {score['accuracy']:>13.4f} {score['macro_f1']:>9.4f}")
    for mode, run in runs.items():
        print(
            f"{mode}: val accuracy {run['val_accuracy']:.4f}; training {run['train_documents_per_second']:.2f} documents/s "
            f"({run['train_windows_per_second']:.2f} windows/s); predict {run['predict_documents_per_second']:.2f} documents/s"
        )
    print(uptime)
    print(f"wrote {write_result(args.name, payload)}")


if __name__ == "__main__":
    main()
