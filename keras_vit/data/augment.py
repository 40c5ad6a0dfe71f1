"""Preprocessing and augmentation: checks of the options, per-image crops and flips, batch
augmenters (RandAugment, MixUp, CutMix) and the [-1, 1] input scaling.

The pipelines (:mod:`keras_vit.data.pipelines`) apply these; evaluation preprocessing is
shared with prediction (:mod:`keras_vit.data.images`). TensorFlow is imported lazily so
that :func:`scale_pixels` on NumPy arrays and :func:`check_options` do not need it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from keras_vit.core.config import is_number, refuse

CROPS = ("inception", "translate", "none")
INCEPTION_CROP_AREA = (0.08, 1.0)  # The original's random-resized-crop area range.
TRANSLATE_PAD_FRACTION = 0.1  # "translate" crop: shift by up to 10% of the side.


def _as_size(image_size):
    if isinstance(image_size, int):
        return (image_size, image_size)
    if (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(v, int) and v > 0 for v in image_size)
    ):
        return tuple(image_size)
    refuse("image_size", image_size, "an int or (height, width) of positive ints")


def check_options(*, image_size, channels, crop, flip=True, eval_crop_fraction=1.0, randaugment=None, mixup=None,
                  cutmix=None, batch_size=None, random_erasing=None):
    """Checks what the pipelines take before any file is read; returns ``(height, width)``.

    Each failure is a ``ValueError`` that starts ``"<name>=<value>; expected ..."`` (the
    training configuration reports the same words).
    """
    size = _as_size(image_size)
    if channels not in (1, 3) or isinstance(channels, bool):
        refuse("channels", channels, "1 (grayscale) or 3 (RGB)")
    if crop not in CROPS:
        refuse("crop", crop, f"one of {list(CROPS)}")
    if not isinstance(flip, bool):
        refuse("flip", flip, "true or false")
    if eval_crop_fraction is not None and not (is_number(eval_crop_fraction) and 0 < eval_crop_fraction <= 1):
        refuse("eval_crop_fraction", eval_crop_fraction, "a number in (0, 1]")
    if randaugment is not None and not (
        isinstance(randaugment, (tuple, list))
        and len(randaugment) == 2
        and isinstance(randaugment[0], int)
        and not isinstance(randaugment[0], bool)
        and randaugment[0] >= 1
        and is_number(randaugment[1])
        and 0 < randaugment[1] <= 1
    ):
        refuse("randaugment", randaugment, "null or [num_ops >= 1, magnitude in (0, 1]], e.g. [2, 0.5]")
    for name, value in (("mixup", mixup), ("cutmix", cutmix)):
        if value is not None and not (is_number(value) and value > 0):
            refuse(name, value, "null or a positive number (the Beta distribution's alpha)")
    if random_erasing is not None and not (is_number(random_erasing) and 0 <= random_erasing <= 1):
        refuse("random_erasing", random_erasing, "null or a probability in [0, 1], e.g. 0.25 (timm's reprob)")
    if batch_size is not None and not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        refuse("batch_size", batch_size, "a positive integer")
    return size


def _match_channels(image, channels):
    """uint8/float (H, W) or (H, W, C) image -> (H, W, channels)."""
    import tensorflow as tf

    if image.shape.rank == 2:
        image = image[..., None]
    have = image.shape[-1]
    if have == 4:  # RGBA PNGs: drop alpha.
        image = image[..., :3]
        have = 3
    if have == 1 and channels == 3:
        image = tf.image.grayscale_to_rgb(image)
    elif have == 3 and channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    return image


def scale_pixels(images):
    """[0, 255] pixels -> float32 in [-1, 1] (x / 127.5 - 1), the original's input scaling.

    The one definition of the models' input range: NumPy arrays (and lists) give a NumPy
    array, without importing TensorFlow; tensors (tf.data, the SavedModel's bytes
    signature) stay TensorFlow tensors.
    """
    if isinstance(images, (np.ndarray, np.generic, list, tuple)):
        return np.asarray(images, dtype="float32") / 127.5 - 1.0
    import tensorflow as tf

    return tf.cast(images, tf.float32) / 127.5 - 1.0


def preprocess_for_train(image, *, image_size, channels=3, crop="inception", flip=True, seed=None):
    """Training preprocessing of one image, as the original: random crop, flip, [-1, 1].

    Args:
        image: uint8 tensor (H, W) or (H, W, C) with C in 1, 3, 4.
        image_size: int or (height, width) of the output.
        channels: 1 or 3; grayscale becomes RGB (and back) as needed.
        crop: ``"inception"`` (random resized crop, area 8%-100%, aspect 3/4-4/3),
            ``"translate"`` (pad by 10% and crop back, i.e. a random shift: for digits,
            which a large crop would destroy), or ``"none"`` (resize only).
        flip: random horizontal flip.
        seed: None (TensorFlow's stateful random ops), or a ``[2]`` integer tensor that
            fixes the crop and flip (stateless ops): the same seed gives the same image in
            any process.

    Returns:
        float32 tensor (height, width, channels) in [-1, 1].
    """
    import tensorflow as tf

    height, width = _as_size(image_size)
    image = _match_channels(image, channels)
    crop_seed = flip_seed = None
    if seed is not None:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if crop == "inception":
        box = dict(
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
            area_range=INCEPTION_CROP_AREA,
            aspect_ratio_range=(3 / 4, 4 / 3),
            min_object_covered=0.0,
            use_image_if_no_bounding_boxes=True,
        )
        if seed is None:
            begin, crop_size, _ = tf.image.sample_distorted_bounding_box(tf.shape(image), **box)
        else:
            begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.shape(image), seed=crop_seed, **box
            )
        image = tf.slice(image, begin, crop_size)
        image.set_shape([None, None, channels])  # a slice of runtime size loses the static channel count
        image = tf.image.resize(image, (height, width), method="bilinear")
    elif crop == "translate":
        image = tf.image.resize(image, (height, width), method="bilinear")
        pad_h, pad_w = max(1, round(height * TRANSLATE_PAD_FRACTION)), max(1, round(width * TRANSLATE_PAD_FRACTION))
        # Black padding: the background of digits and the usual choice for CIFAR-style shifts.
        image = tf.pad(image, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]])
        if seed is None:
            image = tf.image.random_crop(image, (height, width, channels))
        else:
            image = tf.image.stateless_random_crop(image, (height, width, channels), seed=crop_seed)
    else:
        image = tf.image.resize(image, (height, width), method="bilinear")
    if flip:
        if seed is None:
            image = tf.image.random_flip_left_right(image)
        else:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    image = tf.clip_by_value(image, 0.0, 255.0)
    return scale_pixels(tf.ensure_shape(image, (height, width, channels)))


def preprocess_for_eval(image, *, image_size, channels=3, crop_fraction=1.0, interpolation="bilinear",
                        crop_mode="squash"):
    """Evaluation preprocessing of one image: resize (and centre-crop), scale to [-1, 1].

    Args:
        image: uint8 tensor (H, W) or (H, W, C) with C in 1, 3, 4.
        image_size: int or (height, width) of the output.
        channels: 1 or 3.
        crop_fraction: 1.0 keeps the whole image; below 1 resizes to
            ``floor(image_size / crop_fraction)`` and keeps the central ``image_size`` (the
            "resize 256, crop 224" of ImageNet evaluation is 0.875), as timm's ``crop_pct``.
        interpolation: tf.image.resize's method (``"bilinear"``, ``"bicubic"``, ...).
        crop_mode: ``"squash"`` resizes both sides (the original's and Hugging Face's
            resize); ``"center"`` resizes the shorter side and keeps the aspect (timm's
            default), then crops the centre.

    Returns:
        float32 tensor (height, width, channels) in [-1, 1].
    """
    import tensorflow as tf

    height, width = _as_size(image_size)
    image = _match_channels(image, channels)
    outer = (math.floor(height / crop_fraction), math.floor(width / crop_fraction))
    if crop_mode == "center" and height == width:
        # torchvision's Resize(int): the shorter side to `outer`, the longer truncated.
        shape = tf.shape(image)[:2]
        resized = tf.maximum(shape * outer[0] // tf.reduce_min(shape), [height, width])
    else:
        resized = tf.constant(outer)
    # Antialiased as PIL (timm's, Hugging Face's resize) when shrinking; an image already of
    # the size is kept as it is.
    image = tf.cond(
        tf.reduce_all(tf.equal(tf.shape(image)[:2], resized)),
        lambda: tf.cast(image, tf.float32),
        lambda: tf.image.resize(image, resized, method=interpolation, antialias=True),
    )
    # torchvision's CenterCrop offsets: round((resized - size) / 2), half to even.
    top, left = tf.unstack(tf.cast(tf.round(tf.cast(resized - [height, width], tf.float32) / 2), tf.int32))
    image = tf.ensure_shape(image[top : top + height, left : left + width], (height, width, channels))
    image = tf.clip_by_value(image, 0.0, 255.0)
    return scale_pixels(image)


def _batch_augmenter(randaugment, mixup, cutmix, seed):
    """Returns a function over batches ``(images in [-1, 1], one-hot labels)``, or None."""
    import keras
    import tensorflow as tf

    steps = []
    if randaugment:
        num_ops, magnitude = randaugment
        rand_augment = keras.layers.RandAugment(value_range=(-1.0, 1.0), num_ops=num_ops, factor=magnitude, seed=seed)
        steps.append(lambda images, labels: (rand_augment(images, training=True), labels))
    mixers = []
    if mixup:
        mixers.append(keras.layers.MixUp(alpha=mixup, seed=seed))
    if cutmix:
        mixers.append(keras.layers.CutMix(factor=cutmix, seed=seed))
    if mixers:

        def mix(images, labels):
            if len(mixers) == 1:
                return _mix(mixers[0], images, labels)
            # DeiT: one of MixUp / CutMix per batch, with equal probability.
            return tf.cond(
                tf.random.uniform(()) < 0.5,
                lambda: _mix(mixers[0], images, labels),
                lambda: _mix(mixers[1], images, labels),
            )

        steps.append(mix)
    if not steps:
        return None

    def augment(images, labels):
        for step in steps:
            images, labels = step(images, labels)
        return images, labels

    return augment


def _mix(layer, images, labels):
    import tensorflow as tf

    mixed = layer({"images": images, "labels": labels}, training=True)
    return tf.cast(mixed["images"], tf.float32), tf.cast(mixed["labels"], tf.float32)


# The options every source's pipelines take as keywords beside its own (``**augmentation``).
AUGMENTATION_OPTIONS = ("eval_crop_fraction", "randaugment", "mixup", "cutmix", "random_erasing", "image_spec")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What turns a source's images into model input, checked once by :meth:`checked`.

    The fields are the pipelines' arguments of the same names (see
    :func:`keras_vit.data.pipelines.embedded_mnist`); ``image_size`` is ``(height, width)``.
    """

    image_size: tuple
    channels: int
    crop: str
    flip: bool
    eval_crop_fraction: object = None
    randaugment: object = None
    mixup: object = None
    cutmix: object = None
    random_erasing: object = None
    image_spec: object = None

    @classmethod
    def checked(cls, *, batch_size=None, image_size, channels, crop, flip, **augmentation):
        """Checks the options (:func:`check_options`) before any file is read; returns them.

        ``augmentation`` holds any of :data:`AUGMENTATION_OPTIONS`; another name is a ``TypeError``.
        """
        unknown = sorted(set(augmentation) - set(AUGMENTATION_OPTIONS))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}; the pipelines take {list(AUGMENTATION_OPTIONS)} "
                            f"beside their own arguments.")
        checked = {name: value for name, value in augmentation.items() if name != "image_spec"}
        size = check_options(image_size=image_size, channels=channels, crop=crop, flip=flip, batch_size=batch_size,
                             **checked)
        return cls(size, channels, crop, flip, **augmentation)

    def spec(self):
        """The model's input contract: ``image_spec``, or [-1, 1] pixels, bilinear, no crop."""
        from keras_vit.core.image_spec import ImageSpec

        return self.image_spec or ImageSpec(image_size=self.image_size, channels=self.channels)
