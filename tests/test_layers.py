"""The layers on their own: shapes, exact semantics, config round trips (any backend)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_vit.core import layers
from keras_vit.core.layers import DropPath, MLP, Patches, PatchEncoder, TokenPooling, TransformerBlock


def _config_round_trip(layer):
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config
    return clone


def test_patches_raster_order_and_flattening():
    images = np.arange(2 * 4 * 6 * 3, dtype="float32").reshape(2, 4, 6, 3)
    patches = ops.convert_to_numpy(Patches(2)(images))
    assert patches.shape == (2, 6, 12)
    # Patch k (row-major over the 2x3 grid) is the 2x2x3 block flattened as (row, col, ch).
    for k in range(6):
        r, c = divmod(k, 3)
        np.testing.assert_array_equal(patches[1, k], images[1, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].reshape(-1))


def test_patches_non_square_patch_and_image():
    patches = Patches((2, 3))(np.zeros((1, 4, 9, 1), "float32"))
    assert tuple(patches.shape) == (1, 6, 6)


def test_patches_rejects_indivisible_image():
    with pytest.raises(ValueError, match=r"Image size 30x32 is not divisible by the patch size 8x8"):
        Patches(8)(np.zeros((1, 30, 32, 3), "float32"))


def test_patch_projection_equals_the_original_strided_convolution():
    # The original embeds patches with a (P, P, C, D) conv kernel of stride P.
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    kernel = rng.normal(size=(4, 4, 3, 5)).astype("float32")
    encoder = PatchEncoder(5, 2, use_class_token=False, position_embedding="none")
    encoder.build((None, 4, 48))
    encoder.projection.kernel.assign(kernel.reshape(48, 5))
    ours = ops.convert_to_numpy(encoder(Patches(4)(images)))
    conv = ops.convert_to_numpy(ops.conv(images, kernel, strides=4, padding="valid")).reshape(2, 4, 5)
    np.testing.assert_allclose(ours, conv + ops.convert_to_numpy(encoder.projection.bias), atol=1e-5)


@pytest.mark.parametrize(
    "position_embedding, use_class_token, weight_names",
    [
        ("learned", True, {"cls", "pos_embedding"}),
        ("learned", False, {"pos_embedding"}),
        ("learned_2d", True, {"cls", "row_embedding", "column_embedding"}),
        ("sincos2d", True, {"cls"}),
        ("none", False, set()),
    ],
)
def test_patch_encoder_tokens_and_weights(position_embedding, use_class_token, weight_names):
    encoder = PatchEncoder(8, (2, 3), use_class_token=use_class_token, position_embedding=position_embedding)
    tokens = encoder(np.ones((2, 6, 12), "float32"))
    assert tuple(tokens.shape) == (2, 6 + int(use_class_token), 8)
    own = {w.path.split("/")[-1] for w in encoder.weights} - {"kernel", "bias"}
    assert own == weight_names
    if use_class_token:
        np.testing.assert_array_equal(ops.convert_to_numpy(encoder.cls), 0.0)  # zero-initialised
    if position_embedding == "learned":
        assert tuple(encoder.pos_embedding.shape) == (1, 6 + int(use_class_token), 8)
    _config_round_trip(encoder)


def test_learned_position_embedding_is_added_after_the_class_token():
    encoder = PatchEncoder(4, 1, use_class_token=True, position_embedding="learned")
    encoder.build((None, 1, 2))
    encoder.projection.kernel.assign(np.zeros((2, 4)))
    encoder.cls.assign(np.full((1, 1, 4), 3.0))
    encoder.pos_embedding.assign(np.array([[[1, 1, 1, 1], [2, 2, 2, 2]]], "float32"))
    tokens = ops.convert_to_numpy(encoder(np.zeros((1, 1, 2), "float32")))
    np.testing.assert_allclose(tokens[0, 0], 4.0)  # cls + its own position embedding
    np.testing.assert_allclose(tokens[0, 1], 2.0)


def test_sincos_embedding_matches_big_vision_formula():
    embedding = layers.sincos_2d_position_embedding((2, 3), 8)
    assert embedding.shape == (1, 6, 8)
    omega = 1.0 / 10_000 ** (np.arange(2) / 1)
    y, x = 1, 2  # token 5
    expected = np.concatenate([np.sin(x * omega), np.cos(x * omega), np.sin(y * omega), np.cos(y * omega)])
    np.testing.assert_allclose(embedding[0, 5], expected, rtol=1e-6)


def test_patch_encoder_rejects_wrong_patch_count_and_names():
    encoder = PatchEncoder(8, 4)
    with pytest.raises(ValueError, match=r"expected 16 patches \(a 4x4 grid\) but received 9"):
        encoder(np.zeros((1, 9, 12), "float32"))
    with pytest.raises(ValueError, match=r"Unknown position_embedding 'rope'.*'learned', 'learned_2d', 'sincos2d', 'none'"):
        PatchEncoder(8, 4, position_embedding="rope")


def test_mlp_uses_tanh_gelu():
    mlp = MLP(3)
    x = np.array([[0.5, -1.0]], "float32")
    mlp.build(x.shape)
    for dense in (mlp.dense_0, mlp.dense_1):
        dense.bias.assign(np.zeros(dense.bias.shape))
    mlp.dense_0.kernel.assign(np.eye(2, 3))
    mlp.dense_1.kernel.assign(np.eye(3, 2))
    tanh_gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(ops.convert_to_numpy(mlp(x)), tanh_gelu, rtol=1e-6)
    assert _config_round_trip(mlp).mlp_dim == 3


def test_transformer_block_is_pre_norm_residual():
    block = TransformerBlock(num_heads=2, mlp_dim=8)
    x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype("float32")
    y, scores = block(x, return_attention_scores=True)
    assert tuple(y.shape) == (2, 5, 4) and tuple(scores.shape) == (2, 2, 5, 5)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.sum(scores, axis=-1)), 1.0, atol=1e-5)
    assert block.norm_1.epsilon == 1e-6 and block.norm_2.epsilon == 1e-6
    # Recompute x + MHA(LN(x)), then + MLP(LN(.)) from the sub-layers by hand.
    h = x + ops.convert_to_numpy(block.attention(block.norm_1(x), block.norm_1(x)))
    expected = h + ops.convert_to_numpy(block.mlp(block.norm_2(h)))
    np.testing.assert_allclose(ops.convert_to_numpy(y), expected, atol=1e-5)
    _config_round_trip(block)


def test_transformer_block_attention_scores_in_a_functional_graph():
    tokens = keras.Input((5, 4))
    block = TransformerBlock(num_heads=2, mlp_dim=8)
    outputs, scores = block(tokens, return_attention_scores=True)
    assert tuple(scores.shape) == (None, 2, 5, 5)
    graph = keras.Model(tokens, [outputs, scores])
    x = np.random.default_rng(1).normal(size=(3, 5, 4)).astype("float32")
    y, probabilities = graph(x)
    np.testing.assert_allclose(ops.convert_to_numpy(y), ops.convert_to_numpy(block(x)), atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.sum(probabilities, axis=-1)), 1.0, atol=1e-5)


def test_transformer_block_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"Width 10 is not divisible by num_heads=3"):
        TransformerBlock(num_heads=3, mlp_dim=8)(np.zeros((1, 2, 10), "float32"))


def test_drop_path_drops_whole_samples_only_in_training():
    layer = DropPath(0.5, seed=1)
    x = np.ones((64, 3, 2), "float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(x)), x)
    y = ops.convert_to_numpy(layer(x, training=True))
    per_sample = y.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))  # all or nothing per sample
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    with pytest.raises(ValueError, match=r"DropPath rate must be in \[0, 1\); got 1.5"):
        DropPath(1.5)
    assert _config_round_trip(layer).rate == 0.5


def test_token_pooling():
    x = np.arange(2 * 3 * 4, dtype="float32").reshape(2, 3, 4)
    np.testing.assert_array_equal(ops.convert_to_numpy(TokenPooling("token")(x)), x[:, 0])
    np.testing.assert_allclose(ops.convert_to_numpy(TokenPooling("gap")(x)), x.mean(axis=1))
    with pytest.raises(ValueError, match=r"Unknown pooling 'max'; expected one of \['token', 'gap'\]"):
        TokenPooling("max")


def test_layers_are_registered_for_serialization():
    for cls in (Patches, PatchEncoder, TransformerBlock, MLP, DropPath, TokenPooling):
        assert keras.saving.get_registered_object(f"keras_vit>{cls.__name__}") is cls
