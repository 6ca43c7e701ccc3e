"""Does `torch.compile` of the model speed up our training step on this CPU? Compile time counted.

The shared MiniLM trained as our loop trains it (autocast per --precision, cross-entropy on fp32 logits,
backward, gradient clipping, fused AdamW) on real DBpedia rows in length-grouped batches of 16 (lengths
vary from batch to batch, as in `bert-classify train`). Two models from the same weights, one eager and
one `torch.compile(model, dynamic=True)`, run the same list of batches in alternating passes:

- first pass: the compiled side includes its compilation (and any recompilation for new shapes);
- later passes: steady state, both sides side by side, best pass kept.

Reported: examples/s of each steady state, the compiled/eager ratio, the compile overhead in seconds, and
the number of steps after which the compiled run would be ahead (never, when it is not faster).

    python benchmarks/bench_compile.py --batches 24 --passes 3
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, write_result  # noqa: E402

MODEL_DIR = SHARED / "models" / "minilm-l6-h384-uncased"
DATA = SHARED / "data" / "dbpedia-10k" / "train.csv"


def batches(count: int, batch_size: int, max_length: int) -> list[tuple[Any, Any, Any]]:
    """`count` length-grouped batches of real rows: sorted by token length, cut into batches, spread evenly."""
    import numpy as np
    import torch

    from bert_classify.data.readers import dbpedia_text
    from bert_classify.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(MODEL_DIR))
    with open(DATA, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[: count * batch_size * 4]
    texts = [dbpedia_text(row[1:]) for row in rows]
    labels = [int(row[0]) - 1 for row in rows]
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    groups = [order[start : start + batch_size] for start in range(0, len(order) - batch_size + 1, batch_size)]
    chosen = [groups[int(index)] for index in np.linspace(0, len(groups) - 1, count)]
    result = []
    for group in chosen:
        width = max(len(encoded[i]) for i in group)
        ids = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, index in enumerate(group):
            ids[row, : len(encoded[index])] = torch.tensor(encoded[index])
            mask[row, : len(encoded[index])] = 1
        result.append((ids, mask, torch.tensor([labels[i] for i in group])))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--batches", type=int, default=24, help="steps per pass")
    parser.add_argument("--passes", type=int, default=3, help="passes per side (the first includes compilation)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").exists() or not DATA.exists():
        raise SystemExit(f"skipped: needs the shared model ({MODEL_DIR}) and data ({DATA})")
    import torch
    import torch.nn.functional as F

    from bert_classify import modeling
    from bert_classify import precision as precisions

    data = batches(args.batches, args.batch_size, args.max_seq_len)
    autocast = precisions.autocast_factory(args.precision, "cpu")
    sides: dict[str, dict[str, Any]] = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        model = modeling.load_for_training(str(MODEL_DIR), [str(i) for i in range(14)])
        model.train()
        runner = torch.compile(model, dynamic=True) if name == "compiled" else model
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        sides[name] = {"model": runner, "parameters": list(model.parameters()), "optimizer": optimizer, "passes": []}

    def run_pass(side: dict[str, Any]) -> float:
        started = time.perf_counter()
        for ids, mask, labels in data:
            with autocast():
                logits = side["model"](input_ids=ids, attention_mask=mask).logits
            F.cross_entropy(logits.float(), labels).backward()
            torch.nn.utils.clip_grad_norm_(side["parameters"], 1.0)
            side["optimizer"].step()
            side["optimizer"].zero_grad(set_to_none=True)
        return time.perf_counter() - started

    for index in range(args.passes):
        for name, side in sides.items():
            seconds = run_pass(side)
            side["passes"].append(seconds)
            print(f"pass {index + 1} {name}: {seconds:.1f} s ({args.batches * args.batch_size / seconds:.1f} ex/s)",
                  flush=True)
    examples = args.batches * args.batch_size
    steady = {name: min(side["passes"][1:]) for name, side in sides.items()}
    per_step = {name: seconds / args.batches for name, seconds in steady.items()}
    overhead = sides["compiled"]["passes"][0] - steady["compiled"]
    gain = per_step["eager"] - per_step["compiled"]
    break_even = overhead / gain if gain > 0 else None
    figures = {
        "steady_examples_per_second": {name: examples / seconds for name, seconds in steady.items()},
        "compiled_over_eager": steady["eager"] / steady["compiled"],
        "compile_overhead_seconds": overhead,
        "break_even_steps": break_even,
        "passes_seconds": {name: side["passes"] for name, side in sides.items()},
        "distinct_batch_widths": sorted({int(ids.shape[1]) for ids, _, _ in data}),
    }
    print(f"steady: eager {figures['steady_examples_per_second']['eager']:.1f} ex/s, compiled "
          f"{figures['steady_examples_per_second']['compiled']:.1f} ex/s (x{figures['compiled_over_eager']:.2f}); "
          f"compile overhead {overhead:.0f} s; break-even after "
          f"{'never' if break_even is None else f'{break_even:.0f} steps'}")
    name = args.output.stem if args.output else f"compile_{args.precision}"
    path = write_result(name, {"settings": vars(args) | {"output": None, "model": str(MODEL_DIR)}, **figures})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
