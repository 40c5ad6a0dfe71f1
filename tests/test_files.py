"""Files written so that a kill at any instant leaves the old file or the new one, and a run
folder that one process at a time trains into."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_vit import run_folder
from keras_vit.files import replaced_atomically, write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"version": 1})
    with pytest.raises(RuntimeError, match="disk full"):
        with replaced_atomically(target) as temporary, open(temporary, "w") as file:
            file.write('{"version": 2, "trunc')
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]


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
        "print('ready', flush=True)\n"
        "version = int(sys.argv[2])\n"
        "while True:\n"
        "    version += 1\n"
        "    files.write_json(sys.argv[1], {'version': version, 'payload': [version] * 250_000})\n"
    )
    rng = np.random.default_rng(0)
    versions = []
    for kill in range(12):
        child = subprocess.Popen([sys.executable, "-c", script, str(target), str(kill * 1000),
                                  os.path.join(REPO, "keras_vit", "files.py")],
                                 stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO}, cwd=REPO)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        if target.exists():
            state = json.loads(target.read_text())  # a torn file would not parse
            assert state["payload"] == [state["version"]] * 250_000
            versions.append(state["version"])
    assert len(versions) >= 9, "the children should have written the file before most kills"
    leftovers = [name for name in os.listdir(tmp_path) if name != "state.json"]
    assert len(leftovers) <= 12  # at most one temporary per killed writer, never the target torn


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
