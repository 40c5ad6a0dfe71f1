"""The run folder: class names found in the data travel from training to every artifact.

A real folder of JPEG and PNG photos is trained on through the public API with the
default data options, then exported and predicted with the defaults; nothing here writes
a configuration or a label file by hand.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import keras_vit
from keras_vit import run_folder

pytestmark = pytest.mark.slow  # trains on a photo folder and exports to every format

CLASSES = ["cat", "dog", "zebra"]  # sorted folder names: the labels 0, 1, 2


def _photo_folder(root):
    """Three classes of 10 photos each, JPEG and PNG, of mixed sizes, told apart by colour."""
    rng = np.random.default_rng(0)
    colours = {"cat": (200, 60, 40), "dog": (40, 180, 60), "zebra": (50, 70, 210)}
    for name, colour in colours.items():
        os.makedirs(root / name)
        for index in range(10):
            size = (40 + 4 * index, 36 + 3 * index)
            pixels = np.clip(rng.normal(colour, 25, size=(size[1], size[0], 3)), 0, 255).astype("uint8")
            suffix = "jpg" if index % 2 else "png"
            Image.fromarray(pixels).save(root / name / f"{index:02d}.{suffix}")
    return root


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("class_names")
    photos = _photo_folder(root / "photos")
    metrics = keras_vit.train(
        keras_vit.TrainConfig(
            image_folder=str(photos), variant="Ti/16", image_size=32, num_layers=1, epochs=1, batch_size=4,
            output=str(root / "run"),
        ),
        verbose=0,
    )
    return run_folder.RunFolder(metrics["run_dir"]), metrics, photos


def test_training_records_the_folder_class_names(trained_run):
    run, metrics, _ = trained_run
    assert run.class_names() == CLASSES
    assert metrics["class_names"] == CLASSES
    with open(run.config_path) as file:
        assert json.load(file)["class_names"] == CLASSES


def test_class_names_reach_every_artifact_and_predict(trained_run):
    import onnxruntime
    import tensorflow as tf

    run, _, photos = trained_run
    manifest = keras_vit.export_model(run.path, progress=False)  # default formats and precisions
    export_dir = run.export_dir
    assert manifest["class_names"] == CLASSES
    with open(os.path.join(export_dir, "labels.txt")) as file:
        assert file.read().split() == CLASSES
    session = onnxruntime.InferenceSession(os.path.join(export_dir, "model.onnx"), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == CLASSES
    saved = tf.saved_model.load(os.path.join(export_dir, "saved_model"))
    encoded = tf.constant([tf.io.read_file(str(photos / "zebra" / "01.jpg")).numpy()])
    names = saved.signatures["serving_default"](images=encoded)["top_k_names"].numpy()[0]
    assert sorted(name.decode() for name in names) == CLASSES
    for artifact in ("model.onnx", "model_float32.tflite", "saved_model"):
        printed = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "keras-vit"), "predict", os.path.join(export_dir, artifact),
             str(photos / "dog" / "00.png"), "--json"],
            capture_output=True, text=True, timeout=300,
        )
        assert printed.returncode == 0, printed.stderr[-2000:]
        top = json.loads(printed.stdout)["predictions"][0]["top_k"]
        assert sorted(entry["label"] for entry in top) == CLASSES, artifact
