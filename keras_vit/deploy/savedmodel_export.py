"""The SavedModel exporter: a bytes signature (``serving_default``) and a float-tensor
signature (``serving_images``) sharing one copy of the weights."""

from __future__ import annotations

import numpy as np

from keras_vit.data.images import DEFAULT_MAX_PIXELS, decode_and_resize
from keras_vit.deploy.artifacts import SavedModelArtifact
from keras_vit.deploy.exporter import Exporter
from keras_vit.deploy.image_bytes import bytes_function
from keras_vit.deploy.layout import BYTES_SIGNATURE, DEFAULT_TOP_K, FLOAT_SIGNATURE, SAVEDMODEL_DIRNAME
from keras_vit.deploy.serving import ServingSpec, exported_call, probabilities
from keras_vit.files import replaced_folder_atomically


def export_savedmodel(model, directory, class_names, top_k=DEFAULT_TOP_K, max_pixels=DEFAULT_MAX_PIXELS, serving=None):
    """Writes a SavedModel with a bytes signature and a float-tensor signature.

    ``serving_default`` takes ``images``: (B,) encoded JPEG/PNG/BMP/GIF strings of any
    size up to ``max_pixels`` (width x height, read from the header before decoding),
    decodes them upright (EXIF orientation), resizes, crops and normalises them as the
    model's :class:`ImageSpec` says, and returns per
    image ``ok`` (B,) bool and ``error`` (B,) string (empty when ok), ``probabilities``
    (B, K), ``top_k_ids`` (B, k) int32, ``top_k_probabilities`` (B, k) and ``top_k_names``
    (B, k) strings. An image that cannot be read fails only its own row: ``ok`` false,
    probabilities 0, ids -1, names empty. ``serving_images`` takes ``images``: (B, H, W, C)
    float32 prepared as the spec says (``spec.from_unit_range``) and returns ``outputs`` (the model's raw output) and
    ``probabilities``. Both signatures share one copy of the weights.

    Args:
        model: the Keras model.
        directory: the SavedModel folder to write; must not exist yet.
        class_names: K class names.
        top_k: k of the top-k outputs (at most K).
        max_pixels: largest decoded width x height the bytes signature accepts.
        serving: the :class:`ServingSpec` (computed from the other arguments when None).

    Returns:
        ``directory``.
    """
    serving = serving or ServingSpec.of(model, class_names, top_k, max_pixels)
    write_savedmodel(model, directory, serving)
    return directory


def write_savedmodel(model, directory, serving):
    """Writes the SavedModel of :func:`export_savedmodel` for a :class:`ServingSpec`."""
    import keras

    # No archive.track(model): tracking saves each weight twice, once per Keras variable and
    # once per TensorFlow variable its endpoints capture; the endpoints' own are enough.
    archive = keras.export.ExportArchive()
    archive.add_endpoint(BYTES_SIGNATURE, bytes_function(model, serving))
    archive.add_endpoint(FLOAT_SIGNATURE, _images_function(model, serving))
    with replaced_folder_atomically(directory) as temporary:
        archive.write_out(temporary, verbose=False)


def _images_function(model, serving):
    import tensorflow as tf

    height, width, channels = serving.input_shape
    low, high = serving.input_range

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32, name="images")])
    def serve_images(images):
        # A signature call does not enforce its shape: a wrong size would be reshaped into wrong rows.
        tf.debugging.assert_equal(
            tf.shape(images)[1:], tf.constant([height, width, channels]),
            message=f"serving_images takes images of shape (batch, {height}, {width}, {channels}) in [{low:g}, {high:g}]",
        )
        outputs = exported_call(model, images)
        return {"outputs": outputs, "probabilities": probabilities(outputs, serving.output_kind)}

    return serve_images


def bytes_signature_parity(signature, model, images, serving):
    """Top-1 agreement of the bytes ``signature`` (a loaded ``serving_default``) with Keras
    on the same images as PNG files, prepared for Keras by the reader ``predict`` uses."""
    import tensorflow as tf

    spec = serving.image_spec
    pixels = (np.asarray(spec.to_unit_range(np.asarray(images, "float32"))) + 1.0) * 127.5
    pixels = np.round(pixels).clip(0, 255).astype("uint8")
    encoded = tf.constant([tf.io.encode_png(image).numpy() for image in pixels])
    decoded = np.stack([decode_and_resize(data, spec).numpy() for data in encoded])
    keras_top1 = np.asarray(model(decoded, training=False)).argmax(-1)
    result = signature(images=encoded)
    top1 = result["top_k_ids"].numpy()[:, 0]
    return {
        "num_images": int(len(pixels)),
        "top1_agreement": float(np.mean(top1 == keras_top1)),
        "all_ok": bool(np.all(result["ok"].numpy())),
    }


class SavedModelExporter(Exporter):
    """The SavedModel folder, verified through both signatures."""

    format = "savedmodel"
    reader = SavedModelArtifact
    filename = SAVEDMODEL_DIRNAME

    def write(self, model, path, serving):
        write_savedmodel(model, path, serving)

    def describe(self, path, serving):
        bytes_input = {
            "name": "images", "shape": [None], "dtype": "string",
            "content": f"encoded JPEG/PNG/BMP/GIF, any size up to {serving.max_pixels:,} pixels",
        }
        return {"signatures": {
            BYTES_SIGNATURE: {
                "input": bytes_input,
                "outputs": ["ok", "error", "probabilities", "top_k_ids", "top_k_probabilities", "top_k_names"],
                "bad_images": "ok false and the reason in error; probabilities 0, top_k_ids -1",
            },
            FLOAT_SIGNATURE: {"input": serving.input_entry(), "outputs": ["outputs", "probabilities"]},
        }}

    def verify_more(self, artifact, figures, model, serving, reference):
        bytes_figures = figures["bytes_signature"] = bytes_signature_parity(
            artifact.signature(BYTES_SIGNATURE), model, reference.images[:64], serving
        )
        if bytes_figures["top1_agreement"] < 1.0:
            return f"bytes signature top-1 agrees with Keras on {bytes_figures['top1_agreement']:.2%} only"
        if not bytes_figures["all_ok"]:
            return "bytes signature reports valid PNG images as not ok"
        return None
