"""Fault injection for tests and the quickstart demo. TEST-ONLY: inert unless explicitly switched on.

A production `train()` injects nothing: it reads the variables below only when the switch
BERT_CLASSIFY_TEST_FAULTS=1 is set (once, when the trainer is built). Tests that drive real
subprocesses set the switch with the faults they want; Python callers pass a `FaultPlan` instead.

BERT_CLASSIFY_TEST_FAULTS=1           the switch; without it every variable below is ignored
BERT_CLASSIFY_SIGTERM_AT_STEP=N       the process sends itself SIGTERM after optimizer step N
BERT_CLASSIFY_FAIL_AT_STEP=N          raise an error at step N (on rank BERT_CLASSIFY_FAIL_RANK, default 0)
BERT_CLASSIFY_MICRO_STEP_DELAY_S=F    sleep F seconds after each micro-batch (widens the window in
                                      which a test's external signal lands inside an accumulation window)
BERT_CLASSIFY_CHECKPOINT_WRITE_DELAY_S=F  the checkpoint writer sleeps F seconds after each file (a
                                      test's second signal or SIGKILL then lands inside the write)
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

TEST_SWITCH = "BERT_CLASSIFY_TEST_FAULTS"


class InjectedFault(RuntimeError):
    """The error raised by BERT_CLASSIFY_FAIL_AT_STEP (a stand-in for a bad batch on one rank)."""


@dataclass
class FaultPlan:
    sigterm_at_step: int | None = None
    fail_at_step: int | None = None
    fail_rank: int = 0
    micro_step_delay_seconds: float = 0.0
    checkpoint_write_delay_seconds: float = 0.0

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

    def during_checkpoint_write(self) -> None:
        """Called by the checkpoint writer after each file it writes."""
        if self.checkpoint_write_delay_seconds:
            time.sleep(self.checkpoint_write_delay_seconds)



def faults_for_tests() -> FaultPlan | None:
    """The plan from the BERT_CLASSIFY_* variables when BERT_CLASSIFY_TEST_FAULTS=1 is set, else None."""
    if os.environ.get(TEST_SWITCH) != "1":
        return None

    def number(name: str) -> int | None:
        value = os.environ.get(name)
        return int(value) if value else None

    def seconds(name: str) -> float:
        return float(os.environ.get(name) or 0.0)

    return FaultPlan(
        sigterm_at_step=number("BERT_CLASSIFY_SIGTERM_AT_STEP"),
        fail_at_step=number("BERT_CLASSIFY_FAIL_AT_STEP"),
        fail_rank=number("BERT_CLASSIFY_FAIL_RANK") or 0,
        micro_step_delay_seconds=seconds("BERT_CLASSIFY_MICRO_STEP_DELAY_S"),
        checkpoint_write_delay_seconds=seconds("BERT_CLASSIFY_CHECKPOINT_WRITE_DELAY_S"),
    )
