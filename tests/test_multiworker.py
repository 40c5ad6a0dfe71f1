"""The multi-worker loop with 2 real worker processes on localhost (MultiWorkerMirroredStrategy)."""

import csv
import json
import os
import re
import socket
import subprocess
import sys

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


def test_two_workers_train_lower_the_loss_and_keep_identical_weights(tmp_path):
    output = tmp_path / "run"
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    command = [
        sys.executable, "-m", "keras_vit.cli", "train", "--strategy", "multiworker", "--hidden-size", "32",
        "--num-layers", "1", "--num-heads", "2", "--mlp-dim", "64", "--batch-size", "16", "--epochs", "2",
        "--steps-per-epoch", "8", "--learning-rate", "0.01", "--warmup-epochs", "0", "--output", str(output), "--quiet",
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
