"""Image files as a viewer shows them: the accepted formats and EXIF orientation.

Every place that decodes an image file (the training and evaluation pipelines,
``predict``, export calibration and verification, the SavedModel's bytes signature)
decodes through :func:`decode_upright`, and every place that lists or checks files uses
:data:`IMAGE_EXTENSIONS` and :func:`format_problem`, so training and prediction accept the
same files and see them the same way up.

The orientation is read with TensorFlow graph ops only (``tf.strings`` and
``tf.io.decode_raw`` over the JPEG's APP1 Exif segment, IFD0 tag 0x0112), so the same code
runs eagerly, in tf.data and inside an exported SavedModel.
"""

from __future__ import annotations

import os

# What tf.io.decode_image decodes (GIF: the first frame). One list for training and predict.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
ACCEPTED_FORMATS = "JPEG, PNG, BMP or GIF (first frame)"
# Image formats people have that TensorFlow does not decode: reported by name, not skipped silently.
UNACCEPTED_IMAGE_EXTENSIONS = (".webp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl")
_SIGNATURES = (b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM")

ORIENTATION_TAG = 0x0112
_EXIF_SEARCH_SEGMENTS = 32  # JPEG segments scanned for APP1 Exif before giving up
_IFD_MAX_ENTRIES = 64
_PAD = 1024  # zero bytes appended so that every read below stays inside the string


def format_problem(path, head):
    """None when ``head`` (the file's first bytes) starts an accepted image, else the reason
    with the accepted formats (the same words in training and predict, each naming the file)."""
    if any(bytes(head).startswith(signature) for signature in _SIGNATURES):
        return None
    extension = os.path.splitext(os.fspath(path))[1].lower() or "no extension"
    if extension in IMAGE_EXTENSIONS:  # a broken or mislabelled file
        return f"not a readable image (its bytes are not {ACCEPTED_FORMATS})"
    return f"not an accepted image format ({extension}); accepted: {ACCEPTED_FORMATS}"


def _unsigned(raw, big_endian):
    """Unsigned integer (int64) from a 1-D uint8 tensor in the given byte order."""
    import tensorflow as tf

    values = tf.cast(raw, tf.int64)
    count = tf.shape(values, out_type=tf.int64)[0]
    powers = tf.cast(256, tf.int64) ** tf.where(big_endian, count - 1 - tf.range(count), tf.range(count))
    return tf.reduce_sum(values * powers)


def exif_orientation(encoded):
    """EXIF orientation (int32 scalar, 1..8) of an encoded image; 1 when there is none.

    Reads the JPEG's segments up to the first APP1 ``Exif`` one (at most 32, none after
    the start of scan), then IFD0 tag 0x0112. Anything malformed reads as 1 (upright).
    """
    import tensorflow as tf

    padded = tf.strings.join([encoded, tf.constant(b"\0" * _PAD)])
    length = tf.cast(tf.strings.length(encoded), tf.int64)

    def read(at, size):  # `size` bytes from `at` (clamped into the string), uint8
        at = tf.clip_by_value(tf.cast(at, tf.int64), 0, length)
        return tf.io.decode_raw(tf.strings.substr(padded, at, size), tf.uint8)

    def keep_looking(position, tiff, steps):
        return tf.logical_and(tf.logical_and(tiff < 0, steps < _EXIF_SEARCH_SEGMENTS), position + 4 <= length)

    def next_segment(position, tiff, steps):
        head = tf.cast(read(position, 4), tf.int64)
        is_marker = tf.logical_and(tf.equal(head[0], 0xFF), tf.not_equal(head[1], 0xDA))
        is_exif = tf.logical_and(
            tf.equal(head[1], 0xE1), tf.equal(tf.strings.substr(padded, tf.minimum(position + 4, length), 6), b"Exif\0\0")
        )
        tiff = tf.where(tf.logical_and(is_marker, is_exif), position + 10, tiff)
        step = tf.where(is_marker, 2 + head[2] * 256 + head[3], length)  # not a marker: stop
        return position + step, tiff, steps + 1

    is_jpeg = tf.equal(tf.strings.substr(padded, 0, 2), b"\xff\xd8")
    start = tf.where(is_jpeg, tf.constant(2, tf.int64), length)
    _, tiff, _ = tf.while_loop(keep_looking, next_segment, (start, tf.constant(-1, tf.int64), tf.constant(0)))
    big_endian = tf.equal(tf.strings.substr(padded, tf.clip_by_value(tiff, 0, length), 2), b"MM")
    ifd = tiff + _unsigned(read(tiff + 4, 4), big_endian)
    count = tf.minimum(_unsigned(read(ifd, 2), big_endian), _IFD_MAX_ENTRIES)
    entries = tf.reshape(read(ifd + 2, 12 * _IFD_MAX_ENTRIES), (_IFD_MAX_ENTRIES, 12))[:count]
    tags = tf.map_fn(lambda entry: _unsigned(entry[:2], big_endian), entries, fn_output_signature=tf.int64)
    values = tf.map_fn(lambda entry: _unsigned(entry[8:10], big_endian), entries, fn_output_signature=tf.int64)
    found = tf.boolean_mask(values, tf.equal(tags, ORIENTATION_TAG))
    orientation = tf.cond(tf.size(found) > 0, lambda: found[0], lambda: tf.constant(1, tf.int64))
    valid = tf.logical_and(tiff >= 0, tf.logical_and(orientation >= 1, orientation <= 8))
    return tf.cast(tf.where(valid, orientation, 1), tf.int32)


def apply_orientation(image, orientation):
    """Turns a decoded (H, W, C) image upright per its EXIF orientation (PIL's ``exif_transpose``)."""
    import tensorflow as tf

    def transpose(x):
        return tf.transpose(x, (1, 0, 2))

    branches = [
        lambda: image,  # 1: upright
        lambda: tf.reverse(image, [1]),  # 2: mirrored left-right
        lambda: tf.image.rot90(image, 2),  # 3: upside down
        lambda: tf.reverse(image, [0]),  # 4: mirrored top-bottom
        lambda: transpose(image),  # 5: transposed
        lambda: tf.image.rot90(image, 3),  # 6: turned left: rotate 90 clockwise
        lambda: tf.image.rot90(transpose(image), 2),  # 7: transversed
        lambda: tf.image.rot90(image, 1),  # 8: turned right: rotate 90 anticlockwise
    ]
    upright = tf.switch_case(tf.clip_by_value(orientation, 1, 8) - 1, branches)
    return tf.ensure_shape(upright, (None, None, image.shape[-1]))


def decode_upright(encoded, channels):
    """Encoded image bytes -> (H, W, channels) uint8 as a viewer shows it (EXIF orientation applied)."""
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return apply_orientation(image, exif_orientation(encoded))


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
