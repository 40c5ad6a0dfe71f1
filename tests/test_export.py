"""keras_vit.export: every artifact checked in its own runtime against the Keras model.

The README's main job (conftest's ``mnist_run``, a ViT trained on the embedded MNIST digits)
and the export its Deploy block writes with the defaults; the tests load each artifact themselves
(tf.saved_model, the ai-edge-litert Interpreter, onnxruntime) rather than trusting the
manifest. Exports of other models (reference checkpoints, Keras's own ``model.export``) are
in test_export_models.py, so that they do not wait for the main job.
"""

import hashlib
import json
import os
import pathlib
import shutil

import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

import keras_vit
from keras_vit.data import images as image_reading
from keras_vit.deploy import export
from keras_vit.deploy.artifacts import TFLITE_PRECISIONS
from keras_vit.cli import main
from keras_vit.data import MNIST_CLASS_NAMES, load_embedded_mnist
from readme_runner import MAIN_JOB_RUN, exports_the_main_job
from tflite_runner import run_tflite

CLASS_NAMES = MNIST_CLASS_NAMES  # what training on the embedded digits records


@pytest.fixture(scope="session")
def mnist_export(mnist_run, readme_session):
    """The main job's run folder (conftest) with the export that README's Deploy block
    writes with the defaults (``keras-vit export saved_models/mnist_vit-ti4``), copied."""
    run, model, _ = mnist_run
    readme_session.run_through(exports_the_main_job)
    written = os.path.join(readme_session.root, MAIN_JOB_RUN, "export")
    assert os.path.isfile(os.path.join(written, "manifest.json")), f"README's export wrote no {written}/manifest.json"
    shutil.copytree(written, os.path.join(run.path, "export"))
    with open(os.path.join(run.path, "export", "manifest.json")) as file:
        return pathlib.Path(run.path), model, json.load(file)


def _entry(manifest, name):
    return next(entry for entry in manifest["artifacts"] if entry["file"] == name)


def _keras(model, images):
    return np.asarray(model.predict(images, batch_size=250, verbose=0))


# --------------------------------------------------------------------------- trained MNIST
def test_export_writes_every_artifact_into_the_run_export_folder(mnist_export):
    run, _, manifest = mnist_export
    export_dir = run / "export"
    names = {entry["file"] for entry in manifest["artifacts"]}
    assert names == {
        "saved_model",
        "model_float32.tflite",
        "model_float16.tflite",
        "model_dynamic_int8.tflite",
        "model_int8_mixed.tflite",
        "model_int8.tflite",
        "model.onnx",
    }
    assert json.loads((export_dir / "manifest.json").read_text()) == manifest
    assert (export_dir / "labels.txt").read_text().split() == CLASS_NAMES
    for entry in manifest["artifacts"]:
        assert entry["verified"], entry
        assert entry["input"]["shape"] == [None, 28, 28, 1]
        path = export_dir / entry["file"]
        if path.is_file():
            assert entry["size_bytes"] == path.stat().st_size
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert _entry(manifest, "model_int8.tflite")["input"]["dtype"] == "int8"


def test_export_writes_sample_digits_that_match_their_names(mnist_export):
    run, _, manifest = mnist_export
    _, (x_val, _) = load_embedded_mnist()
    assert len(manifest["samples"]) == 10
    for index, relative in enumerate(manifest["samples"]):
        assert os.path.basename(relative) == f"{CLASS_NAMES[index]}_{index}.png"
        pixels = tf.io.decode_png(tf.io.read_file(str(run / "export" / relative))).numpy()
        assert pixels.shape == (28, 28, 1)
        assert any(np.array_equal(pixels[..., 0], image) for image in x_val)


def test_savedmodel_float_signature_matches_keras(mnist_export, mnist_validation):
    run, model, _ = mnist_export
    images = mnist_validation[0][:200]
    loaded = tf.saved_model.load(str(run / "export" / "saved_model"))
    result = loaded.signatures["serving_images"](images=tf.constant(images))
    reference = _keras(model, images)
    assert np.max(np.abs(result["outputs"].numpy() - reference)) <= 1e-4
    np.testing.assert_allclose(result["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
    # Three channels for a grey model would otherwise come back as three rows of nonsense.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"takes images of shape \(batch, 28, 28, 1\)"):
        loaded.signatures["serving_images"](images=tf.zeros((1, 28, 28, 3)))


def test_savedmodel_bytes_signature_gives_keras_top1_on_the_same_decoded_image(mnist_export, mnist_validation, tmp_path):
    run, model, _ = mnist_export
    _, (x_val, _) = load_embedded_mnist()
    digits = x_val[:40:4]
    # Encoded PNGs at the model's size, and RGB JPEGs at 56x56 that the signature must
    # convert to grayscale and resize.
    encoded = [tf.io.encode_png(image[..., None]).numpy() for image in digits]
    large = tf.image.resize(np.repeat(digits[..., None], 3, axis=-1).astype("float32"), (56, 56))
    large = tf.cast(tf.round(large), tf.uint8).numpy()
    encoded += [tf.io.encode_jpeg(image).numpy() for image in large]
    decoded = np.stack([image_reading.decode_and_resize(tf.constant(data), (28, 28), 1).numpy() for data in encoded])
    loaded = tf.saved_model.load(str(run / "export" / "saved_model"))
    result = loaded.signatures["serving_default"](images=tf.constant(encoded))
    keras_top1 = _keras(model, decoded).argmax(-1)
    np.testing.assert_array_equal(result["top_k_ids"].numpy()[:, 0], keras_top1)
    assert result["top_k_ids"].shape == (20, 5)
    names = result["top_k_names"].numpy()[:, 0].astype(str)
    assert list(names) == [CLASS_NAMES[i] for i in keras_top1]
    np.testing.assert_allclose(result["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("precision, tolerance", [("float32", 1e-4), ("float16", 1e-2)])
def test_float_tflite_matches_keras(mnist_export, mnist_validation, precision, tolerance):
    run, model, _ = mnist_export
    images = mnist_validation[0][:200]
    outputs = run_tflite(run / "export" / f"model_{precision}.tflite", images)
    reference = _keras(model, images)
    # float16 stores the weights rounded to 11 significant bits: the error is relative to
    # the logits' scale, which is about 10 for this model.
    scale = max(1.0, float(np.max(np.abs(reference)))) if precision == "float16" else 1.0
    assert np.max(np.abs(outputs - reference)) <= tolerance * scale
    if precision == "float16":
        assert np.max(np.abs(tf.nn.softmax(outputs).numpy() - tf.nn.softmax(reference).numpy())) <= 1e-2
    np.testing.assert_array_equal(outputs.argmax(-1), reference.argmax(-1))


@pytest.mark.parametrize("precision", ["dynamic_int8", "int8"])
def test_int8_tflite_agrees_with_the_float_model(mnist_export, mnist_validation, precision):
    run, model, _ = mnist_export
    images, labels = mnist_validation
    predicted = run_tflite(run / "export" / f"model_{precision}.tflite", images).argmax(-1)
    reference = _keras(model, images).argmax(-1)
    float_accuracy = np.mean(reference == labels)
    assert float_accuracy >= 0.9  # else top-1 agreement would say little
    assert np.mean(predicted == reference) >= 0.99
    assert abs(np.mean(predicted == labels) - float_accuracy) <= 0.01


def test_full_integer_tflite_has_int8_input_and_output(mnist_export):
    run, _, _ = mnist_export
    interpreter = Interpreter(model_path=str(run / "export" / "model_int8.tflite"))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    assert interpreter.get_input_details()[0]["quantization"][0] > 0


def test_no_tflite_file_uses_flex_or_custom_ops(mnist_export):
    run, _, manifest = mnist_export
    tflite_files = sorted((run / "export").glob("*.tflite"))
    assert [path.name for path in tflite_files] == sorted(f"model_{p}.tflite" for p in TFLITE_PRECISIONS)
    for path in tflite_files:
        interpreter = Interpreter(
            model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        ops = {op["op_name"] for op in interpreter._get_ops_details()}
        assert {"BATCH_MATMUL", "SOFTMAX", "GELU"} <= ops, (path.name, ops)
        assert all(name.isupper() and not name.upper().startswith("FLEX") for name in ops), (path.name, ops)
        assert sorted(ops) == _entry(manifest, path.name)["ops"]


def test_onnx_matches_keras_with_a_dynamic_batch(mnist_export, mnist_validation):
    run, model, manifest = mnist_export
    path = run / "export" / "model.onnx"
    proto = onnx.load(str(path))
    assert max(opset.version for opset in proto.opset_import if opset.domain in ("", "ai.onnx")) >= 17
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [28, 28, 1]
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic batch dimension
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == CLASS_NAMES
    for batch in (1, 7, 200):
        images = mnist_validation[0][:batch]
        outputs = session.run(None, {session.get_inputs()[0].name: images})[0]
        assert outputs.shape == (batch, 10)
        assert np.max(np.abs(outputs - _keras(model, images))) <= 1e-4
    assert _entry(manifest, "model.onnx")["opset"] == 17


def test_manifest_records_the_parity_measured_at_export(mnist_export, mnist_validation):
    _, _, manifest = mnist_export
    float32 = _entry(manifest, "model_float32.tflite")["parity"]
    assert float32["num_images"] == 1000
    assert float32["max_abs_diff"] <= 1e-4 and float32["top1_agreement"] == 1.0
    int8 = _entry(manifest, "model_int8.tflite")["parity"]
    assert int8["top1_agreement"] >= 0.99
    assert int8["keras_accuracy"] >= 0.9
    assert _entry(manifest, "saved_model")["parity"]["bytes_signature"]["top1_agreement"] == 1.0


@pytest.mark.parametrize("precision", ["float32", "float16", "dynamic_int8", "int8_mixed", "int8"])
def test_every_tflite_precision_keeps_the_main_job_accuracy(mnist_export, precision):
    # Issue 18's bar: top-1 agreement >= 99% and accuracy within 0.5 point of Keras.
    _, _, manifest = mnist_export
    figures = _entry(manifest, f"model_{precision}.tflite")["parity"]
    assert figures["num_images"] == 1000
    assert figures["top1_agreement"] >= 0.99
    assert figures["accuracy"] >= figures["keras_accuracy"] - 0.005


# --------------------------------------------------------------------------- reference models
# --------------------------------------------------------------------------- errors
def test_existing_artifacts_are_not_overwritten(mnist_export, tmp_path):
    run, _, _ = mnist_export
    output = tmp_path / "out"
    output.mkdir()
    (output / "model.onnx").write_bytes(b"the user's file")
    with pytest.raises(ValueError, match=r"already holds \['model.onnx'\].*--overwrite"):
        export.export_model(str(run / "model.keras"), output_dir=str(output), formats="onnx", progress=False)
    assert (output / "model.onnx").read_bytes() == b"the user's file"
    assert sorted(p.name for p in output.iterdir()) == ["model.onnx"]


def test_bad_arguments_are_refused_with_what_is_accepted(mnist_export, tmp_path):
    run, _, _ = mnist_export
    model_path = str(run / "model.keras")
    with pytest.raises(ValueError, match=r"Unknown export format\(s\) \['pb'\].*'savedmodel', 'tflite', 'onnx'"):
        export.export_model(model_path, output_dir=str(tmp_path), formats="pb")
    with pytest.raises(ValueError, match=r"Unknown TFLite precision\(s\) \['int4'\]"):
        export.export_model(model_path, output_dir=str(tmp_path), formats="tflite", tflite_precisions="int4")
    with pytest.raises(ValueError, match="10 classes but 'a,b' gives 2 class names"):
        export.export_model(model_path, output_dir=str(tmp_path), class_names="a,b")
    with pytest.raises(ValueError, match="opset must be at least 17; got 13"):
        export.export_onnx(keras_vit.ViT("Ti/16", image_size=32, patch_size=16, hidden_size=32, num_layers=1,
                                          num_heads=2, mlp_dim=32, num_classes=3), str(tmp_path / "m.onnx"), "abc", opset=13)
    with pytest.raises(FileNotFoundError, match="has no model.keras"):
        export.export_model(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_cli_export_tflite_to_an_output_folder(mnist_export, tmp_path, capsys):
    run, _, _ = mnist_export
    status = main(["export", str(run), "--format", "tflite", "--precision", "float32", "--output", str(tmp_path / "x")])
    assert status == 0
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [
        ".keras-vit.json", "labels.txt", "manifest.json", "model_float32.tflite", "samples"
    ]
    assert "| model_float32.tflite | tflite | float32" in capsys.readouterr().out
    status = main(["export", str(run), "--format", "tflite", "--precision", "float32", "--output", str(tmp_path / "x")])
    assert status == 2
    assert "keras-vit export: error:" in capsys.readouterr().err
