"""timm and Hugging Face repositories: read exactly, written back bit for bit, any resolution,
backbone features. The reference folders (tests/data/hub, copied from shared/reference/hub)
were saved by timm 1.0.31 and transformers 5.23.0, with the outputs those libraries compute."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import keras_vit
from conftest import DATA, randomize, reference_path, tiny_vit

HUB = DATA / "hub"
CASES = sorted(p.name for p in HUB.iterdir() if p.is_dir() and p.name != "write_back")  # write_back: test_write_back.py
TIMM_CASES = [c for c in CASES if c.startswith("timm_")]
RESIZED_CASES = [c for c in CASES if "resized_logits" in np.load(HUB / c / "expected.npz").files]
TOLERANCE = 1e-4


def expected(case):
    with np.load(HUB / case / "expected.npz") as data:
        return {key: data[key] for key in data.files}


def test_the_reference_folders_are_all_here():
    assert CASES == ["hf_vit", "timm_deit_distilled", "timm_vit_gap_fcnorm", "timm_vit_reg_layerscale", "timm_vit_token"]


@pytest.mark.parametrize("case", CASES)
def test_logits_and_features_equal_the_library_that_saved_the_folder(case):
    outputs = expected(case)
    model = keras_vit.from_pretrained(HUB / case)
    np.testing.assert_allclose(model.predict(outputs["images"], verbose=0), outputs["logits"], atol=TOLERANCE, rtol=0)
    backbone = keras_vit.from_pretrained(HUB / case, include_top=False)
    np.testing.assert_allclose(backbone.predict(outputs["images"], verbose=0), outputs["features"], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_raw_pixels_go_in_with_the_checkpoints_own_normalisation(case):
    outputs = expected(case)
    model = keras_vit.from_pretrained(HUB / case, include_preprocessing=True)
    assert outputs["raw"].dtype == np.uint8
    np.testing.assert_allclose(model.predict(outputs["raw"], verbose=0), outputs["raw_logits"], atol=TOLERANCE, rtol=0)
    # The same pixels through the model without preprocessing are refused, not misclassified.
    with pytest.raises(ValueError, match="uint8"):
        keras_vit.from_pretrained(HUB / case)(outputs["raw"])


@pytest.mark.parametrize("case", RESIZED_CASES)
def test_loading_at_another_resolution_resamples_as_timm(case, caplog):
    outputs = expected(case)
    size = outputs["resized_images"].shape[1]
    with caplog.at_level("WARNING"):
        model = keras_vit.from_pretrained(HUB / case, image_size=size)
    assert "resampled from a 4x4 grid to 6x6" in caplog.text
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.get_layer("embedding").pos_embedding), outputs["resized_pos_embed"], atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(model.predict(outputs["resized_images"], verbose=0), outputs["resized_logits"], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("case", RESIZED_CASES)
def test_a_dynamic_size_model_equals_loading_at_that_size(case):
    outputs = expected(case)
    size = outputs["resized_images"].shape[1]
    dynamic = keras_vit.from_pretrained(HUB / case, dynamic_image_size=True)
    resized = keras_vit.from_pretrained(HUB / case, image_size=size)
    np.testing.assert_allclose(
        dynamic.predict(outputs["resized_images"], verbose=0), resized.predict(outputs["resized_images"], verbose=0),
        atol=1e-5, rtol=0,
    )
    # At the stored size it is the stored model.
    np.testing.assert_allclose(dynamic.predict(outputs["images"], verbose=0), outputs["logits"], atol=TOLERANCE, rtol=0)


def test_a_dynamic_size_model_resamples_npz_embeddings_as_the_original_loader():
    with np.load(reference_path("vit_token", ".expected.npz")) as data:
        images = data["images"][:2]
    dynamic = keras_vit.from_npz(reference_path("vit_token"), dynamic_image_size=True)
    grid = dynamic.grid_size
    size = (images.shape[1] + 2 * dynamic.patch_size[0], images.shape[2] + dynamic.patch_size[1])
    larger = keras.ops.convert_to_numpy(keras.ops.image.resize(images, size))
    resized = keras_vit.from_npz(reference_path("vit_token"), image_size=size)
    assert resized.grid_size == (grid[0] + 2, grid[1] + 1)
    np.testing.assert_allclose(dynamic.predict(larger, verbose=0), resized.predict(larger, verbose=0), atol=1e-5, rtol=0)


@pytest.mark.slow  # trains
def test_a_dynamic_size_model_trains_saves_reloads_and_takes_several_sizes(tmp_path):
    model = randomize(tiny_vit(dynamic_image_size=True, position_resampling="bicubic"))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    images, labels = rng.uniform(-1, 1, (8, 24, 20, 3)).astype("float32"), rng.integers(0, 5, 8)
    history = model.fit(images, labels, epochs=2, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    path = tmp_path / "dynamic.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    for shape in ((2, 16, 16, 3), (2, 24, 20, 3), (1, 8, 32, 3)):
        x = rng.uniform(-1, 1, shape).astype("float32")
        np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="multiples of the patch size 4x4"):
        model(np.zeros((1, 18, 16, 3), "float32"))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="Keras exports a SavedModel from TensorFlow's graph")
def test_a_dynamic_size_model_exports_a_savedmodel_with_dynamic_height_and_width(tmp_path):
    import tensorflow as tf
    model = randomize(tiny_vit(dynamic_image_size=True))
    model.export(tmp_path / "saved", format="tf_saved_model", verbose=False)
    serve = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    spec = serve.structured_input_signature[1]
    (argument,) = spec.values()
    assert argument.shape.as_list() == [None, None, None, 3]
    for size in ((16, 16), (28, 12)):
        x = np.random.default_rng(1).uniform(-1, 1, (2, *size, 3)).astype("float32")
        (served,) = serve(tf.constant(x)).values()
        np.testing.assert_allclose(served.numpy(), model.predict(x, verbose=0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", TIMM_CASES)
def test_feature_maps_equal_timms_forward_intermediates(case, tmp_path):
    outputs = expected(case)
    model = keras_vit.from_pretrained(HUB / case)
    features = keras_vit.feature_extractor(model)
    maps = features.predict(outputs["images"], verbose=0)
    assert len(maps) == model.num_layers
    for got, want in zip(maps, outputs["intermediates"]):
        assert got.shape == want.shape  # (B, grid_h, grid_w, D): prefix tokens removed
        np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    path = tmp_path / "features.keras"
    features.save(path)
    reloaded = keras.models.load_model(path)
    for got, want in zip(reloaded.predict(outputs["images"], verbose=0), maps):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_feature_extractor_chooses_blocks_and_follows_a_dynamic_size():
    model = randomize(tiny_vit(num_layers=3, dynamic_image_size=True, num_register_tokens=2))
    last = keras_vit.feature_extractor(model, layers=1)
    chosen = keras_vit.feature_extractor(model, layers=[0, -1], norm=True)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 24, 32, 3)).astype("float32")
    only = last.predict(x, verbose=0)  # one output: Keras returns the array itself
    assert only.shape == (2, 6, 8, 16)
    first, final = chosen.predict(x, verbose=0)
    assert first.shape == final.shape == (2, 6, 8, 16)
    np.testing.assert_allclose(final, keras.ops.convert_to_numpy(
        model.get_layer("encoder_norm")(keras.ops.convert_to_tensor(
            np.concatenate([np.zeros((2, 2, 16), "float32"), only.reshape(2, 48, 16)], axis=1)))
    )[:, 2:].reshape(2, 6, 8, 16), atol=1e-5)
    with pytest.raises(ValueError, match="not a block index of a 3-block model"):
        keras_vit.feature_extractor(model, layers=[3])


def test_a_dense_head_on_the_feature_maps_trains():
    # The README's example: a per-patch classifier (segmentation at patch resolution).
    model = keras_vit.from_pretrained(HUB / "timm_vit_token", include_top=False)
    (maps,) = keras_vit.feature_extractor(model, layers=1).outputs
    logits = keras.layers.Conv2D(3, 1, name="segmentation_head")(maps)
    segmenter = keras.Model(model.input, logits)
    segmenter.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (8, 32, 32, 3)).astype("float32")
    masks = (images[:, ::8, ::8, 0] > 0).astype("int32")  # (8, 4, 4): one label per patch
    losses = segmenter.fit(images, masks, epochs=15, batch_size=8, verbose=0).history["loss"]
    assert losses[-1] < 0.7 * losses[0]


def _copy(case, tmp_path):
    folder = tmp_path / case
    shutil.copytree(HUB / case, folder)
    return folder


@pytest.mark.parametrize("case", CASES)
def test_writing_back_gives_the_same_tensors_bit_for_bit_and_the_same_config_keys(case, tmp_path):
    layout = "huggingface" if case.startswith("hf_") else "timm"
    model = keras_vit.from_pretrained(HUB / case)
    folder = keras_vit.save_pretrained(model, tmp_path / "written", format=layout)
    original, written = load_file(HUB / case / "model.safetensors"), load_file(os.path.join(folder, "model.safetensors"))
    assert sorted(written) == sorted(original)
    for key in original:
        assert written[key].dtype == original[key].dtype and written[key].shape == original[key].shape, key
        assert np.array_equal(written[key], original[key]), key
    reference_config = json.loads((HUB / case / "config.json").read_text())
    config = json.loads(open(os.path.join(folder, "config.json")).read())
    if layout == "timm":
        assert set(config) == set(reference_config)
        assert set(config["model_args"]) == set(reference_config["model_args"])
        # The checkpoint's own pretrained_cfg (crop_pct, interpolation, license, ...) comes back as it was read.
        assert config["pretrained_cfg"] == reference_config["pretrained_cfg"]
        assert config["model_args"] == reference_config["model_args"]
    else:
        assert set(config) == set(reference_config)
        preprocessor = json.loads(open(os.path.join(folder, "preprocessor_config.json")).read())
        assert preprocessor == json.loads((HUB / case / "preprocessor_config.json").read_text())
        assert config["id2label"] == reference_config["id2label"]
    # And it reads back into the same model.
    images = expected(case)["images"]
    np.testing.assert_array_equal(
        keras_vit.from_pretrained(folder).predict(images, verbose=0), model.predict(images, verbose=0)
    )


def test_a_fine_tuned_keras_model_is_published_in_timms_layout(tmp_path):
    model = keras_vit.from_pretrained(HUB / "timm_vit_token", num_classes=3, class_names=["cat", "dog", "fox"])
    randomize(model, seed=3)
    folder = keras_vit.save_pretrained(model, tmp_path / "fine-tuned")
    config = json.loads(open(os.path.join(folder, "config.json")).read())
    assert config["num_classes"] == 3 and config["label_names"] == ["cat", "dog", "fox"]
    reread = keras_vit.from_pretrained(folder)
    assert reread.class_names == ("cat", "dog", "fox")
    for a, b in zip(model.weights, reread.weights):
        assert np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)), a.path
    with pytest.raises(ValueError, match="already exists; pass overwrite=True"):
        keras_vit.save_pretrained(model, folder)
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match="thesis.tex"):
        keras_vit.save_pretrained(model, tmp_path / "thesis", overwrite=True)
    assert (tmp_path / "thesis" / "thesis.tex").read_text() == "mine"


def test_layouts_refuse_what_they_cannot_express():
    with pytest.raises(ValueError, match="Hugging Face.*num_register_tokens=2|num_register_tokens=2"):
        keras_vit.save_pretrained(tiny_vit(num_register_tokens=2), "/nonexistent/x", format="huggingface")
    with pytest.raises(ValueError, match="layer_norm_epsilon=1e-12"):
        keras_vit.save_pretrained(tiny_vit(layer_norm_epsilon=1e-12), "/nonexistent/x", format="timm")
    with pytest.raises(ValueError, match="format='keras'"):
        keras_vit.save_pretrained(tiny_vit(), "/nonexistent/x", format="keras")


def test_class_names_of_the_checkpoint_are_carried_and_saved(tmp_path):
    model = keras_vit.from_pretrained(HUB / "hf_vit")
    assert model.class_names == tuple(f"class_{i}" for i in range(5))
    model.save(tmp_path / "m.keras")
    assert keras.models.load_model(tmp_path / "m.keras").class_names == model.class_names
    assert keras_vit.from_pretrained(HUB / "hf_vit", num_classes=2).class_names is None  # a new head


def test_distilled_model_averages_its_heads_and_returns_both_when_training_distilled():
    outputs = expected("timm_deit_distilled")
    model = keras_vit.from_pretrained(HUB / "timm_deit_distilled")
    images = outputs["images"]
    averaged = keras.ops.convert_to_numpy(model(images, training=True))
    np.testing.assert_allclose(averaged, outputs["logits"], atol=TOLERANCE)
    model.distilled_training = True
    cls_logits, dist_logits = [keras.ops.convert_to_numpy(t) for t in model(images, training=True)]
    np.testing.assert_allclose((cls_logits + dist_logits) / 2, outputs["logits"], atol=TOLERANCE)
    assert np.abs(cls_logits - dist_logits).max() > 1e-2  # two different heads
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)), outputs["logits"], atol=TOLERANCE)


# ----------------------------------------------------------------------------- strict loading
def _rewrite(folder, change):
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_an_unknown_tensor_is_named_and_nothing_is_built(tmp_path):
    folder = _copy("timm_vit_token", tmp_path)
    _rewrite(folder, lambda t: t.update({"blocks.0.attn.q_norm.weight": np.ones(16, "float32")}))
    with pytest.raises(ValueError, match=r"not used by the model: 'blocks.0.attn.q_norm.weight' \(16,\)"):
        keras_vit.from_pretrained(folder)


def test_a_missing_tensor_is_named(tmp_path):
    folder = _copy("hf_vit", tmp_path)
    _rewrite(folder, lambda t: t.pop("vit.encoder.layer.1.layernorm_after.weight"))
    with pytest.raises(ValueError, match="vit.encoder.layer.1.layernorm_after.weight"):
        keras_vit.from_pretrained(folder)


def test_a_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    folder = _copy("timm_vit_token", tmp_path)
    _rewrite(folder, lambda t: t.update({"blocks.1.mlp.fc2.bias": np.zeros(40, "float32")}))
    with pytest.raises(ValueError, match=r"MlpBlock_3/Dense_1/bias' has shape \(40,\) but .* needs \(48,\)"):
        keras_vit.from_pretrained(folder)


def test_foreign_folders_and_files_are_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        keras_vit.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        keras_vit.from_pretrained(tmp_path / "empty")
    folder = _copy("timm_vit_token", tmp_path)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable .safetensors file"):
        keras_vit.from_pretrained(folder)
    folder = _copy("hf_vit", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, model_type="bert")))
    with pytest.raises(ValueError, match="model_type='bert'"):
        keras_vit.from_pretrained(folder)


def test_an_hf_source_offline_names_the_repository_and_where_to_put_the_files(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"Cannot download 'timm/vit_base_patch16_224.augreg2_in21k_ft_in1k'.*config.json"):
        keras_vit.from_pretrained("hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", cache_dir=tmp_path)


def test_an_hf_source_is_read_from_the_huggingface_hub_cache_offline(tmp_path, monkeypatch):
    # The cache as huggingface_hub lays it out after a download: blobs, a snapshot, a ref.
    pytest.importorskip("huggingface_hub")
    repo = tmp_path / "models--keras-vit--tiny-timm"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(HUB / "timm_vit_token", snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = keras_vit.from_pretrained("hf://keras-vit/tiny-timm", cache_dir=tmp_path)
    outputs = expected("timm_vit_token")
    np.testing.assert_allclose(model.predict(outputs["images"], verbose=0), outputs["logits"], atol=TOLERANCE, rtol=0)


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the exporters convert TensorFlow graphs")
def test_an_exact_gelu_model_exports_to_tflite_builtins_and_onnx_verified_in_their_runtimes(tmp_path):
    from keras_vit.deploy.export import tflite_ops

    model = keras_vit.from_pretrained(HUB / "hf_vit")  # exact GELU, epsilon 1e-12
    manifest = keras_vit.export_model(
        model, tmp_path / "export", formats="tflite,onnx", tflite_precisions=["float32"], progress=False
    )
    artifacts = {entry["file"]: entry for entry in manifest["artifacts"]}
    assert set(artifacts) == {"model_float32.tflite", "model.onnx"}
    for entry in artifacts.values():
        assert entry["verified"] is True, entry
        assert entry["parity"]["max_abs_diff"] <= 1e-4, entry
    assert "GELU" in tflite_ops(tmp_path / "export" / "model_float32.tflite")  # LiteRT's builtin, not a Flex op


def test_a_built_model_takes_hub_weights_by_weights_argument_and_refuses_another_architecture(tmp_path):
    outputs = expected("timm_vit_token")
    arguments = dict(image_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=3, mlp_dim=96,
                     num_classes=7, gelu="exact")
    model = keras_vit.VisionTransformer(**arguments)
    keras_vit.zoo.load_weights(model, str(HUB / "timm_vit_token"))
    np.testing.assert_allclose(model.predict(outputs["images"], verbose=0), outputs["logits"], atol=TOLERANCE, rtol=0)
    wrong = keras_vit.VisionTransformer(**dict(arguments, num_register_tokens=1))
    before = [keras.ops.convert_to_numpy(w).copy() for w in wrong.weights]
    with pytest.raises(ValueError, match=r"model weight .*registers .* has no checkpoint key 'reg'"):
        keras_vit.load_pretrained(wrong, HUB / "timm_vit_token")
    for weight, value in zip(wrong.weights, before):  # nothing assigned
        assert np.array_equal(keras.ops.convert_to_numpy(weight), value), weight.path


def test_a_timm_config_without_model_args_is_read_from_the_architecture_name_and_shapes(tmp_path):
    # Most AugReg and DeiT repositories on the hub: architecture and pretrained_cfg only.
    folder = _copy("timm_deit_distilled", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["model_args"]
    (folder / "config.json").write_text(json.dumps(config))
    model = keras_vit.from_pretrained(folder)  # "deit_tiny_...": 3 heads; the rest from the tensors
    assert (model.num_heads, model.num_layers, model.hidden_size, model.patch_size) == (3, 2, 48, (8, 8))
    assert model.image_size == (32, 32) and model.pixel_mean == (0.485, 0.456, 0.406)
    outputs = expected("timm_deit_distilled")
    np.testing.assert_allclose(model.predict(outputs["images"], verbose=0), outputs["logits"], atol=TOLERANCE, rtol=0)
    config["architecture"] = "vit_unknownwidth_patch8_32"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Cannot tell the attention heads of timm architecture 'vit_unknownwidth_patch8_32'"):
        keras_vit.from_pretrained(folder)


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the exporters convert TensorFlow graphs")
def test_the_checkpoints_class_names_and_preprocessing_reach_export_and_predict(tmp_path):
    from PIL import Image

    from keras_vit.weights.hub import convert_pretrained

    model_path = tmp_path / "hf_vit.keras"
    model = convert_pretrained(HUB / "hf_vit", model_path, include_preprocessing=True)
    names = [f"class_{i}" for i in range(5)]
    raw = expected("hf_vit")["raw"]
    files = []
    for index, pixels in enumerate(raw):
        files.append(tmp_path / f"image_{index}.png")
        Image.fromarray(pixels).save(files[-1])
    manifest = keras_vit.export_model(
        str(model_path), tmp_path / "export", formats="tflite", tflite_precisions=["float32"], progress=False,
        latency_runs=0,
    )
    assert manifest["class_names"] == names and manifest["input_range"] == [0.0, 255.0]
    assert (tmp_path / "export" / "labels.txt").read_text().split() == names
    wanted = [names[i] for i in np.argmax(expected("hf_vit")["raw_logits"], axis=1)]
    for artifact in (model_path, tmp_path / "export" / "model_float32.tflite"):
        result = keras_vit.predict_files(str(artifact), [str(f) for f in files], top_k=1)
        assert [p["top_k"][0]["label"] for p in result["predictions"]] == wanted, artifact
    assert model.class_names == tuple(names)
