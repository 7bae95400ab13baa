"""Every notebook runs top to bottom in a real Jupyter kernel against a tiny checkpoint, and is
committed without outputs."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# notebook -> the fixture giving the model directory it runs against
MODEL_FOR = {
    "01_quickstart.ipynb": "tiny_text_model_dir",
    "02_batch_job.ipynb": "tiny_text_model_dir",
    "03_serving.ipynb": "tiny_text_model_dir",
    "04_multimodal.ipynb": "tiny_vl_model_dir",
    "05_rerank.ipynb": "tiny_text_model_dir",
}
# notebook -> {environment variable: fixture giving its directory}, for notebooks with a second model
EXTRA_MODELS = {"05_rerank.ipynb": {"QWEN3_EMBED_RERANKER": "tiny_text_reranker_dir"}}


# Run first in each kernel: every figure shown must be readable without the code beside it
# (issue #29): a title (its own or the figure's), axis labels where the axes are drawn (a label
# on one of the axes that share y is enough), a label on every colour bar.
FIGURE_CHECK = """
import matplotlib.pyplot as _plt

_unreadable_figures = []
_plt_show = _plt.show


def _check_figures_then_show(*args, **kwargs):
    for number in _plt.get_fignums():
        figure = _plt.figure(number)
        suptitle = figure._suptitle.get_text() if figure._suptitle is not None else ""
        for axes in figure.axes:
            if axes.get_label() == "<colorbar>":
                if not (axes.get_ylabel() or axes.get_xlabel()):
                    _unreadable_figures.append(f"figure {number}: a colour bar without a label")
                continue
            if not (axes.get_title() or suptitle):
                _unreadable_figures.append(f"figure {number}: axes without a title")
            if not axes.axison:
                continue  # a picture: no axes to label
            if not axes.get_xlabel():
                _unreadable_figures.append(f"figure {number}: no x label")
            if not any(other.get_ylabel() for other in axes.get_shared_y_axes().get_siblings(axes)):
                _unreadable_figures.append(f"figure {number}: no y label")
    return _plt_show(*args, **kwargs)


_plt.show = _check_figures_then_show
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_every_notebook_is_covered_and_committed_without_outputs():
    found = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(MODEL_FOR)
    for name in found:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{name} has outputs committed"
                )


@pytest.mark.parametrize("name", sorted(MODEL_FOR))
def test_notebook_runs_in_a_real_kernel(name, request, monkeypatch, tmp_path):
    model_dir = request.getfixturevalue(MODEL_FOR[name])
    monkeypatch.setenv("QWEN3_EMBED_MODEL", str(model_dir))
    for variable, fixture in EXTRA_MODELS.get(name, {}).items():
        monkeypatch.setenv(variable, str(request.getfixturevalue(fixture)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("QWEN3_EMBED_PORT", str(_free_port()))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(FIGURE_CHECK))
    notebook.cells.append(
        nbformat.v4.new_code_cell("assert not _unreadable_figures, _unreadable_figures")
    )
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    assert not errors
    images = [
        o
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert images, f"{name} drew no plot"


@pytest.mark.parametrize("name", sorted(MODEL_FOR))
def test_relative_model_dir_is_relative_to_where_jupyter_started(name, monkeypatch, tmp_path):
    """`QWEN3_EMBED_MODEL=tiny-qwen3/ jupyter lab notebooks/` means the folder beside the user's
    shell, although each kernel runs inside notebooks/: the setup cell resolves it against $PWD."""
    started_in, kernel_dir = tmp_path / "repo", tmp_path / "repo" / "notebooks"
    (started_in / "tiny-qwen3").mkdir(parents=True)
    kernel_dir.mkdir()
    monkeypatch.setenv("QWEN3_EMBED_MODEL", "tiny-qwen3/")
    monkeypatch.setenv("PWD", str(started_in))
    source = next(
        cell.source
        for cell in nbformat.read(NOTEBOOKS / name, as_version=4).cells
        if cell.cell_type == "code" and "QWEN3_EMBED_MODEL" in cell.source
    )
    setup = "\n".join(
        line
        for line in source.splitlines()
        if line.startswith(("import os", "MODEL", "if ", "    MODEL"))
    )
    probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup + "\nprint(MODEL)")])
    NotebookClient(
        probe, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(kernel_dir)}}
    ).execute()
    printed = probe.cells[0].outputs[0]["text"].strip()
    assert os.path.normpath(printed) == str(started_in / "tiny-qwen3")
