"""Image files into model input: listing, decoding, resizing and scaling to [-1, 1].

The one preprocessing of files outside training: ``keras-vit predict``, the exporters'
calibration and verification images, the SavedModel's bytes signature and the
attention figures all read images through here.
"""

from __future__ import annotations

import os

import numpy as np

from keras_vit.data.pipelines import scale_pixels
from keras_vit.ownership import is_marked

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Images larger than this (decoded width x height) are refused before decoding: a small
# compressed file can decode to gigabytes (a 389 KB PNG of 20000x20000 took 2.8 GB).
# 50 megapixels covers phone and camera photos; pass max_pixels= to change it.
DEFAULT_MAX_PIXELS = 50_000_000


def decoded_size(path):
    """``(width, height)`` from an image file's header, without decoding it; None if unknown."""
    import struct

    from PIL import Image, UnidentifiedImageError

    with open(path, "rb") as file:
        header = file.read(24)
    if header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR":
        return struct.unpack(">II", header[16:24])
    try:
        with Image.open(path) as image:  # reads the header only
            return image.size
    except Image.DecompressionBombError:  # Pillow's own limit (about 179 megapixels), far above ours
        return (2 * Image.MAX_IMAGE_PIXELS, 1)
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def decode_and_resize(encoded, image_size, channels):
    """Encoded image bytes (scalar string tensor) -> (H, W, C) float32 in [-1, 1].

    Decodes JPEG/PNG/BMP/GIF (the first frame), converts to ``channels``, resizes with
    bilinear interpolation to ``image_size`` and scales by x / 127.5 - 1: the
    preprocessing of the SavedModel's bytes signature and of ``keras-vit predict``.
    """
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), image_size, method="bilinear")
    image = tf.ensure_shape(image, (image_size[0], image_size[1], channels))
    return scale_pixels(image)


def list_image_files(directory):
    """Image files (by extension) under ``directory``, recursively, sorted."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No such folder of images: {directory!r}.")
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(name for name in dirs if not is_marked(os.path.join(root, name)))  # keras-vit's own outputs
        found += [os.path.join(root, name) for name in sorted(files) if name.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def read_images(paths, image_size, channels, max_pixels=DEFAULT_MAX_PIXELS):
    """Reads image files into model input, setting aside those that cannot be read.

    Args:
        paths: image file paths (JPEG, PNG, BMP, GIF; any size up to ``max_pixels``).
        image_size: (height, width) to resize to (bilinear).
        channels: 1 (grayscale) or 3 (RGB); images are converted.
        max_pixels: largest decoded width x height accepted (read from the file's header
            first); larger files are set aside with the reason.

    Returns:
        ``(images, read_paths, errors)``: float32 (N, H, W, C) in [-1, 1] for the
        ``read_paths`` that could be read, and ``{path: reason}`` for the others.
    """
    import tensorflow as tf

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
        try:
            encoded = tf.io.read_file(path)
            images.append(decode_and_resize(encoded, tuple(image_size), channels).numpy())
        except (tf.errors.OpError, ValueError) as error:
            message = getattr(error, "message", str(error)).strip().splitlines()[0]
            errors[path] = f"not a readable image ({message})"
            continue
        read.append(path)
    shape = (0, image_size[0], image_size[1], channels)
    return (np.stack(images) if images else np.zeros(shape, "float32")), read, errors
