"""The multi-worker loop with 2 real worker processes on localhost (MultiWorkerMirroredStrategy)."""

import csv
import json
import os
import re
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_vit.training import multiworker

pytestmark = pytest.mark.slow  # starts two worker processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _train_on_two_workers(output, *arguments):
    """Runs `keras-vit train --strategy multiworker` as two worker processes on localhost;
    returns each worker's output once both have exited with status 0."""
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    command = [
        sys.executable, "-m", "keras_vit.cli", "train", "--strategy", "multiworker", "--hidden-size", "32",
        "--num-layers", "1", "--num-heads", "2", "--mlp-dim", "64", "--batch-size", "16", "--learning-rate", "0.01",
        "--warmup-epochs", "0", "--output", str(output), "--quiet", *arguments,
    ]  # fmt: skip
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps(tf_config),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": REPO,
            "CUDA_VISIBLE_DEVICES": "",
        }
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, text in zip(processes, outputs):
        assert process.returncode == 0, text[-4000:]
    return outputs


def test_two_workers_train_lower_the_loss_and_keep_identical_weights(tmp_path):
    output = tmp_path / "run"
    outputs = _train_on_two_workers(output, "--epochs", "2", "--steps-per-epoch", "8")

    # Both workers print their weights' SHA-256 after every epoch: identical, epoch by epoch.
    fingerprints = [re.findall(r"epoch (\d)/2: .* weights ([0-9a-f]{64})", text) for text in outputs]
    assert len(fingerprints[0]) == 2 and fingerprints[0] == fingerprints[1]
    assert fingerprints[0][0][1] != fingerprints[0][1][1]  # and they change

    # Only the chief (worker 0) wrote the run folder; the other's scratch checkpoints are gone.
    assert "chief" in outputs[0].splitlines()[0] or " chief]" in outputs[0]
    assert sorted(os.listdir(output)) == [
        ".keras-vit.json", ".lock", "config.json", "history.csv", "logs", "metrics.json", "model.keras", "training_curves.png",
    ]  # fmt: skip
    with open(output / "history.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])
    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["replicas"], metrics["global_batch_size"], metrics["optimizer_steps"]) == (2, 32, 16)
    assert metrics["weights_sha256"] == fingerprints[0][1][1]


def test_two_workers_train_in_mixed_bfloat16_with_xla_and_the_fine_tuning_tools(tmp_path):
    output = tmp_path / "run"
    outputs = _train_on_two_workers(
        output, "--epochs", "1", "--steps-per-epoch", "4", "--precision", "mixed_bfloat16", "--jit-compile", "on",
        "--ema-decay", "0.9", "--layer-decay", "0.75", "--random-erasing", "0.25",
    )
    # Both workers prepared the same run: the policy and XLA are those asked for.
    for text in outputs:
        assert "2 replica(s) x batch 16, mixed_bfloat16, jit_compile=True" in text, text[-2000:]
    fingerprints = [re.findall(r"epoch 1/1: .* weights ([0-9a-f]{64})", text) for text in outputs]
    assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1]

    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["precision"], metrics["jit_compile"], metrics["optimizer_steps"]) == ("mixed_bfloat16", True, 4)
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["val_loss"])
    model = keras.saving.load_model(output / "model.keras", compile=False)
    assert model.dtype_policy.name == "mixed_bfloat16"
    # Mixed precision keeps float32 variables, and the saved weights are the average (ema_decay),
    # not the trained ones the workers printed.
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in model.get_weights())
    assert metrics["weights_sha256"] != fingerprints[0][0]


def test_cluster_role_reads_tf_config(monkeypatch):
    cluster = {"worker": ["a:1", "b:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert multiworker.cluster_role() == ("worker", 1, False, 2)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert multiworker.cluster_role() == ("worker", 0, True, 2)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        multiworker.cluster_role()
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match='strategy "multiworker" needs TF_CONFIG'):
        multiworker.cluster_role()
