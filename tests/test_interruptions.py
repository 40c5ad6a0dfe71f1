"""Interruptions keep their promise: a kill between any two epoch-end writes, SIGINT, a
closed output pipe and a rerun with the folder spelled another way all resume. Real
processes, real signals, a tiny ViT on a few steps of the embedded digits."""

import csv
import json
import os
import re
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
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, **options)


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


def _start(*arguments, cwd=None, quiet=True):
    command = [sys.executable, "-m", "keras_vit.cli", "train", *TINY, *(["--quiet"] if quiet else []),
               *map(str, arguments)]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, env=environment, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def _interrupt_when_training(process, send):
    """Waits for the run's "Training ..." line (its handlers are set by then), calls ``send``,
    and returns the process's stderr once it has ended."""
    try:
        for line in process.stdout:
            if line.startswith("Training "):
                send(process)
                break
        _, errors = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return errors


def _stopped_line(errors, reason, epochs, steps):
    assert "Traceback" not in errors, errors[-1000:]
    message = errors.strip().splitlines()[-1]
    pattern = (rf"keras-vit train: (preempted|stopped) \({reason}\) at epoch 1/{epochs} step (\d+)/{steps}; the "
               rf"model, optimizer and data position are saved in .+; rerun the same command to resume from there\.")
    found = re.fullmatch(pattern, message)
    assert found, message
    return int(found.group(2))


@pytest.mark.slow
def test_ctrl_c_saves_like_sigterm_and_the_same_folder_spelled_otherwise_resumes(tmp_path):
    process = _start("--epochs", 1, "--steps-per-epoch", 100, "--output", "run", cwd=tmp_path)
    errors = _interrupt_when_training(process, lambda p: p.send_signal(signal.SIGINT))
    assert process.returncode == 130, errors[-1000:]
    step = _stopped_line(errors, "SIGINT", 1, 100)
    state = json.loads((tmp_path / "run" / "backup" / "state.json").read_text())
    assert (state["epoch"], state["step"], state["preempted"]) == (0, step, True)

    resumed = _start("--epochs", 1, "--steps-per-epoch", 100, "--output", "./run/", cwd=tmp_path)
    out, errors = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, errors[-1000:]
    assert f"(resuming at epoch 1 step {step}/100, where it was preempted)" in out
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["optimizer_steps"] == 100


@pytest.mark.slow
def test_a_closed_output_pipe_stops_training_saved_and_resumable(tmp_path):
    output = tmp_path / "run"
    process = _start("--epochs", 2, "--steps-per-epoch", 100, "--output", output, quiet=False)
    errors = _interrupt_when_training(process, lambda p: p.stdout.close())  # `keras-vit train ... | head -1`
    assert process.returncode == 141, errors[-1000:]
    step = _stopped_line(errors, "output pipe closed", 2, 100)
    assert json.loads((output / "backup" / "state.json").read_text())["step"] == step
    assert not (output / "metrics.json").exists() and not (output / "model.keras").exists()


@pytest.mark.slow
def test_an_interrupted_overwrite_resumes_when_its_command_is_given_again(tmp_path):
    from keras_vit.training.config import TrainConfig
    from keras_vit.training.fit import train

    output = tmp_path / "run"
    tiny = dict(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, batch_size=32, image_size=12, patch_size=4)
    train(TrainConfig(**tiny, epochs=1, steps_per_epoch=2, output=str(output)), verbose=0)  # a finished run
    old_metrics = (output / "metrics.json").read_text()
    process = _start("--epochs", 1, "--steps-per-epoch", 100, "--output", output, "--overwrite")
    errors = _interrupt_when_training(process, lambda p: p.send_signal(signal.SIGTERM))
    assert process.returncode == 143, errors[-1000:]
    step = _stopped_line(errors, "SIGTERM", 1, 100)
    assert (output / "metrics.json").read_text() == old_metrics  # the old run stays until the new one finishes

    resumed = _start("--epochs", 1, "--steps-per-epoch", 100, "--output", output, "--overwrite")
    out, errors = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, errors[-1000:]
    assert f"(resuming at epoch 1 step {step}/100, where it was preempted)" in out
    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["steps_per_epoch"], metrics["resumed_at_step"], metrics["optimizer_steps"]) == (100, step, 100)
    assert not (tmp_path / ".run.replacement").exists()


def test_a_run_that_would_update_no_weight_is_refused_before_training(tmp_path):
    from keras_vit.training.config import TrainConfig
    from keras_vit.training.fit import train

    config = TrainConfig(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, image_size=12, patch_size=4,
                         recipe="finetune", batch_size=32, total_batch_size=512, epochs=1, steps_per_epoch=2,
                         output=str(tmp_path / "run"))  # the paper's 512 images per update: 16 micro-batches
    with pytest.raises(ValueError, match=r"1 epoch\(s\) x steps_per_epoch=2 = 2 micro-batches never reach one "
                                         r"optimizer update, which accumulates 16"):
        train(config, verbose=0)
    assert not (tmp_path / "run").exists()
