"""keras_vit.export on models other than the main job: the reference checkpoints of the
original code (each format within 1e-4 of its logits), refusals before any work, a file
outside its tolerance, and Keras's own ``model.export``. Each file is run in its own runtime.
These need no trained model, so they do not wait for the main job (test_export.py).
"""

import json

import numpy as np
import onnxruntime
import pytest
import tensorflow as tf

import keras_vit
from keras_vit.deploy import artifacts, export
from keras_vit.weights.npz import from_npz
from conftest import reference_path
from tflite_runner import run_tflite

@pytest.mark.slow
@pytest.mark.parametrize("case", ["vit_token", "vit_hybrid"])
def test_reference_checkpoints_export_within_1e4(case, tmp_path):
    model = from_npz(reference_path(case))
    expected = np.load(reference_path(case, ".expected.npz"))
    images = expected["images"]
    data = dict(calibration=None, verification=images, verification_labels=None, samples=None, source="reference images")
    manifest = export.export_model(
        model, tmp_path, formats="all", tflite_precisions=["float32"], data=data, progress=False
    )
    reference = expected["logits"]
    assert np.max(np.abs(model.predict(images, verbose=0) - reference)) <= 1e-4
    saved = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_images"]
    outputs = {
        "saved_model": saved(images=tf.constant(images))["outputs"].numpy(),
        "model_float32.tflite": run_tflite(tmp_path / "model_float32.tflite", images),
        "model.onnx": onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(
            None, {"images": images}
        )[0],
    }
    verified = {entry["file"]: entry["verified"] for entry in manifest["artifacts"]}
    for name, result in outputs.items():
        assert np.max(np.abs(result - reference)) <= 1e-4, name
        assert verified[name], name
    assert (tmp_path / "labels.txt").read_text().split() == [str(i) for i in range(reference.shape[-1])]




def test_int8_without_calibration_data_is_refused_before_any_work(tmp_path):
    model = from_npz(reference_path("vit_token"))
    with pytest.raises(ValueError, match=r"int8 needs calibration images.*32x32x3.*--images DIR"):
        export.export_model(model, tmp_path, formats="tflite", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # exports
def test_an_artifact_outside_its_tolerance_fails_by_name(tmp_path):
    model = from_npz(reference_path("vit_token"))
    images = np.load(reference_path("vit_token", ".expected.npz"))["images"]
    data = dict(calibration=None, verification=images, verification_labels=None, samples=None, source="reference")
    with pytest.raises(RuntimeError, match=r"model_float16.tflite: max abs difference from Keras [0-9.e-]+ exceeds [0-9.e-]+$"):
        export.export_model(
            model, tmp_path, formats="tflite", tflite_precisions="float32,float16", data=data,
            tolerances={"float16": 1e-9}, progress=False,
        )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [entry["verified"] for entry in manifest["artifacts"]] == [True, False]
    assert "exceeds" in manifest["artifacts"][1]["error"]




@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["tf_saved_model", "litert", "onnx"])
def test_keras_own_model_export_gets_the_portable_graph_in_every_format(tmp_path, export_format):
    # model.export traces outside Keras's steps, so the fused TensorFlow-CPU forms (a
    # training-mode batch norm TFLite and ONNX lack) never reach the file; each file is run
    # in its own runtime against the Keras model's prediction (which does use the fused forms).
    model = keras_vit.ViT("Ti/16", image_size=32, num_layers=2, num_classes=5)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.2, weight.shape).astype(weight.dtype))
    images = rng.uniform(-1, 1, (3, 32, 32, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    path = str(tmp_path / {"tf_saved_model": "saved", "litert": "model.tflite", "onnx": "model.onnx"}[export_format])
    model.export(path, format=export_format, verbose=False)
    if export_format == "tf_saved_model":
        loaded = tf.saved_model.load(path)  # held: the function reads its variables
        outputs = loaded.serve(images).numpy()
    elif export_format == "litert":
        assert all(export._is_builtin_op(name) for name in export.tflite_ops(path)), export.tflite_ops(path)
        outputs = artifacts.load_artifact(path).run(images)
    else:
        outputs = artifacts.load_artifact(path).run(images)
    np.testing.assert_allclose(outputs, expected, atol=1e-4)
