"""The Vision Transformer's layers, written with ``keras.ops`` only (TensorFlow, JAX, PyTorch).

Every constructor argument is stored and returned by ``get_config``; sub-layers are created
in ``__init__`` and built in ``build`` so that weights exist before a checkpoint is loaded.
Names follow the original Flax modules where the checkpoint mapping depends on them.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_vit import backends
from keras_vit.core.config import POOLINGS, POSITION_EMBEDDINGS, as_pair

LAYER_NORM_EPSILON = 1e-6  # the original's (Keras defaults to 1e-3)

_PACKAGE = "keras_vit"


def _dense_init():
    # vit_jax: xavier_uniform kernels, biases ~ N(0, 1e-6) in the MLP.
    return dict(
        kernel_initializer=keras.initializers.GlorotUniform(),
        bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Patches(keras.layers.Layer):
    """Cuts images into non-overlapping patches, flattened in raster order.

    A reshape and a transpose, no ``tf.image.extract_patches``, so that the op exports to
    TFLite builtins and ONNX. Each patch is flattened as (row, column, channel), the order
    of a ``(P, P, C, D)`` convolution kernel reshaped to ``(P * P * C, D)``.

    Args:
        patch_size: int or (height, width) of a patch.

    Call arguments:
        images: (B, H, W, C) with H and W multiples of the patch size.

    Returns:
        (B, N, P_h * P_w * C) with N = (H / P_h) * (W / P_w), patches left to right,
        then top to bottom.
    """

    def __init__(self, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = as_pair(patch_size, "patch_size")

    def _grid(self, shape):
        height, width, channels = shape[1], shape[2], shape[3]
        ph, pw = self.patch_size
        if height is not None and width is not None and (height % ph or width % pw):
            raise ValueError(
                f"Image size {height}x{width} is not divisible by the patch size {ph}x{pw}: "
                f"height and width must be multiples of the patch size."
            )
        grid_h = None if height is None else height // ph
        grid_w = None if width is None else width // pw
        return grid_h, grid_w, channels

    def call(self, images):
        grid_h, grid_w, channels = self._grid(images.shape)
        ph, pw = self.patch_size
        shape = ops.shape(images)
        grid_h = shape[1] // ph if grid_h is None else grid_h
        grid_w = shape[2] // pw if grid_w is None else grid_w
        # (B, gh, ph, gw, pw, C) -> (B, gh, gw, ph, pw, C) -> (B, gh * gw, ph * pw * C)
        x = ops.reshape(images, (-1, grid_h, ph, grid_w, pw, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, grid_h * grid_w, ph * pw * channels))

    def compute_output_shape(self, input_shape):
        grid_h, grid_w, channels = self._grid(input_shape)
        num = None if grid_h is None or grid_w is None else grid_h * grid_w
        return (input_shape[0], num, self.patch_size[0] * self.patch_size[1] * channels)

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size)
        return config


def sincos_2d_position_embedding(grid_size, hidden_size, temperature=10_000.0):
    """Fixed 2D sine-cosine position embedding (big_vision ``posemb_sincos_2d``).

    Returns a float32 NumPy array (1, grid_h * grid_w, hidden_size).
    """
    grid_h, grid_w = as_pair(grid_size, "grid_size")
    if hidden_size % 4:
        raise ValueError(
            f"'sincos2d' position embeddings need a hidden size divisible by 4; got {hidden_size}."
        )
    y, x = np.mgrid[:grid_h, :grid_w]
    omega = np.arange(hidden_size // 4) / max(hidden_size // 4 - 1, 1)
    omega = 1.0 / temperature**omega
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    embedding = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return embedding[None].astype("float32")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PatchEncoder(keras.layers.Layer):
    """Projects patches to width D, prepends the class token, adds position embeddings.

    Weights: ``projection`` (Dense, the original's ``embedding`` convolution reshaped),
    ``cls`` (1, 1, D), zero-initialised, only with a class token, and the position
    embedding, added after the class token is prepended as in the original:
    ``"learned"``: ``pos_embedding`` (1, N [+1], D), normal std 0.02;
    ``"learned_2d"``: ``row_embedding`` (grid_h, D) + ``column_embedding`` (grid_w, D),
    the class token gets none; ``"sincos2d"``: fixed (big_vision), none on the class token;
    ``"none"``: nothing added.

    Args:
        hidden_size: D.
        grid_size: int or (grid_h, grid_w), the number of patches along each side.
        use_class_token: prepend a learnable class token.
        position_embedding: one of ``"learned"``, ``"learned_2d"``, ``"sincos2d"``, ``"none"``.

    Call arguments:
        patches: (B, N, P * P * C) from :class:`Patches`, N = grid_h * grid_w.

    Returns:
        (B, N + 1, D) tokens with a class token first, (B, N, D) without.
    """

    def __init__(
        self,
        hidden_size,
        grid_size,
        use_class_token=True,
        position_embedding="learned",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"Unknown position_embedding {position_embedding!r}; expected one of "
                f"{list(POSITION_EMBEDDINGS)}."
            )
        self.hidden_size = int(hidden_size)
        self.grid_size = as_pair(grid_size, "grid_size")
        self.use_class_token = bool(use_class_token)
        self.position_embedding = position_embedding
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_tokens = self.num_patches + int(self.use_class_token)
        self.projection = keras.layers.Dense(
            self.hidden_size,
            kernel_initializer=keras.initializers.LecunNormal(),
            name="projection",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self._check_num_patches(input_shape[1])
        self.projection.build(input_shape)
        if self.use_class_token:
            self.cls = self.add_weight(shape=(1, 1, self.hidden_size), initializer="zeros", name="cls")
        pos_init = keras.initializers.RandomNormal(stddev=0.02)
        if self.position_embedding == "learned":
            self.pos_embedding = self.add_weight(
                shape=(1, self.num_tokens, self.hidden_size), initializer=pos_init, name="pos_embedding"
            )
        elif self.position_embedding == "learned_2d":
            self.row_embedding = self.add_weight(
                shape=(self.grid_size[0], self.hidden_size), initializer=pos_init, name="row_embedding"
            )
            self.column_embedding = self.add_weight(
                shape=(self.grid_size[1], self.hidden_size), initializer=pos_init, name="column_embedding"
            )
        elif self.position_embedding == "sincos2d":
            self._sincos = sincos_2d_position_embedding(self.grid_size, self.hidden_size)

    def _check_num_patches(self, num_patches):
        if num_patches is not None and num_patches != self.num_patches:
            raise ValueError(
                f"PatchEncoder expected {self.num_patches} patches (a {self.grid_size[0]}x"
                f"{self.grid_size[1]} grid) but received {num_patches}. Feed images of the size "
                f"the model was built for, or build the model for the new size (checkpoints "
                f"resample their position embeddings when loaded)."
            )

    def patch_position_embedding(self):
        """(1, N, D) embedding of the patch positions (class token's excluded), or None."""
        if self.position_embedding == "learned":
            return self.pos_embedding[:, int(self.use_class_token) :]
        if self.position_embedding == "learned_2d":
            grid = self.row_embedding[:, None, :] + self.column_embedding[None, :, :]
            return ops.reshape(grid, (1, self.num_patches, self.hidden_size))
        if self.position_embedding == "sincos2d":
            return ops.convert_to_tensor(self._sincos)
        return None

    def call(self, patches):
        self._check_num_patches(patches.shape[1])
        x = self.projection(patches)  # (B, N, D)
        if self.position_embedding in ("learned_2d", "sincos2d"):
            x = x + ops.cast(self.patch_position_embedding(), x.dtype)
        if self.use_class_token:
            cls = ops.cast(self.cls, x.dtype)
            cls = ops.broadcast_to(cls, (ops.shape(x)[0], 1, self.hidden_size))
            x = ops.concatenate([cls, x], axis=1)  # (B, N + 1, D)
        if self.position_embedding == "learned":
            x = x + ops.cast(self.pos_embedding, x.dtype)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_tokens, self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            grid_size=self.grid_size,
            use_class_token=self.use_class_token,
            position_embedding=self.position_embedding,
        )
        return config


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
    TensorFlow CPU it runs as one oneDNN kernel (:mod:`keras_vit.backends`).
    """

    def __init__(self, epsilon=LAYER_NORM_EPSILON, **kwargs):
        super().__init__(epsilon=epsilon, **kwargs)

    def call(self, inputs):
        if backends.fused_layer_norm_applies(self, inputs):
            return backends.fused_layer_norm(self, inputs)
        return super().call(inputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MLP(keras.layers.Layer):
    """The Transformer MLP: Dense(mlp_dim) -> GELU (tanh) -> Dropout -> Dense(D) -> Dropout.

    The GELU is the tanh approximation, as ``jax.nn.gelu`` computes it in the original;
    the exact erf form moves the logits of an official checkpoint by about 5e-4.

    Args:
        mlp_dim: width of the hidden layer.
        dropout: dropout rate after each Dense.
    """

    def __init__(self, mlp_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mlp_dim = int(mlp_dim)
        self.dropout = float(dropout)
        self.dense_0 = keras.layers.Dense(self.mlp_dim, name="Dense_0", dtype=self.dtype_policy, **_dense_init())
        self.dense_1 = None  # width known only in build
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.dense_0.build(input_shape)
        self.dense_1 = keras.layers.Dense(input_shape[-1], name="Dense_1", dtype=self.dtype_policy, **_dense_init())
        self.dense_1.build(input_shape[:-1] + (self.mlp_dim,))

    def call(self, x, training=False):
        x = ops.gelu(self.dense_0(x), approximate=True)  # (B, T, mlp_dim)
        x = self.dropout_layer(x, training=training)
        return self.dropout_layer(self.dense_1(x), training=training)  # (B, T, D)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mlp_dim=self.mlp_dim, dropout=self.dropout)
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

    def compute_output_spec(self, query, value=None, key=None, **kwargs):
        return super().compute_output_spec(query, query if value is None else value, key, **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerBlock(keras.layers.Layer):
    """Pre-LayerNorm encoder block of the paper (Eq. 2-3).

    ``x = x + DropPath(Dropout(MSA(LN(x))))`` then ``x = x + DropPath(MLP(LN(x)))``,
    with LayerNorm epsilon 1e-6. Sub-layer names follow the original checkpoints
    (``LayerNorm_0``, ``MultiHeadDotProductAttention_1``, ``LayerNorm_2``, ``MlpBlock_3``).
    Inside a fused step on a TensorFlow CPU the same computation runs as oneDNN kernels
    (:mod:`keras_vit.backends`); every other trace, exports included, runs ``call`` as written.

    Args:
        num_heads: attention heads; the width must be divisible by it.
        mlp_dim: width of the MLP's hidden layer.
        dropout: dropout after attention and in the MLP.
        attention_dropout: dropout on the attention probabilities.
        drop_path_rate: stochastic depth rate of this block.
        layer_norm_epsilon: LayerNorm epsilon.

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
        **kwargs,
    ):
        super().__init__(**kwargs)
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
        self.mlp = MLP(self.mlp_dim, self.dropout, name="MlpBlock_3", dtype=policy)
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

    def call(self, x, training=False, return_attention_scores=False):
        if backends.fused_block_applies(self, x):
            return backends.fused_block(self, x, training, return_attention_scores)
        y, scores = self.attention(self.norm_1(x), training=training, return_attention_scores=True)
        x = x + self.drop_path(self.attention_output_dropout(y, training=training), training=training)  # Eq. 2
        x = x + self.drop_path(self.mlp(self.norm_2(x), training=training), training=training)  # Eq. 3
        return (x, scores) if return_attention_scores else x

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
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenPooling(keras.layers.Layer):
    """Pools the encoder's tokens into one vector per image.

    Args:
        pooling: ``"token"`` takes the class token (the first), ``"gap"`` averages all tokens.

    Call arguments:
        x: (B, T, D).

    Returns:
        (B, D).
    """

    def __init__(self, pooling="token", **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; expected one of {list(POOLINGS)}.")
        self.pooling = pooling

    def call(self, x):
        if self.pooling == "token":
            return x[:, 0]
        return ops.mean(x, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(pooling=self.pooling)
        return config


def grid_shape(num_tokens: int, use_class_token: bool):
    """The square grid of ``num_tokens`` position embeddings, or None if not square."""
    side = math.isqrt(num_tokens - int(use_class_token))
    return (side, side) if side * side == num_tokens - int(use_class_token) else None
