"""Server under load: 32 concurrent clients sending single texts over loopback, batching on vs off.

First measures the model alone (no HTTP): texts/s one text per forward pass vs merged batches, the
ceiling of what batching can gain on this machine. Then starts the real `bert-classify serve`
process for each setting (dynamic batching with the defaults, then `--max-batch-size 1`), runs the
clients (asyncio + httpx, in this process) for a warm-up and a measured window, and reports
requests/s and p50/p99 latency of the measured window.

    python benchmarks/bench_server.py                    # 32 clients, 30 s each setting
    python benchmarks/bench_server.py --duration 10 --clients 16
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, write_result  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = SHARED / "data" / "dbpedia-10k"
MODEL_DIR = SHARED / "models" / "minilm-l6-h384-uncased"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model_dir: Path, log_path: Path, flags: list[str]) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "bert_classify",
        "serve",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        *flags,
    ]
    print("  starting:", " ".join(command[1:]), flush=True)
    process = subprocess.Popen(command, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log_path.read_text()}")
        try:
            if httpx.get(url + "/ping", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit("server did not start")


async def load(
    url: str, texts: list[str], clients: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    import httpx

    started = time.monotonic()
    measure_from, measure_to = started + warmup_s, started + warmup_s + duration_s
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    wrong = 0
    answered = 0  # warm-up included, for CPU per request

    async def client(number: int, http: httpx.AsyncClient) -> None:
        nonlocal wrong, answered
        index = number
        while time.monotonic() < measure_to:
            text = texts[index % len(texts)]
            index += clients
            sent = time.monotonic()
            response = await http.post("/invocations", json={"inputs": [text]})
            done = time.monotonic()
            answered += 1
            if measure_from <= done <= measure_to:  # answered inside the measured window
                latencies.append(done - sent)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200 and len(response.json()) != 1:
                    wrong += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(number, http) for number in range(clients)))
    values = np.array(latencies)
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / duration_s, 2),
        "p50_ms": round(float(np.percentile(values, 50)) * 1000, 1) if len(values) else None,
        "p99_ms": round(float(np.percentile(values, 99)) * 1000, 1) if len(values) else None,
        "statuses": statuses,
        "malformed_answers": wrong,
        "all_requests": answered,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_setting(name: str, flags: list[str], model_dir: Path, texts: list[str], args: argparse.Namespace,
                scratch: Path) -> dict[str, Any]:  # fmt: skip
    import httpx

    process, url = start_server(model_dir, scratch / f"{name.replace(' ', '-')}.log", flags)
    try:
        server_cpu, client_cpu, wall = cpu_seconds(process.pid), time.process_time(), time.monotonic()
        result = asyncio.run(load(url, texts, args.clients, args.warmup, args.duration))
        server_cpu, client_cpu = cpu_seconds(process.pid) - server_cpu, time.process_time() - client_cpu
        wall = time.monotonic() - wall
        # Where the 2 cores went: the server process (model + HTTP) and this client process.
        result["cpu"] = {
            "wall_s": round(wall, 2),
            "server_cpu_s": round(server_cpu, 2),
            "client_cpu_s": round(client_cpu, 2),
            "client_cpu_ms_per_request": round(1000 * client_cpu / max(1, result["all_requests"]), 2),
            "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, result["all_requests"]), 2),
        }
        result["server_batching"] = httpx.get(url + "/metrics", timeout=10).json()["batching"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    result = {"setting": name, "server_flags": flags, **result}
    print(f"  {name}: {result['requests_per_s']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
          f"mean batch {result['server_batching']['mean_batch_requests']} requests; CPU ms per request: server "
          f"{result['cpu']['server_cpu_ms_per_request']}, client {result['cpu']['client_cpu_ms_per_request']}",
          flush=True)  # fmt: skip
    return result


def model_only_ceiling(
    model_dir: Path, texts: list[str], forward_batch_size: int, precision: str
) -> dict[str, Any]:
    """Texts/s of the model alone (no HTTP), one text per forward pass vs length-sorted passes of
    `forward_batch_size`, at `precision` (as the server runs): the most batching can gain here."""
    from bert_classify.inference.predictor import Classifier

    classifier = Classifier.from_pretrained(model_dir, device="cpu", precision=precision)
    classifier.predict_proba(texts[:32], batch_size=forward_batch_size)  # warm-up
    started = time.perf_counter()
    for text in texts:
        classifier.predict_proba([text], batch_size=1)
    single = len(texts) / (time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, len(texts), 32):  # merged batches of 32, as the server forms them
        classifier.predict_proba(texts[start : start + 32], batch_size=forward_batch_size)
    batched = len(texts) / (time.perf_counter() - started)
    result = {
        "precision": classifier.precision,
        "texts": len(texts),
        "single_texts_per_s": round(single, 2),
        "batched_texts_per_s": round(batched, 2),
        "forward_batch_size": forward_batch_size,
        "ratio": round(batched / single, 3),
    }
    print(f"  model alone ({classifier.precision}): {single:.1f} texts/s one by one, {batched:.1f} texts/s in "
          f"merged batches of 32 = {batched / single:.2f}x, the ceiling for batching on / off", flush=True)  # fmt: skip
    del classifier
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model directory (default: MiniLM + random head)"
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per setting")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before the window")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    parser.add_argument(
        "--forward-batch-size", type=int, default=None, help="passed to serve (default: its own)"
    )
    parser.add_argument("--precision", default="auto", help="passed to serve and the ceiling (default: auto)")
    parser.add_argument("--ceiling-texts", type=int, default=400, help="texts for the model-only ceiling")
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").exists() or not (DATA_DIR / "test.csv").exists():
        print(f"skipped: needs {MODEL_DIR} and {DATA_DIR}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_inference import untrained_classifier_dir

    with open(DATA_DIR / "test.csv", newline="", encoding="utf-8") as handle:
        texts = [text for _, text in csv.reader(handle)][:2000]
    scratch = Path(tempfile.mkdtemp(prefix="bench-server-"))
    model_dir = args.model or untrained_classifier_dir(scratch / "minilm-random-head", seed=0)

    from bert_classify.inference.server import CPU_FORWARD_BATCH_SIZE

    ceiling = model_only_ceiling(
        model_dir,
        texts[: args.ceiling_texts],
        args.forward_batch_size or CPU_FORWARD_BATCH_SIZE,
        args.precision,
    )
    batching_flags = [
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-batch-delay-ms",
        str(args.max_batch_delay_ms),
    ]
    if args.forward_batch_size:
        batching_flags += ["--forward-batch-size", str(args.forward_batch_size)]
    common = ["--precision", args.precision]
    settings = [
        ("batching on", batching_flags + common),
        ("batching off", ["--max-batch-size", "1", *common]),
    ]
    results = [run_setting(name, flags, model_dir, texts, args, scratch) for name, flags in settings]
    ratio = (
        results[0]["requests_per_s"] / results[1]["requests_per_s"] if results[1]["requests_per_s"] else None
    )

    print()
    header = f"{'setting':<16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'mean batch':>12}"
    print(header)
    print("-" * len(header))
    for entry in results:
        print(f"{entry['setting']:<16}{entry['requests_per_s']:>9.1f}{entry['p50_ms'] or 0:>9.1f}"
              f"{entry['p99_ms'] or 0:>9.1f}{entry['server_batching']['mean_batch_requests']:>12}")  # fmt: skip
    print(f"batching on / off: {ratio:.2f}x requests/s" if ratio else "")
    path = write_result(
        "server" if args.precision == "auto" else f"server_{args.precision}",
        {
            "model": str(args.model) if args.model else "MiniLM encoder with a random 14-class head",
            "clients": args.clients,
            "precision": ceiling["precision"],
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "request": "POST /invocations, application/json, one DBpedia test text per request",
            "results": results,
            "ratio_requests_per_s": round(ratio, 3) if ratio else None,
            "model_only_ceiling": ceiling,
            "load_average_at_end": list(os.getloadavg()),
            "note": "server and clients share the same 2 CPU cores (loopback), which other developers' jobs also "
            "used at the time; see load averages.",
        },
    )
    print(f"wrote {path}")
    print(json.dumps({"ratio": ratio}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
