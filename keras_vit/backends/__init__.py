"""Where the model core's layers run as faster, backend-specific forms.

The model core (:mod:`keras_vit.core`) is written once, with ``keras.ops``. Two of its
layers ask this module whether another form applies to them, and defer to it if so:
``TransformerBlock`` (the whole block as oneDNN kernels, :mod:`keras_vit.backends.tf_cpu`)
and ``LayerNorm`` (one kernel; or, for the TFLite converter only, the int8-friendly form
of :mod:`keras_vit.backends.tflite`, inside :func:`tflite_forms`). A fused form applies only

- on the TensorFlow backend, on a CPU, in float32 or bfloat16, and
- while a step is traced inside :func:`fused_forms`, which ``VisionTransformer``'s
  training, evaluation and prediction steps (``fit``, ``evaluate``, ``predict``, the
  ``*_on_batch`` calls) and the multi-worker loop enter.

Every other trace, and so every exporter's (``model.export`` in any format,
``tf.saved_model.save``, the TFLite converter, tf2onnx), gets the portable graph: TFLite
and ONNX have no training-mode batch norm, which the fused LayerNorm is made of.
"""

from __future__ import annotations

from keras_vit.backends import tf_cpu, tflite
from keras_vit.backends.tf_cpu import fused_forms, without_xla
from keras_vit.backends.tflite import tflite_forms

__all__ = ["fused_forms", "without_xla", "tflite_forms", "fused_block_applies", "fused_block",
           "fused_layer_norm_applies", "fused_layer_norm", "tflite_layer_norm_applies", "tflite_layer_norm"]


def fused_block_applies(block, x) -> bool:
    """Whether ``block`` (a built ``TransformerBlock``) runs fused on the tokens ``x``."""
    return tf_cpu.active(block.compute_dtype) and tf_cpu.block_applies(block, x)


def fused_block(block, x, training=False, return_attention_scores=False):
    """``block(x)``, fused: see :func:`keras_vit.backends.tf_cpu.transformer_block`."""
    return tf_cpu.transformer_block(block, x, training=training, return_attention_scores=return_attention_scores)


def fused_layer_norm_applies(norm, x) -> bool:
    """Whether ``norm`` (a ``LayerNormalization``) runs as one fused kernel on ``x``."""
    return tf_cpu.active(norm.compute_dtype) and tf_cpu.layer_norm_applies(norm, x)


def fused_layer_norm(norm, x):
    """``norm(x)`` as one oneDNN kernel."""
    return tf_cpu.layer_norm_layer(norm, x)


def tflite_layer_norm_applies(norm, x) -> bool:
    """Whether ``norm`` traces to the TFLite form (inside :func:`tflite_forms` only)."""
    return tflite.layer_norm_applies(norm, x)


def tflite_layer_norm(norm, x):
    """``norm(x)`` as the ops that stay int8 in LiteRT: see :mod:`keras_vit.backends.tflite`."""
    return tflite.layer_norm(norm, x)
