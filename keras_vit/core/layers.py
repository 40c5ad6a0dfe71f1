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
from keras_vit.core.config import GELUS, POOLINGS, POSITION_EMBEDDINGS, POSITION_RESAMPLINGS, as_pair

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
        flatten: True returns the patches as a sequence; False keeps the grid (for a
            model of dynamic image size, whose grid is known only at call time).

    Call arguments:
        images: (B, H, W, C) with H and W multiples of the patch size.

    Returns:
        (B, N, P_h * P_w * C) with N = (H / P_h) * (W / P_w), patches left to right,
        then top to bottom; or (B, H / P_h, W / P_w, P_h * P_w * C) without ``flatten``.
    """

    def __init__(self, patch_size, flatten=True, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = as_pair(patch_size, "patch_size")
        self.flatten = bool(flatten)

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
        if not self.flatten:
            return ops.reshape(x, (-1, grid_h, grid_w, ph * pw * channels))
        return ops.reshape(x, (-1, grid_h * grid_w, ph * pw * channels))

    def compute_output_shape(self, input_shape):
        grid_h, grid_w, channels = self._grid(input_shape)
        width = self.patch_size[0] * self.patch_size[1] * channels
        if not self.flatten:
            return (input_shape[0], grid_h, grid_w, width)
        num = None if grid_h is None or grid_w is None else grid_h * grid_w
        return (input_shape[0], num, width)

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, flatten=self.flatten)
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


def resample_grid(grid, new_grid, method):
    """Resamples a (1, gh, gw, D) grid of position embeddings to ``new_grid``, in the graph.

    ``"bilinear"``: corner-aligned linear interpolation, what the original's loader computes
    with ``scipy.ndimage.zoom(order=1)``; ``"bicubic"``: antialiased bicubic (Keys, a=-0.5),
    what timm's ``resample_abs_pos_embed`` computes with PyTorch. ``new_grid`` may hold
    tensors (a model of dynamic image size).
    """
    if method == "bicubic":
        rows = _bicubic_weights(grid.shape[1], new_grid[0], grid.dtype)
        columns = _bicubic_weights(grid.shape[2], new_grid[1], grid.dtype)
        return ops.einsum("ij,bjkd,lk->bild", rows, grid, columns)
    for axis, new in ((1, new_grid[0]), (2, new_grid[1])):
        old = grid.shape[axis]
        step = (old - 1) / ops.maximum(ops.cast(new, "float32") - 1.0, 1.0)
        positions = ops.arange(new, dtype="float32") * step
        low = ops.minimum(ops.floor(positions), old - 1)
        fraction = ops.cast(positions - low, grid.dtype)
        low = ops.cast(low, "int32")
        high = ops.minimum(low + 1, old - 1)
        shape = [1, 1, 1, 1]
        shape[axis] = -1
        fraction = ops.reshape(fraction, shape)
        grid = ops.take(grid, low, axis=axis) * (1 - fraction) + ops.take(grid, high, axis=axis) * fraction
    return grid


def _bicubic_weights(old, new, dtype):
    """(new, old) interpolation matrix of PyTorch's antialiased bicubic resize (PIL's filter).

    Keys' cubic with a = -0.5, widened by the scale when shrinking, each row normalised to
    sum 1; evaluated at every input position (the kernel is zero outside its support), so
    ``new`` may be a tensor.
    """
    scale = old / ops.cast(new, "float32")
    stretch = ops.maximum(scale, 1.0)
    centers = (ops.arange(new, dtype="float32") + 0.5) * scale  # (new,)
    distance = ops.abs((ops.arange(old, dtype="float32")[None, :] + 0.5 - centers[:, None]) / stretch)
    a = -0.5
    near = ((a + 2) * distance - (a + 3)) * distance * distance + 1
    far = (((distance - 5) * distance + 8) * distance - 4) * a
    weights = ops.where(distance < 1, near, ops.where(distance < 2, far, ops.zeros_like(distance)))
    return ops.cast(weights / ops.sum(weights, axis=1, keepdims=True), dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PatchEncoder(keras.layers.Layer):
    """Projects patches to width D, prepends the prefix tokens, adds position embeddings.

    Tokens are ``[class, distillation, registers..., patches]``, each prefix token present
    only when asked for. Weights: ``projection`` (Dense, the original's ``embedding``
    convolution reshaped), ``cls`` (1, 1, D), zero-initialised as in the original,
    ``dist_token`` (1, 1, D, DeiT), ``registers`` (1, R, D), and the position embedding:
    ``"learned"``: ``pos_embedding`` (1, N + prefix, D), added after the prefix tokens are
    prepended as in the original, or (1, N, D) on the patches only with
    ``patch_position_embedding_only`` (timm's ``no_embed_class``);
    ``"learned_2d"``: ``row_embedding`` (grid_h, D) + ``column_embedding`` (grid_w, D),
    on the patches only; ``"sincos2d"``: fixed (big_vision), on the patches only;
    ``"none"``: nothing added.

    Args:
        hidden_size: D.
        grid_size: int or (grid_h, grid_w), the grid the position embeddings are stored for.
        use_class_token: prepend a learnable class token.
        position_embedding: one of ``"learned"``, ``"learned_2d"``, ``"sincos2d"``, ``"none"``.
        distillation_token: prepend DeiT's distillation token after the class token.
        num_register_tokens: learnable register tokens after them (Darcet et al., 2024).
        patch_position_embedding_only: the learned embedding covers the patches only.
        position_resampling: None takes only the stored grid; ``"bilinear"`` (the
            original's) or ``"bicubic"`` (timm's) resamples the learned embedding to the
            grid of each call (a model of dynamic image size).

    Call arguments:
        patches: (B, N, P * P * C) from :class:`Patches`, N = grid_h * grid_w, or
            (B, grid_h, grid_w, P * P * C) (``Patches(flatten=False)``), whose grid may
            differ from ``grid_size`` when ``position_resampling`` is set.

    Returns:
        (B, prefix + N, D) tokens.
    """

    def __init__(
        self,
        hidden_size,
        grid_size,
        use_class_token=True,
        position_embedding="learned",
        distillation_token=False,
        num_register_tokens=0,
        patch_position_embedding_only=False,
        position_resampling=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"Unknown position_embedding {position_embedding!r}; expected one of "
                f"{list(POSITION_EMBEDDINGS)}."
            )
        if position_resampling not in (None,) + POSITION_RESAMPLINGS:
            raise ValueError(
                f"position_resampling={position_resampling!r}; expected None or one of {list(POSITION_RESAMPLINGS)}."
            )
        if position_resampling is not None and position_embedding not in ("learned", "none"):
            raise ValueError(
                f"position_resampling needs position_embedding='learned' or 'none'; got {position_embedding!r}."
            )
        self.hidden_size = int(hidden_size)
        self.grid_size = as_pair(grid_size, "grid_size")
        self.use_class_token = bool(use_class_token)
        self.position_embedding = position_embedding
        self.distillation_token = bool(distillation_token)
        self.num_register_tokens = int(num_register_tokens)
        self.patch_position_embedding_only = bool(patch_position_embedding_only)
        self.position_resampling = position_resampling
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_prefix_tokens = int(self.use_class_token) + int(self.distillation_token) + self.num_register_tokens
        self.num_tokens = self.num_patches + self.num_prefix_tokens
        # Prefix tokens that carry a position embedding of their own.
        self.num_embedded_prefix = (
            self.num_prefix_tokens
            if position_embedding == "learned" and not self.patch_position_embedding_only
            else 0
        )
        self.projection = keras.layers.Dense(
            self.hidden_size,
            kernel_initializer=keras.initializers.LecunNormal(),
            name="projection",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        if len(input_shape) == 4:
            self._check_grid(input_shape[1:3])
        else:
            self._check_num_patches(input_shape[1])
        self.projection.build(input_shape)
        token_init = keras.initializers.RandomNormal(stddev=0.02)
        if self.use_class_token:
            self.cls = self.add_weight(shape=(1, 1, self.hidden_size), initializer="zeros", name="cls")
        if self.distillation_token:
            self.dist_token = self.add_weight(shape=(1, 1, self.hidden_size), initializer=token_init, name="dist_token")
        if self.num_register_tokens:
            self.registers = self.add_weight(
                shape=(1, self.num_register_tokens, self.hidden_size), initializer=token_init, name="registers"
            )
        pos_init = keras.initializers.RandomNormal(stddev=0.02)
        if self.position_embedding == "learned":
            self.pos_embedding = self.add_weight(
                shape=(1, self.num_patches + self.num_embedded_prefix, self.hidden_size),
                initializer=pos_init,
                name="pos_embedding",
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
                f"resample their position embeddings when loaded) or with dynamic_image_size=True."
            )

    def _check_grid(self, grid):
        if self.position_resampling is None and all(isinstance(g, int) for g in grid) and tuple(grid) != self.grid_size:
            self._check_num_patches(grid[0] * grid[1])

    def patch_position_embedding(self, grid=None):
        """(1, N, D) embedding of the patch positions (prefix tokens' excluded), or None.

        ``grid``: the (grid_h, grid_w) of the call; the learned embedding is resampled to it
        when it differs from the stored grid.
        """
        if self.position_embedding == "learned":
            patches = self.pos_embedding[:, self.num_embedded_prefix :]
            if grid is None or (all(isinstance(g, int) for g in grid) and tuple(grid) == self.grid_size):
                return patches
            stored = ops.reshape(patches, (1, self.grid_size[0], self.grid_size[1], self.hidden_size))
            resampled = resample_grid(stored, grid, self.position_resampling)
            return ops.reshape(resampled, (1, -1, self.hidden_size))
        if self.position_embedding == "learned_2d":
            grid = self.row_embedding[:, None, :] + self.column_embedding[None, :, :]
            return ops.reshape(grid, (1, self.num_patches, self.hidden_size))
        if self.position_embedding == "sincos2d":
            return ops.convert_to_tensor(self._sincos)
        return None

    def call(self, patches):
        grid = None
        if len(patches.shape) == 4:
            self._check_grid(patches.shape[1:3])
            shape = ops.shape(patches)
            grid = (shape[1], shape[2])
            patches = ops.reshape(patches, (shape[0], shape[1] * shape[2], patches.shape[-1]))
        else:
            self._check_num_patches(patches.shape[1])
        x = self.projection(patches)  # (B, N, D)
        batch = ops.shape(x)[0]
        prefix = []
        for present, weight in (
            (self.use_class_token, "cls"),
            (self.distillation_token, "dist_token"),
            (self.num_register_tokens, "registers"),
        ):
            if present:
                tokens = ops.cast(getattr(self, weight), x.dtype)
                prefix.append(ops.broadcast_to(tokens, (batch, tokens.shape[1], self.hidden_size)))
        position = self.patch_position_embedding(grid)
        if self.num_embedded_prefix:
            position = ops.concatenate([self.pos_embedding[:, : self.num_embedded_prefix], position], axis=1)
            x = ops.concatenate(prefix + [x], axis=1) + ops.cast(position, x.dtype)
        else:
            if position is not None:
                x = x + ops.cast(position, x.dtype)
            if prefix:
                x = ops.concatenate(prefix + [x], axis=1)  # (B, prefix + N, D)
        return x

    def compute_output_shape(self, input_shape):
        if len(input_shape) == 4:
            grid_h, grid_w = input_shape[1], input_shape[2]
            num = None if grid_h is None or grid_w is None else grid_h * grid_w + self.num_prefix_tokens
            return (input_shape[0], num, self.hidden_size)
        return (input_shape[0], self.num_tokens, self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            grid_size=self.grid_size,
            use_class_token=self.use_class_token,
            position_embedding=self.position_embedding,
            distillation_token=self.distillation_token,
            num_register_tokens=self.num_register_tokens,
            patch_position_embedding_only=self.patch_position_embedding_only,
            position_resampling=self.position_resampling,
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
