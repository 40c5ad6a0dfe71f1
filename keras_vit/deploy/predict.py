"""Predictions for image files from any keras_vit model or artifact.

``predict_files`` reads image files and folders of them (any size, prepared as the
artifact's :class:`~keras_vit.core.image_spec.ImageSpec` says), reports the unreadable ones
by name and predicts the rest with :func:`keras_vit.deploy.artifacts.load_artifact`.
"""

from __future__ import annotations

import numpy as np

from keras_vit.data.images import DEFAULT_MAX_PIXELS, expand_image_paths, read_images
from keras_vit.deploy.artifacts import Artifact, load_artifact
from keras_vit.markdown import markdown_table


def predict_files(artifact, image_paths, top_k=5, class_names=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Predicts image files with any artifact and returns the top-k classes of each.

    Args:
        artifact: a path (see :func:`load_artifact`) or an :class:`Artifact`.
        image_paths: image files or folders (their JPEG/PNG/BMP/GIF files, recursively);
            unreadable files are reported, the others predicted.
        top_k: how many classes to return per image.
        class_names: overrides the artifact's class names.
        max_pixels: larger images (decoded width x height) are reported, not decoded
            (:data:`keras_vit.data.images.DEFAULT_MAX_PIXELS`).

    Returns:
        ``{"artifact", "kind", "predictions": [{"file", "top_k": [{"class_id", "label",
        "probability"}]}], "errors": [{"file", "error"}]}``.
    """
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact, class_names=class_names)
    if int(top_k) < 1:
        raise ValueError(f"top_k must be at least 1; got {top_k}.")
    files, folder_errors = expand_image_paths(image_paths)
    images, read, errors = read_images(files, artifact.spec, max_pixels=max_pixels)
    errors = {**folder_errors, **errors}
    predictions = []
    if len(read):
        probabilities = artifact.probabilities(images)
        k = min(int(top_k), probabilities.shape[-1])
        for path, row in zip(read, probabilities):
            order = np.argsort(-row, kind="stable")[:k]
            predictions.append(
                {
                    "file": path,
                    "top_k": [
                        {"class_id": int(i), "label": artifact.class_names[i], "probability": float(row[i])}
                        for i in order
                    ],
                }
            )
    return {
        "artifact": artifact.path,
        "kind": artifact.kind,
        "predictions": predictions,
        "errors": [{"file": path, "error": reason} for path, reason in errors.items()],
    }


def format_predictions(result):
    """A Markdown table of :func:`predict_files`' result: one row per image."""
    rows = []
    for item in result["predictions"]:
        best = item["top_k"][0]
        others = ", ".join(f"{c['label']} {c['probability']:.3f}" for c in item["top_k"])
        rows.append([item["file"], best["label"], f"{best['probability']:.4f}", others])
    return markdown_table(["file", "prediction", "probability", "top-k"], rows)
