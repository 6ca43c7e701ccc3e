"""Run a CreateTrainingJob request the way SageMaker runs it, on this machine, with the real training toolkits.

Shared by the real-toolkit tests and the spot drill benchmark. From the request: /opt/ml laid out
(hyperparameters.json, resourceconfig.json, inputdataconfig.json, data channels, checkpoints carried over
as SageMaker's S3 sync would), the request's ContainerEntrypoint + ContainerArguments run as PID 1 of a new
PID namespace (`unshare --pid --fork --mount-proc`), in private mount and network namespaces, with a start
script that behaves like the PyTorch image's `start_with_right_hostname.sh` (runs `train` as a plain child,
no trap) and the image's SAGEMAKER_TRAINING_MODULE. `train` is the real `sagemaker-training` CLI, which
downloads (here: unpacks) sourcedir.tar.gz and pip-installs its requirements.txt, exactly as in the image;
pip installs our wheel into a per-container directory (offline, dependencies already present, as in the
image) so this environment's own install is never touched. Stopping a container is what `docker stop` does:
SIGTERM to PID 1, SIGKILL to everything after a grace period.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

OPT_ML = Path("/opt/ml")
TRAINING_MODULE = "sagemaker_pytorch_container.training:main"
# The image's start script, without its LD_PRELOAD hostname shim: the container's own UTS namespace is named
# algo-1 instead, which is what the shim makes the processes see.
START_SCRIPT = """#!/usr/bin/env bash
if [[ "$1" = "train" ]]; then
    train
else
    eval "$@"
fi
"""


def unavailable_reason() -> str | None:
    """Why containers cannot run here, or None."""
    if sys.platform != "linux":
        return "needs Linux namespaces"
    if os.geteuid() != 0:
        return "needs root for mount/PID namespaces (CI runs as root)"
    for tool in ("unshare", "mount", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if shutil.which("train") is None:
        return "the sagemaker-training toolkit is not installed (pip install -e '.[toolkits]')"
    try:
        import sagemaker_pytorch_container  # noqa: F401
    except ImportError:
        return "sagemaker-pytorch-training is not installed (pip install -e '.[toolkits]')"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--net", "--uts", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"unshare is not permitted here: {probe.stderr.strip()}"
    return None


def _channel_files(request: Mapping[str, Any], local: Mapping[str, Path]) -> dict[str, Path]:
    names = [channel["ChannelName"] for channel in request.get("InputDataConfig", [])]
    missing = sorted(set(names) - set(local))
    if missing:
        raise ValueError(f"no local stand-in for channel(s) {missing}")
    return {name: Path(local[name]) for name in names}


class Container:
    """One container of a training job (one host), started from the request; `stop()` is `docker stop`."""

    def __init__(
        self,
        root: Path,
        request: Mapping[str, Any],
        *,
        source_archive: Path,
        channels: Mapping[str, Path],
        checkpoints_from: Path | None = None,
        extra_hyperparameters: Mapping[str, str] | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.request = request
        self.opt_ml = self.root / "opt-ml"
        self.log_path = self.root / "container.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._layout(source_archive, _channel_files(request, channels), checkpoints_from, extra_hyperparameters or {})
        self._environment = self._build_environment(environment or {})

    # --- /opt/ml as SageMaker lays it out -------------------------------------------------------------
    def _layout(
        self,
        source_archive: Path,
        channels: Mapping[str, Path],
        checkpoints_from: Path | None,
        extra_hyperparameters: Mapping[str, str],
    ) -> None:
        config = self.opt_ml / "input" / "config"
        config.mkdir(parents=True)
        for directory in ("model", "output/data", "code", "checkpoints"):
            (self.opt_ml / directory).mkdir(parents=True, exist_ok=True)
        hyperparameters = dict(self.request["HyperParameters"])
        # The S3 URI of the code becomes the local archive (the toolkit accepts a local tarball path).
        hyperparameters["sagemaker_submit_directory"] = str(source_archive)
        hyperparameters.update(extra_hyperparameters)
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        instance_type = self.request["ResourceConfig"]["InstanceType"]
        (config / "resourceconfig.json").write_text(
            json.dumps(
                {
                    "current_host": "algo-1",
                    "hosts": ["algo-1"],
                    "current_group_name": "homogeneousCluster",
                    "current_instance_type": instance_type,
                    "instance_groups": [
                        {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": ["algo-1"]}
                    ],
                    "network_interface_name": "lo",
                }
            )
        )
        input_config = {}
        for name, source in channels.items():
            target = self.opt_ml / "input" / "data" / name
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                target.mkdir(parents=True)
                shutil.copy2(source, target / source.name)
            input_config[name] = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
        (config / "inputdataconfig.json").write_text(json.dumps(input_config))
        if checkpoints_from is not None and checkpoints_from.is_dir():
            # SageMaker copies CheckpointConfig.S3Uri into LocalPath before the entry starts.
            shutil.rmtree(self.opt_ml / "checkpoints")
            shutil.copytree(checkpoints_from, self.opt_ml / "checkpoints", symlinks=True)
        bin_dir = self.root / "image-bin"
        bin_dir.mkdir()
        script = bin_dir / "start_with_right_hostname.sh"
        script.write_text(START_SCRIPT)
        script.chmod(0o755)
        (self.root / "hosts").write_text("127.0.0.1 localhost algo-1\n")
        (self.root / "site").mkdir()

    def _build_environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "HF_HOME", "TORCH_HOME")
        environment = {key: os.environ[key] for key in keep if key in os.environ}
        venv_bin = str(Path(sys.executable).parent)
        environment.update(
            {
                "PATH": os.pathsep.join([str(self.root / "image-bin"), venv_bin, "/usr/local/bin", "/usr/bin", "/bin"]),
                "SAGEMAKER_TRAINING_MODULE": TRAINING_MODULE,
                "TRAINING_JOB_NAME": self.request["TrainingJobName"],
                # The image has the dependencies; our wheel goes to a per-container directory, offline.
                "PIP_TARGET": str(self.root / "site"),
                "PIP_NO_DEPS": "1",
                "PIP_NO_INDEX": "1",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PYTHONPATH": str(self.root / "site"),
                "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1",
                **self.request.get("Environment", {}),
                **extra,
            }
        )
        return environment

    # --- life cycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        specification = self.request["AlgorithmSpecification"]
        command = [*specification.get("ContainerEntrypoint", []), *specification.get("ContainerArguments", [])]
        if not specification.get("ContainerEntrypoint"):
            command = ["bash", "-m", "start_with_right_hostname.sh", "train"]  # the image's own entry
        OPT_ML.mkdir(parents=True, exist_ok=True)  # a mount point; the namespace binds this container's tree on it
        outer = (
            'set -e; mount --bind "$1" /opt/ml; mount --bind "$2" /etc/hosts; hostname algo-1; ip link set lo up; shift 2; '
            'exec unshare --pid --fork --mount-proc "$@"'
        )
        self.log_handle = open(self.log_path, "wb")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--net", "--uts", "sh", "-c", outer, "container",
             str(self.opt_ml), str(self.root / "hosts"), *command],
            stdout=self.log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._environment,
            cwd="/",
            start_new_session=True,
        )

    def pid1(self, timeout: float = 30.0) -> int:
        """The host PID of the container's PID 1 (the child of the inner `unshare --fork`)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = _children(self.process.pid)
            if children:
                return children[0]
            if self.process.poll() is not None:
                raise RuntimeError(f"container exited before PID 1 started:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError("PID 1 did not start")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, pattern: str, timeout: float) -> tuple[float, re.Match[str]]:
        """(seconds since start, match) when the regex `pattern` first matches the log; TimeoutError otherwise."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = compiled.search(self.log())
            if match:
                return time.monotonic() - self.started_at, match
            if self.process is not None and self.process.poll() is not None:
                match = compiled.search(self.log())
                if match:
                    return time.monotonic() - self.started_at, match
                raise RuntimeError(
                    f"container ended (status {self.process.returncode}) before /{pattern}/:\n{self.log()[-6000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"/{pattern}/ not seen within {timeout} s:\n{self.log()[-6000:]}")
            time.sleep(0.05)

    def signal_pid1(self, signum: int) -> float:
        """Send `signum` to PID 1; return the seconds since start at which it was sent."""
        os.kill(self.pid1(), signum)
        return time.monotonic() - self.started_at

    def stop(self, grace_seconds: float = 120.0) -> int:
        """`docker stop`: SIGTERM to PID 1, SIGKILL to the whole container after the grace period."""
        self.signal_pid1(signal.SIGTERM)
        return self.wait(grace_seconds)

    def kill(self) -> int:
        """No warning at all: SIGKILL to PID 1 (the kernel then kills every process of the namespace)."""
        self.signal_pid1(signal.SIGKILL)
        return self.wait(30.0)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(self.pid1(timeout=1.0), signal.SIGKILL)
            except (ProcessLookupError, RuntimeError, TimeoutError):
                pass
            return self.process.wait(30)
        finally:
            self.log_handle.close()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(30)
        if hasattr(self, "log_handle"):
            self.log_handle.close()

    @property
    def checkpoints(self) -> Path:
        return self.opt_ml / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.opt_ml / "model"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(item) for item in text.split()]


def processes_in(argv_fragments: Sequence[str]) -> list[int]:
    """Host PIDs whose command line contains all the fragments (for diagnostics)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(fragment in command for fragment in argv_fragments):
            found.append(int(entry.name))
    return found
