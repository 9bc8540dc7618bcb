"""``notebooks/routing.ipynb`` runs headless against the tiny run and draws its figures."""

from __future__ import annotations

import shutil

import nbformat
from nbclient import NotebookClient

from tests.evaluation.conftest import REPO, TinyRun

NOTEBOOK = REPO / "notebooks" / "routing.ipynb"
FIGURES = ("loss_per_task", "expert_load_per_layer", "task_expert_usage", "expert_weight_norms")


def execute(workdir, monkeypatch, **env: str) -> nbformat.NotebookNode:
    for name in ("HYCAM_RUN_DIR", "HYCAM_FIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell
    return notebook


def png_outputs(notebook: nbformat.NotebookNode) -> list[str]:
    return [
        output["data"]["image/png"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]


def test_notebook_is_stored_clean():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "RUN_DIR" in code[0].source and "HYCAM_RUN_DIR" in code[0].source


def test_notebook_draws_every_figure_for_the_run(tiny_run: TinyRun, tmp_path, monkeypatch):
    figures = tmp_path / "figures"
    notebook = execute(tmp_path, monkeypatch, HYCAM_RUN_DIR=str(tiny_run.fit_dir), HYCAM_FIG_DIR=str(figures))
    assert len(png_outputs(notebook)) == len(FIGURES)
    for name in FIGURES:
        assert (figures / f"{name}.png").read_bytes().startswith(b"\x89PNG"), name
    text = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert f"run: {tiny_run.fit_dir}" in text
    assert "tasks: ['arithmetic', 'code', 'qa', 'list_ops']" in text
    assert "no routing telemetry" not in text and "no per-task routing" not in text


def test_notebook_finds_the_newest_run_by_default(tiny_run: TinyRun, tmp_path, monkeypatch):
    """Without HYCAM_RUN_DIR it looks for ``../runs/*/version_*/adapter`` from its working directory."""
    shutil.copytree(tiny_run.fit_dir, tmp_path / "runs" / "tiny" / "version_7")
    (tmp_path / "notebooks").mkdir()
    notebook = execute(tmp_path / "notebooks", monkeypatch)
    assert len(png_outputs(notebook)) == len(FIGURES)
    assert (tmp_path / "runs" / "tiny" / "version_7" / "figures" / "loss_per_task.png").is_file()


def test_read_adapter_config_is_exported_at_top_level():
    import hycam_pl
    import hycam_pl.modulation

    assert hycam_pl.read_adapter_config is hycam_pl.modulation.read_adapter_config
