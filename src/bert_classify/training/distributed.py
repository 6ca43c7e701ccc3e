"""Process-group set-up from torchrun's environment, collective helpers, and a torchrun launcher.

One process per device: RANK / LOCAL_RANK / WORLD_SIZE come from torchrun. NCCL on GPUs, gloo on
CPU, with a timeout so a dead rank ends the job instead of hanging it.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bert_classify.sagemaker.environment import DEFAULT_MASTER_PORT  # the one home of torchrun's port

# A rank that stops answering ends the job after this long instead of hanging it.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("BERT_CLASSIFY_DIST_TIMEOUT_S", "600")))


@dataclass
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistributedContext:
    """Read torchrun's variables; start the process group when there is more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = None
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return DistributedContext(rank, local_rank, world_size, device, backend)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        if context.backend == "nccl":
            dist.barrier(device_ids=[context.device.index])
        else:
            dist.barrier()


def all_reduce_sum(context: DistributedContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place, returned for chaining (no-op in a single process)."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(context: DistributedContext, tensor: torch.Tensor) -> torch.Tensor:
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun_command(
    nproc_per_node: int,
    module_args: Sequence[str],
    *,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
) -> list[str]:
    """`python -m torch.distributed.run ... -m bert_classify <module_args>`."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}"]
    if nnodes > 1:
        command += [
            f"--nnodes={nnodes}",
            f"--node_rank={node_rank}",
            f"--master_addr={master_addr}",
            f"--master_port={master_port or DEFAULT_MASTER_PORT}",
        ]
    else:
        command += ["--standalone"] if master_port is None else [f"--master_addr={master_addr}", f"--master_port={master_port}"]
    return command + ["-m", "bert_classify", *module_args]


def launch_torchrun(nproc_per_node: int, module_args: Sequence[str], **rendezvous: object) -> int:
    """Run torchrun as a child process and return its exit status (signals are passed through)."""
    command = torchrun_command(nproc_per_node, module_args, **rendezvous)  # type: ignore[arg-type]
    print("launching: " + " ".join(command), file=sys.stderr, flush=True)
    process = subprocess.Popen(command)
    import signal

    def forward(signum: int, frame: object) -> None:
        process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
