"""The ResNet + ViT hybrids: exact against the original, the paper's configurations."""

import pathlib

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit.core import hybrid
from keras_vit.weights.npz import from_npz, save_npz

DATA = pathlib.Path(__file__).parent / "data"


def predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.mark.slow  # builds a ResNet stem: seconds, more on JAX
def test_reference_hybrid_logits_and_features_match_the_original():
    reference = np.load(DATA / "vit_hybrid.expected.npz")
    model = from_npz(DATA / "vit_hybrid.npz")
    assert model.resnet == ((1, 1), 0.5)
    assert np.abs(predict(model, reference["images"]) - reference["logits"]).max() < 1e-4
    features = from_npz(DATA / "vit_hybrid.npz", include_top=False)
    assert np.abs(predict(features, reference["images"]) - reference["features"]).max() < 1e-4


def test_group_norm_params_stored_as_vectors_load_the_same(tmp_path):
    with np.load(DATA / "vit_hybrid.npz") as data:
        arrays = {k: (data[k].reshape(-1) if "/gn" in k or k.startswith("gn_") else data[k]) for k in data.files}
    np.savez(tmp_path / "flat_gn.npz", **arrays)
    reference = np.load(DATA / "vit_hybrid.expected.npz")
    model = from_npz(tmp_path / "flat_gn.npz")
    assert np.abs(predict(model, reference["images"]) - reference["logits"]).max() < 1e-4


@pytest.mark.slow  # builds a ResNet stem: seconds, more on JAX
def test_r50_b16_parameter_count_and_grid():
    model = keras_vit.ViTR50_B16()
    assert model.count_params() == 98_659_112
    assert model.grid_size == (14, 14)
    assert model.get_layer("block3_unit9").output.shape[-1] == 1024
    with pytest.raises(ValueError, match=r"block3_unit10"):
        model.get_layer("block3_unit10")


@pytest.mark.slow  # the R50 stems
@pytest.mark.parametrize(
    "builder, stages, patch, grid",
    [
        (keras_vit.ViTR_Ti16, (), 8, (7, 7)),
        (keras_vit.ViTR26_S32, (2, 2, 2, 2), 1, (7, 7)),
        (keras_vit.ViTR50_L32, (3, 4, 6, 3), 1, (7, 7)),
    ],
)
def test_hybrid_builders_use_the_original_configurations(builder, stages, patch, grid):
    model = builder(num_classes=10)
    assert model.resnet == (stages, 1.0)
    assert model.patch_size == (patch, patch) and model.grid_size == grid
    keras.backend.clear_session()


@pytest.mark.slow  # builds a ResNet stem: seconds, more on JAX
def test_hybrid_through_vit_argument_and_image_size_check():
    model = keras_vit.ViT("S/1", resnet=((1, 1), 0.5), image_size=32, num_classes=3, num_layers=1)
    assert model.grid_size == (4, 4)
    assert predict(model, np.zeros((1, 32, 32, 3), "float32")).shape == (1, 3)
    with pytest.raises(ValueError, match=r"not divisible by the patch size 1x1 times the ResNet stem's stride 8"):
        keras_vit.ViT("S/1", resnet=((1, 1), 0.5), image_size=36)


def test_standardised_convolution_is_the_original_formula():
    conv = hybrid.StdConv2D(2, 1, use_bias=False)
    x = np.random.default_rng(0).normal(size=(1, 2, 2, 3)).astype("float32")
    conv.build(x.shape)
    kernel = np.random.default_rng(1).normal(size=(1, 1, 3, 2)).astype("float32")
    conv.kernel.assign(kernel)
    centred = kernel - kernel.mean(axis=(0, 1, 2))
    standardised = centred / (centred.std(axis=(0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(predict(conv, x), np.einsum("bhwc,cd->bhwd", x, standardised[0, 0]), atol=1e-5)


def test_hybrid_keras_round_trip_and_npz_save(tmp_path):
    model = from_npz(DATA / "vit_hybrid.npz")
    model.save(tmp_path / "hybrid.keras")
    loaded = keras.saving.load_model(tmp_path / "hybrid.keras")
    x = np.load(DATA / "vit_hybrid.expected.npz")["images"]
    np.testing.assert_allclose(predict(loaded, x), predict(model, x), atol=1e-6)
    resaved = from_npz(save_npz(loaded, tmp_path / "hybrid.npz"))
    np.testing.assert_array_equal(predict(resaved, x), predict(loaded, x))


def test_hybrid_position_embedding_resampling():
    model = from_npz(DATA / "vit_hybrid.npz", image_size=64, num_classes=4)
    assert model.grid_size == (8, 8)
    assert tuple(model.get_layer("embedding").pos_embedding.shape) == (1, 65, 48)
