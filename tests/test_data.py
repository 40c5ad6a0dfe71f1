"""tf.data pipelines of keras_vit.data over the embedded digits, real image folders and a real TFDS builder."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_vit import data

# --------------------------------------------------------------------------- helpers


def _write_image(path, value, size=(40, 48), channels=3, fmt="png"):
    """A flat image of one grey level, so its class can be read back from the pixels."""
    image = tf.fill([size[0], size[1], channels], tf.constant(value, tf.uint8))
    encoded = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image, quality=95)
    tf.io.write_file(str(path), encoded)


def _make_folder(root, per_class=6):
    """``root/dark`` (level 20) and ``root/bright`` (level 230), JPEG and PNG mixed, one grayscale PNG."""
    for name, value in (("bright", 230), ("dark", 20)):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            fmt = "jpg" if i % 2 else "png"
            _write_image(root / name / f"{i:03d}.{fmt}", value, fmt="jpeg" if fmt == "jpg" else "png")
    _write_image(root / "dark" / "gray.png", 20, channels=1)
    return root


def _batches(dataset):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset]


# --------------------------------------------------------------------------- embedded MNIST


def test_embedded_mnist_batches_have_shape_dtype_and_range():
    datasets = data.embedded_mnist(batch_size=100, seed=1)
    assert (datasets.train_examples, datasets.validation_examples, datasets.num_classes) == (4000, 1000, 10)
    assert datasets.class_names == data.MNIST_CLASS_NAMES
    images, labels = next(iter(datasets.train))
    assert images.shape == (100, 28, 28, 1) and images.dtype == tf.float32
    assert labels.shape == (100, 10) and labels.dtype == tf.float32
    assert -1.0 <= float(tf.reduce_min(images)) < -0.99 and 0.99 < float(tf.reduce_max(images)) <= 1.0
    np.testing.assert_array_equal(labels.numpy().sum(axis=1), np.ones(100))


def test_embedded_mnist_validation_is_the_fixed_split_scaled_to_minus_one_one():
    (_, _), (x_val, y_val) = data.load_embedded_mnist()
    batches = _batches(data.embedded_mnist(batch_size=256).validation)
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert images.shape == (1000, 28, 28, 1)
    np.testing.assert_allclose(images[..., 0], x_val / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(labels.argmax(axis=1), y_val)


def test_embedded_mnist_as_rgb_at_another_size():
    datasets = data.embedded_mnist(batch_size=8, image_size=32, channels=3)
    images, _ = next(iter(datasets.validation))
    assert images.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(images[..., 0], images[..., 2])


def test_translate_crop_keeps_the_digit_and_shifts_it():
    (x_train, _), _ = data.load_embedded_mnist()
    digit = tf.constant(x_train[0][..., None])
    tf.random.set_seed(3)
    shifted = [data.preprocess_for_train(digit, image_size=28, channels=1, crop="translate", flip=False) for _ in range(8)]
    original = x_train[0] / 127.5 - 1.0
    assert all(s.shape == (28, 28, 1) for s in shifted)
    assert any(not np.allclose(s.numpy()[..., 0], original) for s in shifted)
    # A shift of at most 3 pixels only drops a thin border, where MNIST digits have little ink.
    ink = (original + 1).sum()
    assert all((s.numpy() + 1).sum() > 0.8 * ink for s in shifted)


def test_inception_crop_and_centre_crop_give_the_requested_size():
    image = tf.cast(tf.random.uniform((60, 80, 3), 0, 256, dtype=tf.int32), tf.uint8)
    crop = data.preprocess_for_train(image, image_size=32, crop="inception", flip=True)
    assert crop.shape == (32, 32, 3) and -1.0 <= float(tf.reduce_min(crop)) and float(tf.reduce_max(crop)) <= 1.0
    # A centre crop of 0.5 of a frame (white border, black centre) sees only the centre
    # (a centre 2 pixels wider than the crop: the resize antialiases as PIL's does).
    frame = np.full((64, 64, 3), 255, np.uint8)
    frame[14:50, 14:50] = 0
    centre = data.preprocess_for_eval(tf.constant(frame), image_size=16, crop_fraction=0.5)
    np.testing.assert_allclose(centre.numpy(), -1.0, atol=1e-6)
    whole = data.preprocess_for_eval(tf.constant(frame), image_size=16)
    assert float(tf.reduce_max(whole)) == 1.0


def test_randaugment_mixup_and_cutmix_from_keras():
    datasets = data.embedded_mnist(batch_size=32, channels=3, randaugment=(2, 0.5), mixup=0.8, cutmix=1.0, seed=0)
    images, labels = next(iter(datasets.train))
    assert images.shape == (32, 28, 28, 3) and images.dtype == tf.float32
    assert float(tf.reduce_min(images)) >= -1.0 - 1e-5 and float(tf.reduce_max(images)) <= 1.0 + 1e-5
    labels = labels.numpy()
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert ((labels > 0.01) & (labels < 0.99)).any(), "mixing must give soft labels"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(channels=2), "channels=2; expected 1 (grayscale) or 3 (RGB)"),
        (dict(crop="random"), "crop='random'; expected one of ['inception', 'translate', 'none']"),
        (dict(batch_size=0), "batch_size=0; expected a positive integer"),
        (dict(image_size=(28,)), "image_size=(28,); expected an int or (height, width)"),
        (dict(randaugment=(0, 0.5)), "randaugment=(0, 0.5); expected null or [num_ops >= 1"),
        (dict(mixup=-1.0), "mixup=-1.0; expected null or a positive number"),
        (dict(eval_crop_fraction=1.5), "eval_crop_fraction=1.5; expected a number in (0, 1]"),
        (dict(flip="yes"), "flip='yes'; expected true or false"),
    ],
)
def test_invalid_pipeline_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        data.embedded_mnist(**{"batch_size": 8, **kwargs})


# --------------------------------------------------------------------------- image folders


def test_image_folder_skips_corrupt_and_non_image_files_by_name(tmp_path, capsys):
    root = _make_folder(tmp_path / "images")
    (root / "dark" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))  # JPEG header, garbage body
    (root / "bright" / "notes.txt").write_text("not an image")
    png = (root / "bright" / "000.png").read_bytes()
    (root / "bright" / "truncated.png").write_bytes(png[: len(png) // 2])

    paths, labels, class_names, skipped = data.scan_image_folder(str(root))
    assert class_names == ["bright", "dark"]
    assert len(paths) == 13 and labels.count(0) == 6 and labels.count(1) == 7
    assert sorted(os.path.basename(p) for p, _ in skipped) == ["broken.jpg", "notes.txt", "truncated.png"]
    err = capsys.readouterr().err
    assert "Skipped 3 of 16 files" in err and "broken.jpg" in err and "notes.txt" in err

    datasets = data.image_folder(str(root), batch_size=4, image_size=32, validation_fraction=0.34, seed=0)
    assert sorted(os.path.basename(p) for p in datasets.skipped_files) == ["broken.jpg", "notes.txt", "truncated.png"]
    assert datasets.train_examples + datasets.validation_examples == 13 and datasets.validation_examples == 4
    # A whole epoch runs through (no decode error mid-epoch), with the expected batches.
    train_batches = _batches(datasets.train)
    assert len(train_batches) == datasets.train_examples // 4
    for images, labels in train_batches:
        assert images.shape == (4, 32, 32, 3) and images.dtype == np.float32 and labels.shape == (4, 2)
        assert images.min() >= -1.0 and images.max() <= 1.0
    # Evaluation pixels give the class back: bright folder (label 0) > 0 > dark folder (label 1).
    for images, labels in _batches(datasets.validation):
        brightness = images.mean(axis=(1, 2, 3))
        np.testing.assert_array_equal(labels.argmax(axis=1), (brightness < 0).astype(int))


def test_image_folder_with_validation_folder_and_grayscale_model(tmp_path):
    train_root = _make_folder(tmp_path / "train", per_class=4)
    val_root = _make_folder(tmp_path / "val", per_class=2)
    datasets = data.image_folder(
        str(train_root), batch_size=3, validation_directory=str(val_root), image_size=16, channels=1, crop="none"
    )
    assert (datasets.train_examples, datasets.validation_examples) == (9, 5)
    images, labels = next(iter(datasets.validation))
    assert images.shape == (3, 16, 16, 1)
    np.testing.assert_allclose(images.numpy()[labels.numpy().argmax(1) == 1], 20 / 127.5 - 1, atol=0.02)


def test_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        data.image_folder(str(tmp_path / "missing"))
    (tmp_path / "flat").mkdir()
    _write_image(tmp_path / "flat" / "a.png", 1)
    with pytest.raises(ValueError, match="has no sub-folders; expected one sub-folder per class"):
        data.image_folder(str(tmp_path / "flat"))
    (tmp_path / "junk" / "cat").mkdir(parents=True)
    (tmp_path / "junk" / "cat" / "a.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="holds no readable JPEG, PNG, BMP or GIF image"):
        data.image_folder(str(tmp_path / "junk"))
    _make_folder(tmp_path / "small", per_class=2)
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        data.image_folder(str(tmp_path / "small"), batch_size=64)
    # One class trains to a loss of 0 and "succeeds"; a class of one image leaves nothing to validate on.
    (tmp_path / "one_class" / "cat").mkdir(parents=True)
    for index in range(4):
        _write_image(tmp_path / "one_class" / "cat" / f"{index}.png", index)
    with pytest.raises(ValueError, match="has one class folder \('cat'\); a classifier needs at least two"):
        data.image_folder(str(tmp_path / "one_class"), batch_size=2)
    (tmp_path / "one_class" / "dog").mkdir()
    _write_image(tmp_path / "one_class" / "dog" / "0.png", 9)
    with pytest.raises(ValueError, match="Class 'dog' of .* has 1 readable image\(s\); holding out a validation share"):
        data.image_folder(str(tmp_path / "one_class"), batch_size=2)


# --------------------------------------------------------------------------- TFDS


class LocalShades(tfds.core.GeneratorBasedBuilder):
    """A real TFDS builder over image files on disk (``SOURCE`` is set by the test)."""

    VERSION = tfds.core.Version("1.0.0")
    SOURCE = None
    # TFDS looks for metadata files next to the builder's package; a test module has none.
    pkg_dir_path = tfds.core.Path(os.path.dirname(__file__))

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(names=["bright", "dark"])}
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples("train"), "test": self._generate_examples("val")}

    def _generate_examples(self, split):
        for label in ("bright", "dark"):
            folder = os.path.join(self.SOURCE, split, label)
            for name in sorted(os.listdir(folder)):
                yield f"{label}/{name}", {"image": os.path.join(folder, name), "label": label}


def test_tfds_dataset_from_a_real_builder_over_local_files(tmp_path):
    for split, per_class in (("train", 5), ("val", 3)):
        root = tmp_path / "source" / split
        for name, value in (("bright", 230), ("dark", 20)):
            (root / name).mkdir(parents=True)
            for i in range(per_class):
                _write_image(root / name / f"{i}.png", value)
    LocalShades.SOURCE = str(tmp_path / "source")
    data_dir = str(tmp_path / "tfds")

    with pytest.raises(FileNotFoundError, match="'local_shades' is not prepared in .*--download"):
        data.tfds_dataset("local_shades", data_dir=data_dir)
    datasets = data.tfds_dataset("local_shades", batch_size=4, data_dir=data_dir, download=True, image_size=32)
    assert (datasets.num_classes, datasets.class_names) == (2, ["bright", "dark"])
    assert (datasets.train_examples, datasets.validation_examples) == (10, 6)
    train_batches = _batches(datasets.train)
    assert len(train_batches) == 2 and all(b[0].shape == (4, 32, 32, 3) for b in train_batches)
    images = np.concatenate([b[0] for b in _batches(datasets.validation)])
    labels = np.concatenate([b[1] for b in _batches(datasets.validation)])
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.float32
    np.testing.assert_array_equal(labels.argmax(1), (images.mean(axis=(1, 2, 3)) < 0).astype(int))
    # Prepared now: found again without download.
    assert data.tfds_dataset("local_shades", batch_size=2, data_dir=data_dir, image_size=16).train_examples == 10
    with pytest.raises(ValueError, match="no split 'validation_x'"):
        data.tfds_dataset("local_shades", data_dir=data_dir, validation_split="validation_x")
    with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_dataset_xyz'"):
        data.tfds_dataset("no_such_dataset_xyz", data_dir=data_dir)


def test_image_folder_dataset_is_one_pipeline_over_the_whole_folder(tmp_path):
    root = _make_folder(tmp_path / "all", per_class=4)  # 9 images
    train = _batches(data.image_folder_dataset(str(root), image_size=24, batch_size=4))
    assert [b[0].shape for b in train] == [(4, 24, 24, 3)] * 2  # full batches only
    evaluation = _batches(data.image_folder_dataset(str(root), image_size=24, batch_size=4, training=False))
    assert sum(len(b[0]) for b in evaluation) == 9


def _png_header_only(path, width, height):
    """A PNG whose header says width x height (8-bit grey) and whose pixels are never stored."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return str(path)


def test_images_larger_than_max_pixels_are_reported_before_decoding(tmp_path):
    from keras_vit.data import images

    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 20000)  # 400 MP: gigabytes if decoded
    small = str(tmp_path / "small.png")
    _write_image(tmp_path / "small.png", 100)
    pixels, read, errors = images.read_images([bomb, small], (28, 28), 1)
    assert read == [small] and pixels.shape == (1, 28, 28, 1)
    assert errors[bomb].startswith(f"20000x20000 pixels is more than max_pixels={images.DEFAULT_MAX_PIXELS:,}")
    _, read, errors = images.read_images([small], (28, 28), 1, max_pixels=10)
    assert read == [] and "more than max_pixels=10" in errors[small]


def test_decode_predictions_names_imagenet_classes_offline():
    import keras_vit
    from keras_vit.data import imagenet

    logits = np.full((2, 1000), -5.0, "float32")
    logits[0, [1, 207, 980]] = [9.0, 8.0, 7.0]  # goldfish, golden retriever, volcano
    logits[1, 0] = 3.0
    decoded = keras_vit.decode_predictions(logits, top=3)
    assert [(synset, name) for synset, name, _ in decoded[0]] == [
        ("n01443537", "goldfish"), ("n02099601", "golden_retriever"), ("n09472597", "volcano")]
    assert decoded[1][0][:2] == ("n01440764", "tench") and decoded[1][0][2] == 3.0
    synsets = [synset for synset, _ in imagenet.imagenet_classes()]
    assert len(synsets) == 1000 and synsets == sorted(synsets)  # TFDS's label order
    with pytest.raises(ValueError, match=r"expects \(batch, 1000\) outputs .* got shape \(2, 10\)"):
        keras_vit.decode_predictions(np.zeros((2, 10)))
    np.testing.assert_allclose(keras_vit.preprocess_input(np.array([[0, 127.5, 255]], "uint8")), [[-1.0, 0.0, 1.0]],
                               atol=1e-2)


def test_shipped_imagenet_names_equal_keras_hubs_table():
    utils = pytest.importorskip("keras_hub.src.utils.imagenet.imagenet_utils")
    from keras_vit.data import imagenet

    assert imagenet.imagenet_classes() == [tuple(utils.IMAGENET_NAMES[i]) for i in range(1000)]


def _mixed_folder(root):
    """Two classes of real files as people have them: JPEG, PNG, grey PNG, RGBA PNG, mixed sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, colour in (("cat", (200, 60, 40)), ("dog", (40, 60, 200))):
        os.makedirs(root / label)
        for index, (mode, suffix) in enumerate([("RGB", "jpg"), ("RGB", "png"), ("L", "png"), ("RGBA", "png")] * 2):
            size = (30 + 7 * index, 26 + 5 * index)
            pixels = np.clip(rng.normal(colour, 20, (size[1], size[0], 3)), 0, 255).astype("uint8")
            image = Image.fromarray(pixels).convert(mode)
            image.save(root / label / f"{index}.{suffix}")
    return root


AUGMENTATIONS = {"none": {}, "randaugment": dict(randaugment=(2, 0.5)), "mixup": dict(mixup=0.2), "cutmix": dict(cutmix=1.0)}


@pytest.mark.parametrize("augmentation", list(AUGMENTATIONS))
@pytest.mark.parametrize("crop", list(data.CROPS))
def test_every_crop_and_augmentation_on_a_folder_of_mixed_real_files(tmp_path, crop, augmentation):
    folder = _mixed_folder(tmp_path / "photos")
    datasets = data.image_folder(str(folder), 4, image_size=32, crop=crop, **AUGMENTATIONS[augmentation])
    assert datasets.class_names == ["cat", "dog"]
    # Static shapes: the model's Patches layer needs the channel count at trace time (the
    # inception crop once lost it and training on a photo folder crashed).
    assert tuple(datasets.train.element_spec[0].shape[1:]) == (32, 32, 3)
    images, labels = next(iter(datasets.train))
    assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 2)
    assert np.isfinite(images.numpy()).all() and -1.0 <= images.numpy().min() and images.numpy().max() <= 1.0
    np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0, atol=1e-5)
    validation = np.concatenate([batch.numpy() for batch, _ in datasets.validation])
    assert validation.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize("augmentation", list(AUGMENTATIONS))
@pytest.mark.parametrize("crop", list(data.CROPS))
def test_every_crop_and_augmentation_on_a_tfds_dataset(tmp_path, crop, augmentation):
    for split in ("train", "val"):
        for name, value in (("bright", 230), ("dark", 20)):
            (tmp_path / "source" / split / name).mkdir(parents=True)
            for i in range(4):
                _write_image(tmp_path / "source" / split / name / f"{i}.png", value, size=(20 + 3 * i, 24))
    LocalShades.SOURCE = str(tmp_path / "source")
    datasets = data.tfds_dataset("local_shades", batch_size=4, data_dir=str(tmp_path / "tfds"), download=True,
                                 image_size=16, crop=crop, **AUGMENTATIONS[augmentation])
    assert tuple(datasets.train.element_spec[0].shape[1:]) == (16, 16, 3)
    images, labels = next(iter(datasets.train))
    assert images.shape == (4, 16, 16, 3) and labels.shape == (4, 2)
    assert np.isfinite(images.numpy()).all() and -1.0 <= images.numpy().min() and images.numpy().max() <= 1.0


def test_hold_out_validation_keeps_each_class_on_both_sides_and_follows_the_seed():
    from keras_vit.data.folders import hold_out_validation

    paths = [f"{name}/{i}.png" for name, count in (("cat", 10), ("dog", 3)) for i in range(count)]
    labels = [0] * 10 + [1] * 3
    split = hold_out_validation(paths, labels, ["cat", "dog"], "pets", 0.2, seed=1)
    train_paths, train_labels, val_paths, val_labels = split
    assert sorted(train_paths + val_paths) == sorted(paths) and not set(train_paths) & set(val_paths)
    assert val_labels.count(0) == 2 and val_labels.count(1) == 1  # round(3 * 0.2) = 1: at least one held out
    assert [label for path, label in zip(train_paths, train_labels) if path.startswith("dog")] == [1, 1]
    assert hold_out_validation(paths, labels, ["cat", "dog"], "pets", 0.2, seed=1) == split
    assert hold_out_validation(paths, labels, ["cat", "dog"], "pets", 0.2, seed=2)[2] != val_paths
    with pytest.raises(ValueError, match=r"validation_fraction must be in \(0, 1\); got 1.5"):
        hold_out_validation(paths, labels, ["cat", "dog"], "pets", 1.5, seed=1)
