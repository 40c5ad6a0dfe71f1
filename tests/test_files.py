"""Files written so that a kill at any instant leaves the old file or the new one, and a run
folder that one process at a time trains into."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_vit import run_folder
from keras_vit.files import replaced_atomically, write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _file_size_limit(limit):
    # For a child process: writes past `limit` bytes fail with EFBIG, as a full disk fails
    # with ENOSPC (a real refusal by the kernel, which needs no privileges to set up).
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel's signal ends the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"version": 1})
    with pytest.raises(RuntimeError, match="disk full"):
        with replaced_atomically(target) as temporary, open(temporary, "w") as file:
            file.write('{"version": 2, "trunc')
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_a_write_the_system_refuses_leaves_the_old_file_and_names_the_target(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"version": 1})
    script = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('files', sys.argv[2])\n"
        "files = importlib.util.module_from_spec(spec); spec.loader.exec_module(files)\n"
        "try:\n"
        "    files.write_json(sys.argv[1], {'version': 2, 'payload': [2] * 100_000})\n"
        "except OSError as error:\n"
        "    print(error.errno, error.filename, error.strerror, sep='|')\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(target), os.path.join(REPO, "keras_vit", "files.py")],
        capture_output=True, text=True, preexec_fn=_file_size_limit(50_000), timeout=60,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip().split("|") == [str(errno.EFBIG), str(target), "File too large (the file is left as it was)"]
    assert json.loads(target.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]  # the temporary is gone


@pytest.mark.slow
def test_cli_train_on_a_disk_that_refuses_writes_ends_with_one_line_naming_the_file(tmp_path):
    # 100 kB a file: the configuration and the history fit, the first backup of the weights does not.
    output = tmp_path / "run"
    command = [
        sys.executable, "-m", "keras_vit.cli", "train", "--hidden-size=16", "--num-layers=1", "--num-heads=2",
        "--mlp-dim=32", "--batch-size=32", "--image-size=12", "--patch-size=4", "--epochs=1", "--steps-per-epoch=2",
        "--output", str(output), "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, preexec_fn=_file_size_limit(100_000),
                            timeout=300)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert re.fullmatch(
        r"keras-vit train: error: File too large \(the file is left as it was\): '%s/backup/epoch1-step0\.keras'"
        % re.escape(str(output)), lines[0]
    ), lines[0]
    assert json.loads((output / "config.json").read_text())["model"]["hidden_size"] == 16
    leftovers = [path for path in output.rglob("*") if ".tmp-" in path.name]
    assert leftovers == []


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_torn_file(tmp_path):
    # A child rewrites a 2 MB JSON file as fast as it can; it is killed at 12 random moments,
    # and each time the file on disk is one whole version or another.
    target = tmp_path / "state.json"
    # The child loads keras_vit/files.py alone (standard library only), not the package and
    # TensorFlow: a second of start-up instead of several, for each of the kills.
    script = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('files', sys.argv[3])\n"
        "files = importlib.util.module_from_spec(spec); spec.loader.exec_module(files)\n"
        "version = int(sys.argv[2])\n"
        "while True:\n"
        "    version += 1\n"
        "    files.write_json(sys.argv[1], {'version': version, 'payload': [version] * 250_000})\n"
        "    if version == int(sys.argv[2]) + 1:\n"
        "        print('wrote one', flush=True)\n"
    )
    rng = np.random.default_rng(0)
    versions = []
    for kill in range(12):
        child = subprocess.Popen([sys.executable, "-c", script, str(target), str(kill * 1000),
                                  os.path.join(REPO, "keras_vit", "files.py")],
                                 stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO}, cwd=REPO)
        # Killed after its first whole write, at a random moment of the later ones, however
        # busy the machine is.
        assert child.stdout.readline().strip() == "wrote one"
        time.sleep(rng.uniform(0.05, 0.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        if target.exists():
            state = json.loads(target.read_text())  # a torn file would not parse
            assert state["payload"] == [state["version"]] * 250_000
            versions.append(state["version"])
    assert len(versions) == 12 and versions == sorted(versions)  # a whole version each time, never an older one
    leftovers = [name for name in os.listdir(tmp_path) if name != "state.json"]
    assert len(leftovers) <= 12  # at most one temporary per killed writer, never the target torn


@pytest.mark.slow  # starts a process
def test_a_second_process_is_refused_the_run_folder_with_one_line(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from keras_vit.run_folder import RunFolder; run = RunFolder(sys.argv[1]); run.lock(); "
         "print('locked', flush=True); time.sleep(60)", str(folder)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO}, cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=f"in use by keras-vit process {holder.pid}; wait for it"):
            run_folder.RunFolder(folder).lock()
    finally:
        holder.kill()
        holder.wait()
    run = run_folder.RunFolder(folder)
    run.lock()  # free again once the holder is gone
    run.unlock()
    assert run.is_empty()  # the lock file is not a file of the run's
