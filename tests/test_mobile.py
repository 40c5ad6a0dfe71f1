"""Mobile deployment: what the TFLite files hold, which one to ship, and the deploy edges.

A tiny random-weight ViT (28x28x1, two blocks) is exported once per module with every
format and precision; the files are opened in their own runtimes (the LiteRT interpreter,
onnxruntime, tf.saved_model) and read with LiteRT's flatbuffer reader. Timings are
measured by scripts/benchmark_export.py, never asserted here.
"""

import json
import os
import struct
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.tools import flatbuffer_utils

import keras_vit
from keras_vit.cli import main
from keras_vit.data import load_embedded_mnist
from keras_vit.deploy import artifacts, export, predict
from keras_vit.backends import tflite_forms
from keras_vit.core import layers as core_layers
from keras_vit.tools import tflite_profile

# Random weights: agreement figures mean nothing; the parity itself is tested on the
# trained main-job model in test_export.py.
LOOSE = {"int8_min_top1_agreement": 0.0, "int8_max_accuracy_drop": 1.0}
SMALL = dict(num_classes=10, image_size=28, channels=1, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, pooling="gap")


def _tiny(**overrides):
    keras.utils.set_random_seed(0)
    model = keras_vit.ViT("Ti/4", **{**SMALL, **overrides})
    head = model.get_layer("head")
    head.kernel.assign(np.random.default_rng(0).normal(0, 0.3, head.kernel.shape).astype("float32"))
    return model


def _data(model, count=100):
    data = export.export_data(model)
    for key in ("calibration", "verification", "verification_labels"):
        data[key] = data[key][:count]
    return data


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mobile_export")
    model = _tiny()
    manifest = export.export_model(model, str(folder), data=_data(model), tolerances=LOOSE, progress=False, latency_runs=3)
    return folder, model, manifest


def _entry(manifest, name):
    return next(entry for entry in manifest["artifacts"] if entry["file"] == name)


def _png_header(width, height):
    # A PNG signature and IHDR chunk only: a tiny file whose header claims width x height.
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


# --------------------------------------------------------------------------- the int8 files
@pytest.mark.slow  # exports (the module fixture)
def test_full_integer_file_has_no_float_op(exported):
    folder, _, manifest = exported
    assert export.float_ops(folder / "model_int8.tflite") == []
    assert _entry(manifest, "model_int8.tflite")["integer_only"] is True
    # Keras's LayerNorm left a float NEG between a DEQUANTIZE and a QUANTIZE; the TFLite
    # form has none, and no SQUARED_DIFFERENCE (LiteRT's slow int8 kernel).
    ops = export.tflite_ops(folder / "model_int8.tflite")
    assert not {"NEG", "DEQUANTIZE", "QUANTIZE", "SQUARED_DIFFERENCE"} & set(ops), ops


@pytest.mark.slow  # exports (the module fixture)
def test_xnnpack_runs_every_int8_attention_matmul(exported):
    folder, _, _ = exported
    path = str(folder / "model_int8.tflite")
    model = flatbuffer_utils.read_model(path)
    graph = model.subgraphs[0]
    matmuls = [op for op in graph.operators if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "BATCH_MATMUL"]
    assert len(matmuls) == 2 * SMALL["num_layers"]
    for op in matmuls:  # XNNPACK takes an int8 BATCH_MATMUL only with a symmetric right operand
        assert list(graph.tensors[op.inputs[1]].quantization.zeroPoint) == [0]
    profile = tflite_profile.op_profile(path, threads=1, runs=1)
    assert profile["ops"]["BATCH_MATMUL"]["xnnpack"] == profile["ops"]["BATCH_MATMUL"]["calls"] == 4
    assert profile["ops"]["FULLY_CONNECTED"]["xnnpack"] == profile["ops"]["FULLY_CONNECTED"]["calls"]


@pytest.mark.slow  # exports (the module fixture)
def test_mixed_int8_file_quantizes_only_the_weight_matmuls(exported):
    folder, _, manifest = exported
    path = str(folder / "model_int8_mixed.tflite")
    model = flatbuffer_utils.read_model(path)
    graph = model.subgraphs[0]
    types = {}
    for op in graph.operators:
        name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
        types.setdefault(name, set()).add(flatbuffer_utils.type_to_name(graph.tensors[op.inputs[0]].type))
    assert types["FULLY_CONNECTED"] == {"INT8"}
    for name in ("SOFTMAX", "GELU", "BATCH_MATMUL", "MEAN", "RSQRT"):
        assert types[name] == {"FLOAT32"}, (name, types[name])
    interpreter = artifacts.load_artifact(path).interpreter
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert "float32" in _entry(manifest, "model_int8_mixed.tflite")["description"]


def test_tflite_layer_norm_form_is_traced_only_inside_its_context():
    """The TFLite form is chosen through the backends' switch (thread-local, the class is
    never patched): inside the context the trace has RSQRT and no SQUARED_DIFFERENCE."""
    import tensorflow as tf

    original = core_layers.LayerNorm.call
    model = _tiny()
    images = np.random.default_rng(1).uniform(-1, 1, (4, 28, 28, 1)).astype("float32")
    expected = np.asarray(model(images))

    def traced_ops():
        graph = tf.function(lambda x: model(x)).get_concrete_function(tf.TensorSpec(images.shape, tf.float32)).graph
        return {op.type for op in graph.get_operations()}

    outside = traced_ops()
    with tflite_forms():
        inside = traced_ops()
        rewritten = np.asarray(model(images))
    assert core_layers.LayerNorm.call is original
    assert "SquaredDifference" in outside and "Rsqrt" in inside and "SquaredDifference" not in inside
    np.testing.assert_allclose(rewritten, expected, atol=1e-5)


@pytest.mark.slow  # exports (the module fixture)
def test_op_profile_times_every_op_of_the_file(exported):
    folder, _, _ = exported
    path = str(folder / "model_float32.tflite")
    model = flatbuffer_utils.read_model(path)
    profile = tflite_profile.op_profile(path, threads=1, runs=1)
    assert sum(op["calls"] for op in profile["ops"].values()) == len(model.subgraphs[0].operators)
    assert set(profile["ops"]) == set(export.tflite_ops(path))
    assert "| FULLY_CONNECTED |" in tflite_profile.format_profile(profile)


# --------------------------------------------------------------------------- what to ship
@pytest.mark.slow  # exports (the module fixture)
def test_manifest_gives_each_file_latency_and_a_recommendation_per_target(exported):
    folder, _, manifest = exported
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["recommended"] == manifest["recommended"]
    assert manifest["latency"]["measured_on"].startswith("at export on ")
    assert manifest["latency"]["threads"] == {"1_thread": 1, "all_threads": os.cpu_count()}
    for entry in manifest["artifacts"]:
        figures = entry["latency_ms"]
        labels = ["process_threads"] if entry["format"] == "savedmodel" else ["1_thread", "all_threads"]
        assert sorted(figures) == sorted(labels), entry["file"]
        assert all(isinstance(figures[label], float) and figures[label] > 0 for label in labels)
    recommended = manifest["recommended"]
    assert sorted(recommended) == sorted(export.TARGETS)
    assert recommended["integer_only_accelerator"]["file"] == "model_int8.tflite"
    assert recommended["gpu_delegate"]["file"] == "model_float16.tflite"
    assert recommended["cpu_phone"]["file"].endswith(".tflite")
    assert all(choice["reason"] for choice in recommended.values())
    table = export.format_manifest(manifest)
    assert f"ms {os.cpu_count()} threads" in table and "- integer_only_accelerator: model_int8.tflite (" in table


@pytest.mark.slow  # exports (the module fixture)
def test_benchmark_artifacts_times_every_exported_file(exported, capsys):
    folder, _, manifest = exported
    status = main(["benchmark", "--artifacts", str(folder), "--runs", "2", "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(r["file"] for r in report["results"]) == sorted(e["file"] for e in manifest["artifacts"])
    for result in report["results"]:
        assert result["precision"] == _entry(manifest, result["file"])["precision"]
        assert all(isinstance(ms, float) for ms in result["latency_ms"].values()), result
    # CPU time of the calling thread counts 1-thread runs only, and no SavedModel.
    assert main(["benchmark", "--artifacts", str(folder), "--runs", "2", "--clock", "thread", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "saved_model" not in [r["file"] for r in report["results"]]
    assert all(sorted(r["latency_ms"]) == ["1_thread"] for r in report["results"])
    assert main(["benchmark", "--artifacts", str(folder / "samples"), "--runs", "1"]) == 2
    assert "samples' holds no .tflite, .onnx or SavedModel to time" in capsys.readouterr().err


# --------------------------------------------------------------------------- SavedModel
@pytest.mark.slow  # exports (the module fixture)
def test_savedmodel_stores_the_weights_once(exported):
    folder, model, _ = exported
    reader = tf.train.load_checkpoint(str(folder / "saved_model" / "variables" / "variables"))
    shapes = reader.get_variable_to_shape_map()
    stored = sum(int(np.prod(shape)) for name, shape in shapes.items() if name != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert stored == model.count_params()


@pytest.mark.slow  # exports (the module fixture)
def test_bytes_signature_fails_only_the_unreadable_images(exported):
    folder, model, manifest = exported
    _, (x_val, _) = load_embedded_mnist()
    good = tf.io.encode_png(x_val[0][..., None]).numpy()
    corrupt = good[:40]  # a PNG cut short
    huge = _png_header(20000, 20000) + b"\0" * 64  # 400 megapixels claimed by a 100-byte file
    loaded = tf.saved_model.load(str(folder / "saved_model"))
    result = {k: v.numpy() for k, v in loaded.signatures["serving_default"](images=tf.constant([corrupt, good, huge])).items()}
    assert result["ok"].tolist() == [False, True, False]
    assert result["error"][0].decode() == "not a readable JPEG/PNG/BMP/GIF image"
    assert result["error"][1] == b""
    assert result["error"][2].decode().startswith("more than max_pixels=50,000,000 pixels")
    np.testing.assert_array_equal(result["probabilities"][[0, 2]], 0.0)
    assert result["top_k_ids"][[0, 2]].tolist() == [[-1] * 5, [-1] * 5]
    keras_top1 = np.asarray(model(x_val[:1, :, :, None].astype("float32") / 127.5 - 1.0)).argmax(-1)[0]
    assert result["top_k_ids"][1, 0] == keras_top1
    every_bad = loaded.signatures["serving_default"](images=tf.constant([corrupt]))
    assert every_bad["ok"].numpy().tolist() == [False]
    assert manifest["bytes_signature_max_pixels"] == 50_000_000


# --------------------------------------------------------------------------- preprocessing inside
@pytest.mark.slow  # exports
def test_a_model_with_preprocessing_inside_exports_and_predicts_on_pixels(tmp_path):
    model = _tiny(include_preprocessing=True)
    assert model.image_spec.pixels_inside
    data = _data(model, 50)
    assert float(data["verification"].max()) > 1.0  # calibrated and verified on [0, 255] pixels
    manifest = export.export_model(model, str(tmp_path), data=data, tolerances=LOOSE, progress=False, latency_runs=0)
    assert manifest["input_range"] == [0.0, 255.0]
    assert all(entry["verified"] for entry in manifest["artifacts"]), manifest["artifacts"]
    assert _entry(manifest, "saved_model")["parity"]["bytes_signature"]["top1_agreement"] == 1.0
    _, (x_val, _) = load_embedded_mnist()
    files = []
    for index in range(4):
        path = tmp_path / f"digit_{index}.png"
        path.write_bytes(tf.io.encode_png(x_val[index][..., None]).numpy())
        files.append(str(path))
    keras_top1 = np.asarray(model(x_val[:4, :, :, None].astype("float32"))).argmax(-1)
    for entry in manifest["artifacts"]:
        if entry["precision"] not in ("float32", "float16"):
            continue
        result = predict.predict_files(str(tmp_path / entry["file"]), files)
        assert [p["top_k"][0]["class_id"] for p in result["predictions"]] == keras_top1.tolist(), entry["file"]
