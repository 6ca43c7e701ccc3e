"""Build and read the model.tar.gz that the SageMaker PyTorch inference container deploys.

Layout: the model's files at the root, `code/inference.py` (imports our handler), `code/requirements.txt`
(third-party runtime dependencies, at minimum versions that the AWS images' own satisfy) and
`code/bert_classify/` (this package's source, vendored so that the endpoint needs no index that serves
bert-classify). The same archive serves on the PyTorch and the Hugging Face inference images.
Archives are extracted safely.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zlib
from importlib import metadata
from pathlib import Path, PurePosixPath

from bert_classify.errors import ConfigError

CODE_DIR = "code"
# Caps on what extracting one archive may write (a gzip bomb or a million-file archive is refused).
DEFAULT_MAX_ARCHIVE_BYTES = 32 * 1024**3
DEFAULT_MAX_ARCHIVE_FILES = 10_000
MAX_ARCHIVE_BYTES_VARIABLE = "BERT_CLASSIFY_MAX_ARCHIVE_BYTES"
MAX_ARCHIVE_FILES_VARIABLE = "BERT_CLASSIFY_MAX_ARCHIVE_FILES"
# Not model files: regenerated (code), training state (checkpoints) or editor/OS clutter.
_EXCLUDED_TOP_LEVEL = {CODE_DIR, "checkpoints", "__pycache__"}

INFERENCE_PY = '''"""SageMaker inference entry point written by bert-classify: the handler lives in the package.

The package's source is vendored next to this file (code/bert_classify); requirements.txt holds the
third-party packages it needs. Environment: BERT_CLASSIFY_RUNTIME=torch|onnx and the limits that
bert_classify/inference/handler.py documents.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bert_classify.inference.handler import input_fn, model_fn, output_fn, predict_fn  # noqa: E402,F401
'''


# What the endpoint installs from code/requirements.txt: our own minimum versions (pyproject.toml), no upper
# bound and no pin to what trained the model. Both AWS images' own versions satisfy them where they ship
# the package (the Hugging Face image: transformers 4.49, tokenizers, safetensors), so pip changes nothing
# there: a newer transformers would break that image's toolkit, and an isolated endpoint cannot download.
# The PyTorch image has no transformers: pip installs a current one at start (network needed).
RUNTIME_DISTRIBUTIONS = ("transformers", "tokenizers", "safetensors")
ONNX_DISTRIBUTIONS = ("onnxruntime",)
_FALLBACK_REQUIREMENTS = {
    "transformers": "transformers>=4.44",
    "tokenizers": "tokenizers>=0.19",
    "safetensors": "safetensors>=0.4",
    "onnxruntime": "onnxruntime>=1.18",
}


def _declared_requirements() -> dict[str, str]:
    """name -> 'name>=x' as this package declares it (installed metadata; the fallbacks mirror pyproject)."""
    declared = dict(_FALLBACK_REQUIREMENTS)
    try:
        requires = metadata.requires("bert-classify") or []
    except metadata.PackageNotFoundError:
        return declared
    for requirement in requires:
        specifier = requirement.split(";")[0].strip()
        name = specifier.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
        if name in declared:
            declared[name] = specifier
    return declared


def runtime_requirements(with_onnx: bool = False) -> list[str]:
    """Packages the endpoint needs beyond the image's torch and numpy, at our declared minimum versions."""
    declared = _declared_requirements()
    names = RUNTIME_DISTRIBUTIONS + (ONNX_DISTRIBUTIONS if with_onnx else ())
    return [declared[name] for name in names]


def write_inference_code(model_dir: Path) -> None:
    """Write `code/inference.py`, `code/requirements.txt` and the vendored package into `model_dir`.

    Called by the training entry point so that a training job's model.tar.gz deploys as it is.
    Replaces an existing `code/` directory.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"--model: '{model_dir}' is not a directory.")
    _write_code(model_dir / CODE_DIR, with_onnx=(model_dir / "onnx").is_dir())


def _write_code(code_dir: Path, *, with_onnx: bool) -> None:
    if code_dir.exists():
        shutil.rmtree(code_dir)
    code_dir.mkdir(parents=True)
    (code_dir / "inference.py").write_text(INFERENCE_PY, encoding="utf-8")
    (code_dir / "requirements.txt").write_text("\n".join(runtime_requirements(with_onnx)) + "\n", encoding="utf-8")
    package_source = Path(__file__).resolve().parents[1]
    shutil.copytree(
        package_source,
        code_dir / "bert_classify",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )


def build_package(model_dir: Path, output: Path) -> Path:
    """Write `output` (model.tar.gz): the model directory's files at the root plus a fresh `code/`.

    The model directory itself is left as it is; `code/` and `checkpoints/` in it are not copied.
    """
    import tempfile

    model_dir = Path(model_dir)
    output = Path(output)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(
            f"--model: '{model_dir}' is not a model directory (no config.json); give the directory that "
            "`bert-classify train` wrote."
        )
    if not output.name.endswith((".tar.gz", ".tgz")):
        raise ConfigError(f"--output '{output}': name it model.tar.gz (SageMaker expects a gzipped tar).")
    if output.resolve().is_relative_to(model_dir.resolve()):
        raise ConfigError(f"--output '{output}' must be outside the model directory '{model_dir}'.")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="bert-classify-code-") as scratch:
        code_parent = Path(scratch)
        _write_code(code_parent / CODE_DIR, with_onnx=(model_dir / "onnx").is_dir())
        with tarfile.open(partial, "w:gz") as archive:
            for path in sorted(model_dir.iterdir()):
                if path.name in _EXCLUDED_TOP_LEVEL or path.name.startswith((".", "step-")):
                    continue
                archive.add(path, arcname=path.name, filter=_no_links)
            archive.add(code_parent / CODE_DIR, arcname=CODE_DIR, filter=_no_links)
    os.replace(partial, output)
    return output


def _no_links(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if member.name.endswith(("__pycache__", ".pyc")):
        return None
    if member.issym() or member.islnk():
        raise ConfigError(f"package: '{member.name}' is a link; copy the real file into the model directory.")
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def extract_archive(
    archive: Path, target: Path, *, max_bytes: int | None = None, max_files: int | None = None
) -> Path:
    """Extract a model.tar.gz into `target`, refusing anything that would land outside it or fill the disk.

    The one safe extraction of the project (the predictor and the SageMaker model channel both
    call it). Checked member by member from the headers, before anything is written: absolute or
    `..` paths, links, devices; more than `max_files` entries (default 10,000, or the
    BERT_CLASSIFY_MAX_ARCHIVE_FILES environment variable) or more than `max_bytes` in all once
    unpacked (default 32 GiB, or BERT_CLASSIFY_MAX_ARCHIVE_BYTES). Each refusal names the member.
    """
    archive = Path(archive)
    target = Path(target)
    max_bytes = _limit(max_bytes, MAX_ARCHIVE_BYTES_VARIABLE, DEFAULT_MAX_ARCHIVE_BYTES)
    max_files = _limit(max_files, MAX_ARCHIVE_FILES_VARIABLE, DEFAULT_MAX_ARCHIVE_FILES)
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members: list[tarfile.TarInfo] = []
            unpacked_bytes = 0
            for member in tar:  # headers one at a time: a hostile archive stops at its first excess
                members.append(member)
                if len(members) > max_files:
                    raise ConfigError(
                        f"'{archive}': more than {max_files:,} entries (at '{member.name}'); a model archive holds a "
                        f"few dozen. If it is genuine, raise {MAX_ARCHIVE_FILES_VARIABLE}."
                    )
                name = PurePosixPath(member.name)
                destination = (root / member.name).resolve()
                if name.is_absolute() or ".." in name.parts or not destination.is_relative_to(root):
                    raise ConfigError(f"'{archive}': member '{member.name}' would be written outside the target.")
                if not (member.isfile() or member.isdir()):
                    raise ConfigError(
                        f"'{archive}': member '{member.name}' is a link or special file; model archives hold plain files."
                    )
                unpacked_bytes += member.size
                if unpacked_bytes > max_bytes:
                    raise ConfigError(
                        f"'{archive}': unpacks to more than {max_bytes:,} bytes (at '{member.name}'); refusing it. "
                        f"If it is genuine, raise {MAX_ARCHIVE_BYTES_VARIABLE}."
                    )
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=members, filter="data")
            else:  # Python < 3.11.4: the checks above are the whole protection
                tar.extractall(root, members=members)  # noqa: S202
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ConfigError(f"'{archive}' is not a readable .tar.gz archive ({error}).") from None
    return target


def _limit(given: int | None, variable: str, default: int) -> int:
    if given is not None:
        return given
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{variable} must be a whole number >= 1, not {value!r}.")
    return int(value)
