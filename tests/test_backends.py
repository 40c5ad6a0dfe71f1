"""The same weights give the same outputs under TensorFlow and JAX.

The backend is fixed when Keras is imported, so the other backend runs in a real child
process that loads the same ``.keras`` file and writes its outputs.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from conftest import tiny_vit

pytestmark = pytest.mark.slow  # runs the other backend in a child process

OTHER_BACKEND = "jax" if keras.backend.backend() != "jax" else "tensorflow"
_CHILD = textwrap.dedent(
    """
    import sys, numpy as np, keras
    import keras_vit  # registers the layers
    for path in sys.argv[1:]:
        model = keras.saving.load_model(path + ".keras")
        np.save(path + ".out.npy", keras.ops.convert_to_numpy(model(np.load(path + ".in.npy"))))
    print(keras.backend.backend())
    """
)
CASES = {
    "token": dict(),
    "gap-sincos-prelogits": dict(pooling="gap", position_embedding="sincos2d", representation_size=8),
    "hybrid": dict(resnet=((1,), 0.5), patch_size=1),
}


@pytest.fixture(scope="module")
def models_run_by_the_other_backend(tmp_path_factory):
    """Saves each case's model and inputs, runs one child process on the other backend."""
    directory = tmp_path_factory.mktemp("backends")
    cases = {}
    for name, options in CASES.items():
        model = tiny_vit(**options)
        rng = np.random.default_rng(0)
        for weight in model.weights:
            weight.assign(rng.normal(scale=0.5, size=weight.shape))
        x = rng.uniform(-1, 1, (3, *model.image_size, 3)).astype("float32")
        path = str(directory / name)
        model.save(path + ".keras")
        np.save(path + ".in.npy", x)
        cases[name] = (model, x, path)
    env = dict(os.environ, KERAS_BACKEND=OTHER_BACKEND)
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, *(path for _, _, path in cases.values())],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.strip().splitlines()[-1] == OTHER_BACKEND
    return cases


@pytest.mark.parametrize("case", list(CASES))
def test_same_outputs_under_tensorflow_and_jax(models_run_by_the_other_backend, case):
    model, x, path = models_run_by_the_other_backend[case]
    np.testing.assert_allclose(np.load(path + ".out.npy"), keras.ops.convert_to_numpy(model(x)), atol=1e-5)
