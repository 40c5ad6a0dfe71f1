"""Worst errors of keras_vit against timm / Hugging Face reference folders (README's weights table).

A reference folder holds a hub repository and ``expected.npz``, the outputs the library that
saved it computes (``shared/reference/hub/README.md``; copies in ``tests/data/hub``).
"""

from __future__ import annotations

import json
import os

import numpy as np

from keras_vit.core.models import feature_extractor
from keras_vit.weights.hub import from_pretrained


def _worst(got, want):
    return float(np.abs(np.asarray(got, "float64") - np.asarray(want, "float64")).max())


def reference_errors(folder) -> dict:
    """``{output: worst absolute error}`` of every expected output of one reference folder."""
    with np.load(os.path.join(folder, "expected.npz")) as data:
        expected = {key: data[key] for key in data.files}
    errors = {}
    model = from_pretrained(folder)
    errors["logits"] = _worst(model.predict(expected["images"], verbose=0), expected["logits"])
    backbone = from_pretrained(folder, include_top=False)
    errors["features"] = _worst(backbone.predict(expected["images"], verbose=0), expected["features"])
    raw = from_pretrained(folder, include_preprocessing=True)
    errors["raw_logits"] = _worst(raw.predict(expected["raw"], verbose=0), expected["raw_logits"])
    if "intermediates" in expected:
        maps = feature_extractor(model).predict(expected["images"], verbose=0)
        errors["intermediates"] = max(_worst(m, e) for m, e in zip(maps, expected["intermediates"]))
    if "resized_logits" in expected:
        size = expected["resized_images"].shape[1]
        resized = from_pretrained(folder, image_size=size)
        errors["resized_logits"] = _worst(resized.predict(expected["resized_images"], verbose=0), expected["resized_logits"])
        dynamic = from_pretrained(folder, dynamic_image_size=True)
        errors["dynamic_size_logits"] = _worst(
            dynamic.predict(expected["resized_images"], verbose=0), expected["resized_logits"]
        )
    return errors


def reference_table(root) -> list:
    """One row per reference folder under ``root``: its case description and errors."""
    rows = []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not os.path.isfile(os.path.join(folder, "expected.npz")):
            continue
        with open(os.path.join(folder, "case.json")) as file:
            case = json.load(file)
        rows.append({"case": name, "format": case.get("format"), "errors": reference_errors(folder)})
    return rows
