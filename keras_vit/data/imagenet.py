"""ImageNet-1k class names for the heads fine-tuned on ImageNet, and the checkpoints' input scaling.

The names come from ``imagenet1k_classes.tsv`` shipped in this package (see this folder's
README), so decoding works offline.
"""

from __future__ import annotations

import functools
import os
from typing import List, Tuple

import numpy as np

from keras_vit.data.pipelines import scale_pixels

IMAGENET_CLASSES_PATH = os.path.join(os.path.dirname(__file__), "imagenet1k_classes.tsv")


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> List[Tuple[str, str]]:
    """The 1,000 ImageNet-1k classes in label order: ``(synset, name)`` pairs."""
    with open(IMAGENET_CLASSES_PATH) as file:
        return [tuple(line.rstrip("\n").split("\t")) for line in file if line.strip()]


def decode_predictions(predictions, top: int = 5):
    """The ``top`` ImageNet-1k classes of each row of a 1000-class head's output.

    As ``keras.applications.imagenet_utils.decode_predictions``, for the weights with that
    head (``imagenet21k+imagenet2012``, ``augreg_in21k_ft_in1k``, ``augreg_in1k``); logits
    or probabilities (the order is the same).

    Args:
        predictions: (B, 1000) array.
        top: classes per row.

    Returns:
        One list per row of ``(synset, name, score)``, best first.

    Raises:
        ValueError: predictions that are not (B, 1000), or ``top`` outside 1..1000.
    """
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape[1] != 1000:
        raise ValueError(
            f"decode_predictions expects (batch, 1000) outputs of an ImageNet-1k head; got shape {predictions.shape}. "
            f"A model with another head has its own class names (a run folder's labels.txt)."
        )
    if not isinstance(top, int) or not 1 <= top <= 1000:
        raise ValueError(f"top={top!r}; expected an integer in [1, 1000].")
    classes = imagenet_classes()
    decoded = []
    for row in predictions:
        order = np.argsort(-row, kind="stable")[:top]
        decoded.append([(classes[i][0], classes[i][1], float(row[i])) for i in order])
    return decoded


def preprocess_input(images):
    """RGB pixels in [0, 255] (uint8 or float) -> the input every original and AugReg
    checkpoint takes: float32 ``x / 127.5 - 1`` (keras.applications' name for it)."""
    return scale_pixels(images)
