"""Shared fixtures: the reference checkpoints, tiny ViT builders, one trained MNIST run.

Tests marked ``slow`` train or export a real model, start processes or run notebooks;
``bash scripts/test.sh -m "not slow"`` runs the rest (the fast tier).
"""

import os
import pathlib

import numpy as np
import pytest

DATA = pathlib.Path(__file__).parent / "data"
REPO = pathlib.Path(__file__).parent.parent


def reference_path(name, suffix=".npz"):
    """A reference checkpoint of tests/data (``vit_token``, ``vit_gap``, ``vit_i21k_style``,
    ``vit_hybrid``), or its ``.expected.npz`` outputs of the original code."""
    return DATA / f"{name}{suffix}"


def reference_model(name):
    """The reference checkpoint's model and its first three images."""
    from keras_vit.weights.npz import from_npz

    model = from_npz(reference_path(name))
    with np.load(reference_path(name, ".expected.npz")) as expected:
        images = expected["images"][:3]
    return model, images


def tiny_vit(**overrides):
    """A ViT small enough to build and run in well under a second (16x16, 2 blocks of width 16)."""
    from keras_vit.core.models import VisionTransformer

    arguments = dict(image_size=16, patch_size=4, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32, num_classes=5)
    arguments.update(overrides)
    return VisionTransformer(**arguments)


def randomize(model, seed=0, scale=0.2):
    """Gives every weight non-trivial values (the head starts at zero)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(0, scale, weight.shape).astype(weight.dtype))
    return model


@pytest.fixture(scope="session")
def readme_session(tmp_path_factory):
    """README.md's blocks in a fresh copy of the repository, run up to and including the
    main job's training (``keras-vit train`` with its defaults); test_export.py's fixture runs
    on through the export of the main job, test_readme.py runs the rest."""
    from readme_runner import ReadmeSession, trains_the_main_job

    session = ReadmeSession(tmp_path_factory.mktemp("readme") / "keras_vit")
    try:
        session.run_through(trains_the_main_job)
        yield session
    finally:
        session.close()


@pytest.fixture(scope="session")
def mnist_run(readme_session, tmp_path_factory):
    """The README's main job, trained once per session by ``keras-vit train`` with its
    defaults (``readme_session``), copied as it was when training finished:
    ``(RunFolder, model, metrics)``. A fully trained model: full-integer int8 keeps >= 99%
    top-1 agreement on it, while briefly trained models sit at the threshold."""
    import json
    import shutil

    import keras

    import keras_vit

    from readme_runner import MAIN_JOB_RUN

    trained = os.path.join(readme_session.root, MAIN_JOB_RUN)
    copy = str(tmp_path_factory.mktemp("saved_models") / "mnist")
    shutil.copytree(trained, copy)
    run = keras_vit.RunFolder(copy)
    with open(run.metrics_path) as file:
        metrics = {**json.load(file), "run_dir": copy}
    return run, keras.saving.load_model(run.model_path), metrics


@pytest.fixture(scope="session")
def mnist_validation():
    """The embedded MNIST validation digits as model input, with their labels."""
    from keras_vit.data import load_embedded_mnist, scale_pixels

    _, (x_val, y_val) = load_embedded_mnist()
    return scale_pixels(x_val[..., None]), y_val.astype("int64")


MAIN_JOB_FIXTURES = ("mnist_run", "readme_session")


def pytest_collection_modifyitems(items):
    for item in items:
        if set(MAIN_JOB_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)  # the training takes minutes


def _uses_the_main_job(source):
    """Whether a test file's functions (tests or fixtures) take one of the main job's fixtures
    as a parameter: a mention in a string or a path name does not count."""
    import ast

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if {argument.arg for argument in node.args.args} & set(MAIN_JOB_FIXTURES):
                return True
    return False


def _main_job_files():
    """The test files that use the main job."""
    folder = os.path.dirname(os.path.abspath(__file__))
    files = set()
    for name in os.listdir(folder):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(folder, name)) as file:
                if _uses_the_main_job(file.read()):
                    files.add(name)
    return files


MAIN_JOB_UNIT = "main job"


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist (scripts/test.sh runs two workers) hands out whole files, and the files
    that use the main job as one unit, first: one worker trains it and runs its tests (the
    longest path of the suite) while the other runs the remaining files."""
    from xdist.scheduler import LoadScopeScheduling

    main_job_files = _main_job_files()

    class FilesAndTheMainJob(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            return MAIN_JOB_UNIT if os.path.basename(path) in main_job_files else path

        def _assign_work_unit(self, node):
            if MAIN_JOB_UNIT in self.workqueue:
                self.workqueue.move_to_end(MAIN_JOB_UNIT, last=False)
            super()._assign_work_unit(node)

    return FilesAndTheMainJob(config, log)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
