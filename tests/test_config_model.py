"""The one model configuration: VisionTransformerConfig states every builder argument, its
default and its check; the builder's signature, get_config, the training section and
the training checks are read from it."""

import dataclasses
import inspect

import pytest

from keras_vit.core.config import ARGUMENT_NAMES, VisionTransformerConfig, check_architecture
from keras_vit.core.image_spec import ImageSpec
from keras_vit.core.models import CONSTRUCTOR_ARGUMENTS, VisionTransformer
from keras_vit.training.config import ModelConfig, TrainConfig
from keras_vit.training.resolution import resolve_config

TINY = dict(image_size=16, patch_size=4, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, num_classes=3)


def test_configuration_is_normalised_once_and_frozen():
    config = VisionTransformerConfig(**{**TINY, "image_size": [32, 48], "resnet": [[2], 1], "pixel_mean": [0, 0.5, 1],
                                        "class_names": ["a", "b", "c"]})
    assert config.image_size == (32, 48) and config.patch_size == (4, 4)
    assert config.resnet == ((2,), 1.0) and config.stem_stride == 4
    assert config.grid_size == (2, 3)  # 32x48 pixels, 4x4 patches on a stride-4 feature map
    assert config.pixel_mean == (0.0, 0.5, 1.0) and config.pixel_std == (0.5, 0.5, 0.5)
    assert config.class_names == ("a", "b", "c") and config.to_dict()["class_names"] == ["a", "b", "c"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden_size = 32
    assert VisionTransformerConfig(**config.to_dict()) == config  # a saved copy reads back equal


def test_builder_signature_and_get_config_are_the_configuration():
    fields = dataclasses.fields(VisionTransformerConfig)
    parameters = inspect.signature(VisionTransformer).parameters
    assert list(parameters) == [field.name for field in fields] + ["dtype", "name"]
    assert all(parameters[field.name].default == field.default for field in fields)
    assert CONSTRUCTOR_ARGUMENTS == ARGUMENT_NAMES | {"dtype", "name", "trainable"}
    model = VisionTransformer(**TINY, drop_path_rate=0.1, class_names=["x", "y", "z"], name="tiny")
    saved = model.get_config()
    assert (saved.pop("dtype"), saved.pop("name")) == ("float32", "tiny")
    assert saved == model.model_config.to_dict() == check_architecture(**saved).to_dict()
    assert model.hidden_size == 16 and model.grid_size == (4, 4) and model.class_names == ("x", "y", "z")


def test_training_model_section_is_derived_from_the_builder_fields():
    section = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
    builder = {field.name: field.default for field in dataclasses.fields(VisionTransformerConfig)}
    assert set(section) - set(builder) == {"variant", "weights", "name"}
    assert section["dropout"] == builder["dropout"] and section["drop_path_rate"] == builder["drop_path_rate"]
    assert all(section[name] is None for name in section if name not in ("dropout", "drop_path_rate"))
    assert ModelConfig(gelu="exact", pooling=None).builder_arguments() == {"gelu": "exact", "dropout": 0.0,
                                                                          "drop_path_rate": 0.0}


def test_builder_and_training_refuse_an_indivisible_size_in_the_same_words():
    with pytest.raises(ValueError) as built:
        VisionTransformer(**{**TINY, "image_size": 30})
    with pytest.raises(ValueError) as trained:
        resolve_config(TrainConfig(image_size=30, patch_size=4))
    assert str(built.value) == (
        "image_size=30 is not divisible by the patch size 4x4; expected height and width multiples of 4x4 (e.g. 32x32)."
    )
    assert str(trained.value) == "Invalid configuration: " + str(built.value)


@pytest.mark.parametrize(
    "fields, message",
    [
        # Checked before a run folder is made, as the builder would refuse them at the end.
        (dict(variant="R50+B/16", image_size=40), r"image_size=40 is not divisible by the patch size 1x1 times the "
                                                  r"ResNet stem's stride 16; expected .* multiples of 16x16"),
        (dict(gelu="erf"), r"gelu='erf'; expected 'tanh' or 'exact'"),
        (dict(layer_scale_init=-1.0), r"layer_scale_init=-1.0; expected None or a positive number"),
        (dict(resnet=[3, 4]), r"resnet=\[3, 4\]; expected None or \(stage sizes, width factor\)"),
    ],
)
def test_training_checks_every_builder_field_it_holds(fields, message):
    with pytest.raises(ValueError, match="Invalid configuration: " + message):
        resolve_config(TrainConfig(**fields))


def test_image_spec_from_arguments_matches_the_built_model():
    arguments = dict(TINY, pixel_mean=[0.485, 0.456, 0.406], pixel_std=[0.229, 0.224, 0.225], crop_fraction=0.875,
                     interpolation="bicubic", include_preprocessing=True)
    spec = ImageSpec.from_model_arguments(**arguments, name="ignored", variant=None)
    assert spec == VisionTransformer(**arguments).image_spec
    assert (spec.image_size, spec.mean, spec.pixels_inside, spec.crop_fraction) == (
        (16, 16), (0.485, 0.456, 0.406), True, 0.875)
