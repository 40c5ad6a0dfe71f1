"""Image files into model input: listing, decoding, resizing and normalising per the model's spec.

The one preprocessing of files outside training: ``keras-vit predict``, the exporters'
calibration and verification images, the SavedModel's bytes signature and the
attention figures all read images through here, as the model's
:class:`~keras_vit.core.image_spec.ImageSpec` says (interpolation, crop, mean/std), upright
(EXIF orientation) and from the formats of :mod:`keras_vit.data.decode`.
"""

from __future__ import annotations

import os

import numpy as np

from keras_vit.core.image_spec import ImageSpec
from keras_vit.data.decode import (  # noqa: F401 (DEFAULT_MAX_PIXELS, decoded_size: re-exported)
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    UNACCEPTED_IMAGE_EXTENSIONS,
    decode_upright,
    decoded_size,
    format_problem,
)
from keras_vit.data.pipelines import preprocess_for_eval
from keras_vit.ownership import is_marked


def as_spec(spec, channels=None):
    """An :class:`ImageSpec`; a bare ``(height, width)`` with ``channels`` means the
    original's preprocessing ([-1, 1], bilinear, no crop)."""
    if isinstance(spec, ImageSpec):
        return spec
    return ImageSpec(image_size=tuple(int(v) for v in spec), channels=int(channels))


def decode_and_resize(encoded, spec, channels=None):
    """Encoded image bytes (scalar string tensor) -> (H, W, C) float32 model input.

    Decodes JPEG/PNG/BMP/GIF (the first frame) upright (EXIF orientation), converts to the
    spec's channels, resizes and crops with its interpolation and crop (as
    :func:`keras_vit.data.pipelines.preprocess_for_eval`, the evaluation pipeline's) and
    normalises with :meth:`ImageSpec.from_unit_range`: the preprocessing of the SavedModel's
    bytes signature and of ``keras-vit predict``. ``spec`` may be an :class:`ImageSpec` or a
    ``(height, width)`` with ``channels`` (see :func:`as_spec`).
    """
    spec = as_spec(spec, channels)
    image = decode_upright(encoded, spec.channels)
    image = preprocess_for_eval(
        image, image_size=spec.image_size, channels=spec.channels, crop_fraction=spec.crop_fraction,
        interpolation=spec.interpolation, crop_mode=spec.crop_mode,
    )
    return spec.from_unit_range(image)


def list_image_files(directory, unaccepted=None):
    """Image files (by extension, :data:`IMAGE_EXTENSIONS`) under ``directory``, recursively,
    sorted; hidden files and folders left out. Files of image formats that are not accepted
    (``.webp``, ``.tiff``, ...) go into the list ``unaccepted`` when one is given."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No such folder of images: {directory!r}.")
    found = []
    for root, dirs, files in os.walk(directory):
        # hidden folders and keras-vit's own outputs (marked runs, exports) are not images to read
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not is_marked(os.path.join(root, d)))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(root, name))
            elif unaccepted is not None and name.lower().endswith(UNACCEPTED_IMAGE_EXTENSIONS):
                unaccepted.append(os.path.join(root, name))
    return found


def expand_image_paths(paths):
    """Files as given, and the image files of folders (recursively, :func:`list_image_files`).

    Returns:
        ``(files, errors)``: the image paths, and ``{path: reason}`` for files of formats
        that are not accepted found in the folders and folders holding no image.
    """
    files, errors = [], {}
    for path in paths:
        path = os.fspath(path)
        if not os.path.isdir(path):
            files.append(path)
            continue
        unaccepted = []
        found = list_image_files(path, unaccepted)
        files += found
        for name in unaccepted:
            errors[name] = format_problem(name, b"")
        if not found and not unaccepted:
            errors[path] = f"a folder holding no image file ({', '.join(IMAGE_EXTENSIONS)})"
    return files, errors


def read_images(paths, spec, channels=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Reads image files into model input, setting aside those that cannot be read.

    Args:
        paths: image file paths (JPEG, PNG, BMP, GIF; any size up to ``max_pixels``).
        spec: the model's :class:`ImageSpec` (size, channels, resize, crop, normalisation),
            or a ``(height, width)`` with ``channels`` for the original's [-1, 1].
        channels: with a bare size only: 1 (grayscale) or 3 (RGB).
        max_pixels: largest decoded width x height accepted (read from the file's header
            first); larger files are set aside with the reason.

    Returns:
        ``(images, read_paths, errors)``: float32 (N, H, W, C) as the model takes them for
        the ``read_paths`` that could be read, and ``{path: reason}`` for the others.
    """
    import tensorflow as tf

    spec = as_spec(spec, channels)
    images, read, errors = [], [], {}
    for path in paths:
        path = os.fspath(path)
        if not os.path.isfile(path):
            errors[path] = "no such file" if not os.path.exists(path) else "not a file"
            continue
        size = decoded_size(path)
        if size is not None and size[0] * size[1] > max_pixels:
            errors[path] = (
                f"{size[0]}x{size[1]} pixels is more than max_pixels={max_pixels:,} (it would take "
                f"{size[0] * size[1] * 16 / 2**30:.1f} GB to decode and resize); downscale it first"
            )
            continue
        with open(path, "rb") as file:
            problem = format_problem(path, file.read(8))
        if problem is not None:
            errors[path] = problem
            continue
        try:
            images.append(decode_and_resize(tf.io.read_file(path), spec).numpy())
        except (tf.errors.OpError, ValueError) as error:
            message = getattr(error, "message", str(error)).strip().splitlines()[0]
            errors[path] = f"not a readable image ({message})"
            continue
        read.append(path)
    shape = (0, *spec.image_size, spec.channels)
    return (np.stack(images) if images else np.zeros(shape, "float32")), read, errors
