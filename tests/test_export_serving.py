"""The serving facts computed once per export, the exporter registry, and latency timed
through the artifact readers (the runtime that verifies and predicts)."""

import dataclasses

import numpy as np
import pytest

from conftest import tiny_vit
from keras_vit.deploy import artifacts, formats, latency
from keras_vit.deploy.layout import FORMATS
from keras_vit.deploy.serving import ServingSpec


def test_serving_spec_holds_the_facts_every_exporter_reads():
    model = tiny_vit(num_classes=5)
    serving = ServingSpec.of(model, ["a", "b", "c", "d", "e"], top_k=7, max_pixels=1000)
    assert serving.input_shape == (16, 16, 3)
    assert serving.output_kind == "logits"
    assert serving.class_names == ("a", "b", "c", "d", "e")
    assert serving.top_k == 5  # at most the number of classes
    assert serving.max_pixels == 1000
    assert serving.image_spec == model.image_spec
    assert serving.input_entry() == {
        "name": "images", "shape": [None, 16, 16, 3], "dtype": "float32",
        "range": [float(v) for v in model.image_spec.input_range],
    }
    assert serving.outputs_entry() == {"name": "outputs", "kind": "logits", "shape": [None, 5]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        serving.top_k = 3


def test_serving_spec_of_a_softmax_head_serves_probabilities_and_default_names():
    serving = ServingSpec.of(tiny_vit(num_classes=3, classifier_activation="softmax"))
    assert serving.output_kind == "probabilities"
    assert serving.class_names == ("0", "1", "2")


def test_serving_spec_refuses_class_names_that_do_not_fit_the_head():
    with pytest.raises(ValueError, match=r"5 classes but 'cat,dog' gives 2 class names"):
        ServingSpec.of(tiny_vit(num_classes=5), "cat,dog")


def test_each_format_is_registered_beside_the_reader_that_opens_its_files():
    assert sorted(formats.FORMATS_REGISTRY) == sorted(FORMATS)
    for name, (exporter, reader) in formats.FORMATS_REGISTRY.items():
        assert exporter.format == name
        assert exporter.reader is reader is artifacts.READERS[name]


def test_plan_lists_the_exporters_in_manifest_order_sharing_one_float_savedmodel(tmp_path):
    model = tiny_vit()
    serving = ServingSpec.of(model)
    planned = formats.plan(model, serving, FORMATS, ["float16", "int8"], calibration=None, opset=18,
                           scratch=str(tmp_path))
    assert [e.filename for e in planned] == ["saved_model", "model_float16.tflite", "model_int8.tflite", "model.onnx"]
    assert [e.precision for e in planned] == ["float32", "float16", "int8", "float32"]
    assert planned[1].float_model is planned[2].float_model
    assert planned[-1].describe(None, serving) == {"opset": 18}
    assert list(tmp_path.iterdir()) == []  # nothing is written until an exporter runs
    only_onnx = formats.plan(model, serving, ("onnx",), ["float16"], calibration=None, opset=17, scratch=str(tmp_path))
    assert [e.format for e in only_onnx] == ["onnx"]


def test_latency_reports_a_file_the_runtime_refuses_with_the_readers_message(tmp_path):
    broken = tmp_path / "model_float32.tflite"
    broken.write_bytes(b"not a flatbuffer" * 8)
    image = np.zeros((1, 16, 16, 3), "float32")
    results = latency.measure_latency([str(broken)], image, runs=1, warmup=0, settings={"1_thread": 1})
    assert results[str(broken)]["error"].startswith(f"LiteRT cannot load {str(broken)!r}")


@pytest.mark.slow
def test_latency_times_exported_files_in_the_runtime_that_verifies_them(tmp_path):
    from keras_vit.deploy.export import export_onnx, export_tflite

    model = tiny_vit()
    paths = [export_tflite(model, str(tmp_path / "model_float32.tflite")),
             export_onnx(model, str(tmp_path / "model.onnx"), None)]
    image = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)).astype("float32")
    results = latency.measure_latency(paths, image, runs=3, settings={"1_thread": 1, "2_threads": 2})
    for path in paths:
        assert sorted(results[path]) == ["1_thread", "2_threads"], results[path]
        assert all(ms > 0 for ms in results[path].values())
        reader = artifacts.load_artifact(path)
        expected = np.asarray(model(image, training=False))
        np.testing.assert_allclose(reader.run(image), expected, atol=1e-4)
