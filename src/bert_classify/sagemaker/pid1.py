"""PID 1 of a SageMaker training container: hand a stop signal on to the trainer, then outlive it.

Runs before our package is installed (the launcher inlines this file in the job request), so it uses the
standard library only and imports nothing of ours.

SageMaker stops a container as `docker stop` does: SIGTERM to PID 1, SIGKILL after a grace period. In the
framework images PID 1 is bash (`bash -m start_with_right_hostname.sh train`), which has no handler, and a
namespace's PID 1 never gets a signal it does not handle; the training toolkit under it forwards nothing
either (aws/sagemaker-training-toolkit issues 125 and 173). So without help the trainer never hears of a
spot reclaim and everything since the last periodic checkpoint is lost.

This process starts the image's normal entry with SIGTERM and SIGINT ignored (the ignore survives exec,
so the image's shell and the toolkit keep running, and keep relaying logs, while the trainer stops), in
its own process group. On SIGTERM/SIGINT it sends the signal to every other process of the container (as
PID 1: kill(-1); otherwise: the entry's process group); our trainer and torchrun install handlers of their
own, so they finish the optimizer step in flight, write a checkpoint and exit. The signal is sent again
every RESEND_SECONDS while anything still runs, for a trainer that had not yet installed its handler when
the first one came. Orphans are reaped, and this process exits only when no process is left, so the
container is not torn down while a checkpoint is still being written.
"""

import os
import signal
import sys

RESEND_SECONDS = 10
FORWARDED = (signal.SIGTERM, signal.SIGINT)
_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Adopt orphaned descendants even when not PID 1 (Linux); as PID 1 this is already so."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _send(signum: int, group: int) -> None:
    try:
        if os.getpid() == 1:
            os.kill(-1, signum)  # every process of the container but this one
        else:
            os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def run(command: list) -> int:
    """Start `command`, forward stop signals to it, reap everything; return the command's exit status."""
    if not command:
        print("pid1: no command to run", file=sys.stderr, flush=True)
        return 2
    _become_subreaper()
    for signum in FORWARDED:
        signal.signal(signum, signal.SIG_IGN)
    child = os.fork()
    if child == 0:
        try:
            os.setpgid(0, 0)
            os.execvp(command[0], command)
        except OSError as error:
            print(f"pid1: cannot run {command[0]}: {error}", file=sys.stderr, flush=True)
        os._exit(127)
    stop = {"signal": 0}

    def forward(signum, frame):
        if not stop["signal"]:
            print(
                f"pid1: received {signal.Signals(signum).name}: passing it on to the training processes",
                file=sys.stderr,
                flush=True,
            )
            signal.signal(signal.SIGALRM, resend)
            signal.alarm(RESEND_SECONDS)
        stop["signal"] = signum
        _send(signum, child)

    def resend(signum, frame):
        _send(stop["signal"], child)
        signal.alarm(RESEND_SECONDS)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    status = 0
    while True:
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            break  # no process left to wait for
        if pid == child:
            status = os.waitstatus_to_exitcode(wait_status)
            status = 128 - status if status < 0 else status
    signal.alarm(0)
    return status


def _command_from_argv(argv: list) -> list:
    """The command after `--` (the launcher passes this file's source before it), else all arguments."""
    return argv[argv.index("--") + 1 :] if "--" in argv else argv


if __name__ == "__main__":
    sys.exit(run(_command_from_argv(sys.argv[1:])))
