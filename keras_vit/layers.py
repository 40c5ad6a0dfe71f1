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

from keras_vit import tf_kernels
from keras_vit.config import POOLINGS, POSITION_EMBEDDINGS, as_pair

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
        x = apply_dense(self.projection, patches)  # (B, N, D)
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


def _plain_dense(dense) -> bool:
    # LoRA and quantized Dense layers compute their own kernel: leave them to Keras.
    return bool(getattr(dense, "lora_enabled", False) or getattr(dense, "quantization_mode", None))


def _scale_and_shift(x, input_affine):
    # The unfused form of a folded LayerNorm affine: x * gamma + beta in x's dtype.
    gamma, beta = input_affine
    return x * ops.cast(gamma, x.dtype) + ops.cast(beta, x.dtype)


def apply_dense(dense, x, activation=None, residual=None, training=False, input_affine=None):
    """``activation(dense(x)) [+ residual]``; one fused oneDNN kernel on TensorFlow CPUs.

    Keras's Dense adds its bias with ``Add`` and matmuls 3D inputs as a batch matmul,
    which defeat TensorFlow's ``MatMul -> BiasAdd [-> Gelu] [-> AddV2]`` fusion (see
    :mod:`keras_vit.tf_kernels`); elsewhere this is the plain ``keras.ops`` form.

    Args:
        dense: a built ``keras.layers.Dense`` with a bias and no activation of its own.
        x: its input.
        activation: None or ``"gelu_tanh"``.
        residual: None, or a tensor of the output's shape to add.
        training: whether gradients will be taken (picks the GELU form that trains fastest).
        input_affine: None, or (gamma, beta): the layer sees ``x * gamma + beta`` (a
            LayerNorm's scale and shift, folded into the weights where fused).
    """
    if _plain_dense(dense) or not dense.use_bias or not tf_kernels.enabled(dense.compute_dtype):
        if input_affine is not None:
            x = _scale_and_shift(x, input_affine)
        y = dense(x)
        if activation == "gelu_tanh":
            y = ops.gelu(y, approximate=True)
        return y if residual is None else residual + y
    dtype = dense.compute_dtype
    return tf_kernels.dense(
        ops.cast(x, dtype),
        ops.cast(dense.kernel, dtype),
        ops.cast(dense.bias, dtype),
        activation=activation,
        residual=None if residual is None else ops.cast(residual, dtype),
        training=bool(training),
        input_affine=input_affine,
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerNorm(keras.layers.LayerNormalization):
    """Keras ``LayerNormalization`` (same weights, same math); one fused kernel on TensorFlow CPUs.

    Keras computes the normalization as about eight elementwise and reduction passes;
    over the last axis of (B, T, D) tokens, TensorFlow with oneDNN runs it as a single
    ``_MklLayerNorm`` kernel (and its gradient as one batch-norm gradient), see
    :mod:`keras_vit.tf_kernels`. Every other case takes the parent's path.
    """

    def _fuses(self, inputs) -> bool:
        rank = len(inputs.shape)
        return (
            rank in (2, 3)
            and [axis % rank for axis in self.axis] == [rank - 1]
            and self.center
            and self.scale
            and not self.rms_scaling
            and tf_kernels.enabled(self.compute_dtype)
        )

    def call(self, inputs):
        if not self._fuses(inputs):
            return super().call(inputs)
        inputs = ops.cast(inputs, self.compute_dtype)
        return tf_kernels.layer_norm(inputs, self.gamma, self.beta, self.epsilon)

    def normalize_for_folding(self, inputs):
        """``(normalized, (gamma, beta))`` for a following matmul to fold the scale and shift
        into its weights (:func:`keras_vit.tf_kernels.fold_input_affine`), where the fused
        form applies; ``(self(inputs), None)`` elsewhere."""
        if not self._fuses(inputs):
            return self(inputs), None
        return tf_kernels.normalize(ops.cast(inputs, self.compute_dtype), self.epsilon), (self.gamma, self.beta)


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
        self.dense_0.build(input_shape)
        self.dense_1 = keras.layers.Dense(input_shape[-1], name="Dense_1", dtype=self.dtype_policy, **_dense_init())
        self.dense_1.build(input_shape[:-1] + (self.mlp_dim,))

    def call(self, x, training=False, residual=None, input_affine=None):
        """``residual`` (optional, only without dropout): added to the output in the last
        matmul. ``input_affine`` (optional (gamma, beta)): the MLP of ``x * gamma + beta``."""
        if residual is not None and training and self.dropout > 0:
            raise ValueError("MLP adds a residual only without active dropout.")
        x = apply_dense(self.dense_0, x, activation="gelu_tanh", training=training, input_affine=input_affine)
        x = self.dropout_layer(x, training=training)
        if residual is not None:
            return apply_dense(self.dense_1, x, residual=residual)
        return self.dropout_layer(apply_dense(self.dense_1, x), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mlp_dim=self.mlp_dim, dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SelfAttention(keras.layers.MultiHeadAttention):
    """Keras ``MultiHeadAttention`` (same weights, same math) with leaner self-attention.

    On TensorFlow CPUs, unmasked self-attention runs as :func:`keras_vit.tf_kernels.self_attention`
    (one fused Q/K/V matmul, the optional ``residual`` added in the output matmul). Elsewhere,
    without masks, the scores are two batched matmuls over (B, heads, T, head_dim) and a
    softmax; Keras's general path (einsum equations, or ``dot_product_attention``'s
    TensorFlow fallback) spends about 40% more time there on CPU. Masks and causal
    attention, which a ViT does not use, go to the parent's implementation.
    """

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        residual=None,
        input_affine=None,
    ):
        """The parent's arguments, plus ``residual``: a (B, T, D) tensor added to the output,
        and ``input_affine``: (gamma, beta) with which self-attention of ``query * gamma +
        beta`` is computed (folded into the Q/K/V weights where fused)."""
        masks = (query_mask, value_mask, key_mask, attention_mask, use_causal_mask)
        if not self._fused_self_attention_applies(query, value, key, *masks):
            if input_affine is not None:
                if value is not query or (key is not None and key is not query):
                    raise ValueError("input_affine applies to self-attention only (value and key the query).")
                query = value = key = _scale_and_shift(query, input_affine)
            outputs = super().call(
                query, value, key, query_mask, value_mask, key_mask, attention_mask,
                return_attention_scores, training, use_causal_mask,
            )
            if residual is None:
                return outputs
            if return_attention_scores:
                return residual + outputs[0], outputs[1]
            return residual + outputs
        dtype = self.compute_dtype

        def weights(dense):
            return ops.cast(dense.kernel, dtype), ops.cast(dense.bias, dtype)

        dropout = None
        if self._dropout > 0 and training:
            dropout = lambda probabilities: self._dropout_layer(probabilities, training=training)  # noqa: E731
        return tf_kernels.self_attention(
            ops.cast(query, dtype),
            weights(self._query_dense),
            weights(self._key_dense),
            weights(self._value_dense),
            weights(self._output_dense),
            self._inverse_sqrt_key_dim,
            dropout=dropout,
            return_scores=return_attention_scores,
            residual=None if residual is None else ops.cast(residual, dtype),
            input_affine=input_affine,
        )

    def _fused_self_attention_applies(self, query, value, key, *masks_and_causal):
        # Self-attention of unmasked (B, T, D) tokens with plain biased projections.
        dense_layers = (self._query_dense, self._key_dense, self._value_dense, self._output_dense)
        return (
            value is query
            and (key is None or key is query)
            and not any(m is not None and m is not False for m in masks_and_causal)
            and len(query.shape) == 3
            and self._use_bias
            and not getattr(self, "_use_gate", False)
            and getattr(self, "_sliding_window", None) is None
            and not any(_plain_dense(d) for d in dense_layers)
            and getattr(query, "_keras_mask", None) is None
            and tf_kernels.enabled(self.compute_dtype)
        )

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        if attention_mask is not None or use_causal_mask or len(query.shape) != 4:
            return super()._compute_attention(
                query, key, value, attention_mask, training, return_attention_scores, use_causal_mask
            )
        scale = ops.cast(self._inverse_sqrt_key_dim, query.dtype)
        query = ops.transpose(query, (0, 2, 1, 3))  # (B, heads, T, head_dim)
        key = ops.transpose(key, (0, 2, 3, 1))  # (B, heads, head_dim, S)
        value = ops.transpose(value, (0, 2, 1, 3))  # (B, heads, S, head_dim)
        probabilities = ops.softmax(ops.matmul(query, key) * scale, axis=-1)  # (B, heads, T, S)
        weights = self._dropout_layer(probabilities, training=training) if self._dropout > 0 else probabilities
        output = ops.transpose(ops.matmul(weights, value), (0, 2, 1, 3))  # (B, T, heads, head_dim)
        return output, probabilities


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerBlock(keras.layers.Layer):
    """Pre-LayerNorm encoder block of the paper (Eq. 2-3).

    ``x = x + DropPath(Dropout(MHA(LN(x))))`` then ``x = x + DropPath(MLP(LN(x)))``,
    with LayerNorm epsilon 1e-6. Sub-layer names follow the original checkpoints
    (``LayerNorm_0``, ``MultiHeadDotProductAttention_1``, ``LayerNorm_2``, ``MlpBlock_3``).

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
        def norm(layer, x):
            # In training the LayerNorms' scale and shift go into the next matmul's weights;
            # in inference each LayerNorm is already one fused kernel.
            return layer.normalize_for_folding(x) if training else (layer(x), None)

        y, affine = norm(self.norm_1, x)
        scores = None
        if training and (self.dropout > 0 or self.drop_path_rate > 0):
            y = self.attention(y, y, training=training, return_attention_scores=return_attention_scores,
                               input_affine=affine)
            if return_attention_scores:
                y, scores = y
            x = x + self.drop_path(self.attention_output_dropout(y, training=training), training=training)
            y, affine = norm(self.norm_2, x)
            x = x + self.drop_path(self.mlp(y, training=training, input_affine=affine), training=training)
        else:
            # Nothing between a branch and its residual: the sums fuse into the last matmuls.
            x = self.attention(y, y, training=training, return_attention_scores=return_attention_scores, residual=x,
                               input_affine=affine)
            if return_attention_scores:
                x, scores = x
            y, affine = norm(self.norm_2, x)
            x = self.mlp(y, training=training, residual=x, input_affine=affine)
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
