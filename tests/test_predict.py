"""keras_vit.predict and `keras-vit predict`: every artifact kind, real runtimes, real files."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_vit.data import images as image_reading
from keras_vit.deploy import artifacts, export, predict
from keras_vit.weights.npz import from_npz
from keras_vit.cli import main

pytestmark = pytest.mark.slow  # exports a model to every format first

DATA = os.path.join(os.path.dirname(__file__), "data")
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The vit_token reference model as a run folder (model.keras + config.json) and its export."""
    run = tmp_path_factory.mktemp("run")
    model = from_npz(os.path.join(DATA, "vit_token.npz"))
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"class_names": NAMES}))
    images = np.load(os.path.join(DATA, "vit_token.expected.npz"))["images"]
    data = dict(calibration=images, verification=images, verification_labels=None, samples=None, source="reference")
    # int8 of a random-weight model is checked for running, not for agreement here.
    export.export_model(
        str(run), formats="all", tflite_precisions="float32,int8", data=data,
        tolerances={"int8_min_top1_agreement": 0.0}, progress=False,
    )
    return run, model


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Four PNGs at the model's size, one larger JPEG, and the pixels the model should see."""
    folder = tmp_path_factory.mktemp("images")
    images = np.load(os.path.join(DATA, "vit_token.expected.npz"))["images"]
    pixels = np.round((images + 1.0) * 127.5).clip(0, 255).astype("uint8")
    paths = []
    for index, image in enumerate(pixels[:4]):
        path = folder / f"image_{index}.png"
        path.write_bytes(tf.io.encode_png(image).numpy())
        paths.append(str(path))
    large = folder / "large.jpg"
    large.write_bytes(tf.io.encode_jpeg(np.tile(pixels[0], (2, 3, 1))).numpy())
    paths.append(str(large))
    decoded = np.stack([image_reading.decode_and_resize(tf.io.read_file(p), (32, 32), 3).numpy() for p in paths])
    return paths, decoded


ARTIFACTS = ["model.keras", "export/saved_model", "export/model_float32.tflite", "export/model.onnx"]


@pytest.mark.parametrize("relative", ARTIFACTS)
def test_every_kind_predicts_the_keras_probabilities(exported, image_files, relative):
    run, model = exported
    paths, decoded = image_files
    result = predict.predict_files(str(run / relative), paths, top_k=3)
    expected = tf.nn.softmax(model(decoded)).numpy()
    assert result["errors"] == []
    assert [item["file"] for item in result["predictions"]] == paths
    for item, row in zip(result["predictions"], expected):
        top = [entry["class_id"] for entry in item["top_k"]]
        assert top == list(np.argsort(-row)[:3])
        assert [entry["label"] for entry in item["top_k"]] == [NAMES[i] for i in top]
        np.testing.assert_allclose([entry["probability"] for entry in item["top_k"]], row[top], atol=1e-4)


def test_artifact_kinds_and_input_specs(exported):
    run, _ = exported
    kinds = {
        str(run): "keras",
        str(run / "model.keras"): "keras",
        str(run / "export" / "saved_model"): "savedmodel",
        str(run / "export" / "model_int8.tflite"): "tflite",
        str(run / "export" / "model.onnx"): "onnx",
    }
    for path, kind in kinds.items():
        artifact = artifacts.load_artifact(path)
        assert (artifact.kind, artifact.image_size, artifact.channels, artifact.class_names) == (kind, (32, 32), 3, NAMES)


def test_full_integer_tflite_runs_on_int8_input(exported, image_files):
    run, _ = exported
    paths, _ = image_files
    artifact = artifacts.load_artifact(str(run / "export" / "model_int8.tflite"))
    assert artifact.input_dtype == np.int8
    result = predict.predict_files(artifact, paths, top_k=10)
    for item in result["predictions"]:
        probabilities = [entry["probability"] for entry in item["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert abs(sum(probabilities) - 1.0) < 1e-4


def test_unreadable_files_are_reported_by_name_and_the_rest_predicted(exported, image_files, tmp_path):
    run, _ = exported
    paths, _ = image_files
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    missing = str(tmp_path / "missing.jpg")
    result = predict.predict_files(str(run / "export" / "model.onnx"), [paths[0], str(not_an_image), missing, paths[1]])
    assert [item["file"] for item in result["predictions"]] == [paths[0], paths[1]]
    errors = {error["file"]: error["error"] for error in result["errors"]}
    assert errors[missing] == "no such file"
    assert errors[str(not_an_image)].startswith("not a readable image")


def test_cli_predict_table_json_and_errors(exported, image_files, tmp_path, capsys):
    run, model = exported
    paths, decoded = image_files
    tflite = str(run / "export" / "model_float32.tflite")
    assert main(["predict", tflite, *paths[:2]]) == 0
    table = capsys.readouterr().out
    top1 = np.argmax(model(decoded[:2]), axis=-1)
    for path, label in zip(paths[:2], top1):
        assert f"| {path} | {NAMES[label]} " in table

    assert main(["predict", tflite, paths[0], "--json", "--top-k", "2", "--class-names", ",".join("abcdefghij")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [entry["label"] for entry in result["predictions"][0]["top_k"]] == ["abcdefghij"[i] for i in np.argsort(-model(decoded[:1])[0])[:2]]

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    assert main(["predict", tflite, str(broken), paths[0]]) == 1
    captured = capsys.readouterr()
    assert f"cannot read {broken}: not a readable image" in captured.err
    assert paths[0] in captured.out


def test_unknown_artifact_kinds_are_refused_with_the_accepted_kinds(tmp_path, capsys):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"\x00")
    with pytest.raises(ValueError, match=r"Cannot tell what kind of model .*model.pt.*\.keras file.*SavedModel.*\.tflite.*\.onnx"):
        artifacts.load_artifact(str(weights))
    with pytest.raises(ValueError, match="Cannot tell what kind"):
        artifacts.load_artifact(str(tmp_path))  # a folder with neither saved_model.pb nor model.keras
    assert main(["predict", str(weights), "x.png"]) == 2
    assert "keras-vit predict: error: Cannot tell what kind of model" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="No such model or artifact"):
        artifacts.load_artifact(str(tmp_path / "absent.tflite"))


def test_wrong_image_shapes_are_refused_naming_the_shape(exported):
    run, _ = exported
    artifact = artifacts.load_artifact(str(run / "export" / "model_float32.tflite"))
    with pytest.raises(ValueError, match=r"takes images of shape \(B, 32, 32, 3\); got \(2, 28, 28, 1\)"):
        artifact.run(np.zeros((2, 28, 28, 1), "float32"))
