"""Deployment: SavedModel, TFLite (LiteRT) and ONNX artifacts, each verified in its own runtime.

``export_model`` writes the artifacts of a Keras Vision Transformer into one folder
(``saved_models/<run>/export/`` by default) with ``labels.txt`` and ``manifest.json``.
Every artifact is loaded back in the runtime that will serve it (TensorFlow, the
ai-edge-litert ``Interpreter``, onnxruntime), run on held-out images next to the Keras
model, and the figures measured go into the manifest; an artifact outside its tolerance
makes ``export_model`` raise ``RuntimeError`` naming it.

The float entry points of every artifact take ``(B, H, W, C)`` float32 images prepared as
the model's :class:`~keras_vit.core.image_spec.ImageSpec` says, exactly like the Keras model,
and return its raw output (logits unless the model was built with a
``classifier_activation``). The SavedModel's ``serving_default`` signature takes encoded
JPEG/PNG/BMP/GIF bytes of any size and does the spec's preprocessing itself (EXIF
orientation, resize, crop, normalisation). The spec is written to the manifest
(``image_spec``) and the ONNX metadata, so ``load_artifact`` reads it back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

import numpy as np

from keras_vit import ownership, run_folder
from keras_vit.files import _WRITE_FAILURES, replaced_atomically, replaced_folder_atomically, write_json
from keras_vit.data import load_embedded_mnist, scale_pixels
from keras_vit.data.images import DEFAULT_MAX_PIXELS, decode_and_resize, list_image_files, read_images
from keras_vit.deploy.latency import machine, measure_latency, thread_settings
from keras_vit.deploy.tflite_forms import symmetric_matmul_operands, tflite_forms
from keras_vit.markdown import markdown_table
from keras_vit.deploy.artifacts import (
    BYTES_SIGNATURE,
    CALIBRATION_SAMPLES,
    DEFAULT_LATENCY_RUNS,
    DEFAULT_OPSET,
    DEFAULT_TOLERANCES,
    DEFAULT_TOP_K,
    FLOAT_SIGNATURE,
    FORMATS,
    LABELS_FILENAME,
    MANIFEST_FILENAME,
    ONNX_FILENAME,
    RANDOM_VERIFICATION_SAMPLES,
    SAMPLES_DIRNAME,
    SAVEDMODEL_DIRNAME,
    CALIBRATED_PRECISIONS,
    TFLITE_PRECISIONS,
    VERIFICATION_SAMPLES,
    artifact_checksum,
    load_artifact,
    load_keras_model,
    model_image_spec,
    model_input_spec,
    model_output_kind,
    parse_class_names,
    tflite_filename,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- inputs
def export_data(model, images_dir=None, seed=0):
    """Calibration and verification images for a model, from the best source available.

    28x28x1 models get the embedded MNIST digits (training images for calibration, the
    validation split with its labels for verification); other models read the images of
    ``images_dir`` (resized to the model's size, every file for calibration, the first
    ``VERIFICATION_SAMPLES`` for verification). Without either, verification uses seeded
    uniform noise in [-1, 1] and there is no calibration data (full-integer int8 needs it).
    Images are prepared as the model's spec says (files: upright, resized and cropped as
    ``predict`` does; every source: :meth:`ImageSpec.from_unit_range`).

    Args:
        model: the Keras model.
        images_dir: optional folder of image files (searched recursively).
        seed: seed of the noise images.

    Returns:
        A dict with ``calibration`` (float32 array or None), ``verification`` (float32
        array), ``verification_labels`` (int array or None), ``samples`` (uint8 images
        for sample PNGs or None), ``sample_labels`` and ``source`` (a description).
    """
    height, width, channels = model_input_spec(model)
    spec = model_image_spec(model)
    if images_dir is not None:
        paths = list_image_files(images_dir)
        if not paths:
            raise ValueError(f"Found no image files in {images_dir!r} to calibrate and verify with.")
        images, read, errors = read_images(paths, spec)
        if errors:
            raise ValueError(f"Cannot read {len(errors)} file(s) in {images_dir!r}: {_describe_errors(errors)}")
        return dict(
            calibration=images[:CALIBRATION_SAMPLES],
            verification=images[:VERIFICATION_SAMPLES],
            verification_labels=None,
            samples=None,
            sample_labels=None,
            source=f"{len(read)} images from {images_dir}",
        )
    if (height, width, channels) == (28, 28, 1):
        (x_train, _), (x_val, y_val) = load_embedded_mnist()
        # One validation digit of each class for the sample PNGs.
        sample_index = [int(np.flatnonzero(y_val == digit)[0]) for digit in range(10)]
        return dict(
            calibration=spec.from_unit_range(scale_pixels(x_train[:CALIBRATION_SAMPLES, :, :, None])),
            verification=spec.from_unit_range(scale_pixels(x_val[:VERIFICATION_SAMPLES, :, :, None])),
            verification_labels=y_val[:VERIFICATION_SAMPLES].astype("int64"),
            samples=x_val[sample_index, :, :, None],
            sample_labels=y_val[sample_index].astype("int64"),
            source="embedded MNIST (calibration: training split, verification: validation split)",
        )
    noise = np.random.default_rng(seed).uniform(-1.0, 1.0, (RANDOM_VERIFICATION_SAMPLES, height, width, channels))
    return dict(
        calibration=None,
        verification=spec.from_unit_range(noise.astype("float32")),
        verification_labels=None,
        samples=None,
        sample_labels=None,
        source=f"{RANDOM_VERIFICATION_SAMPLES} uniform noise images (seed {seed})",
    )


def _describe_errors(errors):
    return "; ".join(f"{path}: {message}" for path, message in list(errors.items())[:5])


# --------------------------------------------------------------------------- writers
def _exported_call(model, images):
    # A trace outside Keras's own steps gets the portable graph (keras_vit.backends).
    return model(images, training=False)


def _float_function(model):
    import tensorflow as tf

    height, width, channels = model_input_spec(model)
    spec = tf.TensorSpec([None, height, width, channels], tf.float32, name="images")

    @tf.function(input_signature=[spec])
    def serve_images(images):
        return {"outputs": _exported_call(model, images)}

    return serve_images


def _probabilities(outputs, output_kind):
    import tensorflow as tf

    return tf.nn.softmax(outputs, axis=-1) if output_kind == "logits" else outputs


def _header_pixels(encoded):
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


def _decode_batch(images, spec, max_pixels):
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
        return index, _header_pixels(encoded)

    def decode(index, encoded):
        too_many = tf.debugging.assert_less_equal(_header_pixels(encoded), tf.constant(max_pixels, tf.int64))
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


def export_savedmodel(model, directory, class_names, top_k=DEFAULT_TOP_K, max_pixels=DEFAULT_MAX_PIXELS):
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

    Returns:
        ``directory``.
    """
    import keras
    import tensorflow as tf

    height, width, channels = model_input_spec(model)
    output_kind = model_output_kind(model)
    num_classes = int(model.outputs[0].shape[-1])
    top_k = min(int(top_k), num_classes)
    names = tf.constant(list(class_names), dtype=tf.string)
    spec = model_image_spec(model)
    low, high = spec.input_range

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32, name="images")])
    def serve_images(images):
        # A signature call does not enforce its shape: a wrong size would be reshaped into wrong rows.
        tf.debugging.assert_equal(
            tf.shape(images)[1:], tf.constant([height, width, channels]),
            message=f"serving_images takes images of shape (batch, {height}, {width}, {channels}) in [{low:g}, {high:g}]",
        )
        outputs = _exported_call(model, images)
        return {"outputs": outputs, "probabilities": _probabilities(outputs, output_kind)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_bytes(images):
        pixels, ok, error = _decode_batch(images, spec, int(max_pixels))
        probabilities = _probabilities(_exported_call(model, pixels), output_kind)
        probabilities = tf.where(ok[:, None], probabilities, tf.zeros_like(probabilities))
        top = tf.math.top_k(probabilities, k=top_k)
        ids = tf.where(ok[:, None], top.indices, -tf.ones_like(top.indices))
        return {
            "ok": ok,
            "error": error,
            "probabilities": probabilities,
            "top_k_ids": ids,
            "top_k_probabilities": top.values,
            "top_k_names": tf.where(ok[:, None], tf.gather(names, top.indices), tf.constant("")),
        }

    # No archive.track(model): tracking saves each weight twice, once per Keras variable and
    # once per TensorFlow variable its endpoints capture; the endpoints' own are enough.
    archive = keras.export.ExportArchive()
    archive.add_endpoint(BYTES_SIGNATURE, serve_bytes)
    archive.add_endpoint(FLOAT_SIGNATURE, serve_images)
    with replaced_folder_atomically(directory) as temporary:
        archive.write_out(temporary, verbose=False)
    return directory


def _float_savedmodel(model, directory):
    # The converter freezes the variables of a SavedModel; converting the live function
    # instead leaves VAR_HANDLE/READ_VARIABLE ops that a plain interpreter never initialises.
    # Traced with the TFLite-friendly LayerNorm (keras_vit.deploy.tflite_forms).
    import keras

    with tflite_forms():
        archive = keras.export.ExportArchive()
        archive.add_endpoint(FLOAT_SIGNATURE, _float_function(model))
        archive.write_out(directory, verbose=False)
    return directory


# Ops of the mixed int8 file that stay float32: those XNNPACK runs only in float
# (BATCH_MATMUL, SOFTMAX, GELU) and the LayerNorm and residual arithmetic between them,
# so that int8 is used where it pays, in the weight matmuls, and nowhere else.
_MIXED_FLOAT_OPS = (
    "ADD", "BATCH_MATMUL", "CONCATENATION", "GELU", "LOGISTIC", "MEAN", "MUL", "NEG", "PAD",
    "RSQRT", "SOFTMAX", "SQUARED_DIFFERENCE", "SQRT", "SUB", "TANH", "POW", "DIV",
)


def export_tflite(model, path, precision="float32", calibration_images=None, saved_model_dir=None):
    """Converts the model to a TFLite (LiteRT) flatbuffer with builtin ops only.

    Args:
        model: the Keras model.
        path: the ``.tflite`` file to write.
        precision: ``"float32"``; ``"float16"`` (weights stored in float16);
            ``"dynamic_int8"`` (int8 weights, activations quantized on the fly);
            ``"int8"`` (full integer, for integer-only accelerators: int8 weights and
            activations calibrated on ``calibration_images``, int8 input and output with
            their scale and zero point in the input/output details, no float op);
            ``"int8_mixed"`` (for CPUs: the weight matmuls (FULLY_CONNECTED, CONV_2D) in
            int8 with calibrated activations, LayerNorm, GELU, softmax and the attention
            batch matmuls in float32, float32 input and output).
        calibration_images: (N, H, W, C) float32 images in [-1, 1] from the training data;
            required for ``"int8"`` and ``"int8_mixed"``.
        saved_model_dir: a SavedModel with the ``serving_images`` signature to convert;
            written to a temporary folder when None.

    Returns:
        ``path``.

    Raises:
        ValueError: for an unknown precision or ``"int8"`` without calibration images.
        RuntimeError: when the converter fails (its message included).
    """
    import tensorflow as tf

    _check_precisions([precision])
    if precision in CALIBRATED_PRECISIONS and (calibration_images is None or len(calibration_images) == 0):
        raise ValueError(
            f"{precision} needs calibration images from the training data "
            "(calibration_images, or --images DIR on the command line); got none."
        )
    with tempfile.TemporaryDirectory() as scratch:
        if saved_model_dir is None:
            saved_model_dir = _float_savedmodel(model, os.path.join(scratch, "saved_model"))
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[FLOAT_SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if precision != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if precision == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if precision in CALIBRATED_PRECISIONS:
            calibration = np.asarray(calibration_images, dtype="float32")
            converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
        if precision == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        try:
            if precision == "int8_mixed":
                # The converter's selective quantization: the denylisted ops keep float32.
                debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=converter,
                    debug_dataset=lambda: ([calibration[i : i + 1]] for i in range(1)),
                    debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(_MIXED_FLOAT_OPS)),
                )
                flatbuffer = debugger.get_nondebug_quantized_model()
            else:
                flatbuffer = converter.convert()
            if precision == "int8":
                flatbuffer, _ = symmetric_matmul_operands(flatbuffer)
        except Exception as error:  # the converter raises ConverterError and others
            raise RuntimeError(f"TFLite conversion ({precision}) of {path} failed: {error}") from error
    with replaced_atomically(path) as temporary, open(temporary, "wb") as file:
        file.write(flatbuffer)
    flex = [op for op in tflite_ops(path) if not _is_builtin_op(op)]
    if flex:
        raise RuntimeError(f"{path} uses non-builtin ops {flex}; the stock LiteRT runtime cannot run it.")
    return path


def tflite_ops(path):
    """Names of the operators in a TFLite file, as the LiteRT interpreter reads them.

    Listed without the default XNNPACK delegate, so that every op of the graph shows;
    a Flex (SELECT_TF_OPS) op shows as its custom name, e.g. ``FlexMatMul``.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=os.fspath(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def float_ops(path):
    """Names of the ops of a TFLite file that read or write a float tensor.

    Empty for a file an integer-only accelerator (NPU, DSP, Edge TPU) can run whole.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(os.fspath(path))
    found = set()
    for graph in model.subgraphs:
        for op in graph.operators:
            tensors = [int(t) for t in list(op.inputs) + list(op.outputs) if int(t) >= 0]
            if any(graph.tensors[t].type in (0, 1, 10) for t in tensors):  # FLOAT32, FLOAT16, FLOAT64
                found.add(flatbuffer_utils.opcode_to_name(model, op.opcodeIndex))
    return sorted(found)


def _is_builtin_op(name):
    # Builtin ops are upper-case names (ADD, BATCH_MATMUL); custom and Flex ops are not.
    return name.isupper() and not name.startswith("FLEX")


def export_onnx(model, path, class_names, opset=DEFAULT_OPSET):
    """Converts the model to ONNX with tf2onnx, with a dynamic batch dimension.

    The graph takes ``images`` (B, H, W, C) float32 prepared as the model's spec says and
    returns ``outputs``. The class names, output kind and input spec are stored in the
    model's metadata (``class_names``, ``image_spec`` and ``input_range`` as JSON,
    ``output_kind``), so the file is self-describing.

    Args:
        model: the Keras model.
        path: the ``.onnx`` file to write.
        class_names: K class names.
        opset: ONNX opset, at least 17.

    Returns:
        ``path``.

    Raises:
        ValueError: for an opset below 17.
        RuntimeError: when tf2onnx fails (its message included).
    """
    import onnx
    import tf2onnx

    if int(opset) < DEFAULT_OPSET:
        raise ValueError(f"ONNX opset must be at least {DEFAULT_OPSET}; got {opset}.")
    function = _float_function(model)
    try:
        onnx_model, _ = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=int(opset)
        )
    except Exception as error:  # tf2onnx raises many kinds
        raise RuntimeError(f"ONNX conversion of {path} failed: {error}") from error
    onnx_model.graph.output[0].name = _rename_output(onnx_model, "outputs")
    onnx.helper.set_model_props(
        onnx_model,
        {
            "class_names": json.dumps(list(class_names)),
            "output_kind": model_output_kind(model),
            "input_range": json.dumps(list(model_image_spec(model).input_range)),
            "image_spec": json.dumps(model_image_spec(model).to_dict()),
        },
    )
    with replaced_atomically(path) as temporary:
        onnx.save(onnx_model, temporary)
    return path


def _rename_output(onnx_model, new_name):
    # tf2onnx names the output after the TF tensor ("Identity:0"); give it a readable name.
    old_name = onnx_model.graph.output[0].name
    for node in onnx_model.graph.node:
        node.output[:] = [new_name if name == old_name else name for name in node.output]
        node.input[:] = [new_name if name == old_name else name for name in node.input]
    return new_name


def write_sample_images(images, labels, class_names, directory):
    """Writes uint8 (N, H, W, C) images as ``<directory>/<class>_<i>.png`` files (the class
    name made a safe file name: :func:`keras_vit.ownership.safe_filename`).

    Returns:
        The list of paths written.
    """
    import tensorflow as tf

    os.makedirs(directory, exist_ok=True)
    paths = []
    for index, (image, label) in enumerate(zip(images, labels)):
        # A class name is a label, not a path: "../x", "/tmp/x" or "a/b" must not lead out of the folder.
        stem = ownership.safe_filename(class_names[int(label)], fallback=f"class{int(label)}")
        path = ownership.path_inside(directory, f"{stem}_{index}.png")
        with replaced_atomically(path) as temporary:
            tf.io.write_file(temporary, tf.io.encode_png(np.asarray(image, dtype="uint8")))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- verification
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


def _bytes_signature_parity(directory, model, images, output_kind):
    """Top-1 agreement of the bytes signature with Keras on the same images as PNG files,
    prepared for Keras by the reader ``predict`` uses."""
    import tensorflow as tf

    spec = model_image_spec(model)
    pixels = (np.asarray(spec.to_unit_range(np.asarray(images, "float32"))) + 1.0) * 127.5
    pixels = np.round(pixels).clip(0, 255).astype("uint8")
    encoded = tf.constant([tf.io.encode_png(image).numpy() for image in pixels])
    decoded = np.stack([decode_and_resize(data, spec).numpy() for data in encoded])
    keras_top1 = np.asarray(model(decoded, training=False)).argmax(-1)
    result = tf.saved_model.load(directory).signatures[BYTES_SIGNATURE](images=encoded)
    top1 = result["top_k_ids"].numpy()[:, 0]
    return {
        "num_images": int(len(pixels)),
        "top1_agreement": float(np.mean(top1 == keras_top1)),
        "all_ok": bool(np.all(result["ok"].numpy())),
    }


# --------------------------------------------------------------------------- what to ship
TFLITE_DESCRIPTIONS = {
    "float32": "float32 weights and arithmetic",
    "float16": "float16 weights, float32 arithmetic on CPU (float16 on GPU delegates)",
    "dynamic_int8": "int8 weights; activations quantized on the fly in the matmuls, float32 elsewhere",
    "int8_mixed": "int8 weights and calibrated int8 activations in the weight matmuls; "
    "LayerNorm, GELU, softmax and attention matmuls in float32; float32 input and output",
    "int8": "full integer: every op int8 (int32 bias), int8 input and output; for integer-only accelerators",
}
TARGETS = ("cpu_phone", "gpu_delegate", "integer_only_accelerator")


def _tflite_entries(artifacts):
    return {e["precision"]: e for e in artifacts if e["format"] == "tflite" and e.get("verified")}


def recommend(artifacts):
    """The file to ship for each target, with the reason, from a manifest's artifacts.

    ``cpu_phone``: the verified TFLite file fastest at one thread as measured at export,
    the smaller one when two are within 10% (unmeasured: int8_mixed, else int8, ...); ``gpu_delegate``: float16 (the GPU delegate
    computes in float16; int8 files are dequantized there and gain nothing), else float32;
    ``integer_only_accelerator``: the full-integer int8 file when it has no float op.

    Returns:
        ``{target: {"file", "reason"}}``; ``file`` is None when no artifact fits.
    """
    tflite = _tflite_entries(artifacts)
    chosen = {}
    timed = [e for e in tflite.values() if isinstance(e.get("latency_ms", {}).get("1_thread"), float)]
    if timed:
        fastest = min(e["latency_ms"]["1_thread"] for e in timed)
        near = [e for e in timed if e["latency_ms"]["1_thread"] <= 1.1 * fastest]
        best = min(near, key=lambda e: (e["size_bytes"], e["latency_ms"]["1_thread"]))
        reference = tflite.get("float32", {}).get("latency_ms", {}).get("1_thread")
        versus = f", float32 {reference:.2f} ms" if reference and best["precision"] != "float32" else ""
        chosen["cpu_phone"] = {
            "file": best["file"],
            "reason": f"fastest verified TFLite file at 1 thread on the exporting machine within 10% "
            f"({best['latency_ms']['1_thread']:.2f} ms{versus}), the smallest of those "
            f"({best['size_bytes'] / 1e6:.1f} MB); confirm on the phone with keras-vit benchmark --artifacts",
        }
    elif tflite:
        # Unmeasured: int8 where CPUs gain (the weight matmuls), float32 where int8 is slow.
        order = ["int8_mixed", "int8", "dynamic_int8", "float16", "float32"]
        best = tflite[min(tflite, key=lambda precision: order.index(precision))]
        chosen["cpu_phone"] = {
            "file": best["file"],
            "reason": f"latency not measured (latency_runs=0): the first verified of {', '.join(order)}",
        }
    else:
        chosen["cpu_phone"] = {"file": None, "reason": "no verified TFLite file was exported"}
    for precision in ("float16", "float32"):
        if precision in tflite:
            chosen["gpu_delegate"] = {
                "file": tflite[precision]["file"],
                "reason": "GPU delegates compute in float16: "
                + ("float16 weights load as they are, at half the size of float32"
                   if precision == "float16" else "float32 is the float file exported")
                + "; int8 files are dequantized on the GPU and gain nothing",
            }
            break
    else:
        chosen["gpu_delegate"] = {"file": None, "reason": "no verified float TFLite file was exported"}
    full = tflite.get("int8")
    if full is not None and full.get("integer_only"):
        chosen["integer_only_accelerator"] = {
            "file": full["file"],
            "reason": "every op int8 with int8 input and output (scale and zero point in the input "
            "and output details): what NPUs, DSPs and the Edge TPU run whole",
        }
    else:
        chosen["integer_only_accelerator"] = {
            "file": None,
            "reason": "no verified integer-only file (export the int8 precision with calibration images)"
            if full is None else f"the int8 file still has float ops {full.get('float_ops')}",
        }
    return chosen


# --------------------------------------------------------------------------- export
def _check_precisions(precisions):
    unknown = [p for p in precisions if p not in TFLITE_PRECISIONS]
    if unknown:
        raise ValueError(f"Unknown TFLite precision(s) {unknown}; expected some of {list(TFLITE_PRECISIONS)}.")


def parse_formats(formats):
    """``"all"``, ``"tflite"``, ``"savedmodel,onnx"`` or a list -> a tuple of formats."""
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = list(formats)
    if "all" in formats:
        return FORMATS
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"Unknown export format(s) {unknown or formats}; expected 'all' or some of {list(FORMATS)}.")
    return tuple(f for f in FORMATS if f in formats)


def _sha256(path):
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                file_path = os.path.join(root, name)
                digest.update(os.path.relpath(file_path, path).encode())
                with open(file_path, "rb") as file:
                    for chunk in iter(lambda: file.read(1 << 20), b""):
                        digest.update(chunk)
    else:
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def export_model(
    model,
    output_dir=None,
    formats="all",
    tflite_precisions=TFLITE_PRECISIONS,
    class_names=None,
    images_dir=None,
    data=None,
    top_k=DEFAULT_TOP_K,
    opset=DEFAULT_OPSET,
    tolerances=None,
    overwrite=False,
    progress=True,
    latency_runs=DEFAULT_LATENCY_RUNS,
    max_pixels=DEFAULT_MAX_PIXELS,
):
    """Exports a model to SavedModel / TFLite / ONNX, verifies each and writes the manifest.

    Args:
        model: a Keras model, a ``.keras`` file or a run folder (``saved_models/<run>``).
        output_dir: where the artifacts go; ``<folder of the .keras file>/export`` when
            None (required when ``model`` is a model object).
        formats: ``"all"`` or some of ``"savedmodel"``, ``"tflite"``, ``"onnx"`` (a list or
            a comma-separated string).
        tflite_precisions: TFLite precisions to write (``TFLITE_PRECISIONS``).
        class_names: None (the run's ``config.json`` ``class_names``, else ``"0"``..),
            a list, a comma-separated string or a file with one name per line.
        images_dir: folder of images for int8 calibration and verification (see
            :func:`export_data`); None uses the run's own image folder (for a run folder
            trained on one), else embedded MNIST for 28x28x1 models.
        data: a dict as returned by :func:`export_data`, overriding ``images_dir``.
        top_k: k of the SavedModel bytes signature's top-k outputs.
        opset: ONNX opset (>= 17).
        tolerances: overrides of ``DEFAULT_TOLERANCES``.
        overwrite: replace the export already in ``output_dir`` (a folder keras-vit marked
            as an export and holding nothing else; see :mod:`keras_vit.ownership`); otherwise
            an existing export is an error, raised before anything is written. The new export
            is built beside it and swapped in whole once written, so a failure or a kill
            leaves the old one as it was (also when a replacement fails verification).
        progress: show a progress bar over the artifacts.
        max_pixels: largest decoded width x height the SavedModel's bytes signature accepts.
        latency_runs: timed batch-1 runs per file and thread setting (median kept, in
            the manifest as measured on this machine); 0 measures nothing.

    Returns:
        The manifest (also written to ``output_dir/manifest.json``): ``artifacts``, one
        entry per artifact with ``format``, ``precision``, ``file``, ``size_bytes``,
        ``sha256``, ``input``, ``outputs``, ``parity`` and ``latency_ms``; ``latency``
        (how and where it was measured) and ``recommended`` (the file for each target,
        with the reason).

    Raises:
        ValueError: bad formats, precisions, class names, missing calibration data, or an
            artifact that exists already while ``overwrite`` is false.
        RuntimeError: a conversion failed or an artifact is outside its tolerance; the
            message names each such artifact (the manifest is written first).
    """
    import keras

    formats = parse_formats(formats)
    precisions = [p.strip() for p in tflite_precisions.split(",")] if isinstance(tflite_precisions, str) else list(tflite_precisions)
    _check_precisions(precisions)
    if "tflite" not in formats:
        precisions = []
    model_path = None
    if not isinstance(model, keras.Model):
        model_path = run_folder.resolve_model_path(model)
        run = run_folder.of_model(model_path)
        if class_names is None:
            class_names = run.class_names()
        if images_dir is None and data is None:
            images_dir = run.image_folder()  # calibrate and verify on the run's own images
        if output_dir is None:
            output_dir = run.export_dir
        model = load_keras_model(model_path)
    elif output_dir is None:
        raise ValueError("output_dir is required when exporting a model object (not a .keras file).")
    height, width, channels = model_input_spec(model)
    output_kind = model_output_kind(model)
    num_classes = int(model.outputs[0].shape[-1])
    if class_names is None:
        class_names = getattr(model, "class_names", None)  # a checkpoint's id2label, carried by the model
    class_names = parse_class_names(class_names, num_classes)
    if data is None:
        data = export_data(model, images_dir)
    calibrated = [p for p in precisions if p in CALIBRATED_PRECISIONS]
    if calibrated and data.get("calibration") is None:
        raise ValueError(
            f"TFLite {' and '.join(calibrated)} needs calibration images from the training data, and a "
            f"{height}x{width}x{channels} model has no built-in dataset: pass --images DIR "
            f"(images_dir=...) or leave int8 out of the precisions ({list(TFLITE_PRECISIONS)})."
        )

    planned = []  # (format, precision, file name)
    if "savedmodel" in formats:
        planned.append(("savedmodel", "float32", SAVEDMODEL_DIRNAME))
    planned += [("tflite", precision, tflite_filename(precision)) for precision in precisions]
    if "onnx" in formats:
        planned.append(("onnx", "float32", ONNX_FILENAME))
    target, replaced = _export_target(output_dir, overwrite)  # refused here, before any file is written
    staging = _staging_folder(target)
    try:
        manifest, failures = _write_export(
            model, staging, os.path.abspath(output_dir), planned=planned, formats=formats, class_names=class_names,
            data=data, model_path=model_path, top_k=top_k, opset=opset, tolerances=tolerances, progress=progress,
            latency_runs=latency_runs, max_pixels=max_pixels,
        )
        if failures and replaced is not None:
            raise RuntimeError(
                f"{len(failures)} artifact(s) failed verification; the previous export in {output_dir} is left as "
                f"it was: " + "; ".join(failures)
            )
        parent, name = os.path.split(target)
        if (ownership.read_marker(parent) or {}).get("kind") == "run":
            ownership.record(parent, name)  # a run's export goes with the run (train --overwrite)
        left = ownership.put_in_place(staging, target, replaced)
    except OSError as error:
        raise _refused(error, output_dir, replaced) from error
    finally:
        _discard(staging)
    if left:
        logger.warning("Kept files keras-vit did not write in the replaced export: %s in %s",
                       ownership.describe(left), staging)
    if failures:
        raise RuntimeError(
            f"{len(failures)} artifact(s) failed verification (details in "
            f"{os.path.join(output_dir, MANIFEST_FILENAME)}): " + "; ".join(failures)
        )
    return manifest


def _export_target(output_dir, overwrite):
    """``(real path, what keras-vit owns there)`` for an export to ``output_dir``: None when
    there is nothing to replace. Raises ValueError (one line) for a folder that must not be
    replaced: an existing export without ``overwrite``, a folder keras-vit did not create
    (whatever it holds), or an export holding files keras-vit did not write."""
    target = ownership.real_folder(output_dir)  # a linked folder is written where it points
    if not os.path.exists(target):
        return target, None
    if not os.path.isdir(target):
        raise ValueError(f"{output_dir!r} is a file, not a folder; choose another output folder (--output DIR).")
    held, marked = ownership.entries(target), ownership.is_marked(target)
    if not held and not marked:
        return target, None  # an empty folder: the export is renamed onto it
    mine = ownership.owned(target, "export", _legacy_export)
    if mine is None and not marked:
        raise ValueError(
            f"{output_dir} already holds {held[:5]} and is not a keras-vit export folder (no {ownership.MARKER}): "
            f"nothing in it is replaced, even with --overwrite; choose another output folder (--output DIR)."
        )
    if mine is not None and not overwrite:
        raise ValueError(
            f"{output_dir} already holds {held}; pass overwrite=True (--overwrite) to replace "
            f"them or choose another output folder (--output DIR)."
        )
    ownership.refuse_unless_replaceable(target, "export", mine, choose="choose another output folder (--output DIR)")
    return target, mine


def _legacy_export(folder):
    """An export written before the marker: a keras-vit manifest.json listing every entry there."""
    try:
        with open(os.path.join(folder, MANIFEST_FILENAME)) as file:
            manifest = json.load(file)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or "keras_vit_version" not in manifest or not isinstance(manifest.get("artifacts"), list):
        return None
    listed = {MANIFEST_FILENAME, LABELS_FILENAME} | {entry.get("file") for entry in manifest["artifacts"] if isinstance(entry, dict)}
    listed |= {SAMPLES_DIRNAME} if manifest.get("samples") else set()
    return listed if set(os.listdir(folder)) <= listed else None


def _staging_folder(target):
    """A fresh marked folder beside ``target`` where the export is built (one a killed export left is emptied)."""
    parent, name = os.path.split(target)
    staging = os.path.join(parent, f".{name}.export-tmp")
    if os.path.lexists(staging):
        _discard(staging)
        if os.path.lexists(staging):
            raise ValueError(f"{staging!r} holds files keras-vit did not write; move it away to export to {target!r}.")
    os.makedirs(staging)
    ownership.mark(staging, "export")
    return staging


def _discard(staging):
    # What keras-vit wrote there: an unfinished export, or the old one swapped out.
    if os.path.isdir(staging) and not os.path.islink(staging):
        ownership.remove_owned(staging, ownership.owned(staging, "export") or set())


def _refused(error, output_dir, replaced):
    """A write the system refused while exporting, as one line naming the output folder."""
    if error.errno not in _WRITE_FAILURES:
        return error
    kept = "the previous export there is left as it was" if replaced is not None else "nothing was put there"
    return OSError(error.errno, f"{os.strerror(error.errno)} while exporting ({kept})", os.fspath(output_dir))


def _write_export(model, output_dir, export_dir, *, planned, formats, class_names, data, model_path, top_k, opset,
                  tolerances, progress, latency_runs, max_pixels):
    """Writes and verifies every planned artifact, ``labels.txt``, the samples and the
    manifest into ``output_dir`` (a fresh staging folder: nothing from an earlier export is
    there to be read), each entry recorded in its marker before it is written. Returns
    ``(manifest, failures)``."""
    import keras
    import tensorflow as tf

    height, width, channels = model_input_spec(model)
    output_kind = model_output_kind(model)
    num_classes = int(model.outputs[0].shape[-1])
    verification = np.asarray(data["verification"], dtype="float32")
    labels = data.get("verification_labels")
    reference = np.asarray(model.predict(verification, batch_size=64, verbose=0), dtype="float32")
    reference_scale = float(np.max(np.abs(reference)))
    spec = model_image_spec(model)
    input_range = [float(v) for v in spec.input_range]
    input_spec = {"name": "images", "shape": [None, height, width, channels], "dtype": "float32", "range": input_range}

    artifacts, failures = [], []
    steps = keras.utils.Progbar(len(planned), unit_name="artifact") if progress else None
    with tempfile.TemporaryDirectory() as scratch:
        float_savedmodel = None
        for fmt, precision, name in planned:
            path = os.path.join(output_dir, name)
            ownership.record(output_dir, name)
            entry = {"format": fmt, "precision": precision, "file": name, "input": input_spec}
            try:
                if fmt == "savedmodel":
                    export_savedmodel(model, path, class_names, top_k, max_pixels)
                    entry["signatures"] = {
                        BYTES_SIGNATURE: {
                            "input": {
                                "name": "images", "shape": [None], "dtype": "string",
                                "content": f"encoded JPEG/PNG/BMP/GIF, any size up to {int(max_pixels):,} pixels",
                            },
                            "outputs": ["ok", "error", "probabilities", "top_k_ids", "top_k_probabilities", "top_k_names"],
                            "bad_images": "ok false and the reason in error; probabilities 0, top_k_ids -1",
                        },
                        FLOAT_SIGNATURE: {"input": input_spec, "outputs": ["outputs", "probabilities"]},
                    }
                elif fmt == "tflite":
                    if float_savedmodel is None:
                        float_savedmodel = _float_savedmodel(model, os.path.join(scratch, "float_saved_model"))
                    export_tflite(model, path, precision, data.get("calibration"), float_savedmodel)
                    entry["ops"] = tflite_ops(path)
                    entry["float_ops"] = float_ops(path)
                    entry["integer_only"] = not entry["float_ops"]
                    entry["description"] = TFLITE_DESCRIPTIONS[precision]
                    if precision == "int8":
                        entry["input"] = dict(
                            input_spec, dtype="int8", quantized_from=f"float32 in [{input_range[0]:g}, {input_range[1]:g}]"
                        )
                    entry["labels"] = LABELS_FILENAME
                else:
                    export_onnx(model, path, class_names, opset)
                    entry["opset"] = int(opset)
                entry["outputs"] = {"name": "outputs", "kind": output_kind, "shape": [None, num_classes]}
                figures = parity(reference, run_artifact(path, verification, kind=fmt), labels)
                if fmt == "savedmodel":
                    figures["bytes_signature"] = _bytes_signature_parity(path, model, verification[:64], output_kind)
                entry["parity"] = figures
                tolerance_kind = precision if precision in ("float32", "float16") else "int8"
                problem = check_parity(figures, tolerance_kind, reference_scale, tolerances)
                bytes_figures = figures.get("bytes_signature")
                if problem is None and bytes_figures and bytes_figures["top1_agreement"] < 1.0:
                    problem = f"bytes signature top-1 agrees with Keras on {bytes_figures['top1_agreement']:.2%} only"
                if problem is None and bytes_figures and not bytes_figures["all_ok"]:
                    problem = "bytes signature reports valid PNG images as not ok"
            except (RuntimeError, ValueError, tf.errors.OpError) as error:
                problem = str(error)
            entry["verified"] = problem is None
            if problem is not None:
                entry["error"] = problem
                failures.append(f"{name}: {problem}")
            if os.path.exists(path):
                entry["size_bytes"] = _size(path)
                entry["sha256"] = _sha256(path)
            artifacts.append(entry)
            if steps is not None:
                steps.add(1)

    ownership.record(output_dir, LABELS_FILENAME, MANIFEST_FILENAME, *([SAMPLES_DIRNAME] if data.get("samples") is not None else []))
    with replaced_atomically(os.path.join(output_dir, LABELS_FILENAME)) as temporary, open(temporary, "w") as file:
        file.write("\n".join(class_names) + "\n")
    samples = []
    if data.get("samples") is not None:
        samples_dir = os.path.join(output_dir, SAMPLES_DIRNAME)
        paths = write_sample_images(data["samples"], data["sample_labels"], class_names, samples_dir)
        samples = [os.path.relpath(p, output_dir) for p in paths]
    latency = None
    if latency_runs:
        paths = {os.path.join(output_dir, e["file"]): e for e in artifacts if e.get("verified")}
        measured = measure_latency(list(paths), verification[:1], runs=int(latency_runs))
        for path, figures in measured.items():
            paths[path]["latency_ms"] = figures
        latency = {
            "measured_on": f"at export on {machine()}",
            "batch": 1,
            "runs": int(latency_runs),
            "threads": thread_settings(),
            "note": "median ms per image of interleaved runs; SavedModel with TensorFlow's own thread "
            "pools. Other devices differ (int8 gains most on CPUs with int8 dot-product instructions): "
            "measure there with keras-vit benchmark --artifacts DIR.",
        }
    for entry in artifacts:  # readers trust this manifest only for the files whose checksum it records
        path = os.path.join(output_dir, entry["file"])
        if os.path.exists(path):
            entry["sha256"] = artifact_checksum(path)
    from keras_vit.version import __version__

    manifest = {
        "keras_vit_version": __version__,
        "tensorflow_version": tf.__version__,
        "source_model": os.path.abspath(model_path) if model_path else model.name,
        "export_dir": export_dir,
        "image_size": [height, width],
        "channels": channels,
        "input_range": input_range,
        "image_spec": {**spec.to_dict(), "description": spec.describe()},
        "preprocessing": "decode upright (EXIF orientation), " + spec.describe(),
        "bytes_signature_max_pixels": int(max_pixels) if "savedmodel" in formats else None,
        "num_classes": num_classes,
        "class_names": class_names,
        "output_kind": output_kind,
        "labels_file": LABELS_FILENAME,
        "verification_data": data.get("source"),
        "tolerances": {**DEFAULT_TOLERANCES, **(tolerances or {})},
        "keras_max_abs_output": reference_scale,
        "artifacts": artifacts,
        "latency": latency,
        "recommended": recommend(artifacts),
        "samples": samples,
    }
    write_json(os.path.join(output_dir, MANIFEST_FILENAME), manifest)
    return manifest, failures


def _ms(entry, label):
    value = entry.get("latency_ms", {}).get(label)
    if value is None and label == "all_threads":  # a SavedModel runs on TensorFlow's own pools
        value = entry.get("latency_ms", {}).get("process_threads")
    return f"{value:.2f}" if isinstance(value, float) else "-"


def format_manifest(manifest):
    """A Markdown table of a manifest's artifacts (size, latency, parity, verification) and
    the recommended file for each target."""
    latency = manifest.get("latency") or {}
    threads = latency.get("threads", {}).get("all_threads", "all")
    header = ["file", "format", "precision", "size (KiB)", "ms 1 thread", f"ms {threads} threads",
              "max abs diff", "top-1 agreement", "accuracy", "verified"]
    rows = []
    for entry in manifest["artifacts"]:
        figures = entry.get("parity", {})
        accuracy = figures.get("accuracy")
        rows.append(
            [
                entry["file"],
                entry["format"],
                entry["precision"],
                f"{entry['size_bytes'] / 1024:,.0f}" if "size_bytes" in entry else "-",
                _ms(entry, "1_thread"),
                _ms(entry, "all_threads"),
                f"{figures['max_abs_diff']:.2e}" if "max_abs_diff" in figures else "-",
                f"{figures['top1_agreement']:.2%}" if "top1_agreement" in figures else "-",
                "-" if accuracy is None else f"{accuracy:.2%} (Keras {figures['keras_accuracy']:.2%})",
                "yes" if entry.get("verified") else "NO",
            ]
        )
    lines = [markdown_table(header, rows)]
    lines.append(f"\nArtifacts in {manifest['export_dir']}; verified on {manifest['verification_data']}.")
    if latency:
        lines.append(f"Latency: batch 1, median of {latency['runs']} runs, measured {latency['measured_on']}.")
    recommended = manifest.get("recommended") or {}
    if recommended:
        lines.append("\nRecommended:")
        for target, choice in recommended.items():
            lines.append(f"- {target}: {choice['file'] or 'none'} ({choice['reason']})")
    return "\n".join(lines)
