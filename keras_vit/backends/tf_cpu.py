"""The TensorFlow-CPU fused forms of the Transformer block: the only code that knows them.

Each function computes exactly what the ``keras.ops`` form in :mod:`keras_vit.core.layers`
computes, written so that TensorFlow's graph optimizer (grappler's remapper, with oneDNN)
turns it into one kernel where the portable form takes several passes over memory:

- ``dense``: ``MatMul -> BiasAdd [-> Gelu] [-> AddV2]`` becomes one matmul whose epilogue
  adds the bias, applies the GELU or adds the residual.
- ``layer_norm``: ``Reshape -> FusedBatchNormV3 -> Reshape -> Mul -> AddV2`` becomes
  ``_MklLayerNorm`` (one pass instead of about eight), and its gradient is one
  ``FusedBatchNormGradV3``.
- ``self_attention``: the query, key and value projections as one matmul with a fused
  bias, one transpose for all three, the scale folded into the query weights.
- ``gelu_tanh_for_training``: in training, where the GELU cannot live in the matmul's
  epilogue (its gradient needs the pre-activation), it and its gradient are each one
  XLA-compiled elementwise loop.
- ``fold_input_affine``: in training, where the LayerNorm cannot be one fused kernel
  either, its scale and shift go into the next matmul's weights (``normalize`` then
  ``dense`` / ``self_attention`` with ``input_affine``).

:func:`transformer_block` assembles them into the block's forward pass; it and
:func:`layer_norm_layer` are what :mod:`keras_vit.backends` defers to, and the only code
in keras_vit that reads Keras's private ``MultiHeadAttention`` members. They apply only
inside :func:`fused_forms` (see :mod:`keras_vit.backends`).
"""

from __future__ import annotations

import contextlib
import functools
import threading

_state = threading.local()


@contextlib.contextmanager
def _tracing_flag(name):
    # Thread-local, so that one thread's trace does not change another's graph.
    previous = getattr(_state, name, False)
    setattr(_state, name, True)
    try:
        yield
    finally:
        setattr(_state, name, previous)


def fused_forms():
    """Traces keras_vit layers with the fused forms where they apply (training and
    inference steps); outside it every trace is portable (exporters)."""
    return _tracing_flag("fused")


def without_xla():
    """Traces the training GELU as plain TensorFlow ops instead of XLA-compiled loops.

    For TensorFlow builds without XLA's CPU JIT, and for before/after measurements.
    """
    return _tracing_flag("without_xla")


def active(compute_dtype) -> bool:
    """Whether the fused forms apply: inside fused_forms, TensorFlow backend, CPU only."""
    import keras

    if not getattr(_state, "fused", False) or keras.backend.backend() != "tensorflow":
        return False
    if compute_dtype not in ("float32", "bfloat16"):  # what oneDNN's fused kernels take
        return False
    return not _has_gpu()


@functools.lru_cache(maxsize=None)
def onednn_enabled() -> bool:
    """Whether TensorFlow's oneDNN graph rewrites run (on x86 CPUs with AVX-512 by default).

    Without them the fused forms still run, as Eigen's ``_FusedMatMul`` and
    ``FusedBatchNormV3`` kernels, but the GELU stays a separate op.
    """
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


@functools.lru_cache(maxsize=None)
def _has_gpu() -> bool:
    # The fusions are oneDNN's (CPU); cuDNN's batch norm also refuses epsilon < 1e-5.
    # Cached: logical devices are fixed once TensorFlow has started, and eager calls
    # would otherwise list them in every layer of every forward pass.
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def dense_fused(x, kernel, bias, activation=None, residual=None, training=False, input_affine=None):
    """``activation(x @ kernel + bias) [+ residual]`` over the last axis of ``x``.

    As 2D ``MatMul -> BiasAdd [-> Gelu] [-> AddV2]``, the pattern oneDNN runs as one
    matmul with its epilogue. ``activation`` is None or ``"gelu_tanh"``; ``residual`` has
    the output's shape. With ``training``, the GELU is :func:`gelu_tanh_for_training`
    instead: the backward pass needs the pre-activation, so the fusion cannot apply.
    ``input_affine`` (gamma, beta): ``x`` is first scaled and shifted, in the weights
    (:func:`fold_input_affine`).
    """
    import tensorflow as tf

    if input_affine is not None:
        kernel, bias = fold_input_affine(kernel, bias, input_affine)
    y = tf.nn.bias_add(tf.matmul(tf.reshape(x, (-1, x.shape[-1])), kernel), bias)
    if activation == "gelu_tanh":
        y = gelu_tanh_for_training(y) if training else tf.nn.gelu(y, approximate=True)
    elif activation is not None:
        raise ValueError(f"Unknown activation {activation!r}; expected None or 'gelu_tanh'.")
    if residual is not None:
        y = y + tf.reshape(residual, (-1, kernel.shape[-1]))
    return tf.reshape(y, tf.concat([tf.shape(x)[:-1], [kernel.shape[-1]]], axis=0))


_GELU_C1 = 2.0 * (2.0 / 3.141592653589793) ** 0.5
_GELU_C2 = _GELU_C1 * 0.044715


def gelu_tanh_for_training(z):
    """The tanh GELU with a hand-written gradient, each direction one pass over memory.

    ``0.5 z (1 + tanh(a))`` with ``a = sqrt(2/pi) (z + 0.044715 z^3)`` equals
    ``z sigmoid(2a)``; its derivative is ``s + z s (1 - s) (C1 + 3 C2 z^2)`` with
    ``s = sigmoid(2a)``. Both directions are XLA-compiled (plain TensorFlow ops under
    :func:`without_xla`), so that their elementwise chains (six ops forward, nine
    backward, each a memory-bound pass over the (B T, mlp_dim) activations) run as one
    loop each (the gain, and why the softmax and LayerNorm are not treated the same way,
    are in docs/performance.md).
    """
    import tensorflow as tf

    forward, backward = _gelu_functions(xla=not getattr(_state, "without_xla", False))

    @tf.custom_gradient
    def gelu(z):
        return forward(z), lambda upstream: backward(z, upstream)

    return gelu(z)


@functools.lru_cache(maxsize=None)
def _gelu_functions(xla: bool):
    import tensorflow as tf

    def gate(z):
        return tf.sigmoid(z * (_GELU_C1 + _GELU_C2 * tf.square(z)))

    def forward(z):
        return z * gate(z)

    def backward(z, upstream):
        s = gate(z)
        return upstream * (s + z * s * (1.0 - s) * (_GELU_C1 + 3.0 * _GELU_C2 * tf.square(z)))

    if not xla:
        return forward, backward
    return tf.function(forward, jit_compile=True, autograph=False), tf.function(backward, jit_compile=True, autograph=False)


def layer_norm(x, gamma, beta, epsilon):
    """LayerNorm over the last axis of a rank-2 or rank-3 ``x`` (float32 or bfloat16).

    oneDNN computes the statistics in float32 for either input type, as Keras's
    LayerNormalization does; the output has ``x``'s dtype. Feeding bfloat16 directly
    (rather than casting it up first) keeps the fusable pattern intact: the graph
    optimizer would otherwise move the cast between the reshape and the batch norm.
    """
    import tensorflow as tf

    return normalize(x, epsilon) * tf.cast(gamma, x.dtype) + tf.cast(beta, x.dtype)


def fold_input_affine(kernel, bias, input_affine):
    """The (kernel, bias) of ``dense(x * gamma + beta)`` as a dense layer of ``x``.

    ``(x g + b) W + c = x (g W) + (b W + c)``: a LayerNorm's scale and shift, folded into
    the next matmul, cost two (D, N) weight-sized ops per step instead of two passes over
    the (B T, D) activations forward and four backward (their gradients come out of the
    matmul's weight gradient, also weight-sized). Used in training, where the LayerNorm
    cannot be one fused kernel.
    """
    import tensorflow as tf

    gamma, beta = (tf.cast(value, kernel.dtype) for value in input_affine)
    return kernel * gamma[:, None], bias + tf.linalg.matvec(kernel, beta, transpose_a=True)


def normalize(x, epsilon):
    """``(x - mean) / sqrt(variance + epsilon)`` over the last axis: a LayerNorm without
    its scale and shift (as ``FusedBatchNormV3`` over a (1, rows, D, 1) view, see
    :func:`layer_norm`)."""
    import tensorflow as tf

    shape = tf.shape(x)
    width = x.shape[-1]
    rows = tf.reshape(tf.reduce_prod(shape[:-1]), [1])
    # The remapper fuses only when the unit scale and zero offset are Fills of a runtime
    # size; with static shapes constant folding would turn them into constants first.
    rows = tf.compat.v1.placeholder_with_default(rows, shape=[1])
    empty = tf.constant([], tf.float32)
    # The raw op, because tf.nn.fused_batch_norm raises epsilon to cuDNN's minimum 1.001e-5.
    normalized = tf.raw_ops.FusedBatchNormV3(
        x=tf.reshape(x, tf.concat([[1], rows, [width, 1]], axis=0)),
        scale=tf.fill(rows, 1.0),
        offset=tf.fill(rows, 0.0),
        mean=empty,
        variance=empty,
        epsilon=float(epsilon),
        data_format="NCHW",
        is_training=True,
    )[0]
    return tf.reshape(normalized, shape)


def self_attention(x, query, key, value, output, scale, dropout=None, return_scores=False, residual=None,
                   input_affine=None):
    """Multi-head self-attention of ``x`` (B, T, D) with Keras MultiHeadAttention weights.

    Args:
        x: (B, T, D) tokens in the compute dtype.
        query, key, value: (kernel (D, H, d), bias (H, d)) pairs in the compute dtype.
        output: (kernel (H, d, D), bias (D,)) in the compute dtype.
        scale: the logits' scale, 1 / sqrt(d).
        dropout: None, or a function applied to the attention probabilities.
        return_scores: also return the (B, H, T, T) probabilities.
        residual: None, or (B, T, D) added to the output (fused into the last matmul).
        input_affine: None, or (gamma, beta) (D,): attends to ``x * gamma + beta``, the
            scale and shift folded into the Q/K/V weights (:func:`fold_input_affine`).
    """
    import tensorflow as tf

    width = x.shape[-1]
    _, heads, head_dim = query[0].shape
    scale = tf.cast(scale, x.dtype)
    kernel = tf.concat(
        [tf.reshape(query[0] * scale, (width, -1)), tf.reshape(key[0], (width, -1)), tf.reshape(value[0], (width, -1))],
        axis=1,
    )
    bias = tf.concat([tf.reshape(query[1] * scale, (-1,)), tf.reshape(key[1], (-1,)), tf.reshape(value[1], (-1,))], axis=0)
    if input_affine is not None:
        kernel, bias = fold_input_affine(kernel, bias, input_affine)
    tokens = tf.shape(x)[1] if x.shape[1] is None else x.shape[1]
    qkv = tf.nn.bias_add(tf.matmul(tf.reshape(x, (-1, width)), kernel), bias)
    qkv = tf.transpose(tf.reshape(qkv, (-1, tokens, 3, heads, head_dim)), (2, 0, 3, 1, 4))  # (3, B, H, T, d)
    # unstack, not qkv[i]: a strided slice's gradient writes a zero-filled full-size tensor.
    q, k, v = tf.unstack(qkv, axis=0)
    logits = tf.matmul(q, k, transpose_b=True)  # (B, H, T, T)
    probabilities = tf.nn.softmax(logits, axis=-1)
    weights = probabilities if dropout is None else dropout(probabilities)
    attended = tf.transpose(tf.matmul(weights, v), (0, 2, 1, 3))  # (B, T, H, d)
    attended = tf.reshape(attended, (-1, tokens, heads * head_dim))
    y = dense_fused(attended, tf.reshape(output[0], (heads * head_dim, -1)), output[1], residual=residual)
    return (y, probabilities) if return_scores else y


# --------------------------------------------------------------------------- Keras layers
def _plain_dense(dense) -> bool:
    # A biased Dense / EinsumDense without LoRA or quantization: the kernel is its own variable.
    return (
        getattr(dense, "bias", None) is not None
        and not getattr(dense, "lora_enabled", False)
        and not getattr(dense, "quantization_mode", None)
    )


def layer_norm_applies(norm, x) -> bool:
    """A LayerNorm over the last axis of rank-2 or rank-3 ``x``, with scale and shift."""
    rank = len(x.shape)
    return (
        rank in (2, 3)
        and [axis % rank for axis in norm.axis] == [rank - 1]
        and norm.center
        and norm.scale
        and not getattr(norm, "rms_scaling", False)
    )


def layer_norm_layer(norm, x):
    """``norm(x)`` for a Keras LayerNormalization that :func:`layer_norm_applies` to."""
    import tensorflow as tf

    return layer_norm(tf.cast(x, norm.compute_dtype), norm.gamma, norm.beta, norm.epsilon)


def _attention_applies(attention) -> bool:
    # Keras MultiHeadAttention with plain biased projections, no gate or sliding window.
    projections = (attention._query_dense, attention._key_dense, attention._value_dense, attention._output_dense)
    return (
        attention._use_bias
        and not getattr(attention, "_use_gate", False)
        and getattr(attention, "_sliding_window", None) is None
        and all(_plain_dense(dense) for dense in projections)
    )


def block_applies(block, x) -> bool:
    """A built TransformerBlock on unmasked (B, T, D) tokens whose sub-layers all fuse."""
    return (
        len(x.shape) == 3
        and getattr(x, "_keras_mask", None) is None
        # The fused kernels compute the original's block: tanh GELU, no LayerScale.
        and getattr(block, "gelu", "tanh") == "tanh"
        and getattr(block, "layer_scale_init", None) is None
        and layer_norm_applies(block.norm_1, x)
        and layer_norm_applies(block.norm_2, x)
        and _attention_applies(block.attention)
        and _plain_dense(block.mlp.dense_0)
        and _plain_dense(block.mlp.dense_1)
    )


def _dense_layer(dense, x, activation=None, residual=None, training=False, input_affine=None):
    dtype = dense.compute_dtype
    import tensorflow as tf

    return dense_fused(
        tf.cast(x, dtype), tf.cast(dense.kernel, dtype), tf.cast(dense.bias, dtype), activation=activation,
        residual=None if residual is None else tf.cast(residual, dtype), training=training, input_affine=input_affine,
    )


def _attention_layer(attention, x, training, residual, input_affine):
    import tensorflow as tf

    dtype = attention.compute_dtype

    def weights(dense):
        return tf.cast(dense.kernel, dtype), tf.cast(dense.bias, dtype)

    dropout = None
    if attention._dropout > 0 and training:
        dropout = lambda probabilities: attention._dropout_layer(probabilities, training=training)  # noqa: E731
    return self_attention(
        tf.cast(x, dtype),
        weights(attention._query_dense),
        weights(attention._key_dense),
        weights(attention._value_dense),
        weights(attention._output_dense),
        attention._inverse_sqrt_key_dim,
        dropout=dropout,
        return_scores=True,
        residual=None if residual is None else tf.cast(residual, dtype),
        input_affine=input_affine,
    )


def transformer_block(block, x, training=False, return_attention_scores=False):
    """The block's Eq. 2-3 as fused kernels (see :func:`block_applies`).

    Inference: each LayerNorm one kernel, the residual sums in the last matmuls' epilogues.
    Training: each LayerNorm's scale and shift folded into the next matmul's weights; with
    dropout or drop path active, the residuals are added after them instead.
    """
    training = bool(training)

    def norm(layer, x):
        if training:
            return normalize(x, layer.epsilon), (layer.gamma, layer.beta)
        return layer_norm_layer(layer, x), None

    mlp = block.mlp
    y, affine = norm(block.norm_1, x)
    if training and (block.dropout > 0 or block.drop_path_rate > 0):
        y, scores = _attention_layer(block.attention, y, training, None, affine)
        x = x + block.drop_path(block.attention_output_dropout(y, training=training), training=training)
        y, affine = norm(block.norm_2, x)
        y = _dense_layer(mlp.dense_0, y, activation="gelu_tanh", training=training, input_affine=affine)
        y = mlp.dropout_layer(_dense_layer(mlp.dense_1, mlp.dropout_layer(y, training=training)), training=training)
        x = x + block.drop_path(y, training=training)
    else:
        x, scores = _attention_layer(block.attention, y, training, x, affine)
        y, affine = norm(block.norm_2, x)
        y = _dense_layer(mlp.dense_0, y, activation="gelu_tanh", training=training, input_affine=affine)
        x = _dense_layer(mlp.dense_1, y, residual=x)
    return (x, scores) if return_attention_scores else x
