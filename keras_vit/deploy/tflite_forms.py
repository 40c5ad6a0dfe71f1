"""TFLite-friendly forms of a model's layers, traced only while converting to TFLite.

Keras's LayerNormalization computes ``x * inv + (-mean * inv + beta)`` through
``tf.nn.moments``. Converted to full-integer int8 that gives a SQUARED_DIFFERENCE, which
LiteRT runs in a slow reference kernel (12% of the int8 ViT-Ti/16's time), and a NEG of
the mean that the converter leaves in float32 between a DEQUANTIZE and a QUANTIZE, so the
"integer-only" file was not (docs/performance.md, "Exported artifacts"). The same
normalisation written as ``(x - mean) * rsqrt(mean((x - mean)^2) + eps) * gamma + beta``
converts to SUB, MUL, MEAN, RSQRT and ADD, which all stay int8 and run on XNNPACK. It is
the same function (the export verifies every file against the Keras model), so it is used
for every TFLite precision; the model core, the SavedModel and ONNX are not touched.
"""

from __future__ import annotations

import contextlib

import numpy as np


def _layer_norm(layer, inputs):
    import tensorflow as tf

    x = tf.cast(inputs, tf.float32)
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    centred = x - mean
    variance = tf.reduce_mean(centred * centred, axis=-1, keepdims=True)
    outputs = centred * tf.math.rsqrt(variance + layer.epsilon)
    if layer.scale:
        outputs = outputs * tf.cast(layer.gamma, tf.float32)
    if layer.center:
        outputs = outputs + tf.cast(layer.beta, tf.float32)
    return tf.cast(outputs, layer.compute_dtype)


def _applies(layer, inputs):
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = len(inputs.shape)
    return not getattr(layer, "rms_scaling", False) and [a % rank for a in axis] == [rank - 1]


@contextlib.contextmanager
def tflite_forms():
    """Within this context, keras_vit's LayerNorm traces to the TFLite-friendly form.

    Only the trace of the graph handed to the TFLite converter runs inside it; the class
    gets its own ``call`` back on exit, also after an error.
    """
    from keras_vit.core import layers

    original = layers.LayerNorm.call

    def call(self, inputs):
        return _layer_norm(self, inputs) if _applies(self, inputs) else original(self, inputs)

    layers.LayerNorm.call = call
    try:
        yield
    finally:
        layers.LayerNorm.call = original


# Ops whose int8 output must carry their input's scale and zero point unchanged.
_PASS_THROUGH = ("RESHAPE", "TRANSPOSE")


def symmetric_matmul_operands(flatbuffer):
    """Full-integer TFLite bytes with every BATCH_MATMUL's right operand quantized symmetrically.

    XNNPACK runs an int8 BATCH_MATMUL only when its right operand has zero point 0;
    otherwise LiteRT's own kernel runs it, and the attention's two batch matmuls took 57%
    of the int8 ViT-Ti/16's time. The right operands (keys and values) come from a
    FULLY_CONNECTED through RESHAPE/TRANSPOSE, so the FULLY_CONNECTED can write them
    with zero point 0 and a scale that covers the same calibrated range
    (``max(|min|, |max|) / 127``: at most one bit of resolution less). Chains whose
    tensors feed anything else are left as they are.

    Args:
        flatbuffer: the converter's bytes of a full-integer model.

    Returns:
        ``(bytes, count)``: the model and how many operands were changed.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = model.subgraphs[0]
    names = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in graph.operators]
    producer, consumers = {}, {}
    for index, op in enumerate(graph.operators):
        for tensor in op.outputs:
            producer[int(tensor)] = index
        for tensor in op.inputs:
            consumers.setdefault(int(tensor), []).append(index)
    changed = 0
    for index, op in enumerate(graph.operators):
        if names[index] != "BATCH_MATMUL":
            continue
        chain, ops_in_chain, tensor = [], {index}, int(op.inputs[1])
        while True:
            chain.append(tensor)
            source = producer.get(tensor)
            if source is None or names[source] not in _PASS_THROUGH:
                break
            ops_in_chain.add(source)
            tensor = int(graph.operators[source].inputs[0])
        if source is None or any(set(consumers.get(t, [])) - ops_in_chain for t in chain):
            continue
        quantization = graph.tensors[chain[0]].quantization
        if quantization is None or quantization.scale is None or len(quantization.scale) != 1:
            continue
        scale, zero_point = float(quantization.scale[0]), int(quantization.zeroPoint[0])
        if zero_point == 0 or graph.tensors[chain[0]].type != 9:  # already symmetric, or not int8
            continue
        bound = max((zero_point + 128) * scale, (127 - zero_point) * scale)
        for tensor in chain:
            graph.tensors[tensor].quantization.scale = np.asarray([bound / 127.0], np.float32)
            graph.tensors[tensor].quantization.zeroPoint = np.asarray([0], np.int64)
        changed += 1
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), changed
