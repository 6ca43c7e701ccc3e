"""Turn SIGTERM/SIGINT into a request to stop after the current optimizer step.

The loop polls `requested`; the handler only sets a flag, so a second signal during the checkpoint
write cannot interrupt it (the write is atomic anyway) and is merely logged. The signal checkpoint is
joined before the process exits; torchrun's SIGKILL 30 s later only matters if the write takes longer.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType


class GracefulStop:
    """Context manager installing the handlers in the main thread; restores the old ones on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is None:
            self.requested = signum
            print(
                f"received {signal.Signals(signum).name}: finishing the current optimizer step, "
                "then writing a checkpoint and exiting",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(
                f"received {signal.Signals(signum).name} again: already stopping, the checkpoint is being written",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()


def exit_code_for(signum: int) -> int:
    """The conventional status of a process ended by this signal (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + int(signum)
