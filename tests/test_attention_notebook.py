"""examples/attention.ipynb: stored with the outputs of a full run, and executed with
nbclient on a kernel running this test's Python."""

import json
import os
import re
import sys

import matplotlib.image
import nbformat
import numpy as np
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO_ROOT, "examples", "attention.ipynb")
KERNEL_NAME = "keras_vit_tests"
CELL_TIMEOUT_S = 300


def _kernel_manager(kernel_dir):
    """A kernel spec whose argv is this interpreter (the project's .venv/bin/python under pytest)."""
    spec_dir = os.path.join(kernel_dir, KERNEL_NAME)
    os.makedirs(spec_dir)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "keras_vit tests",
        "language": "python",
    }
    with open(os.path.join(spec_dir, "kernel.json"), "w") as file:
        json.dump(spec, file)
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernel_dir]))


def _execute(tmp_path, name, **parameters):
    """Runs the notebook from examples/ (as Jupyter does) with parameters injected after its
    ``parameters`` cell; returns the executed notebook and the summary it writes."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    client = NotebookClient(
        notebook,
        km=_kernel_manager(str(tmp_path / f"kernels_{name}")),
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": os.path.join(REPO_ROOT, "examples")}},
    )
    client.execute()
    with open(os.path.join(parameters["FIGURES_DIR"], "summary.json")) as file:
        return notebook, json.load(file)


def _png_size(path):
    pixels = matplotlib.image.imread(path)
    assert pixels.var() > 0, f"{path} is blank"
    return pixels.shape[:2]


def test_stored_notebook_shows_a_full_run():
    """What a new user opening the notebook sees: every cell ran in order, no errors, every figure."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code_cells] == list(range(1, len(code_cells) + 1))
    outputs = [output for cell in code_cells for output in cell.outputs]
    assert [o for o in outputs if o["output_type"] == "error"] == []
    text = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    assert "Traceback" not in text
    assert "Epoch 5/5" in text
    assert float(re.search(r"held-out accuracy: ([0-9.]+)", text).group(1)) > 0.6
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 5 + 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("attention_notebook")
    figures_dir = str(tmp_path / "figures")
    notebook, summary = _execute(tmp_path, "train", FIGURES_DIR=figures_dir, EPOCHS=5)
    return tmp_path, figures_dir, notebook, summary


@pytest.mark.slow  # executes the notebook, which trains a model
def test_notebook_trains_a_digit_model_and_writes_every_figure(trained):
    _, figures_dir, notebook, summary = trained
    # Ten classes: chance is 0.1; five epochs of the small ViT reach about 0.8.
    assert summary["held_out_accuracy"] > 0.6
    expected_sizes = {
        "attention_rollout": (400, 8 * 200),  # 8 digits, image and overlay rows
        "attention_heads": (4 * 200 + 50, (4 + 1) * 200),  # 4 rows at most, 4 heads + the image
        "embedding_filters": (3 * 100 + 50, 7 * 100),  # 16 components, 7 a row
        "position_similarity": (500, 600),
        "attention_distance": (400, 500),
    }
    for name, size in expected_sizes.items():
        path = summary["mnist_figures"][name]
        assert path.startswith(figures_dir)
        assert _png_size(path) == size
    assert sorted(summary["reference_figures"]) == [
        "attention_distance",
        "embedding_filters",
        "heads",
        "position_similarity",
        "rollout",
    ]
    for path in summary["reference_figures"].values():
        _png_size(path)
    distances = summary["mean_attention_distance"]
    assert len(distances) == 2 and all(len(heads) == 4 for heads in distances)
    # Figures are shown inline as PNG images.
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 5 + 5


@pytest.mark.slow  # executes the notebook twice
def test_notebook_loads_a_run_folder_given_as_model_path(trained):
    tmp_path, figures_dir, _, summary = trained
    run_dir = os.path.join(figures_dir, "mnist_run")
    assert os.path.isfile(os.path.join(run_dir, "model.keras"))
    _, reloaded = _execute(tmp_path, "load", FIGURES_DIR=str(tmp_path / "figures_loaded"), MODEL_PATH=run_dir)
    assert reloaded["held_out_accuracy"] == pytest.approx(summary["held_out_accuracy"], abs=1e-6)
    np.testing.assert_allclose(reloaded["mean_attention_distance"], summary["mean_attention_distance"], atol=1e-5)
