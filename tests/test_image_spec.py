"""The model's input contract (ImageSpec): derived from the model, saved with it, and
followed by the training and evaluation pipelines."""

import numpy as np
import pytest

from conftest import tiny_vit

IMAGENET = dict(pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225))


def test_the_spec_comes_from_the_model_arguments_and_survives_a_keras_file(tmp_path):
    import keras

    import keras_vit

    model = tiny_vit(**IMAGENET, interpolation="bicubic", crop_fraction=0.875, crop_mode="center",
                     class_names=["a", "b", "c", "d", "e"])
    spec = model.image_spec
    assert (spec.image_size, spec.channels, spec.interpolation, spec.crop_fraction, spec.crop_mode) == (
        (16, 16), 3, "bicubic", 0.875, "center")
    assert spec.mean == IMAGENET["pixel_mean"] and spec.class_names == ("a", "b", "c", "d", "e")
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").image_spec == spec
    assert keras_vit.ImageSpec.from_dict(spec.to_dict()) == spec
    assert spec.data_config()["crop_pct"] == 0.875 and spec.data_config()["input_size"] == (3, 16, 16)


def test_normalisation_is_the_checkpoints_mean_and_std():
    spec = tiny_vit(**IMAGENET).image_spec
    pixels = np.array([[[[0.0, 128.0, 255.0]]]], "float32")
    expected = (pixels / 255 - np.array(IMAGENET["pixel_mean"])) / np.array(IMAGENET["pixel_std"])
    np.testing.assert_allclose(spec.normalize(pixels), expected, rtol=1e-6)
    np.testing.assert_allclose(spec.from_unit_range(pixels / 127.5 - 1), expected, rtol=1e-5, atol=1e-6)
    assert spec.input_range == pytest.approx((float(np.min(-np.array(IMAGENET["pixel_mean"]) / IMAGENET["pixel_std"])),
                                              float(np.max((1 - np.array(IMAGENET["pixel_mean"])) / IMAGENET["pixel_std"]))))
    default = tiny_vit().image_spec
    assert default.is_unit_range and default.from_unit_range(pixels) is pixels and default.input_range == (-1.0, 1.0)
    inside = tiny_vit(include_preprocessing=True).image_spec
    assert inside.input_range == (0.0, 255.0)
    np.testing.assert_allclose(inside.from_unit_range(pixels / 127.5 - 1), pixels, atol=1e-4)


@pytest.mark.parametrize("argument, value, words", [
    ("interpolation", "lanczos", "interpolation='lanczos'; expected 'bilinear' or 'bicubic'"),
    ("crop_fraction", 0, "crop_fraction=0; expected a number in (0, 1]"),
    ("crop_mode", "border", "crop_mode='border'; expected 'squash' or 'center'"),
])
def test_invalid_preprocessing_arguments_are_refused_by_name(argument, value, words):
    with pytest.raises(ValueError, match=r"^" + __import__("re").escape(words)):
        tiny_vit(**{argument: value})


def test_the_evaluation_pipeline_delivers_what_the_model_takes(tmp_path):
    """An image folder read through the pipelines with a model's spec gives the model's
    normalisation and the spec's resize and centre crop."""
    from PIL import Image

    from keras_vit import data

    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    spec = tiny_vit(**IMAGENET, crop_fraction=0.5, crop_mode="center").image_spec
    datasets = data.image_folder(str(tmp_path), 2, validation_directory=str(tmp_path), image_size=16,
                                 image_spec=spec, seed=0)
    images, _ = next(iter(datasets.validation))
    first = np.asarray(Image.open(sorted((tmp_path / "cat").iterdir())[0]).convert("RGB"), "float32")
    # centre mode: shorter side 24 -> floor(16 / 0.5) = 32, so 24x40 -> 32x53, centre 16x16
    import tensorflow as tf

    resized = tf.image.resize(first, (32, 53), method="bilinear").numpy()
    crop = np.clip(resized[8:24, 18:34], 0, 255)
    np.testing.assert_allclose(images[0].numpy(), spec.normalize(crop), atol=1e-4)
    train_images, _ = next(iter(datasets.train))
    assert float(np.min(train_images)) < -1.5  # ImageNet-normalised, not [-1, 1]
