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
