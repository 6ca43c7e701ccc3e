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
from importlib import metadata
from pathlib import Path

from bert_classify.errors import BertClassifyError, ConfigError

CODE_DIR = "code"
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


def extract_archive(archive: Path, target: Path) -> Path:
    """Extract a model.tar.gz into `target`, refusing any member that would land outside it.

    Links, devices and absolute or `..` paths are refused with an error naming the member.
    """
    archive = Path(archive)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                destination = (root / member.name).resolve()
                if os.path.isabs(member.name) or not destination.is_relative_to(root):
                    raise BertClassifyError(f"'{archive}': member '{member.name}' would be written outside the target.")
                if not (member.isfile() or member.isdir()):
                    raise BertClassifyError(
                        f"'{archive}': member '{member.name}' is a link or special file; model archives hold plain files."
                    )
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=members, filter="data")
            else:  # Python < 3.11.4: the checks above are the whole protection
                tar.extractall(root, members=members)  # noqa: S202
    except (tarfile.TarError, OSError, EOFError) as error:
        raise BertClassifyError(f"'{archive}' is not a readable .tar.gz archive ({error}).") from None
    return target
