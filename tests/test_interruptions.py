"""Interruptions keep their promise: a kill between any two epoch-end writes, SIGINT, a
closed output pipe and a rerun with the folder spelled another way all resume. Real
processes, real signals, a tiny ViT on a few steps of the embedded digits."""

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from keras_vit.training.callbacks import KILL_AFTER_WRITE_VARIABLE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--mlp-dim", "32", "--batch-size", "32",
        "--image-size", "12", "--patch-size", "4", "--steps-per-epoch", "3"]  # fmt: skip


def _train(*arguments, env=None, **options):
    command = [sys.executable, "-m", "keras_vit.cli", "train", *TINY, "--quiet", *map(str, arguments)]
    environment = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, **options)


def _history_epochs(output):
    with open(output / "history.csv", newline="") as file:
        return [row["epoch"] for row in csv.DictReader(file)]


# The writes at the end of the first epoch, in the order they are made, and the epochs a
# run killed right after each has completed (only the backup's state says an epoch is done).
EPOCH_END_WRITES = [("history row", 0), ("last checkpoint", 0), ("best checkpoint", 0), ("backup weights", 0),
                    ("backup state", 1)]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", range(1, len(EPOCH_END_WRITES) + 1), ids=[w for w, _ in EPOCH_END_WRITES])
def test_a_kill_after_any_epoch_end_write_resumes_with_every_epoch_counted(tmp_path, kill_after):
    output = tmp_path / "run"
    killed = _train("--epochs", 2, "--output", output, env={KILL_AFTER_WRITE_VARIABLE: str(kill_after)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (output / "metrics.json").exists()

    resumed = _train("--epochs", 2, "--output", output)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "after 2 epochs" in resumed.stdout
    metrics = json.loads((output / "metrics.json").read_text())
    completed = EPOCH_END_WRITES[kill_after - 1][1]
    assert (metrics["epochs"], metrics["resumed_after_epoch"]) == (2, completed)
    assert metrics["optimizer_steps"] == 2 * 3
    assert _history_epochs(output) == ["0", "1"]
