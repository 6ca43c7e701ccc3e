"""The SageMaker example notebook: every cell not tagged `aws` runs offline, so the notebook cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "sagemaker_spot_training.ipynb"
AWS_TAG = "aws"


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def test_aws_cells_are_tagged_and_say_so() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    aws_code = [c for c in notebook.cells if c.cell_type == "code" and AWS_TAG in _tags(c)]
    sources = "\n".join(c.source for c in aws_code)
    assert "launch_training(" in sources and "deploy(" in sources and "invoke(" in sources and "delete(" in sources
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and AWS_TAG in _tags(cell):
            assert "Needs AWS" in cell.source
    # No untagged cell may call AWS.
    for cell in notebook.cells:
        if cell.cell_type == "code" and AWS_TAG not in _tags(cell):
            assert "launch_training(" not in cell.source and "deploy(deploy_options" not in cell.source


@pytest.mark.slow
def test_local_cells_execute_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells = [c for c in notebook.cells if AWS_TAG not in _tags(c)]
    # No credentials: a local cell that tried to reach AWS would fail instead of silently passing.
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert not any(output.get("output_type") == "error" for cell in notebook.cells for output in cell.get("outputs", []))
    assert "metric: val_accuracy=" in outputs  # the rehearsal trained
    assert "code" in outputs and "model.safetensors" in outputs  # deployable layout listed
    assert "MaxWaitTimeInSeconds" in outputs  # the dry-run request printed
    assert (tmp_path / "sagemaker-example" / "rehearsal" / "model" / "code" / "inference.py").is_file()
