"""Every public layer passes Keras's own layer-test harness, ``TestCase.run_layer_test``.

The harness that Keras and keras-hub run over their layers: a ``get_config`` ->
``from_config`` and ``serialize`` -> ``deserialize`` round trip, ``build`` from a shape, a
symbolic call, an eager call, one compiled training step and a ``mixed_float16`` call whose
outputs are float16 and weights float32. The layers come from the package itself (what
``keras_vit`` and ``keras_vit.core`` export, and every public layer class defined in
``keras_vit.core``), so a new layer fails here until it has a row in ``CASES``.
"""

import importlib
import inspect
import pkgutil

import keras
import numpy as np
import pytest
from keras.src.testing import TestCase

import keras_vit
import keras_vit.core

# Layer name -> [(case id, constructor arguments, input shape, expected output shape,
# expected trainable weights or None)]. A dict of shapes is a layer with several inputs,
# keyed ``<call argument>_shape`` as the harness wants.
CASES = {
    "Patches": [
        ("flat", dict(patch_size=4), (2, 8, 8, 3), (2, 4, 48), 0),
        ("grid", dict(patch_size=(2, 4), flatten=False), (2, 8, 8, 3), (2, 4, 2, 24), 0),
    ],
    "PatchEncoder": [
        ("class_token", dict(hidden_size=8, grid_size=2), (2, 4, 12), (2, 5, 8), 4),  # kernel, bias, cls, pos
        (
            "prefix_tokens_learned_2d",
            dict(hidden_size=8, grid_size=(2, 3), distillation_token=True, num_register_tokens=2,
                 position_embedding="learned_2d"),
            (2, 6, 12), (2, 10, 8), 7,  # kernel, bias, cls, dist, registers, rows, columns
        ),
        ("sincos2d", dict(hidden_size=8, grid_size=2, position_embedding="sincos2d", use_class_token=False),
         (2, 4, 12), (2, 4, 8), 2),
        ("resampled", dict(hidden_size=8, grid_size=2, position_resampling="bicubic"), (2, 3, 3, 12), (2, 10, 8), 4),
    ],
    "DropPath": [("rate", dict(rate=0.5, seed=1), (2, 5, 8), (2, 5, 8), 0)],
    "LayerNorm": [("default", dict(), (2, 5, 8), (2, 5, 8), 2)],
    "MLP": [("exact_gelu", dict(mlp_dim=16, dropout=0.1, gelu="exact"), (2, 5, 8), (2, 5, 8), 4)],
    "SelfAttention": [("query_only", dict(num_heads=2, key_dim=4), (2, 5, 8), (2, 5, 8), 8)],
    "TransformerBlock": [
        ("default", dict(num_heads=2, mlp_dim=16), (2, 5, 8), (2, 5, 8), 16),  # 2 norms x 2, attention 8, MLP 4
        ("layer_scale", dict(num_heads=2, mlp_dim=16, dropout=0.1, attention_dropout=0.1, drop_path_rate=0.1,
                             gelu="exact", layer_scale_init=1e-5), (2, 5, 8), (2, 5, 8), 18),
    ],
    "TokenPooling": [
        ("token", dict(pooling="token", token_index=1), (2, 5, 8), (2, 8), 0),
        ("gap", dict(pooling="gap", num_prefix_tokens=2), (2, 5, 8), (2, 8), 0),
    ],
    "PixelNormalization": [
        ("imagenet", dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), (2, 4, 4, 3), (2, 4, 4, 3), 0),
    ],
    "TokenGrid": [
        ("class_token", dict(num_prefix_tokens=1, stride=4), {"tokens_shape": (2, 5, 8), "images_shape": (2, 8, 8, 3)},
         (2, 2, 2, 8), 0),
    ],
    "StdConv2D": [("3x3", dict(filters=4, kernel_size=3, padding="same", use_bias=False), (2, 8, 8, 3), (2, 8, 8, 4), 1)],
    "BottleneckUnit": [
        # Group norm takes 32 groups, so 32 features is the narrowest unit.
        ("projected", dict(features=32, strides=2), (2, 8, 8, 64), (2, 4, 4, 128), 12),  # 4 convs, 4 norms x 2
        ("identity", dict(features=32), (2, 4, 4, 128), (2, 4, 4, 128), 9),  # 3 convs, 3 norms x 2
    ],
}


def _is_layer(value):
    return inspect.isclass(value) and issubclass(value, keras.layers.Layer) and not issubclass(value, keras.Model)


def public_layers():
    """Name -> class of every layer the package exports or defines publicly in keras_vit.core."""
    found = {}
    for package in (keras_vit, keras_vit.core):
        found.update((name, getattr(package, name)) for name in package.__all__ if _is_layer(getattr(package, name)))
    for module_info in pkgutil.iter_modules(keras_vit.core.__path__, "keras_vit.core."):
        module = importlib.import_module(module_info.name)
        found.update(
            (name, value) for name, value in vars(module).items()
            if not name.startswith("_") and _is_layer(value) and value.__module__ == module.__name__
        )
    return found


LAYERS = public_layers()


class _Harness(TestCase):
    def runTest(self):  # unittest wants one test method; the harness's methods are what is used
        pass


@pytest.fixture
def harness():
    case = _Harness()
    case.setUp()  # clears Keras's global state, as between Keras's own tests
    return case


def _cases():
    for name in sorted(LAYERS):
        for case_id, *arguments in CASES.get(name, [(None, None, None, None, None)]):
            yield pytest.param(name, case_id, *arguments, id=f"{name}-{case_id}")


def test_every_public_layer_has_a_harness_case():
    assert sorted(LAYERS) == sorted(CASES), "add a row to CASES for each new public layer"
    assert {"SelfAttention", "TokenGrid", "BottleneckUnit", "StdConv2D", "PixelNormalization"} <= set(LAYERS)


def test_every_layer_defined_in_the_core_is_exported_by_keras_vit_core():
    assert sorted(LAYERS) == sorted(name for name in keras_vit.core.__all__ if _is_layer(getattr(keras_vit.core, name)))


@pytest.mark.parametrize("name, case_id, init_kwargs, input_shape, output_shape, num_trainable", list(_cases()))
def test_layer_passes_the_keras_harness(harness, name, case_id, init_kwargs, input_shape, output_shape, num_trainable):
    assert case_id is not None, f"{name} has no row in CASES"
    several_inputs = isinstance(input_shape, dict)
    harness.run_layer_test(
        LAYERS[name],
        init_kwargs,
        input_shape=input_shape,
        expected_output_shape=output_shape,
        expected_num_trainable_weights=num_trainable,
        # The harness's training step hands a dict of inputs over as one positional argument,
        # which no layer of several inputs takes (Keras's own MultiHeadAttention test turns it
        # off too); those layers train in a functional model below instead.
        run_training_check=not several_inputs,
    )
    if several_inputs:
        _train_one_step(LAYERS[name](**init_kwargs), input_shape, output_shape)


def _train_one_step(layer, input_shapes, output_shape):
    """One SGD step of a functional model around a layer of several inputs; checks the loss."""
    names = {key: key.removesuffix("_shape") for key in input_shapes}
    inputs = {names[key]: keras.Input(batch_shape=shape, name=names[key]) for key, shape in input_shapes.items()}
    model = keras.Model(inputs, layer(**inputs))
    model.compile(optimizer="sgd", loss=lambda y_true, y_pred: keras.ops.sum(y_pred))
    rng = np.random.default_rng(0)
    data = {key: rng.uniform(size=tensor.shape).astype("float32") for key, tensor in inputs.items()}
    history = model.fit(data, np.zeros(output_shape, "float32"), batch_size=output_shape[0], verbose=0)
    assert model.output.shape == output_shape
    assert np.isfinite(history.history["loss"][0])


def test_self_attention_called_on_the_query_alone_equals_keras_attention_of_the_query_to_itself():
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    attention = keras_vit.SelfAttention(num_heads=2, key_dim=4)
    outputs = attention(x)  # builds from the query's shape alone
    reference = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    reference(x, x)
    reference.set_weights(attention.get_weights())
    np.testing.assert_allclose(outputs, reference(x, x), atol=1e-5)


def test_token_grid_names_the_token_count_it_cannot_lay_out():
    layer = keras_vit.TokenGrid(num_prefix_tokens=1, stride=4)
    with pytest.raises(ValueError, match=r"received 6 tokens .*\(8, 8\) pixels.*5 in all"):
        layer(keras.Input(batch_shape=(2, 6, 8)), keras.Input(batch_shape=(2, 8, 8, 3)))


def test_mixed_precision_bottleneck_unit_computes_in_float16_and_keeps_float32_weights():
    unit = keras_vit.core.BottleneckUnit(32, strides=2, dtype="mixed_float16")
    outputs = unit(np.ones((1, 8, 8, 64), "float32"))
    assert keras.backend.standardize_dtype(outputs.dtype) == "float16"
    assert {keras.backend.standardize_dtype(w.dtype) for w in unit.weights} == {"float32"}
