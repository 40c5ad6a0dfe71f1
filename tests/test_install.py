"""``pip install .`` into an environment that already has its own numpy and pillow keeps them.

setup.cfg gives ranges, not pins (constraints.txt holds the pins), so installing keras_vit
next to other projects must not move their numpy or pillow. The new environment sees the
packages of the one running this test through a ``.pth`` file, so TensorFlow and the rest
count as installed (pip reads every ``sys.path`` entry) instead of a 1 GB download; numpy and
pillow are installed into it at other versions, which shadow those. Needs the package index
(as ``scripts/setup_env.sh`` does): pip fetches numpy, pillow and the build backend.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Releases other than constraints.txt's, inside setup.cfg's and TensorFlow's ranges.
EXISTING = {"numpy": "2.2.6", "pillow": "11.3.0"}

CHECK = """
import importlib.metadata, json
import numpy as np
from PIL import Image
import keras_vit
model = keras_vit.ViT("Ti/16", image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2,
                      mlp_dim=32, num_classes=3)
pixels = keras_vit.preprocess_input(np.asarray(Image.new("RGB", (32, 32), (200, 10, 10)), "float32")[None])
print(json.dumps({
    "versions": {name: importlib.metadata.version(name) for name in ("numpy", "pillow", "keras-vit")},
    "keras_vit": keras_vit.__file__,
    "output_shape": list(model.predict(pixels, verbose=0).shape),
}))
"""


def _run(command, env, cwd):
    result = subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0, f"{command}\n{result.stdout[-4000:]}"
    return result.stdout


@pytest.mark.slow  # creates an environment and installs into it from the package index
def test_pip_install_keeps_the_environments_numpy_and_pillow(tmp_path):
    venv = tmp_path / "venv"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip()
    with open(os.path.join(site_packages, "zz_installed_environment.pth"), "w") as file:
        file.write(sysconfig.get_paths()["purelib"] + "\n")
    _run([python, "-m", "pip", "install", "-q", *(f"{name}=={version}" for name, version in EXISTING.items())], env, tmp_path)

    source = tmp_path / "keras_vit_source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "saved_models", "__pycache__", "*.egg-info", "build"))
    _run([python, "-m", "pip", "install", str(source)], env, tmp_path)

    report = json.loads(_run([python, "-c", CHECK], env, tmp_path).strip().splitlines()[-1])
    assert report["versions"]["numpy"] == EXISTING["numpy"]
    assert report["versions"]["pillow"] == EXISTING["pillow"]
    assert report["keras_vit"].startswith(site_packages)  # the installed copy, not a checkout
    assert report["output_shape"] == [1, 3]
