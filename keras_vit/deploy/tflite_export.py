"""The TFLite (LiteRT) exporter: one file per precision, builtin ops only.

Every precision converts one float SavedModel traced with the TFLite forms of the layers
(:func:`keras_vit.backends.tflite_forms`), written once per export
(:class:`FloatSavedModel`); the full-integer file's attention operands are then made
symmetric (:mod:`keras_vit.deploy.tflite_rewrite`).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from keras_vit.backends import tflite_forms
from keras_vit.deploy.artifacts import TFLiteArtifact
from keras_vit.deploy.exporter import Exporter
from keras_vit.deploy.layout import (
    CALIBRATED_PRECISIONS,
    FLOAT_SIGNATURE,
    LABELS_FILENAME,
    check_precisions,
    tflite_filename,
)
from keras_vit.deploy.serving import ServingSpec, float_function
from keras_vit.deploy.tflite_rewrite import symmetric_matmul_operands
from keras_vit.files import replaced_atomically

TFLITE_DESCRIPTIONS = {
    "float32": "float32 weights and arithmetic",
    "float16": "float16 weights, float32 arithmetic on CPU (float16 on GPU delegates)",
    "dynamic_int8": "int8 weights; activations quantized on the fly in the matmuls, float32 elsewhere",
    "int8_mixed": "int8 weights and calibrated int8 activations in the weight matmuls; "
    "LayerNorm, GELU, softmax and attention matmuls in float32; float32 input and output",
    "int8": "full integer: every op int8 (int32 bias), int8 input and output; for integer-only accelerators",
}


def float_savedmodel(model, directory, serving):
    """Writes the float SavedModel the TFLite converter reads; returns ``directory``."""
    # The converter freezes the variables of a SavedModel; converting the live function
    # instead leaves VAR_HANDLE/READ_VARIABLE ops that a plain interpreter never initialises.
    # Traced with the TFLite forms of the layers (keras_vit.backends.tflite_forms).
    import keras

    with tflite_forms():
        archive = keras.export.ExportArchive()
        archive.add_endpoint(FLOAT_SIGNATURE, float_function(model, serving))
        archive.write_out(directory, verbose=False)
    return directory


# Ops of the mixed int8 file that stay float32: those XNNPACK runs only in float
# (BATCH_MATMUL, SOFTMAX, GELU) and the LayerNorm and residual arithmetic between them,
# so that int8 is used where it pays, in the weight matmuls, and nowhere else.
_MIXED_FLOAT_OPS = (
    "ADD", "BATCH_MATMUL", "CONCATENATION", "GELU", "LOGISTIC", "MEAN", "MUL", "NEG", "PAD",
    "RSQRT", "SOFTMAX", "SQUARED_DIFFERENCE", "SQRT", "SUB", "TANH", "POW", "DIV",
)


def export_tflite(model, path, precision="float32", calibration_images=None, saved_model_dir=None, serving=None):
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
        serving: the model's :class:`ServingSpec` (computed when None).

    Returns:
        ``path``.

    Raises:
        ValueError: for an unknown precision or ``"int8"`` without calibration images.
        RuntimeError: when the converter fails (its message included).
    """
    import tensorflow as tf

    check_precisions([precision])
    if precision in CALIBRATED_PRECISIONS and (calibration_images is None or len(calibration_images) == 0):
        raise ValueError(
            f"{precision} needs calibration images from the training data "
            "(calibration_images, or --images DIR on the command line); got none."
        )
    with tempfile.TemporaryDirectory() as scratch:
        if saved_model_dir is None:
            serving = serving or ServingSpec.of(model)
            saved_model_dir = float_savedmodel(model, os.path.join(scratch, "saved_model"), serving)
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


class FloatSavedModel:
    """The float SavedModel every TFLite precision converts, written on first use into ``scratch``."""

    def __init__(self, model, serving, scratch):
        self.model, self.serving, self.scratch = model, serving, scratch
        self._path = None

    def path(self):
        if self._path is None:
            self._path = float_savedmodel(self.model, os.path.join(self.scratch, "float_saved_model"), self.serving)
        return self._path


class TFLiteExporter(Exporter):
    """One TFLite precision; ``calibration`` images for the calibrated ones."""

    format = "tflite"
    reader = TFLiteArtifact

    def __init__(self, precision, float_model, calibration=None):
        self.precision = precision
        self.filename = tflite_filename(precision)
        self.float_model = float_model
        self.calibration = calibration

    def write(self, model, path, serving):
        export_tflite(model, path, self.precision, self.calibration, self.float_model.path(), serving)

    def describe(self, path, serving):
        operators = float_ops(path)
        entry = {
            "ops": tflite_ops(path),
            "float_ops": operators,
            "integer_only": not operators,
            "description": TFLITE_DESCRIPTIONS[self.precision],
        }
        if self.precision == "int8":
            low, high = serving.input_range
            entry["input"] = dict(serving.input_entry(), dtype="int8", quantized_from=f"float32 in [{low:g}, {high:g}]")
        entry["labels"] = LABELS_FILENAME
        return entry
