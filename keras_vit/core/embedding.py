"""Patch embedding: images to patch tokens, prefix tokens and position embeddings.

``Patches`` cuts images into flattened patches; ``PatchEncoder`` projects them to width D,
prepends the class / distillation / register tokens and adds the position embedding, which
it resamples when the grid changes (``resample_grid``). Written with ``keras.ops`` only.
Re-exported from ``keras_vit.core.layers``; the registered names (``keras_vit>Patches``,
``keras_vit>PatchEncoder``) do not depend on the module, so saved ``.keras`` files load.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_vit.core.config import POSITION_EMBEDDINGS, POSITION_RESAMPLINGS, as_pair

_PACKAGE = "keras_vit"


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
