"""Input data for keras_vit: tf.data pipelines over the embedded MNIST digits, image folders
and TensorFlow Datasets, all assembled by one function (:func:`_build_pipelines`).

Preprocessing and augmentation are in :mod:`keras_vit.data.augment`, image-folder scanning
in :mod:`keras_vit.data.folders`, TFDS preparation in :mod:`keras_vit.data.tfds`; their
public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from keras_vit.data.augment import (  # noqa: F401 (re-exported)
    CROPS,
    INCEPTION_CROP_AREA,
    TRANSLATE_PAD_FRACTION,
    Preprocessing,
    _batch_augmenter,
    check_options,
    preprocess_for_eval,
    preprocess_for_train,
    scale_pixels,
)
from keras_vit.data.decode import IMAGE_EXTENSIONS, decode_upright, format_problem  # noqa: F401 (re-exported)
from keras_vit.data.folders import (  # noqa: F401 (re-exported)
    file_dataset,
    file_list,
    hold_out_validation,
    load_file,
    scan_image_folder,
)
from keras_vit.data.tfds import tfds_source

EMBEDDED_MNIST_PATH = os.path.join(os.path.dirname(__file__), "mnist5k.npz")
MNIST_CLASS_NAMES = [str(digit) for digit in range(10)]
MNIST_VALIDATION_PER_CLASS = 100


def load_embedded_mnist():
    """The 5,000 embedded MNIST digits, split the same way every time.

    For each digit, the last 100 of its 500 examples (in file order) are the validation
    set and the first 400 the training set: 4,000 training and 1,000 validation images,
    balanced, with no randomness involved.

    Returns:
        ``((x_train, y_train), (x_val, y_val))``: uint8 images (N, 28, 28) and uint8 labels.
    """
    with np.load(EMBEDDED_MNIST_PATH) as data:
        images, labels = data["x"], data["y"]
    validation = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        indices = np.flatnonzero(labels == digit)
        validation[indices[-MNIST_VALIDATION_PER_CLASS:]] = True
    return (images[~validation], labels[~validation]), (images[validation], labels[validation])


# --------------------------------------------------------------------------- pipelines
# Everything below builds tf.data pipelines; TensorFlow is imported lazily so that
# ``load_embedded_mnist`` stays a NumPy-only function.


@dataclasses.dataclass
class Datasets:
    """Training and validation pipelines with what the model needs to know about them.

    Attributes:
        train: ``tf.data.Dataset`` of ``(images, one_hot_labels)`` batches, shuffled,
            augmented and repeated once per epoch (finite; a fresh order each iteration).
        validation: ``tf.data.Dataset`` of ``(images, one_hot_labels)`` batches.
        num_classes: number of classes.
        class_names: list of class names, index = label.
        train_examples: number of training images.
        validation_examples: number of validation images.
        skipped_files: paths of unreadable files left out (image folders only).
        stream: ``stream(skip_batches=0)``, the endless training stream that
            ``keras_vit.train`` fits on: pass ``p`` over the data is shuffled and augmented
            as a function of ``(seed, p)`` and each image's position alone, so a run resumed
            in a new process sees exactly the batches it would have seen next.
    """

    train: object
    validation: object
    num_classes: int
    class_names: list
    train_examples: int
    validation_examples: int
    skipped_files: list = dataclasses.field(default_factory=list)
    stream: object = None
    batch_size: object = None  # images per batch (int), where a small folder lowered the one asked for


def _build_pipelines(train, validation, preprocessing, *, num_classes, batch_size, shuffle_buffer, seed, cache,
                     train_examples, decode=None):
    """Turns datasets into batched pipelines: ``(train, validation, stream)`` (see :class:`Datasets`).

    ``train`` yields the training examples in a fixed order, as ``(uint8 image, int label)``
    or as what ``decode`` turns into that (a path and a label: decoding after the shuffle
    keeps the shuffle buffer small and makes skipping cheap); ``validation`` yields
    ``(uint8 image, int label)``; ``preprocessing`` is a checked :class:`Preprocessing`.
    """
    import tensorflow as tf

    if seed is None:
        seed = int(np.random.randint(2**31))  # follows keras.utils.set_random_seed
    examples_per_pass = train_examples // batch_size * batch_size  # full batches only
    batches_per_pass = examples_per_pass // batch_size

    def one_hot(label):
        return tf.one_hot(tf.cast(label, tf.int32), num_classes, dtype=tf.float32)

    if decode is not None and cache:
        train, decode = train.map(decode, num_parallel_calls=tf.data.AUTOTUNE), None
    if cache:
        train = train.cache()  # Decoded images; the random crops stay fresh every epoch.
    one_pass = _pass_over(train, seed, shuffle_buffer, examples_per_pass)
    batched = _batcher(preprocessing, one_hot, decode, batch_size, seed)

    def stream(skip_batches=0):
        first_pass, skipped = divmod(int(skip_batches), batches_per_pass)
        examples = tf.data.Dataset.range(first_pass, 2**62).flat_map(one_pass)
        return batched(examples.skip(skipped * batch_size))  # skipped before decoding, so skipping is cheap

    # One pass with a fresh key each time it is iterated (each epoch of a plain model.fit).
    one_epoch = batched(tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1).flat_map(one_pass))
    one_epoch = one_epoch.apply(tf.data.experimental.assert_cardinality(batches_per_pass))
    return one_epoch, _validation_batches(validation, preprocessing, one_hot, batch_size, cache), stream


def _pass_over(train, seed, shuffle_buffer, examples_per_pass):
    """``one_pass(pass_key)``: the examples of one pass, each paired with its image seed."""
    import tensorflow as tf

    base_seed = tf.constant([seed, 0], tf.int64)

    def one_pass(pass_key):
        # Pass ``pass_key`` over the data: its order and every image's crop and flip are
        # functions of (seed, pass_key, position) alone, whatever process computes them.
        key = tf.random.experimental.stateless_fold_in(base_seed, pass_key)
        # The graph seed of this function, not the process's: the shuffle's seed pair is then
        # (1, order_seed) whatever keras.utils.set_random_seed said (and a tensor seed works
        # where a global seed of 0 would make TensorFlow compare it as a bool).
        tf.random.set_seed(1)
        order_seed = tf.random.stateless_uniform([], seed=key, minval=None, maxval=None, dtype=tf.int64)
        examples = train.shuffle(shuffle_buffer, seed=order_seed, reshuffle_each_iteration=False)
        examples = examples.take(examples_per_pass).enumerate()
        fold_in = tf.random.experimental.stateless_fold_in
        return examples.map(lambda position, example: (fold_in(key, position), example))

    return one_pass


def _batcher(preprocessing, one_hot, decode, batch_size, seed):
    """``batched(examples)``: seeded examples -> preprocessed, augmented, full batches."""
    import tensorflow as tf

    from keras_vit.data import erasing

    autotune = tf.data.AUTOTUNE
    spec = preprocessing.spec()

    def train_map(image_seed, example):
        image, label = decode(*example) if decode is not None else example
        image = preprocess_for_train(image, image_size=preprocessing.image_size, channels=preprocessing.channels,
                                     crop=preprocessing.crop, flip=preprocessing.flip, seed=image_seed)
        if preprocessing.random_erasing:  # per image, after scaling, as timm's transforms (before MixUp/CutMix)
            erasing_seed = tf.random.experimental.stateless_fold_in(image_seed, 7)
            image = erasing.random_erasing(image, preprocessing.random_erasing, erasing_seed)
        return image, one_hot(label)

    def to_model_input(images, labels):  # after augmentation, which works in [-1, 1]
        return spec.from_unit_range(images), labels

    # RandAugment, MixUp and CutMix draw from Keras's seed generators, whose state is not
    # part of the stream: a resumed run draws them afresh (its images and order are exact).
    augment = _batch_augmenter(preprocessing.randaugment, preprocessing.mixup, preprocessing.cutmix, seed)

    def batched(examples):
        # Full batches only: replicas and accumulated micro-batches then always see equal shares.
        batches = examples.map(train_map, num_parallel_calls=autotune).batch(batch_size, drop_remainder=True)
        if augment is not None:
            batches = batches.map(augment, num_parallel_calls=autotune)
        if not spec.is_unit_range:
            batches = batches.map(to_model_input, num_parallel_calls=autotune)
        return batches.prefetch(autotune)

    return batched


def _validation_batches(validation, preprocessing, one_hot, batch_size, cache):
    """Evaluation preprocessing (resize, centre crop, the model's input range), every image."""
    import tensorflow as tf

    spec = preprocessing.spec()
    crop_fraction = preprocessing.eval_crop_fraction
    if crop_fraction is None:
        crop_fraction = spec.crop_fraction

    def eval_map(image, label):
        image = preprocess_for_eval(image, image_size=preprocessing.image_size, channels=preprocessing.channels,
                                    crop_fraction=crop_fraction, interpolation=spec.interpolation,
                                    crop_mode=spec.crop_mode)
        return spec.from_unit_range(image), one_hot(label)

    validation = validation.map(eval_map, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        validation = validation.cache()
    return validation.batch(batch_size).prefetch(tf.data.AUTOTUNE)



def embedded_mnist(
    batch_size=128,
    *,
    image_size=28,
    channels=1,
    crop="translate",
    flip=False,
    seed=None,
    **augmentation,
):
    """Pipelines over the embedded MNIST digits with the fixed 4,000 / 1,000 split.

    Args:
        batch_size: images per batch (the global batch under a distribution strategy).
        image_size: int or (height, width); digits are 28x28 and are resized otherwise.
        channels: 1 keeps the digits grayscale, 3 repeats them as RGB.
        crop: ``"translate"`` (default: random shifts; an inception crop would cut digits
            apart), ``"inception"`` or ``"none"``.
        flip: horizontal flips; off by default because a mirrored digit is another glyph.
        seed: shuffling and augmentation seed.
        **augmentation: any of the keywords below (the same for every source;
            :data:`keras_vit.data.augment.AUGMENTATION_OPTIONS`), each None by default.
        eval_crop_fraction: see :func:`preprocess_for_eval` (default: the image spec's).
        randaugment: None, or ``(num_ops, magnitude)`` for ``keras.layers.RandAugment``.
        mixup: None, or the alpha of ``keras.layers.MixUp``.
        cutmix: None, or the factor of ``keras.layers.CutMix``.
        random_erasing: None, or the probability of timm's RandomErasing (per-pixel
            noise in one rectangle of each training image; :mod:`keras_vit.data.erasing`).
        image_spec: the model's :class:`keras_vit.core.image_spec.ImageSpec`: images
            come out as that model takes them (mean/std, or [0, 255] pixels), resized for
            evaluation with its interpolation and crop. Default: [-1, 1], bilinear, no crop.

    Returns:
        A :class:`Datasets`.

    Raises:
        ValueError: for an invalid argument, naming it.
    """
    import tensorflow as tf

    preprocessing = Preprocessing.checked(
        batch_size=batch_size, image_size=image_size, channels=channels, crop=crop, flip=flip, **augmentation)
    (x_train, y_train), (x_val, y_val) = load_embedded_mnist()
    train, validation, stream = _build_pipelines(
        tf.data.Dataset.from_tensor_slices((x_train[..., None], y_train)),
        tf.data.Dataset.from_tensor_slices((x_val[..., None], y_val)),
        preprocessing, num_classes=len(MNIST_CLASS_NAMES), batch_size=batch_size, shuffle_buffer=len(x_train),
        seed=seed, cache=False, train_examples=len(x_train),  # cache: already in memory
    )
    return Datasets(
        train, validation, len(MNIST_CLASS_NAMES), list(MNIST_CLASS_NAMES), len(x_train), len(x_val), stream=stream
    )


# --------------------------------------------------------------------------- image folders
def image_folder(
    directory,
    batch_size=32,
    *,
    validation_directory=None,
    validation_fraction=0.1,
    image_size=224,
    channels=3,
    crop="inception",
    flip=True,
    seed=0,
    cache=False,
    max_pixels=None,
    shrink_batch=False,
    **augmentation,
):
    """Pipelines over folders of JPEG/PNG images, one sub-folder per class.

    Args:
        directory: training folder (``directory/<class>/<image>``).
        batch_size: images per batch.
        validation_directory: a folder laid out the same way for validation; without it
            the last ``validation_fraction`` of each class (after a seeded shuffle) is held out.
        validation_fraction: share of each class held out when there is no validation folder.
        image_size, channels, crop, flip, eval_crop_fraction, randaugment, mixup, cutmix:
            as :func:`embedded_mnist` (here the inception crop and flips are on by default).
        seed: split, shuffling and augmentation seed.
        cache: keep decoded images in memory after the first epoch.
        max_pixels: images larger than this (width x height, from the header) are skipped
            before decoding (default 50 megapixels; see :func:`scan_image_folder`).
        shrink_batch: a folder of fewer training images than ``batch_size`` makes one
            batch of them all (``Datasets.batch_size``) instead of being refused.

    Returns:
        A :class:`Datasets`; ``skipped_files`` lists the unreadable files left out.

    Raises:
        FileNotFoundError: for a missing folder.
        ValueError: for an invalid argument, or a folder without readable images.
    """
    preprocessing = Preprocessing.checked(
        batch_size=batch_size, image_size=image_size, channels=channels, crop=crop, flip=flip, **augmentation)
    paths, labels, class_names, skipped = scan_image_folder(directory, max_pixels=max_pixels)
    if len(class_names) < 2:
        raise ValueError(
            f"Image folder {directory!r} has one class folder ({class_names[0]!r}); a classifier needs at least two "
            f"(one sub-folder per class)."
        )
    if validation_directory is not None:
        val_paths, val_labels, _, val_skipped = scan_image_folder(validation_directory, class_names,
                                                                  max_pixels=max_pixels)
        skipped += val_skipped
    else:
        paths, labels, val_paths, val_labels = hold_out_validation(
            paths, labels, class_names, directory, validation_fraction, seed)
    if len(paths) < batch_size and shrink_batch:
        batch_size = len(paths)
    if len(paths) < batch_size:
        raise ValueError(
            f"{directory!r} has {len(paths)} training images, fewer than one batch of {batch_size}; "
            f"lower batch_size to at most {len(paths)}."
        )
    train, validation_ds, stream = _build_pipelines(
        file_list(paths, labels), file_dataset(val_paths, val_labels), preprocessing,
        num_classes=len(class_names), batch_size=batch_size, shuffle_buffer=min(len(paths), 10_000), seed=seed,
        cache=cache, train_examples=len(paths), decode=load_file,
    )
    return Datasets(
        train, validation_ds, len(class_names), class_names, len(paths), len(val_paths), [p for p, _ in skipped],
        stream=stream, batch_size=batch_size,
    )


# --------------------------------------------------------------------------- TensorFlow Datasets
def tfds_dataset(
    name,
    batch_size=32,
    *,
    data_dir=None,
    download=False,
    train_split="train",
    validation_split=None,
    image_size=224,
    channels=3,
    crop="inception",
    flip=True,
    seed=0,
    cache=False,
    **augmentation,
):
    """Pipelines over a TensorFlow Datasets image-classification dataset.

    Args:
        name: TFDS name (``"cifar10"``, ``"cifar100"``, ``"oxford_iiit_pet"``,
            ``"oxford_flowers102"``, ``"imagenet2012"``, ...), optionally with a config
            and version (``"cifar10:3.0.2"``).
        batch_size: images per batch.
        data_dir: where TFDS keeps prepared datasets (TFDS's default when None).
        download: download and prepare the dataset when it is not in ``data_dir`` yet.
            Off by default: nothing is fetched unless asked for.
        train_split: TFDS split for training (slicing allowed: ``"train[:98%]"``).
        validation_split: split for validation; default ``"validation"`` when the
            dataset has one, else ``"test"``.
        image_size, channels, crop, flip, eval_crop_fraction, randaugment, mixup, cutmix:
            as :func:`image_folder`.
        seed: shuffling and augmentation seed.
        cache: keep decoded images in memory.

    Returns:
        A :class:`Datasets`.

    Raises:
        FileNotFoundError: if the dataset is not prepared in ``data_dir`` and ``download``
            is False.
        RuntimeError: if the download or preparation fails (no network, for one).
        ValueError: for an unknown dataset, a dataset without ``image``/``label``
            features, an unknown split, or another invalid argument.
    """
    preprocessing = Preprocessing.checked(
        batch_size=batch_size, image_size=image_size, channels=channels, crop=crop, flip=flip, **augmentation)
    train, validation, num_classes, class_names, train_examples, validation_examples = tfds_source(
        name, data_dir=data_dir, download=download, train_split=train_split, validation_split=validation_split,
        seed=seed)
    train, validation, stream = _build_pipelines(
        train, validation, preprocessing, num_classes=num_classes, batch_size=batch_size,
        shuffle_buffer=min(train_examples, 10_000), seed=seed, cache=cache, train_examples=train_examples,
    )
    return Datasets(
        train, validation, num_classes, class_names, train_examples, validation_examples, stream=stream
    )


def image_folder_dataset(
    directory, *, image_size=224, batch_size=32, training=True, channels=3, crop="inception", flip=True, seed=0
):
    """One pipeline over every readable image of a class-per-folder tree (no split).

    Args:
        directory: folder with one sub-folder of JPEG/PNG images per class.
        image_size, batch_size, channels, crop, flip, seed: as :func:`image_folder`.
        training: training preprocessing (shuffle, random crop, flip, full batches) when
            True, evaluation preprocessing (resize, every image) when False.

    Returns:
        A ``tf.data.Dataset`` of ``(images, one_hot_labels)`` batches.

    Raises:
        FileNotFoundError, ValueError: as :func:`scan_image_folder`, or for an invalid argument.
    """
    preprocessing = Preprocessing.checked(
        batch_size=batch_size, image_size=image_size, channels=channels, crop=crop, flip=flip, eval_crop_fraction=1.0)
    paths, labels, class_names, _ = scan_image_folder(directory)
    train, evaluation, _ = _build_pipelines(
        file_list(paths, labels), file_dataset(paths, labels), preprocessing, num_classes=len(class_names),
        batch_size=batch_size, shuffle_buffer=min(len(paths), 10_000), seed=seed, cache=False,
        train_examples=len(paths), decode=load_file,
    )
    return train if training else evaluation
