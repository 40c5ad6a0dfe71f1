"""examples/quickstart.ipynb runs from top to bottom in a real kernel (nbclient)."""

import os
import re

import nbformat
from nbclient import NotebookClient
import pytest

pytestmark = pytest.mark.slow  # executes a notebook that trains a model

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "quickstart.ipynb")


def _text(cell):
    return "".join(output.get("text", "") for output in cell.get("outputs", []) if output["output_type"] == "stream")


def test_quickstart_notebook_trains_evaluates_and_predicts(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "\n".join(_text(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert "batch: (64, 28, 28, 1) <dtype: 'float32'> labels: (64, 10)" in outputs
    low, high = map(float, re.search(r"pixel range: (\S+) (\S+)", outputs).groups())
    assert -1.0 <= low < -0.9 and 0.9 < high <= 1.0
    assert "Epoch 3/3" in outputs
    accuracy = float(re.search(r"held-out accuracy: ([0-9.]+)", outputs).group(1))
    assert 0.3 < accuracy <= 1.0  # three epochs lift it well above chance (0.1)
    predicted = re.search(r"predicted: \[([0-9, ]+)\]", outputs).group(1).split(", ")
    assert len(predicted) == 8 and all(p in list("0123456789") for p in predicted)
    figures = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(figures) == 1
