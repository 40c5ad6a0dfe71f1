"""Model builders: the paper's family, every option, serialization, bad input (any backend)."""

import os

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit.core.models import VisionTransformer, forward_flops
from keras_vit.zoo import builders

BUILDERS = builders(hybrids=False)

# Parameter counts of the original models (1000 classes, 224x224), from the reference README.
ORIGINAL_PARAMS = {
    "Ti/16": 5_717_416,
    "S/16": 22_050_664,
    "S/32": 22_878_952,
    "B/8": 86_576_872,
    "B/16": 86_567_656,
    "B/32": 88_224_232,
    "L/16": 304_326_632,
    "L/32": 306_535_400,
    "H/14": 632_045_800,
}

TINY = dict(hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32)


def tiny(**kwargs):
    arguments = dict(image_size=16, patch_size=4, num_classes=5, **TINY)
    arguments.update(kwargs)
    return VisionTransformer(**arguments)


def images(model, batch=2, seed=0):
    h, w = model.image_size
    return np.random.default_rng(seed).uniform(-1, 1, (batch, h, w, model.channels)).astype("float32")


@pytest.mark.parametrize(
    "variant",
    # The three largest build 300-630M parameters: seconds each, more on JAX.
    [pytest.param(v, marks=pytest.mark.slow) if v in ("L/16", "L/32", "H/14") else v for v in ORIGINAL_PARAMS],
)
def test_variant_parameter_count_and_output_shape(variant):
    model = BUILDERS[variant]()
    assert model.count_params() == ORIGINAL_PARAMS[variant]
    assert tuple(model.output.shape) == (None, 1000)
    assert tuple(model.input.shape) == (None, 224, 224, 3)
    keras.backend.clear_session()


def test_b16_at_384_parameter_count():
    assert keras_vit.ViTB16(image_size=384).count_params() == 86_859_496


def test_imagenet21k_shape_with_representation_layer():
    model = keras_vit.ViTB16(num_classes=21843, representation_size=768)
    assert model.count_params() == 103_186_515


def test_vitb16_num_classes_10_works_as_written():
    model = keras_vit.ViTB16(num_classes=10)
    assert model.name == "vit_b16"
    assert tuple(model.output.shape) == (None, 10)
    assert (model.hidden_size, model.num_layers, model.num_heads, model.mlp_dim, model.patch_size) == (
        768, 12, 12, 3072, (16, 16)
    )


def test_b16_forward_flops_match_the_known_figure():
    # 17.56 GMACs for ViT-B/16 at 224 (timm, fvcore): 2 FLOPs per multiply-accumulate.
    assert forward_flops(keras_vit.ViTB16()) / 2e9 == pytest.approx(17.56, rel=0.01)


@pytest.mark.parametrize(
    "options, output_shape",
    [
        (dict(), (2, 5)),
        (dict(pooling="gap"), (2, 5)),
        (dict(include_top=False), (2, 16)),
        (dict(include_top=False, representation_size=12), (2, 12)),
        (dict(representation_size=12), (2, 5)),
        (dict(channels=1), (2, 5)),
        (dict(image_size=(16, 24)), (2, 5)),
        (dict(image_size=(16, 24), patch_size=(4, 8)), (2, 5)),
        (dict(position_embedding="learned_2d", image_size=(8, 16)), (2, 5)),
        (dict(position_embedding="sincos2d", pooling="gap"), (2, 5)),
        (dict(position_embedding="none"), (2, 5)),
        (dict(dropout=0.1, attention_dropout=0.1, drop_path_rate=0.1), (2, 5)),
        (dict(classifier_activation="softmax"), (2, 5)),
    ],
)
def test_options_output_shapes(options, output_shape):
    model = tiny(**options)
    outputs = keras.ops.convert_to_numpy(model(images(model)))
    assert outputs.shape == output_shape
    if options.get("classifier_activation") == "softmax":
        np.testing.assert_allclose(outputs.sum(axis=1), 1.0, atol=1e-5)


def test_head_is_zero_initialised_and_returns_logits():
    model = tiny()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("head").kernel), 0.0)
    assert model.get_layer("head").activation.__name__ == "linear"


def test_include_top_false_is_the_pooled_normed_representation():
    model = tiny(pooling="gap", include_top=False)
    x = images(model)
    normed = keras.Model(model.input, model.get_layer("encoder_norm").output)(x)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x)), keras.ops.convert_to_numpy(normed).mean(axis=1), atol=1e-6
    )


def test_drop_path_rises_linearly_over_blocks():
    model = tiny(num_layers=3, drop_path_rate=0.2)
    rates = [model.get_layer(f"encoderblock_{i}").drop_path_rate for i in range(3)]
    assert rates == pytest.approx([0.0, 0.1, 0.2])


def test_config_round_trip():
    model = tiny(representation_size=8, pooling="gap", image_size=(16, 24), dropout=0.1)
    config = model.get_config()
    clone = VisionTransformer.from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(model)
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config


def test_keras_file_round_trip_gives_equal_outputs(tmp_path):
    model = tiny(representation_size=8)
    # Randomise everything (the head starts at zero) so that a lost weight shows.
    for weight in model.weights:
        weight.assign(np.random.default_rng(len(weight.path)).normal(size=weight.shape))
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, VisionTransformer)
    assert loaded.get_config() == model.get_config()
    x = images(model)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )


def test_mixed_precision_keeps_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny()
        outputs = model(images(model))
        assert model.get_layer("encoderblock_0").compute_dtype == "bfloat16"
        assert keras.backend.standardize_dtype(outputs.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # The policy is part of the config: the model rebuilds as mixed precision.
    clone = VisionTransformer.from_config(model.get_config())
    assert clone.get_layer("encoderblock_0").compute_dtype == "bfloat16"
    assert clone.get_layer("head").compute_dtype == "float32"
    assert tiny(dtype="mixed_bfloat16").get_layer("encoder_norm").dtype_policy.name == "mixed_bfloat16"


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "options, message",
    [
        (dict(image_size=30), r"image_size=30 is not divisible by the patch size 4x4; expected height and width "
                             r"multiples of 4x4 \(e.g. 32x32\)"),
        (dict(image_size=(16, 18)), r"image_size=\(16, 18\) is not divisible"),
        (dict(pooling="max"), r"pooling='max'; expected 'token' or 'gap'"),
        (dict(position_embedding="rope"), r"position_embedding='rope'; expected 'learned' or 'learned_2d' or"),
        (dict(num_classes=0), r"num_classes must be a positive integer when include_top=True; got 0"),
        (dict(num_classes=None), r"num_classes must be a positive integer when include_top=True; got None"),
        (dict(channels=0), r"channels=0; expected a positive integer \(3 for RGB, 1 for grayscale\)"),
        (dict(num_layers=0), r"num_layers=0; expected a positive integer"),
        (dict(num_heads=0), r"num_heads=0; expected a positive integer"),
        (dict(num_heads=3), r"num_heads=3; expected a divisor of hidden_size=16"),
        (dict(hidden_size=-16), r"hidden_size=-16; expected a positive integer"),
        (dict(mlp_dim=True), r"mlp_dim=True; expected a positive integer"),
        (dict(dropout=1.0), r"dropout=1.0; expected a number in \[0, 1\)"),
        (dict(representation_size=0), r"representation_size=0; expected a positive integer or None"),
        (dict(image_size="big"), r"`image_size` must be an int or a pair of ints"),
    ],
)
def test_bad_arguments_raise_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        tiny(**options)


def test_unknown_variant_names_value_and_choices():
    with pytest.raises(ValueError, match=r"Unknown variant 'X/16'.*\['Ti', 'S', 'B', 'L', 'H'\]"):
        keras_vit.ViT("X/16")


def test_num_classes_zero_is_fine_without_top():
    assert tuple(tiny(num_classes=0, include_top=False).output.shape) == (None, 16)


def test_wrong_channel_count_at_call_time():
    model = tiny()
    with pytest.raises(ValueError, match=r"expects images of shape \(batch, 16, 16, 3\) \(3 channels\).*received shape \(2, 16, 16, 1\)"):
        model(np.zeros((2, 16, 16, 1), "float32"))


def test_wrong_image_size_at_call_time():
    model = tiny()
    with pytest.raises(ValueError, match=r"expected shape=\(None, 16, 16, 3\), found shape=\(2, 20, 20, 3\)"):
        model(np.zeros((2, 20, 20, 3), "float32"))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(drop_path=0.1), r"'drop_path' \(did you mean 'drop_path_rate'\?\)"),
        (dict(hiden_size=999), r"'hiden_size' \(did you mean 'hidden_size'\?\)"),
        (dict(classes=5), r"'classes' \(keras.applications' name; keras_vit takes num_classes=\)"),
        (dict(input_shape=(64, 64, 3)), r"'input_shape' \(keras.applications' name; keras_vit takes image_size="),
        (dict(input_tensor=None), r"'input_tensor' \(keras.applications' name"),
    ],
)
def test_misspelled_or_foreign_builder_arguments_are_refused_by_name(arguments, message):
    # A typo must not build a model without the option asked for (no stochastic depth, ...).
    with pytest.raises(TypeError, match=r"ViT\(\) got unexpected keyword argument\(s\) " + message):
        keras_vit.ViTTi16(num_classes=3, image_size=32, **arguments)
    with pytest.raises(TypeError, match=r"VisionTransformer\(\) got unexpected keyword argument\(s\) " + message):
        tiny(**arguments)


@pytest.mark.parametrize(
    "arguments, message",
    [(dict(num_classes=True), "num_classes must be a positive integer"), (dict(include_top="no"), "include_top='no'")],
)
def test_booleans_and_integers_are_not_confused(arguments, message):
    with pytest.raises(ValueError, match=message):
        tiny(**arguments)


@pytest.mark.parametrize(
    "pattern, hybrids, expected",
    [
        ("vit_*", False, ["Ti/16", "S/16", "S/32", "B/8", "B/16", "B/32", "L/16", "L/32", "H/14"]),  # timm's names
        ("*b16*", True, ["B/16", "R50+B/16"]),  # the builders ViTB16 and ViTR50_B16
        ("vit_base_*", True, ["B/8", "B/16", "B/32", "R26+B/32", "R50+B/16"]),
        ("B/*", True, ["B/8", "B/16", "B/32"]),
        ("VIT-L/*", True, ["L/16", "L/32"]),  # case-insensitive, the model's name ViT-L/16
        (["*/14", "vit_tiny_*"], True, ["Ti/16", "H/14", "R+Ti/16"]),  # any of several patterns, in table order
        ("deit_*", True, []),
        ("", False, ["Ti/16", "S/16", "S/32", "B/8", "B/16", "B/32", "L/16", "L/32", "H/14"]),
    ],
)
def test_list_models_takes_a_name_pattern_as_timm(pattern, hybrids, expected):
    assert keras_vit.list_models(pattern, hybrids=hybrids) == expected
    assert keras_vit.list_models(filter=pattern, hybrids=hybrids) == expected


def test_list_models_refuses_the_old_positional_boolean_naming_the_keyword():
    with pytest.raises(TypeError, match=r"list_models\(filter=False\): expected a name pattern .*list_models\(hybrids=False\)"):
        keras_vit.list_models(False)


def test_list_models_list_weights_and_data_config_come_from_the_registry():
    assert keras_vit.list_models(hybrids=False) == ["Ti/16", "S/16", "S/32", "B/8", "B/16", "B/32", "L/16", "L/32", "H/14"]
    assert keras_vit.list_models()[-1] == "R50+L/32"
    assert keras_vit.list_weights("L/32") == ["imagenet21k", "imagenet21k+imagenet2012"]
    assert set(keras_vit.list_weights()) == {v for v in keras_vit.list_models() if keras_vit.published_weights(v)}
    config = keras_vit.data_config("B/16", "imagenet21k+imagenet2012")
    assert (config["image_size"], config["num_classes"], config["interpolation"]) == ((384, 384), 1000, "bilinear")
    assert config["mean"] == config["std"] == (0.5, 0.5, 0.5)  # x / 127.5 - 1
    assert keras_vit.data_config("Ti/16", "augreg_in21k")["num_classes"] == 21843
    with pytest.raises(ValueError, match=r"No published weights 'imagenet21k' for ViT-Ti/16; available: "
                                         r"\['augreg_in21k', 'augreg_in21k_ft_in1k'\]"):
        keras_vit.data_config("Ti/16", "imagenet21k")


def test_integer_pixels_are_refused_with_the_scaling_to_apply():
    # uint8 images were once accepted as they are and misclassified without a word.
    model = tiny()
    pixels = np.full((2, 16, 16, 3), 200, "uint8")
    with pytest.raises(ValueError, match=r"takes float images scaled to \[-1, 1\]; received uint8 pixels. Scale them "
                                         r"with keras_vit.preprocess_input"):
        model(pixels)
    with pytest.raises(ValueError, match="received uint8 pixels"):
        model.predict(pixels, verbose=0)
    np.testing.assert_allclose(model(keras_vit.preprocess_input(pixels)), model(pixels / 127.5 - 1.0), atol=1e-6)
