"""Where a training step's time goes, and what the optimizer variants cost: torch.profiler on our step.

One MiniLM training step as our loop runs it (batch 16, a DBpedia-like length, autocast per --precision,
cross-entropy, backward, clipping, AdamW), profiled after warm-up; the table groups the operators into
matmuls, attention, other forward/backward ops and the optimizer. Then AdamW's for-loop, foreach and fused
implementations are timed on the same parameters and gradients, alternating, best of N.

    python benchmarks/profile_training_step.py --precision bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, write_result  # noqa: E402

MODEL_DIR = SHARED / "models" / "minilm-l6-h384-uncased"
GROUPS = {
    "matmul (linear, addmm, mm, bmm)": ("addmm", "mm", "bmm", "linear", "matmul"),
    "attention (sdpa)": ("scaled_dot_product", "_flash", "attention"),
    "optimizer (adamw; its for-loop ops count under 'other')": ("adam", "_foreach", "_fused"),
}


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, keys in GROUPS.items():
        if any(key in lowered for key in keys):
            return group
    return "other ops (layernorm, gelu, softmax, dropout, copies, casts, embedding, ...)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64, help="tokens per row (DBpedia rows average ~60 at 128)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fused", action="store_true", help="profile with AdamW(fused=True)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").exists():
        raise SystemExit(f"skipped: needs the shared model ({MODEL_DIR})")
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from bert_classify import modeling
    from bert_classify import precision as precisions

    torch.manual_seed(0)
    model = modeling.load_for_training(str(MODEL_DIR), [str(i) for i in range(14)])
    model.train()
    autocast = precisions.autocast_factory(args.precision, "cpu")
    ids = torch.randint(1000, 20000, (args.batch_size, args.length))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 14, (args.batch_size,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if args.fused else {}))
    phases = {"forward": 0.0, "backward": 0.0, "clip": 0.0, "optimizer": 0.0}

    def step() -> None:
        started = time.perf_counter()
        with autocast():
            logits = model(input_ids=ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits.float(), labels)
        marks = [time.perf_counter()]
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        for name, begin, end in zip(phases, [started, *marks[:-1]], marks):
            phases[name] += end - begin

    for _ in range(3):
        step()
    phases.update(dict.fromkeys(phases, 0.0))
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(args.steps):
            step()
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    grouped: dict[str, float] = {}
    for event in events:
        grouped[group_of(event.key)] = grouped.get(group_of(event.key), 0.0) + event.self_cpu_time_total
    top = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:15]
    print(f"profile: {args.steps} steps, batch {args.batch_size} x {args.length} tokens, {args.precision}; "
          f"self CPU {total / 1e3 / args.steps:.0f} ms per step")
    wall = sum(phases.values())
    print("phases (wall): " + ", ".join(f"{name} {seconds / wall:.1%}" for name, seconds in phases.items())
          + f"; {wall / args.steps * 1e3:.0f} ms per step")
    for group, micros in sorted(grouped.items(), key=lambda item: -item[1]):
        print(f"  {micros / total:6.1%}  {group}")
    print("top operators (self CPU):")
    for event in top:
        print(f"  {event.self_cpu_time_total / total:6.1%}  {event.key}")

    # optimizer variants on the same parameters and gradients
    parameters = [p for p in model.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter) * 1e-3
    variants: dict[str, dict[str, Any]] = {"for-loop": {"foreach": False}, "foreach": {"foreach": True},
                                            "fused": {"fused": True}}
    optimizers = {name: torch.optim.AdamW(parameters, lr=1e-9, **options) for name, options in variants.items()}
    best = {name: float("inf") for name in variants}
    for _ in range(5):
        for name, variant in optimizers.items():
            started = time.perf_counter()
            variant.step()
            best[name] = min(best[name], time.perf_counter() - started)
    print("AdamW step, best of 5: " + ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in best.items()))
    name = args.output.stem if args.output else f"profile_training_step_{args.precision}"
    path = write_result(name, {
        "settings": vars(args) | {"output": None, "model": str(MODEL_DIR)},
        "self_cpu_ms_per_step": total / 1e3 / args.steps,
        "phases_fraction_of_wall": {name: seconds / wall for name, seconds in phases.items()},
        "wall_ms_per_step": wall / args.steps * 1e3,
        "groups": {group: micros / total for group, micros in grouped.items()},
        "top_operators": [{"name": e.key, "fraction": e.self_cpu_time_total / total, "calls": e.count} for e in top],
        "adamw_step_ms_best_of_5": {name: seconds * 1e3 for name, seconds in best.items()},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
