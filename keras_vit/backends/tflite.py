"""The TFLite form of LayerNorm, traced only for the graph handed to the TFLite converter.

Keras's LayerNormalization computes ``x * inv + (-mean * inv + beta)`` through
``tf.nn.moments``; converted to full-integer int8 that becomes a SQUARED_DIFFERENCE that
LiteRT runs in a slow reference kernel and a NEG the converter leaves in float32. The same
normalisation written as ``(x - mean) * rsqrt(mean((x - mean)^2) + eps) * gamma + beta``
converts to SUB, MUL, MEAN, RSQRT and ADD, which stay int8 and run on XNNPACK
(docs/performance.md, "Exported artifacts", has the profiles). It is the same function, so
every TFLite precision uses it; the SavedModel and ONNX traces do not.
"""

from __future__ import annotations

import contextlib
import threading

_state = threading.local()


@contextlib.contextmanager
def tflite_forms():
    """Within this context (thread-local), keras_vit's LayerNorm traces to the TFLite form."""
    previous = getattr(_state, "tflite", False)
    _state.tflite = True
    try:
        yield
    finally:
        _state.tflite = previous


def layer_norm_applies(norm, x) -> bool:
    """Inside :func:`tflite_forms`, for a LayerNorm over the last axis (not RMS scaling)."""
    if not getattr(_state, "tflite", False):
        return False
    axis = norm.axis if isinstance(norm.axis, (list, tuple)) else [norm.axis]
    rank = len(x.shape)
    return not getattr(norm, "rms_scaling", False) and [a % rank for a in axis] == [rank - 1]


def layer_norm(norm, inputs):
    """``norm(inputs)`` as SUB, MUL, MEAN, RSQRT and ADD (see the module docstring)."""
    import tensorflow as tf

    x = tf.cast(inputs, tf.float32)
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    centred = x - mean
    variance = tf.reduce_mean(centred * centred, axis=-1, keepdims=True)
    outputs = centred * tf.math.rsqrt(variance + norm.epsilon)
    if norm.scale:
        outputs = outputs * tf.cast(norm.gamma, tf.float32)
    if norm.center:
        outputs = outputs + tf.cast(norm.beta, tf.float32)
    return tf.cast(outputs, norm.compute_dtype)
