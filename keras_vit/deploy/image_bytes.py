"""The SavedModel's bytes signature: encoded images of any size in, top-k classes out.

Each image is checked against ``max_pixels`` from its header before it is decoded, then
decoded upright, resized, cropped and normalised as the model's
:class:`~keras_vit.core.image_spec.ImageSpec` says; an image that cannot be read fails only
its own row.
"""

from __future__ import annotations

from keras_vit.data.images import decode_and_resize
from keras_vit.deploy.serving import exported_call, probabilities


def header_pixels(encoded):
    """Width x height from an encoded image's header (PNG, GIF, BMP, JPEG), int64; -1 for
    other formats. Read before decoding, so a small file that would decode to gigabytes is
    refused first. JPEG's size needs a scan of its markers (``extract_jpeg_shape``), which
    raises on a broken file: call it where errors are caught."""
    import tensorflow as tf

    padded = tf.strings.join([encoded, tf.constant(b"\0" * 32)])
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, 32), tf.uint8), tf.int64)

    def big_endian(at, width):
        return tf.add_n([head[at + i] * (256 ** (width - 1 - i)) for i in range(width)])

    def little_endian(at, width):
        return tf.add_n([head[at + i] * (256 ** i) for i in range(width)])

    def signed(value):  # a little-endian int32 (BMP heights are negative top-down)
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(encoded), tf.int64)
        return shape[0] * shape[1]

    prefix = tf.strings.substr(padded, 0, 8)
    return tf.case(
        [
            (tf.equal(prefix, b"\x89PNG\r\n\x1a\n"), lambda: big_endian(16, 4) * big_endian(20, 4)),
            (tf.equal(tf.strings.substr(prefix, 0, 3), b"GIF"), lambda: little_endian(6, 2) * little_endian(8, 2)),
            (tf.equal(tf.strings.substr(prefix, 0, 2), b"BM"), lambda: signed(little_endian(18, 4)) * signed(little_endian(22, 4))),
            (tf.equal(tf.strings.substr(prefix, 0, 2), b"\xff\xd8"), jpeg),
        ],
        default=lambda: tf.constant(-1, tf.int64),
    )


def decode_batch(images, spec, max_pixels):
    """Decodes a (B,) batch of encoded images without letting one bad image fail the batch.

    Returns:
        ``(pixels (B, H, W, C) float32, ok (B,) bool, error (B,) string)``; the rows of
        images that could not be read are zeros, with ``ok`` false and the reason in
        ``error``. Decoding runs in a tf.data pipeline whose ``ignore_errors`` drops the
        images that raise; each element carries its index, so the survivors go back to
        their rows.
    """
    import tensorflow as tf

    (height, width), channels = spec.image_size, spec.channels
    count = tf.shape(images)[0]
    indexed = tf.data.Dataset.from_tensor_slices((tf.range(count), images))

    def header(index, encoded):
        return index, header_pixels(encoded)

    def decode(index, encoded):
        too_many = tf.debugging.assert_less_equal(header_pixels(encoded), tf.constant(max_pixels, tf.int64))
        with tf.control_dependencies([too_many]):
            image = decode_and_resize(encoded, spec)
        return index, image

    def gather(dataset, empty):
        # A sentinel element keeps the batch non-empty when every image fails.
        sentinel = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int32), empty))
        rows, values = dataset.ignore_errors().concatenate(sentinel).batch(1 << 30).get_single_element()
        return rows[:-1], values[:-1]

    rows, sizes = gather(indexed.map(header), tf.constant(0, tf.int64))
    size = tf.scatter_nd(rows[:, None], sizes + 1, [count]) - 1  # -1: no size in the header
    rows, decoded = gather(indexed.map(decode), tf.zeros((height, width, channels), tf.float32))
    ok = tf.scatter_nd(rows[:, None], tf.ones_like(rows, tf.bool), [count])
    pixels = tf.scatter_nd(rows[:, None], decoded, [count, height, width, channels])
    error = tf.where(
        ok,
        tf.constant(""),
        tf.where(
            size > max_pixels,
            tf.constant(f"more than max_pixels={max_pixels:,} pixels (width x height in the header)"),
            tf.constant("not a readable JPEG/PNG/BMP/GIF image"),
        ),
    )
    return pixels, ok, error


def bytes_function(model, serving):
    """The ``serving_default`` function: ``images`` (B,) encoded JPEG/PNG/BMP/GIF strings ->
    ``ok``, ``error``, ``probabilities``, ``top_k_ids``, ``top_k_probabilities``, ``top_k_names``."""
    import tensorflow as tf

    names = tf.constant(list(serving.class_names), dtype=tf.string)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_bytes(images):
        pixels, ok, error = decode_batch(images, serving.image_spec, serving.max_pixels)
        scores = probabilities(exported_call(model, pixels), serving.output_kind)
        scores = tf.where(ok[:, None], scores, tf.zeros_like(scores))
        top = tf.math.top_k(scores, k=serving.top_k)
        ids = tf.where(ok[:, None], top.indices, -tf.ones_like(top.indices))
        return {
            "ok": ok,
            "error": error,
            "probabilities": scores,
            "top_k_ids": ids,
            "top_k_probabilities": top.values,
            "top_k_names": tf.where(ok[:, None], tf.gather(names, top.indices), tf.constant("")),
        }

    return serve_bytes
