"""The Vision Transformer's layers, written with ``keras.ops`` only (TensorFlow, JAX, PyTorch).

Every constructor argument is stored and returned by ``get_config``; sub-layers are created
in ``__init__`` and built in ``build`` so that weights exist before a checkpoint is loaded.
Names follow the original Flax modules where the checkpoint mapping depends on them.
The patch embedding (``Patches``, ``PatchEncoder``) is in ``core/embedding.py``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_vit import backends
from keras_vit.core.config import GELUS, LAYER_NORM_EPSILON, POOLINGS, as_pair

# The patch embedding lives in core/embedding.py; re-exported here, where models, weights
# and visualisation import it from.
from keras_vit.core.embedding import (  # noqa: F401
    Patches,
    PatchEncoder,
    resample_grid,
    sincos_2d_position_embedding,
)


_PACKAGE = "keras_vit"


def _dense_init():
    # vit_jax: xavier_uniform kernels, biases ~ N(0, 1e-6) in the MLP.
    return dict(
        kernel_initializer=keras.initializers.GlorotUniform(),
        bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a whole residual branch per sample while training.

    Args:
        rate: probability of dropping the branch; kept samples are scaled by 1 / (1 - rate).
        seed: optional seed for the random generator.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1); got {rate!r}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype) < keep
        return ops.where(mask, x / keep, ops.zeros_like(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerNorm(keras.layers.LayerNormalization):
    """Keras ``LayerNormalization`` with the original's epsilon, 1e-6 (Keras defaults to 1e-3).

    Same weights and math as the parent; inside a fused training or inference step on a
    TensorFlow CPU it runs as one oneDNN kernel, and traced for the TFLite converter as ops
    that stay int8 (:mod:`keras_vit.backends`).
    """

    def __init__(self, epsilon=LAYER_NORM_EPSILON, **kwargs):
        super().__init__(epsilon=epsilon, **kwargs)

    def call(self, inputs):
        if backends.fused_layer_norm_applies(self, inputs):
            return backends.fused_layer_norm(self, inputs)
        if backends.tflite_layer_norm_applies(self, inputs):
            return backends.tflite_layer_norm(self, inputs)
        return super().call(inputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MLP(keras.layers.Layer):
    """The Transformer MLP: Dense(mlp_dim) -> GELU -> Dropout -> Dense(D) -> Dropout.

    ``gelu="tanh"`` is the approximation ``jax.nn.gelu`` computes in the original;
    ``"exact"`` the erf form of timm and Hugging Face. On an official checkpoint they differ
    by about 5e-4 in the logits, so each family is loaded with its own.

    Args:
        mlp_dim: width of the hidden layer.
        dropout: dropout rate after each Dense.
        gelu: ``"tanh"`` or ``"exact"``.
    """

    def __init__(self, mlp_dim, dropout=0.0, gelu="tanh", **kwargs):
        super().__init__(**kwargs)
        if gelu not in GELUS:
            raise ValueError(f"gelu={gelu!r}; expected one of {list(GELUS)}.")
        self.mlp_dim = int(mlp_dim)
        self.dropout = float(dropout)
        self.gelu = gelu
        self.dense_0 = keras.layers.Dense(self.mlp_dim, name="Dense_0", dtype=self.dtype_policy, **_dense_init())
        self.dense_1 = None  # width known only in build
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.dense_0.build(input_shape)
        self.dense_1 = keras.layers.Dense(input_shape[-1], name="Dense_1", dtype=self.dtype_policy, **_dense_init())
        self.dense_1.build(input_shape[:-1] + (self.mlp_dim,))

    def call(self, x, training=False):
        x = self.dense_0(x)  # (B, T, mlp_dim)
        if self.gelu == "tanh":
            x = ops.gelu(x, approximate=True)
        else:
            # Written with erf: TensorFlow's own exact GELU uses erfc, which tf2onnx cannot convert.
            x = 0.5 * x * (1.0 + ops.erf(x * ops.cast(1.0 / math.sqrt(2.0), x.dtype)))
        x = self.dropout_layer(x, training=training)
        return self.dropout_layer(self.dense_1(x), training=training)  # (B, T, D)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mlp_dim=self.mlp_dim, dropout=self.dropout, gelu=self.gelu)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SelfAttention(keras.layers.MultiHeadAttention):
    """Keras ``MultiHeadAttention`` (same weights, same math), self-attention written out.

    Unmasked self-attention, the only kind a ViT uses, is computed from the layer's public
    projections as two batched matmuls over (B, heads, T, head_dim) and a softmax, which
    every backend and exporter runs well (Keras's general path, einsum equations or
    ``dot_product_attention``'s TensorFlow fallback, is slower on CPU; docs/performance.md).
    Masks, causal attention and cross-attention go to the parent's implementation.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.probabilities_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def call(self, query, value=None, key=None, training=None, return_attention_scores=False, **kwargs):
        """The parent's arguments; ``value`` defaults to ``query`` (self-attention)."""
        value = query if value is None else value
        if kwargs or value is not query or (key is not None and key is not query) or len(query.shape) != 3:
            return super().call(
                query, value, key, training=training, return_attention_scores=return_attention_scores, **kwargs
            )
        q = ops.transpose(self.query_dense(query), (0, 2, 1, 3))  # (B, heads, T, head_dim)
        k = ops.transpose(self.key_dense(query), (0, 2, 3, 1))  # (B, heads, head_dim, T)
        v = ops.transpose(self.value_dense(query), (0, 2, 1, 3))  # (B, heads, T, head_dim)
        scale = ops.cast(1.0 / math.sqrt(self.key_dim), q.dtype)
        probabilities = ops.softmax(ops.matmul(q, k) * scale, axis=-1)  # (B, heads, T, T)
        weights = self.probabilities_dropout(probabilities, training=training)
        attended = ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))  # (B, T, heads, head_dim)
        outputs = self.output_dense(attended)  # (B, T, D)
        return (outputs, probabilities) if return_attention_scores else outputs

    def build(self, query_shape, value_shape=None, key_shape=None):
        # Called on the query alone (``layer(x)``), the value is the query.
        super().build(query_shape, query_shape if value_shape is None else value_shape, key_shape)

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        return super().compute_output_shape(query_shape, query_shape if value_shape is None else value_shape, key_shape)

    def compute_output_spec(self, query, value=None, key=None, **kwargs):
        return super().compute_output_spec(query, query if value is None else value, key, **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerBlock(keras.layers.Layer):
    """Pre-LayerNorm encoder block of the paper (Eq. 2-3).

    ``x = x + DropPath(Dropout(MSA(LN(x))))`` then ``x = x + DropPath(MLP(LN(x)))``,
    with LayerNorm epsilon 1e-6 (each branch times a LayerScale when ``layer_scale_init``). Sub-layer names follow the original checkpoints
    (``LayerNorm_0``, ``MultiHeadDotProductAttention_1``, ``LayerNorm_2``, ``MlpBlock_3``).
    Inside a fused step on a TensorFlow CPU the same computation runs as oneDNN kernels
    (:mod:`keras_vit.backends`); every other trace, exports included, runs ``call`` as written.

    Args:
        num_heads: attention heads; the width must be divisible by it.
        mlp_dim: width of the MLP's hidden layer.
        dropout: dropout after attention and in the MLP.
        attention_dropout: dropout on the attention probabilities.
        drop_path_rate: stochastic depth rate of this block.
        layer_norm_epsilon: LayerNorm epsilon (1e-6 in the original and timm, 1e-12 in
            Hugging Face's ViT).
        gelu: ``"tanh"`` (the original) or ``"exact"`` (timm, Hugging Face).
        layer_scale_init: None, or the initial value of LayerScale (CaiT, timm's
            ``init_values``): each branch is multiplied by a learned per-channel scale
            (``layer_scale_1``, ``layer_scale_2``) before its residual sum.

    Call arguments:
        x: (B, T, D) tokens.
        training: dropout and drop path are active only when true.
        return_attention_scores: also return the (B, heads, T, T) attention probabilities.

    Returns:
        (B, T, D), or ((B, T, D), (B, heads, T, T)) with ``return_attention_scores``.
    """

    def __init__(
        self,
        num_heads,
        mlp_dim,
        dropout=0.0,
        attention_dropout=0.0,
        drop_path_rate=0.0,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        gelu="tanh",
        layer_scale_init=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if layer_scale_init is not None and not (
            isinstance(layer_scale_init, (int, float)) and not isinstance(layer_scale_init, bool) and layer_scale_init > 0
        ):
            raise ValueError(f"layer_scale_init={layer_scale_init!r}; expected None or a positive number.")
        self.gelu = gelu
        self.layer_scale_init = None if layer_scale_init is None else float(layer_scale_init)
        self.layer_scale_1 = self.layer_scale_2 = None
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.dropout = float(dropout)
        self.attention_dropout = float(attention_dropout)
        self.drop_path_rate = float(drop_path_rate)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        policy = self.dtype_policy
        self.norm_1 = LayerNorm(epsilon=self.layer_norm_epsilon, name="LayerNorm_0", dtype=policy)
        self.attention = None  # key_dim known only in build
        self.attention_output_dropout = keras.layers.Dropout(self.dropout, dtype=policy)
        self.norm_2 = LayerNorm(epsilon=self.layer_norm_epsilon, name="LayerNorm_2", dtype=policy)
        self.mlp = MLP(self.mlp_dim, self.dropout, gelu=gelu, name="MlpBlock_3", dtype=policy)
        self.drop_path = DropPath(self.drop_path_rate, dtype=policy)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        hidden_size = input_shape[-1]
        if hidden_size % self.num_heads:
            raise ValueError(
                f"Width {hidden_size} is not divisible by num_heads={self.num_heads}; "
                f"choose a head count that divides the width."
            )
        self.attention = SelfAttention(
            num_heads=self.num_heads,
            key_dim=hidden_size // self.num_heads,
            dropout=self.attention_dropout,
            kernel_initializer=keras.initializers.GlorotUniform(),
            name="MultiHeadDotProductAttention_1",
            dtype=self.dtype_policy,
        )
        self.norm_1.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.norm_2.build(input_shape)
        self.mlp.build(input_shape)
        if self.layer_scale_init is not None:
            initializer = keras.initializers.Constant(self.layer_scale_init)
            self.layer_scale_1 = self.add_weight(shape=(hidden_size,), initializer=initializer, name="layer_scale_1")
            self.layer_scale_2 = self.add_weight(shape=(hidden_size,), initializer=initializer, name="layer_scale_2")

    def call(self, x, training=False, return_attention_scores=False):
        if backends.fused_block_applies(self, x):
            return backends.fused_block(self, x, training, return_attention_scores)
        y, scores = self.attention(self.norm_1(x), training=training, return_attention_scores=True)
        y = self.attention_output_dropout(y, training=training)
        x = x + self.drop_path(self._scaled(y, self.layer_scale_1), training=training)  # Eq. 2
        y = self.mlp(self.norm_2(x), training=training)
        x = x + self.drop_path(self._scaled(y, self.layer_scale_2), training=training)  # Eq. 3
        return (x, scores) if return_attention_scores else x

    @staticmethod
    def _scaled(y, layer_scale):
        return y if layer_scale is None else y * ops.cast(layer_scale, y.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, x, training=False, return_attention_scores=False):
        # Lets a functional graph take the attention probabilities as a second output.
        outputs = keras.KerasTensor(x.shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return outputs
        scores_shape = (x.shape[0], self.num_heads, x.shape[1], x.shape[1])
        return outputs, keras.KerasTensor(scores_shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            drop_path_rate=self.drop_path_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
            gelu=self.gelu,
            layer_scale_init=self.layer_scale_init,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenPooling(keras.layers.Layer):
    """Pools the encoder's tokens into one vector per image.

    Args:
        pooling: ``"token"`` takes the token at ``token_index`` (the class token, first;
            DeiT's distillation token, second); ``"gap"`` averages the patch tokens (those
            after the ``num_prefix_tokens`` class/distillation/register tokens, as timm).
        num_prefix_tokens: tokens before the patches.
        token_index: the token ``"token"`` pooling takes.

    Call arguments:
        x: (B, T, D).

    Returns:
        (B, D).
    """

    def __init__(self, pooling="token", num_prefix_tokens=0, token_index=0, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; expected one of {list(POOLINGS)}.")
        self.pooling = pooling
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.token_index = int(token_index)

    def call(self, x):
        if self.pooling == "token":
            return x[:, self.token_index]
        return ops.mean(x[:, self.num_prefix_tokens :], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(pooling=self.pooling, num_prefix_tokens=self.num_prefix_tokens, token_index=self.token_index)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PixelNormalization(keras.layers.Layer):
    """A checkpoint's own preprocessing inside the model: ``(pixels / 255 - mean) / std``.

    The original ViT checkpoints take ``x / 127.5 - 1`` (mean = std = 0.5); timm and Hugging
    Face files name theirs (ImageNet's mean and std for DeiT). Integer or float pixels in
    [0, 255] go in.

    Args:
        mean: per-channel mean of pixels scaled to [0, 1] (one value: every channel).
        std: per-channel standard deviation of pixels scaled to [0, 1].
    """

    def __init__(self, mean=(0.5,), std=(0.5,), **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or not self.mean or min(self.std) <= 0:
            raise ValueError(f"mean={mean!r}, std={std!r}; expected one value per channel each, std positive.")

    def call(self, pixels):
        x = ops.cast(pixels, self.compute_dtype)
        mean = ops.cast(np.asarray(self.mean, "float32") * 255.0, x.dtype)
        scale = ops.cast(np.asarray(self.std, "float32") * 255.0, x.dtype)
        return (x - mean) / scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mean=self.mean, std=self.std)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenGrid(keras.layers.Layer):
    """Encoder tokens as a feature map: prefix tokens dropped, patches laid out on their grid.

    Args:
        num_prefix_tokens: class, distillation and register tokens before the patches.
        stride: (height, width) of the image pixels each token covers (the patch size,
            times the ResNet stem's stride for hybrids).

    Call arguments:
        tokens: (B, prefix + N, D).
        images: the model's input (B, H, W, C), whose size gives the grid.

    Returns:
        (B, H / stride_h, W / stride_w, D).
    """

    def __init__(self, num_prefix_tokens, stride, **kwargs):
        super().__init__(**kwargs)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.stride = as_pair(stride, "stride")

    def build(self, tokens_shape, images_shape):
        # No weights: checks that the tokens fill the images' grid, when both sizes are known.
        num_tokens = tokens_shape[1]
        grid = self.compute_output_shape(tokens_shape, images_shape)[1:3]
        if num_tokens is not None and None not in grid and num_tokens != self.num_prefix_tokens + grid[0] * grid[1]:
            raise ValueError(
                f"TokenGrid received {num_tokens} tokens for images of {tuple(images_shape[1:3])} pixels; "
                f"expected {self.num_prefix_tokens} prefix tokens plus one per {self.stride[0]}x{self.stride[1]} "
                f"cell of the image, {self.num_prefix_tokens + grid[0] * grid[1]} in all."
            )

    def call(self, tokens, images):
        shape = ops.shape(images)
        grid = (shape[1] // self.stride[0], shape[2] // self.stride[1])
        return ops.reshape(tokens[:, self.num_prefix_tokens :], (-1, grid[0], grid[1], tokens.shape[-1]))

    def compute_output_shape(self, tokens_shape, images_shape):
        grid = [None if size is None else size // step for size, step in zip(images_shape[1:3], self.stride)]
        return (tokens_shape[0], grid[0], grid[1], tokens_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(num_prefix_tokens=self.num_prefix_tokens, stride=self.stride)
        return config


def grid_shape(num_tokens: int, use_class_token: bool):
    """The square grid of ``num_tokens`` position embeddings, or None if not square."""
    side = math.isqrt(num_tokens - int(use_class_token))
    return (side, side) if side * side == num_tokens - int(use_class_token) else None
