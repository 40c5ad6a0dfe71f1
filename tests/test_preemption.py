"""Preemption: SIGTERM (what GPU/TPU schedulers send) saves the step a run is at and exits
with 143; the same command resumes from that step with the data where it was, and ends
with the weights of a run that was never interrupted. Real processes, a real signal."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_vit import data
from keras_vit.training.config import TrainConfig
from keras_vit.training.fit import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny ViT on the embedded digits: 4,000 images, batch 32, so 125 steps an epoch and each
# epoch is one pass over the data (two passes, two shuffles).
TINY = dict(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, batch_size=32, image_size=12, patch_size=4, epochs=2)
STEPS = 4000 // 32
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _command(output):
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in TINY.items()]
    return [sys.executable, "-m", "keras_vit.cli", "train", *flags, "--output", str(output)]


def _env():
    return {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}


def _history(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _weights(path):
    model = keras.saving.load_model(path, compile=False)
    return [np.asarray(w) for w in model.get_weights()]


def _digest(batches):
    # One number per batch for its images and its labels: equal digests, equal batches.
    return [(float(np.sum(np.asarray(x, np.float64) * np.arange(x.shape[1])[:, None, None])), tuple(np.argmax(y, 1)))
            for x, y in batches]


def test_the_training_stream_resumed_at_any_batch_gives_the_batches_that_followed():
    datasets = data.embedded_mnist(500, image_size=12, seed=7)  # 8 batches a pass
    whole = _digest(datasets.stream().take(20).as_numpy_iterator())
    for skip in (3, 8, 13):  # inside the first pass, at the second's start, inside the second
        assert _digest(datasets.stream(skip).take(4).as_numpy_iterator()) == whole[skip : skip + 4]
    assert [labels for _, labels in whole[:8]] != [labels for _, labels in whole[8:16]]  # each pass reshuffled
    other_seed = _digest(data.embedded_mnist(500, image_size=12, seed=8).stream().take(2).as_numpy_iterator())
    assert other_seed != whole[:2]


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_the_step_exits_143_and_the_same_command_resumes_there(tmp_path):
    output = tmp_path / "preempted"
    process = subprocess.Popen(_command(output), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, sent = [], None
    try:
        started = False
        for line in process.stdout:  # Keras's progress lines: "k/125 ... step - loss: ..."
            line = ANSI.sub("", line)
            seen.append(line)
            started = started or line.startswith("Epoch 1/2")
            done = re.match(r"\s*(\d+)/%d " % STEPS, line)
            if started and done and int(done.group(1)) >= 3:
                sent = int(done.group(1))  # the run reports this many steps of epoch 1 done
                process.send_signal(signal.SIGTERM)
                break
        rest, errors = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert sent is not None, "the run should report progress inside epoch 1:\n" + "".join(seen[-20:])
    assert process.returncode == 143, errors[-3000:]
    message = errors.strip().splitlines()[-1]
    found = re.fullmatch(
        r"keras-vit train: preempted \(SIGTERM\) at epoch 1/2 step (\d+)/%d; the model, optimizer and data position "
        r"are saved in (.+); rerun the same command to resume from there\." % STEPS,
        message,
    )
    assert found, message
    step = int(found.group(1))
    assert sent <= step < STEPS and found.group(2) == str(output / "backup")
    assert json.loads((output / "backup" / "state.json").read_text()) == {
        "epoch": 0, "step": step, "weights": f"epoch0-step{step}.keras", "preempted": True,
    }  # fmt: skip
    assert _history(output / "history.csv") == []  # no epoch has ended
    assert not (output / "metrics.json").exists()

    resumed = subprocess.run(_command(output), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"(resuming at epoch 1 step {step}/{STEPS}, where it was preempted)" in resumed.stdout
    shown = ANSI.sub("", resumed.stdout)
    left = STEPS - step  # epoch 1 goes on with the steps it had left, epoch 2 is whole
    assert re.search(r"Epoch 1/2\n(.*\n)*?\s*%d/%d .*val_loss" % (left, left), shown), shown[-3000:]
    assert re.search(r"Epoch 2/2\n(.*\n)*?%d/%d .*val_loss" % (STEPS, STEPS), shown), shown[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["resumed_after_epoch"], metrics["resumed_at_step"]) == (0, step)
    assert metrics["optimizer_steps"] == 2 * STEPS
    assert not (output / "backup").exists()  # resumable state goes once the run has finished

    # The same run, never interrupted (here, in this process): the same weights, so the
    # resumed run saw the same batches from step `step` of epoch 1 on, in the same order.
    whole = train(TrainConfig(**TINY, output=str(tmp_path / "whole")), verbose=0)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # train() gives SIGTERM back
    resumed_weights, whole_weights = _weights(output / "model.keras"), _weights(tmp_path / "whole" / "model.keras")
    assert len(resumed_weights) == len(whole_weights)
    for resumed_weight, whole_weight in zip(resumed_weights, whole_weights):
        np.testing.assert_allclose(resumed_weight, whole_weight, rtol=0, atol=1e-6)
    rows, whole_rows = _history(output / "history.csv"), _history(tmp_path / "whole" / "history.csv")
    for row, whole_row in zip(rows, whole_rows):  # validation after each epoch: the same numbers
        assert float(row["val_loss"]) == pytest.approx(float(whole_row["val_loss"]), abs=1e-6)
    assert whole["optimizer_steps"] == metrics["optimizer_steps"]
