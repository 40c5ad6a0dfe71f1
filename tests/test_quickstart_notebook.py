"""examples/quickstart.ipynb: stored with the outputs of a full run, and runs from top to
bottom in a real kernel (nbclient)."""

import json
import os
import re
import sys

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
import pytest

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "quickstart.ipynb")
STORED_ACCURACY_THRESHOLD = 0.90  # the stored 20-epoch run printed 0.948


def _text(cell):
    return "".join(output.get("text", "") for output in cell.get("outputs", []) if output["output_type"] == "stream")


def _outputs(notebook):
    return "\n".join(_text(cell) for cell in notebook.cells if cell.cell_type == "code")


def _figures(notebook):
    return [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


def assert_executed_in_order_without_errors(notebook):
    """Every code cell ran once, top to bottom in one kernel, and none raised."""
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code_cells] == list(range(1, len(code_cells) + 1))
    errors = [o for cell in code_cells for o in cell.outputs if o["output_type"] == "error"]
    assert errors == []
    assert "Traceback" not in _outputs(notebook)


def _held_out_accuracy(outputs):
    return float(re.search(r"held-out accuracy: ([0-9.]+)", outputs).group(1))


def _class_balanced_predictions(outputs):
    predicted = [int(p) for p in re.search(r"predicted: \[([0-9, ]+)\]", outputs).group(1).split(", ")]
    true = [int(t) for t in re.search(r"true: +\[([0-9, ]+)\]", outputs).group(1).split(", ")]
    assert sorted(true) == sorted(list(range(10)) * 2)  # two digits of each class
    assert len(predicted) == len(true) and all(0 <= p <= 9 for p in predicted)
    return predicted, true


def test_stored_notebook_shows_a_full_run():
    """What a new user opening the notebook sees: every cell's output, a trained model."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert_executed_in_order_without_errors(notebook)
    outputs = _outputs(notebook)
    assert "Epoch 20/20" in outputs
    assert _held_out_accuracy(outputs) >= STORED_ACCURACY_THRESHOLD
    predicted, true = _class_balanced_predictions(outputs)
    right = sum(p == t for p, t in zip(predicted, true))
    assert f"{right} of 20 right" in outputs and right >= 17
    assert len(_figures(notebook)) == 1


def _kernel_manager(kernel_dir):
    """A kernel spec whose argv is this interpreter (the project's .venv/bin/python under pytest)."""
    spec_dir = os.path.join(kernel_dir, "keras_vit_tests")
    os.makedirs(spec_dir)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "language": "python"}
    with open(os.path.join(spec_dir, "kernel.json"), "w") as file:
        json.dump(spec, file)
    return KernelManager(kernel_name="keras_vit_tests", kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernel_dir]))


@pytest.mark.slow  # executes the notebook, which trains a model
def test_quickstart_notebook_trains_evaluates_and_predicts(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Three epochs, injected after the parameters cell as papermill does: every cell runs
    # in a fraction of the stored run's time.
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell("EPOCHS = 3", metadata={"tags": ["injected-parameters"]}))
    NotebookClient(
        notebook, km=_kernel_manager(str(tmp_path / "kernels")), timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert_executed_in_order_without_errors(notebook)
    outputs = _outputs(notebook)
    assert "batch: (64, 28, 28, 1) <dtype: 'float32'> labels: (64, 10)" in outputs
    low, high = map(float, re.search(r"pixel range: (\S+) (\S+)", outputs).groups())
    assert -1.0 <= low < -0.9 and 0.9 < high <= 1.0
    assert "Epoch 3/3" in outputs
    assert 0.3 < _held_out_accuracy(outputs) <= 1.0  # three epochs lift it well above chance (0.1)
    _class_balanced_predictions(outputs)
    assert len(_figures(notebook)) == 1
