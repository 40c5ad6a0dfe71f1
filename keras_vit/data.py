"""Input data for keras_vit: tf.data pipelines, preprocessing and the embedded MNIST digits."""

from __future__ import annotations

import os

import numpy as np

EMBEDDED_MNIST_PATH = os.path.join(os.path.dirname(__file__), "data", "mnist5k.npz")
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
