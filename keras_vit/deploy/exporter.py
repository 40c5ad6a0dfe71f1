"""An exporter: write a file, describe it for the manifest, verify it in its own runtime.

Each format (:mod:`~keras_vit.deploy.savedmodel_export`, :mod:`~keras_vit.deploy.tflite_export`,
:mod:`~keras_vit.deploy.onnx_export`) subclasses :class:`Exporter`; its ``reader`` is the
class of :mod:`keras_vit.deploy.artifacts` that opens the file, so an artifact is verified
exactly as ``load_artifact`` and ``keras-vit predict`` will open it. :mod:`keras_vit.deploy.formats`
registers them.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from keras_vit.deploy.artifacts import load_artifact
from keras_vit.deploy.layout import DEFAULT_TOLERANCES


@dataclasses.dataclass(frozen=True)
class Reference:
    """The Keras model's outputs on the verification images, computed once per export.

    Attributes:
        images: (N, H, W, C) float32 verification images, prepared as the spec says.
        outputs: (N, K) float32 Keras outputs on them.
        labels: (N,) true classes, or None.
        tolerances: overrides of ``DEFAULT_TOLERANCES``, or None.
    """

    images: np.ndarray
    outputs: np.ndarray
    labels: Optional[np.ndarray] = None
    tolerances: Optional[dict] = None

    @classmethod
    def of(cls, model, images, labels=None, tolerances=None):
        images = np.asarray(images, dtype="float32")
        outputs = np.asarray(model.predict(images, batch_size=64, verbose=0), dtype="float32")
        return cls(images=images, outputs=outputs, labels=labels, tolerances=tolerances)

    @property
    def scale(self):
        """The largest absolute Keras output (float tolerances are relative beyond 1)."""
        return float(np.max(np.abs(self.outputs)))


class Exporter:
    """One artifact of an export: subclasses set ``format``, ``reader``, ``filename`` and
    ``precision`` and implement :meth:`write` and :meth:`describe`."""

    format = None
    reader = None
    filename = None
    precision = "float32"

    def write(self, model, path, serving):
        """Writes the artifact of ``model`` to ``path``."""
        raise NotImplementedError

    def describe(self, path, serving):
        """The manifest fields of this format (beyond format, precision, file, input, outputs)."""
        return {}

    def verify(self, path, model, serving, reference):
        """``(figures, problem)``: the artifact's parity with Keras, opened by its reader, and
        why it fails its tolerance (None when it passes)."""
        artifact = self.reader(path)
        figures = parity(reference.outputs, artifact.run(reference.images), reference.labels)
        tolerance = self.precision if self.precision in ("float32", "float16") else "int8"
        problem = check_parity(figures, tolerance, reference.scale, reference.tolerances)
        more = self.verify_more(artifact, figures, model, serving, reference)  # its figures are recorded either way
        return figures, more if problem is None else problem

    def verify_more(self, artifact, figures, model, serving, reference):
        """Checks of this format beyond parity, on the opened ``artifact``: adds its figures to
        ``figures`` and returns why it fails (None when it passes)."""
        return None


def run_artifact(path, images, kind=None):
    """Runs an artifact's float entry point in its own runtime.

    Args:
        path: a SavedModel folder, ``.tflite`` or ``.onnx`` file.
        images: (B, H, W, C) float32 in [-1, 1].
        kind: ``"savedmodel"``, ``"tflite"`` or ``"onnx"``; from the path when None.

    Returns:
        (B, K) float32 raw outputs (dequantized for int8 TFLite).
    """
    return load_artifact(path, kind=kind).run(np.asarray(images, dtype="float32"))


def parity(reference, outputs, labels=None):
    """Agreement figures of an artifact's outputs with the Keras model's.

    Returns:
        A dict: ``max_abs_diff``, ``top1_agreement``, ``num_images``, and with labels
        ``accuracy`` and ``keras_accuracy``.
    """
    reference = np.asarray(reference, dtype="float64")
    outputs = np.asarray(outputs, dtype="float64")
    figures = {
        "num_images": int(len(reference)),
        "max_abs_diff": float(np.max(np.abs(outputs - reference))),
        "top1_agreement": float(np.mean(outputs.argmax(-1) == reference.argmax(-1))),
    }
    if labels is not None:
        figures["accuracy"] = float(np.mean(outputs.argmax(-1) == labels))
        figures["keras_accuracy"] = float(np.mean(reference.argmax(-1) == labels))
    return figures


def check_parity(figures, precision, reference_scale, tolerances=None):
    """The reason an artifact fails its tolerance, or None when it passes.

    Float artifacts: ``max_abs_diff <= tolerance * max(1, reference_scale)``, where the
    scale is the largest absolute Keras output (float16 rounding is relative). int8
    artifacts: top-1 agreement and, with labels, the accuracy drop.
    """
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    if precision in ("float32", "float16"):
        limit = tolerances[precision] * max(1.0, float(reference_scale))
        if not figures["max_abs_diff"] <= limit:
            return f"max abs difference from Keras {figures['max_abs_diff']:.3g} exceeds {limit:.3g}"
        return None
    if figures["top1_agreement"] < tolerances["int8_min_top1_agreement"]:
        return (
            f"top-1 agreement with Keras {figures['top1_agreement']:.2%} is below "
            f"{tolerances['int8_min_top1_agreement']:.0%}"
        )
    if "accuracy" in figures:
        drop = figures["keras_accuracy"] - figures["accuracy"]
        if drop > tolerances["int8_max_accuracy_drop"]:
            return f"accuracy {figures['accuracy']:.2%} is {drop:.2%} below Keras's {figures['keras_accuracy']:.2%}"
    return None
