"""Fault injection for tests and the quickstart demo, driven by environment variables.

BERT_CLASSIFY_SIGTERM_AT_STEP=N   the process sends itself SIGTERM after optimizer step N
BERT_CLASSIFY_FAIL_AT_STEP=N      raise an error at step N (on rank BERT_CLASSIFY_FAIL_RANK, default 0)
BERT_CLASSIFY_MICRO_STEP_DELAY_S=F  sleep F seconds after each micro-batch (widens the window in
                                  which a test's external signal lands inside an accumulation window)
Both are read once at start; unset in normal use.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass


class InjectedFault(RuntimeError):
    """The error raised by BERT_CLASSIFY_FAIL_AT_STEP (a stand-in for a bad batch on one rank)."""


@dataclass
class FaultPlan:
    sigterm_at_step: int | None = None
    fail_at_step: int | None = None
    fail_rank: int = 0
    micro_step_delay_seconds: float = 0.0

    @classmethod
    def from_environment(cls) -> FaultPlan:
        def number(name: str) -> int | None:
            value = os.environ.get(name)
            return int(value) if value else None

        return cls(
            sigterm_at_step=number("BERT_CLASSIFY_SIGTERM_AT_STEP"),
            fail_at_step=number("BERT_CLASSIFY_FAIL_AT_STEP"),
            fail_rank=number("BERT_CLASSIFY_FAIL_RANK") or 0,
            micro_step_delay_seconds=float(os.environ.get("BERT_CLASSIFY_MICRO_STEP_DELAY_S") or 0.0),
        )

    def before_step(self, global_step: int, rank: int) -> None:
        """Called before running optimizer step `global_step + 1`."""
        if self.fail_at_step is not None and global_step + 1 == self.fail_at_step and rank == self.fail_rank:
            raise InjectedFault(f"injected failure on rank {rank} at step {global_step + 1} (BERT_CLASSIFY_FAIL_AT_STEP)")

    def after_micro_step(self) -> None:
        if self.micro_step_delay_seconds:
            time.sleep(self.micro_step_delay_seconds)

    def after_step(self, global_step: int) -> None:
        if self.sigterm_at_step is not None and global_step == self.sigterm_at_step:
            self.sigterm_at_step = None
            os.kill(os.getpid(), signal.SIGTERM)
