"""timm's RandomErasing (Zhong et al. 2017) as a stateless TensorFlow op on one image.

timm's ``RandomErasing(probability, mode="pixel")`` as its training transforms apply it,
after normalisation: with probability ``probability`` one rectangle of the image is
replaced by per-pixel, per-channel standard normal noise. Its area is uniform in
``[0.02, 1/3]`` of the image, the log of its aspect ratio (height / width) uniform in
``(log 0.3, log 1/0.3)``; height and width are rounded and must be smaller than the
image's, up to 10 draws, else the image is left as it is; the corner is uniform where
the rectangle fits. Every draw comes from ``seed``, so an image's erasing depends on the
run's seed and its position in the stream alone.
"""

from __future__ import annotations

import math

MIN_AREA, MAX_AREA = 0.02, 1 / 3
MIN_ASPECT = 0.3
ATTEMPTS = 10


def random_erasing(image, probability, seed):
    """Erases one random rectangle of ``image`` (H, W, C float) with probability ``probability``.

    Args:
        image: float tensor (height, width, channels), normalised (here [-1, 1]).
        probability: chance that the image is erased at all.
        seed: a stateless seed, shape (2,) int.

    Returns:
        The image, float32, erased or not.
    """
    import tensorflow as tf

    image = tf.convert_to_tensor(image, tf.float32)
    fold_in = tf.random.experimental.stateless_fold_in
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    area = tf.cast(height * width, tf.float32)
    target_area = area * tf.random.stateless_uniform([ATTEMPTS], fold_in(seed, 1), MIN_AREA, MAX_AREA)
    log_ratio = math.log(MIN_ASPECT)
    aspect = tf.exp(tf.random.stateless_uniform([ATTEMPTS], fold_in(seed, 2), log_ratio, -log_ratio))
    # Python's round() (timm's) rounds half to even, as tf.round does.
    heights = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    widths = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    fits = (heights < height) & (widths < width)
    first = tf.argmax(tf.cast(fits, tf.int32))  # timm takes the first draw that fits
    h, w = heights[first], widths[first]
    erase = tf.reduce_any(fits) & (tf.random.stateless_uniform([], fold_in(seed, 0)) < probability)
    top = tf.random.stateless_uniform([], fold_in(seed, 3), 0, tf.maximum(height - h + 1, 1), tf.int32)
    left = tf.random.stateless_uniform([], fold_in(seed, 4), 0, tf.maximum(width - w + 1, 1), tf.int32)
    rows = tf.range(height)[:, None, None]
    columns = tf.range(width)[None, :, None]
    inside = (rows >= top) & (rows < top + h) & (columns >= left) & (columns < left + w) & erase
    noise = tf.random.stateless_normal(tf.shape(image), fold_in(seed, 5))
    return tf.where(inside, noise, image)
