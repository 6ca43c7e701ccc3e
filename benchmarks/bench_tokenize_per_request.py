"""What tokenising each request on its own costs the server, next to tokenising the merged batch.

The server encodes every request apart (so a text the tokenizer refuses fails only its request),
then merges token ids. This measures one merged batch of 32 single-text requests both ways, in
alternating rounds in one process: (a) `predict_proba(texts)` (one tokenizer call for all texts,
what the server did before) and (b) 32 `encode([text])` calls then `predict_encoded` (what it does
now); plus the tokenizer calls alone. Real MiniLM and DBpedia texts from ../shared.

    python benchmarks/bench_tokenize_per_request.py [--rounds 15] [--requests 32]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, write_result  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_FILE = SHARED / "data" / "dbpedia-10k" / "test.csv"
MODEL_DIR = SHARED / "models" / "minilm-l6-h384-uncased"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=32, help="single-text requests in the merged batch")
    parser.add_argument("--forward-batch-size", type=int, default=8, help="the server's CPU default")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").is_file() or not DATA_FILE.is_file():
        print(f"needs {MODEL_DIR} and {DATA_FILE}", file=sys.stderr)
        return 2
    from bert_classify.inference.predictor import Classifier

    with open(DATA_FILE, newline="", encoding="utf-8") as handle:
        rows = [row for _, row in zip(range(args.requests), csv.reader(handle))]
    texts = [row[1] if len(row) == 2 else f"{row[1]}. {row[2]}" for row in rows]
    classifier = Classifier.from_pretrained(MODEL_DIR, device="cpu", precision=args.precision)
    classifier.predict_proba(texts, batch_size=args.forward_batch_size)  # warm-up

    timings: dict[str, list[float]] = {"merged": [], "per_request": [], "tokenize_merged": [], "tokenize_per_request": []}
    for _ in range(args.rounds):
        started = time.perf_counter()
        merged = classifier.predict_proba(texts, batch_size=args.forward_batch_size)
        timings["merged"].append(time.perf_counter() - started)

        started = time.perf_counter()
        encoded = [ids for text in texts for ids in classifier.encode([text])]
        per_request = classifier.predict_encoded(encoded, batch_size=args.forward_batch_size)
        timings["per_request"].append(time.perf_counter() - started)
        assert (merged == per_request).all(), "both ways must give the same probabilities"

        started = time.perf_counter()
        classifier.encode(texts)
        timings["tokenize_merged"].append(time.perf_counter() - started)
        started = time.perf_counter()
        for text in texts:
            classifier.encode([text])
        timings["tokenize_per_request"].append(time.perf_counter() - started)

    medians = {name: statistics.median(values) for name, values in timings.items()}
    ratio = medians["merged"] / medians["per_request"]
    print(f"{'path':<22}{'median ms':>12}")
    for name, value in medians.items():
        print(f"{name:<22}{value * 1000:>12.2f}")
    print(f"texts/s merged {args.requests / medians['merged']:.1f}, per-request {args.requests / medians['per_request']:.1f} "
          f"(per-request / merged throughput: {ratio:.3f}x)")
    write_result(
        "tokenize_per_request",
        {
            "requests": args.requests,
            "rounds": args.rounds,
            "forward_batch_size": args.forward_batch_size,
            "precision": classifier.precision,
            "median_s": medians,
            "texts_per_s": {
                "merged": args.requests / medians["merged"],
                "per_request": args.requests / medians["per_request"],
            },
            "per_request_over_merged_throughput": ratio,
            "tokenize_overhead_ms_per_request": (medians["tokenize_per_request"] - medians["tokenize_merged"])
            * 1000
            / args.requests,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
