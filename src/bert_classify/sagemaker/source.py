"""The code a training job runs: sourcedir.tar.gz with our package as a wheel, requirements.txt and the entry script.

The framework container unpacks it into /opt/ml/code, pip-installs requirements.txt (which names
the wheel, so our package and its dependencies get installed) and runs the entry script.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.metadata
import io
import tarfile
import zipfile
from pathlib import Path

import bert_classify

ENTRY_SCRIPT_NAME = "bert_classify_entry.py"
DISTRIBUTION_NAME = "bert-classify"
_WHEEL_TAG = "py3-none-any"
# Fixed timestamps make the archive byte-identical for identical code (stable S3 ETag, reproducible jobs).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def package_files() -> list[tuple[str, Path]]:
    """(path inside the wheel, file) for every file of the importable bert_classify package."""
    package_dir = Path(bert_classify.__file__).resolve().parent
    files = []
    for path in sorted(package_dir.rglob("*")):
        relative = path.relative_to(package_dir)
        if not path.is_file() or "__pycache__" in relative.parts or path.suffix in (".pyc", ".pyo"):
            continue
        files.append((f"bert_classify/{relative.as_posix()}", path))
    return files


def build_wheel(destination_dir: Path) -> Path:
    """Write a pure-Python wheel of the installed bert_classify package (works offline, from any install).

    Files come from the importable package (so an editable checkout ships what it runs); metadata,
    including the dependency list, from the installed distribution.
    """
    distribution = importlib.metadata.distribution(DISTRIBUTION_NAME)
    version = distribution.version
    dist_info = f"bert_classify-{version}.dist-info"
    wheel_path = Path(destination_dir) / f"bert_classify-{version}-{_WHEEL_TAG}.whl"
    entries: list[tuple[str, bytes]] = [(name, path.read_bytes()) for name, path in package_files()]
    entries.append((f"{dist_info}/METADATA", (distribution.read_text("METADATA") or "").encode()))
    entries.append(
        (
            f"{dist_info}/WHEEL",
            f"Wheel-Version: 1.0\nGenerator: bert-classify sourcedir\nRoot-Is-Purelib: true\nTag: {_WHEEL_TAG}\n".encode(),
        )
    )
    entry_points = distribution.read_text("entry_points.txt")
    if entry_points:
        entries.append((f"{dist_info}/entry_points.txt", entry_points.encode()))
    record_lines = [f"{name},sha256={_urlsafe_digest(data)},{len(data)}" for name, data in entries]
    record_lines.append(f"{dist_info}/RECORD,,")
    entries.append((f"{dist_info}/RECORD", ("\n".join(record_lines) + "\n").encode()))
    Path(destination_dir).mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            wheel.writestr(info, data)
    return wheel_path


def entry_script_source() -> bytes:
    """The entry script: the package's own entry_point module, which only imports the installed package."""
    return (Path(__file__).resolve().parent / "entry_point.py").read_bytes()


def build_sourcedir(archive_path: Path) -> Path:
    """Write sourcedir.tar.gz: the entry script, the wheel and a requirements.txt that installs it."""
    archive_path = Path(archive_path)
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    staging = archive_path.parent / f".{archive_path.name}.wheel"
    wheel_path = build_wheel(staging)
    try:
        members = [
            (ENTRY_SCRIPT_NAME, entry_script_source()),
            # The container runs `pip install -r requirements.txt` inside /opt/ml/code.
            ("requirements.txt", f"./{wheel_path.name}\n".encode()),
            (wheel_path.name, wheel_path.read_bytes()),
        ]
    finally:
        wheel_path.unlink()
        staging.rmdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    with (
        open(archive_path, "wb") as handle,
        gzip.GzipFile(fileobj=handle, mode="wb", mtime=0, filename="") as gz,
    ):
        gz.write(buffer.getvalue())
    return archive_path


def _urlsafe_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
