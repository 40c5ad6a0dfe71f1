"""Original .npz checkpoints: exact against the original implementation's outputs, strict."""

import json
import os
import pathlib

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit import zoo
from keras_vit.weights import npz as checkpoints, published
from keras_vit.weights.npz import from_npz, load_npz, save_npz

DATA = pathlib.Path(__file__).parent / "data"
PLAIN_CASES = ["vit_token", "vit_i21k_style", "vit_gap"]


def expected(case):
    return np.load(DATA / f"{case}.expected.npz")


def predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def params(case):
    with np.load(DATA / f"{case}.npz") as data:
        return {k: data[k] for k in data.files}


def write(path, arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case", PLAIN_CASES)
def test_logits_and_features_match_the_original(case):
    reference = expected(case)
    logits = predict(from_npz(DATA / f"{case}.npz"), reference["images"])
    features = predict(from_npz(DATA / f"{case}.npz", include_top=False), reference["images"])
    assert np.abs(logits - reference["logits"]).max() < 1e-4
    assert np.abs(features - reference["features"]).max() < 1e-4


@pytest.mark.parametrize("case", ["vit_token", "vit_gap"])
def test_resized_features_and_position_embeddings_match_the_original(case):
    reference = expected(case)
    model = from_npz(DATA / f"{case}.npz", image_size=48, include_top=False)
    assert np.abs(predict(model, reference["resized_images"]) - reference["resized_features"]).max() < 1e-4
    pos = keras.ops.convert_to_numpy(model.get_layer("embedding").pos_embedding)
    assert np.abs(pos - reference["resized_pos_embedding"]).max() < 1e-5


def test_from_npz_infers_the_configuration():
    config = json.loads((DATA / "vit_i21k_style.json").read_text())
    model = from_npz(DATA / "vit_i21k_style.npz")
    assert model.image_size == (config["image_size"],) * 2
    assert model.patch_size == (config["patch_size"],) * 2
    assert (model.hidden_size, model.num_layers, model.num_heads, model.mlp_dim) == (
        config["hidden_size"], config["num_layers"], config["num_heads"], config["mlp_dim"]
    )
    assert (model.num_classes, model.representation_size, model.pooling) == (21, 32, "token")
    assert from_npz(DATA / "vit_gap.npz").pooling == "gap"


def test_builder_weights_path_loads_into_a_matching_model():
    reference = expected("vit_token")
    model = keras_vit.ViT(
        "B/8", image_size=32, num_classes=10, hidden_size=48, num_layers=2, num_heads=3, mlp_dim=96,
        weights=str(DATA / "vit_token.npz"),
    )
    assert np.abs(predict(model, reference["images"]) - reference["logits"]).max() < 1e-4


# --------------------------------------------------------------------------- key layouts
def test_linen_block_names_and_key_prefixes(tmp_path):
    reference = expected("vit_token")
    renamed = {}
    for key, value in params("vit_token").items():
        key = key.replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
        key = key.replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0")
        renamed["params/" + key] = value
    linen = from_npz(write(tmp_path / "linen.npz", renamed))
    assert np.abs(predict(linen, reference["images"]) - reference["logits"]).max() < 1e-4
    target = {"opt/target/" + k: v for k, v in params("vit_token").items()}
    optimizer_file = from_npz(write(tmp_path / "opt.npz", target))
    assert np.abs(predict(optimizer_file, reference["images"]) - reference["logits"]).max() < 1e-4


# --------------------------------------------------------------------------- fine-tuning
def test_new_num_classes_gives_a_zero_head_and_keeps_the_rest():
    reference = expected("vit_token")
    model = from_npz(DATA / "vit_token.npz", num_classes=3)
    head = model.get_layer("head")
    assert tuple(head.kernel.shape) == (48, 3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(head.kernel), 0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(head.bias), 0.0)
    np.testing.assert_array_equal(predict(model, reference["images"]), 0.0)
    features = keras.Model(model.input, model.get_layer("pool").output)
    assert np.abs(predict(features, reference["images"]) - reference["features"]).max() < 1e-4


def test_reset_head_on_request_even_with_equal_shape():
    model = from_npz(DATA / "vit_token.npz", reset_head=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("head").kernel), 0.0)


def test_pre_logits_kept_when_model_has_one_and_dropped_otherwise():
    reference = expected("vit_i21k_style")
    kept = from_npz(DATA / "vit_i21k_style.npz", include_top=False)
    assert np.abs(predict(kept, reference["images"]) - reference["features"]).max() < 1e-4
    dropped = from_npz(DATA / "vit_i21k_style.npz", representation_size=None, num_classes=7)
    assert not any(layer.name == "pre_logits" for layer in dropped.layers)
    assert tuple(dropped.get_layer("head").kernel.shape) == (48, 7)


def test_non_square_grid_resampling():
    model = from_npz(DATA / "vit_token.npz", image_size=(32, 48), include_top=False)
    pos = keras.ops.convert_to_numpy(model.get_layer("embedding").pos_embedding)
    original = params("vit_token")[checkpoints.POS_EMBEDDING_KEY]
    assert pos.shape == (1, 1 + 4 * 6, 48)
    np.testing.assert_array_equal(pos[0, 0], original[0, 0])  # class token kept
    grid = pos[0, 1:].reshape(4, 6, 48)
    old = original[0, 1:].reshape(4, 4, 48)
    np.testing.assert_allclose(grid[:, 0], old[:, 0], atol=1e-6)  # order-1 zoom keeps the corners
    np.testing.assert_allclose(grid[:, -1], old[:, -1], atol=1e-6)
    np.testing.assert_allclose(grid, grid.clip(old.min(), old.max()))  # linear: no overshoot


def test_non_square_checkpoint_with_old_grid(tmp_path):
    model = keras_vit.ViT("Ti/8", image_size=(16, 32), num_classes=2, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=8)
    path = save_npz(model, tmp_path / "wide.npz")
    with pytest.raises(ValueError, match=r"image size"):
        from_npz(path)
    wider = from_npz(path, image_size=(16, 48), old_grid=(2, 4))
    assert wider.grid_size == (2, 6)


# --------------------------------------------------------------------------- saving
@pytest.mark.parametrize("case", ["vit_token", "vit_i21k_style", "vit_gap", "vit_hybrid"])
def test_save_then_load_is_bit_exact(tmp_path, case):
    model = from_npz(DATA / f"{case}.npz")
    path = save_npz(model, tmp_path / "saved.npz")
    saved = dict(np.load(path))
    original = params(case)
    assert set(saved) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(saved[key], value.reshape(saved[key].shape), err_msg=key)
    reloaded = from_npz(path)
    for a, b in zip(model.weights, reloaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_learned_2d_round_trip(tmp_path):
    model = keras_vit.ViT("Ti/8", image_size=16, num_classes=2, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=8, position_embedding="learned_2d")
    for weight in model.weights:
        weight.assign(np.random.default_rng(0).normal(size=weight.shape))
    reloaded = from_npz(save_npz(model, tmp_path / "2d.npz"))
    assert reloaded.position_embedding == "learned_2d"
    x = np.ones((1, 16, 16, 3), "float32")
    np.testing.assert_array_equal(predict(reloaded, x), predict(model, x))


# --------------------------------------------------------------------------- strictness
def test_unused_checkpoint_key_raises_and_assigns_nothing(tmp_path):
    arrays = params("vit_token")
    arrays["Transformer/extra/kernel"] = np.zeros((3, 4), "float32")
    target = keras_vit.ViT("B/8", image_size=32, num_classes=10, hidden_size=48, num_layers=2, num_heads=3, mlp_dim=96)
    before = [keras.ops.convert_to_numpy(w).copy() for w in target.weights]
    with pytest.raises(ValueError, match=r"checkpoint keys not used by the model: 'Transformer/extra/kernel' \(3, 4\)"):
        load_npz(target, write(tmp_path / "extra.npz", arrays))
    for w, b in zip(target.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), b)


def test_a_string_typed_array_of_the_right_shape_raises_and_assigns_nothing(tmp_path):
    # The last key in the layout holds text: every other weight must stay as it was.
    arrays = params("vit_token")
    arrays["head/bias"] = np.array(["x"] * arrays["head/bias"].shape[0])
    target = keras_vit.ViT("B/8", image_size=32, num_classes=10, hidden_size=48, num_layers=2, num_heads=3, mlp_dim=96)
    before = [keras.ops.convert_to_numpy(w).copy() for w in target.weights]
    with pytest.raises(ValueError, match=r"text.npz': tensor 'head/bias' has dtype <U1; expected a floating-point tensor"):
        load_npz(target, write(tmp_path / "text.npz", arrays))
    for w, b in zip(target.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), b)


def test_missing_key_names_the_weight_and_key(tmp_path):
    arrays = params("vit_token")
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
    target = keras_vit.ViT("B/8", image_size=32, num_classes=10, hidden_size=48, num_layers=2, num_heads=3, mlp_dim=96)
    with pytest.raises(ValueError, match=r"\(96,\) has no checkpoint key 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias'"):
        load_npz(target, write(tmp_path / "missing.npz", arrays))


def test_shape_mismatch_names_key_and_both_shapes():
    target = keras_vit.ViT("B/8", image_size=32, num_classes=10, hidden_size=48, num_layers=2, num_heads=3, mlp_dim=64)
    with pytest.raises(
        ValueError,
        match=r"'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel' has shape \(48, 96\) but the model's weight .* needs \(48, 64\)",
    ):
        load_npz(target, DATA / "vit_token.npz")


def test_checkpoint_of_another_depth_is_refused():
    target = keras_vit.ViT("B/8", image_size=32, num_classes=10, hidden_size=48, num_layers=1, num_heads=3, mlp_dim=96)
    with pytest.raises(ValueError, match=r"not used by the model: 'Transformer/encoderblock_1/"):
        load_npz(target, DATA / "vit_token.npz")


def test_missing_file_and_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Checkpoint '.*nope.npz' does not exist"):
        from_npz(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(ValueError, match=r"is not a readable .npz file"):
        from_npz(bad)
    with pytest.raises(ValueError, match=r"Not a ViT checkpoint: no 'embedding/kernel' key"):
        from_npz(write(tmp_path / "other.npz", {"conv1/kernel": np.zeros(3)}))


def test_model_pre_logits_missing_from_checkpoint_is_an_error():
    target = keras_vit.ViT("B/8", image_size=32, num_classes=10, hidden_size=48, num_layers=2, num_heads=3, mlp_dim=96, representation_size=16)
    with pytest.raises(ValueError, match=r"has no checkpoint key 'pre_logits/kernel'"):
        load_npz(target, DATA / "vit_token.npz")


# --------------------------------------------------------------------------- published weights
def test_published_name_downloads_once_from_file_url(tmp_path, monkeypatch):
    bucket = tmp_path / "bucket"
    relative = zoo.published_weights("Ti/16")["augreg_in21k"]
    small = keras_vit.ViT("Ti/16", image_size=32, num_classes=4)  # the published file's architecture
    for weight in small.weights:
        weight.assign(np.random.default_rng(1).normal(size=weight.shape))
    save_npz(small, bucket / relative)
    monkeypatch.setenv(published.WEIGHTS_URL_ENV, bucket.as_uri())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    model = keras_vit.ViTTi16(num_classes=4, image_size=32, weights="augreg_in21k")
    cached = tmp_path / "keras_home" / "keras_vit" / os.path.basename(relative)
    assert cached.is_file()
    x = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(predict(model, x), predict(small, x))
    # Second use reads the cache: the bucket can disappear.
    (bucket / relative).unlink()
    keras_vit.ViTTi16(num_classes=4, image_size=32, weights="augreg_in21k")


def test_offline_download_names_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv(published.WEIGHTS_URL_ENV, (tmp_path / "empty").as_uri())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with pytest.raises(RuntimeError, match=r"Could not download the 'imagenet21k' weights of ViT-B/16 from file://.*ViT-B_16.npz.*put it at .*keras_home/keras_vit/ViT-B_16.npz"):
        keras_vit.ViTB16(weights="imagenet21k")


def test_unknown_weights_name_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"weights='jft' is neither an existing file nor a published name for ViT-B/16 \(accepted: \['augreg_in1k', 'augreg_in21k', 'augreg_in21k_ft_in1k', 'imagenet21k', 'imagenet21k\+imagenet2012'\]\)"):
        keras_vit.ViTB16(weights="jft")


def test_published_urls_follow_the_bucket_layout():
    assert zoo.weights_url("B/16", "imagenet21k") == "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz"
    assert zoo.weights_url("R50+B/16", "imagenet21k+imagenet2012").endswith("imagenet21k+imagenet2012/R50+ViT-B_16.npz")
    assert zoo.weights_url("S/16", "augreg_in21k_ft_in1k").endswith(
        "augreg/S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz"
    )


def test_published_weights_on_a_model_of_another_shape_are_refused_before_any_download(tmp_path, monkeypatch):
    # The bucket is an empty local folder: a download attempt would fail differently.
    monkeypatch.setenv(published.WEIGHTS_URL_ENV, (tmp_path / "empty").as_uri())
    with pytest.raises(ValueError, match=r"weights='imagenet21k' are ViT-B/16's, and this model differs from it "
                                         r"\(hidden_size=32, the checkpoint's 768"):
        keras_vit.ViT("B/16", hidden_size=32, num_heads=2, mlp_dim=64, num_layers=1, image_size=32, weights="imagenet21k")


def test_a_checkpoint_without_the_first_blocks_query_kernel_is_named(tmp_path):
    arrays = params("vit_token")
    del arrays["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"]
    with pytest.raises(ValueError, match=r"Not a complete ViT checkpoint: no \['Transformer/encoderblock_0/"
                                         r"MultiHeadDotProductAttention_1/query/kernel'\]"):
        from_npz(write(tmp_path / "no_query.npz", arrays))


def test_each_weight_adaptation_is_logged_once(caplog):
    # Fine-tuning surgery must not happen without a word: a new head, the pre-logits dropped
    # (a model without a representation layer), the position embeddings resampled (4x4 -> 6x6).
    with caplog.at_level("WARNING", logger="keras_vit.weights.npz"):
        model = keras_vit.ViT("B/8", image_size=48, num_classes=5, hidden_size=48, num_layers=2, num_heads=4,
                              mlp_dim=64)
        load_npz(model, DATA / "vit_i21k_style.npz")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "Head (32, 21) replaced by a zero-initialised (48, 5) (a new head, as fine-tuning starts).",
        "Checkpoint's pre_logits layer dropped: the model has no representation layer.",
        "Position embeddings resampled from a 4x4 grid to 6x6 (bilinear, as the original fine-tunes at another "
        "resolution).",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="keras_vit.weights.npz"):
        from_npz(DATA / "vit_i21k_style.npz")  # the model the file describes: nothing adapted
    assert caplog.records == []
