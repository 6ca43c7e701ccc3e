"""The job request's container command: our PID-1 signal forwarder (pid1.py) in front of the image's own entry.

CreateTrainingJob takes a ContainerEntrypoint of at most 100 strings of at most 256 characters each, and the
forwarder must run before our package is installed, so its source travels inline, cut into pieces that a
one-line loader joins and runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bert_classify.errors import ConfigError

# What the PyTorch (and Hugging Face) training images run: ENTRYPOINT `bash -m start_with_right_hostname.sh`
# with the command `train` that SageMaker passes.
IMAGE_ENTRY = ("bash", "-m", "start_with_right_hostname.sh", "train")
MAX_ITEMS = 100
MAX_ITEM_LENGTH = 256
SEPARATOR = "--"
# Joins the pieces before the separator and runs them; pid1.py then runs the command after it.
LOADER = f"import sys;i=sys.argv.index('{SEPARATOR}');exec(''.join(sys.argv[1:i]))"


def forwarder_source() -> str:
    return (Path(__file__).resolve().parent / "pid1.py").read_text(encoding="utf-8")


def container_command(image_entry: Sequence[str] = IMAGE_ENTRY) -> tuple[list[str], list[str]]:
    """(ContainerEntrypoint, ContainerArguments) that run the image's entry under the signal forwarder."""
    entry = [str(item) for item in image_entry]
    if not entry:
        raise ConfigError("--container-entry is empty: give the image's own entry command, e.g. "
                          f"'{' '.join(IMAGE_ENTRY)}'.")
    too_long = [item for item in entry if len(item) > MAX_ITEM_LENGTH]
    if too_long or len(entry) > MAX_ITEMS:
        raise ConfigError(
            f"--container-entry: SageMaker takes at most {MAX_ITEMS} arguments of at most {MAX_ITEM_LENGTH} "
            "characters each; shorten the command."
        )
    if SEPARATOR in entry:
        raise ConfigError(f"--container-entry must not contain a bare '{SEPARATOR}' argument.")
    source = forwarder_source()
    pieces = [source[start : start + MAX_ITEM_LENGTH] for start in range(0, len(source), MAX_ITEM_LENGTH)]
    entrypoint = ["python3", "-c", LOADER, *pieces, SEPARATOR]
    if len(entrypoint) > MAX_ITEMS:  # a guard for whoever grows pid1.py
        raise ConfigError(f"the signal forwarder no longer fits in a ContainerEntrypoint ({len(entrypoint)} items).")
    return entrypoint, entry
