"""Every keras_vit layer saves and reloads inside any functional model, as Keras's own do
(keras-hub's round trip: get_config -> from_config -> get_config, and a .keras file that
reloads with equal outputs)."""

import keras
import numpy as np
import pytest

from keras_vit.core import layers


def _tokens(shape=(2, 5, 16)):
    return keras.Input(shape[1:]), np.random.default_rng(0).normal(size=shape).astype("float32")


def _cases():
    yield "Patches", lambda: (keras.Input((8, 8, 3)), np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype("float32")), lambda x: layers.Patches(4)(x)
    yield "PatchEncoder", lambda: (keras.Input((4, 48)), np.random.default_rng(0).normal(size=(2, 4, 48)).astype("float32")), lambda x: layers.PatchEncoder(16, 2)(x)
    yield "TransformerBlock", _tokens, lambda x: layers.TransformerBlock(2, 32)(x)
    yield "MLP", _tokens, lambda x: layers.MLP(32)(x)
    yield "SelfAttention", _tokens, lambda x: layers.SelfAttention(num_heads=2, key_dim=8)(x, x)
    yield "LayerNorm", _tokens, lambda x: layers.LayerNorm()(x)
    yield "DropPath", _tokens, lambda x: layers.DropPath(0.1)(x)
    yield "TokenPooling", _tokens, lambda x: layers.TokenPooling("gap")(x)


@pytest.mark.parametrize("name, inputs, apply", list(_cases()), ids=[case[0] for case in _cases()])
def test_a_layer_in_a_plain_functional_model_saves_and_reloads(name, inputs, apply, tmp_path):
    tensor, data = inputs()
    model = keras.Model(tensor, apply(tensor))
    for weight in model.weights:
        weight.assign(np.random.default_rng(1).normal(0, 0.3, weight.shape).astype(weight.dtype))
    expected = keras.ops.convert_to_numpy(model(data))
    layer = model.layers[-1]
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(data)), expected, atol=1e-6)
