"""Original ViT ``.npz`` checkpoints in and out, adapted the way the original fine-tunes.

The layout is the published one (``ViT-B_16.npz``, the AugReg files, the R50 hybrids):
``embedding/kernel``, ``cls``, ``Transformer/posembed_input/pos_embedding``,
``Transformer/encoderblock_{i}/...``, ``Transformer/encoder_norm``, ``pre_logits``,
``head`` and, for hybrids, ``conv_root``, ``gn_root``, ``block{n}/unit{m}/...``.

Loading is strict: every checkpoint key must be consumed, every model weight filled and
every shape equal, or a ``ValueError`` names the key and both shapes; nothing is assigned
until everything has been checked. The adaptations of the original fine-tuning loader are
the only exceptions: a head of another size is replaced by a zero-initialised one, a
``pre_logits`` layer the model does not have is dropped, position embeddings are
resampled to the model's grid.
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Dict, Optional

import keras
import numpy as np
import scipy.ndimage

from keras_vit.core import hybrid
from keras_vit.files import replaced_atomically
from keras_vit.core.layers import PatchEncoder
from keras_vit.core.models import VisionTransformer
from keras_vit.weights import metadata

logger = logging.getLogger(__name__)

POS_EMBEDDING_KEY = "Transformer/posembed_input/pos_embedding"
ROW_EMBEDDING_KEY = "Transformer/posembed_input/row_embedding"  # keras_vit's learned_2d
COLUMN_EMBEDDING_KEY = "Transformer/posembed_input/column_embedding"
HEAD_KEYS = ("head/kernel", "head/bias")
PRE_LOGITS_KEYS = ("pre_logits/kernel", "pre_logits/bias")

# Flax Linen numbering (big_vision and newer files) -> the published numbering.
_LINEN_BLOCK_NAMES = {
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}
_KEY_PREFIXES = ("opt/target/", "params/")

# ---------------------------------------------------------------------------------------
# Reading and normalising the published layout.
# ---------------------------------------------------------------------------------------
def read_npz(path) -> Dict[str, np.ndarray]:
    """Reads a checkpoint into ``{key: array}`` with prefixes stripped, Linen names mapped."""
    if isinstance(path, dict):
        params = dict(path)
    else:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
        try:
            with np.load(path, allow_pickle=False) as data:
                params = {key: data[key] for key in data.files}
        except Exception as error:
            raise ValueError(f"Checkpoint {path!r} is not a readable .npz file ({error}).") from error
    params = normalize_keys(params)
    # Ranks first: infer_config and the loader index these shapes.
    metadata.check_tensors(params, metadata.NPZ_RANKS, "the given arrays" if isinstance(path, dict) else repr(path))
    return params


def normalize_keys(params: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Strips ``params/`` / ``opt/target/`` prefixes and maps Flax Linen block names."""
    out = {}
    linen = any("MlpBlock_0" in key or "MultiHeadDotProductAttention_0" in key for key in params)
    for key, value in params.items():
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if linen and "/encoderblock_" in key:
            parts = key.split("/")
            parts = [_LINEN_BLOCK_NAMES.get(part, part) for part in parts]
            key = "/".join(parts)
        if key in out:
            raise ValueError(f"Checkpoint key {key!r} appears twice after normalising prefixes.")
        out[key] = np.asarray(value)
    return out


# ---------------------------------------------------------------------------------------
# The mapping: checkpoint key -> (model variable, shape in the checkpoint).
# ---------------------------------------------------------------------------------------
def checkpoint_layout(model: VisionTransformer) -> Dict[str, tuple]:
    """Maps every checkpoint key of ``model`` to ``(variable, checkpoint_shape)``.

    A checkpoint array reshaped to the variable's shape is the variable's value (the
    patch-embedding convolution kernel (P, P, C, D) becomes the Dense kernel (P*P*C, D),
    group-norm (1, 1, 1, C) becomes (C,)).
    """
    layout = {}

    def add(key, variable, shape=None):
        layout[key] = (variable, tuple(shape) if shape is not None else tuple(variable.shape))

    def add_norm(prefix, layer, shape=None):
        add(f"{prefix}/scale", layer.gamma, shape)
        add(f"{prefix}/bias", layer.beta, shape)

    encoder = model.get_layer("embedding")
    assert isinstance(encoder, PatchEncoder)
    ph, pw = model.patch_size
    in_channels = encoder.projection.kernel.shape[0] // (ph * pw)
    add("embedding/kernel", encoder.projection.kernel, (ph, pw, in_channels, encoder.hidden_size))
    add("embedding/bias", encoder.projection.bias)
    if encoder.use_class_token:
        add("cls", encoder.cls)
    # Beyond the published layout (timm/DeiT models read into this layout by keras_vit.weights.hub).
    if encoder.distillation_token:
        add("dist", encoder.dist_token)
    if encoder.num_register_tokens:
        add("reg", encoder.registers)
    if encoder.position_embedding == "learned":
        add(POS_EMBEDDING_KEY, encoder.pos_embedding)
    elif encoder.position_embedding == "learned_2d":
        add(ROW_EMBEDDING_KEY, encoder.row_embedding)
        add(COLUMN_EMBEDDING_KEY, encoder.column_embedding)

    for i in range(model.num_layers):
        _add_block(model.get_layer(f"encoderblock_{i}"), f"Transformer/encoderblock_{i}", add, add_norm)
    if _has_layer(model, "encoder_norm"):
        add_norm("Transformer/encoder_norm", model.get_layer("encoder_norm"))
    if _has_layer(model, "fc_norm"):
        add_norm("fc_norm", model.get_layer("fc_norm"))

    for name in ("pre_logits", "head", "head_dist"):
        if _has_layer(model, name):
            dense = model.get_layer(name)
            add(f"{name}/kernel", dense.kernel)
            add(f"{name}/bias", dense.bias)

    if model.resnet is not None:
        _add_stem(model, add, add_norm)
    return layout


def _add_block(block, prefix, add, add_norm):
    add_norm(f"{prefix}/LayerNorm_0", block.norm_1)
    attention = block.attention
    for name, dense in (
        ("query", attention._query_dense),
        ("key", attention._key_dense),
        ("value", attention._value_dense),
        ("out", attention._output_dense),
    ):
        add(f"{prefix}/MultiHeadDotProductAttention_1/{name}/kernel", dense.kernel)
        add(f"{prefix}/MultiHeadDotProductAttention_1/{name}/bias", dense.bias)
    add_norm(f"{prefix}/LayerNorm_2", block.norm_2)
    for name, dense in (("Dense_0", block.mlp.dense_0), ("Dense_1", block.mlp.dense_1)):
        add(f"{prefix}/MlpBlock_3/{name}/kernel", dense.kernel)
        add(f"{prefix}/MlpBlock_3/{name}/bias", dense.bias)
    if block.layer_scale_1 is not None:
        add(f"{prefix}/LayerScale_1/scale", block.layer_scale_1)
        add(f"{prefix}/LayerScale_2/scale", block.layer_scale_2)


def _add_stem(model, add, add_norm):
    def gn_shape(layer):
        return (1, 1, 1, layer.gamma.shape[0])  # the published files' group-norm shape

    root_gn = model.get_layer("gn_root")
    add("conv_root/kernel", model.get_layer("conv_root").kernel)
    add_norm("gn_root", root_gn, gn_shape(root_gn))
    for layer in model.layers:
        if isinstance(layer, hybrid.BottleneckUnit):
            prefix = layer.name.replace("_", "/")  # block1_unit1 -> block1/unit1
            names = ["conv1", "conv2", "conv3"] + (["conv_proj"] if layer.conv_proj is not None else [])
            for conv in names:
                add(f"{prefix}/{conv}/kernel", getattr(layer, conv).kernel)
                norm = getattr(layer, conv.replace("conv", "gn"))
                add_norm(f"{prefix}/{conv.replace('conv', 'gn')}", norm, gn_shape(norm))


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)


# ---------------------------------------------------------------------------------------
# Position-embedding resampling, as the original fine-tuning loader does it.
# ---------------------------------------------------------------------------------------
def resample_position_embedding(posemb, new_grid, *, has_class_token, old_grid=None):
    """Resamples (1, [1 +] gh * gw, D) position embeddings to ``new_grid`` = (gh', gw').

    The class token's embedding is kept; the grid is reshaped to (gh, gw, D) and zoomed by
    ``scipy.ndimage.zoom(grid, (gh'/gh, gw'/gw, 1), order=1)`` as in vit_jax
    ``checkpoint.load_pretrained``. ``old_grid`` defaults to the square grid.
    """
    posemb = np.asarray(posemb)
    num_extra = int(has_class_token)
    grid = posemb[0, num_extra:]
    if old_grid is None:
        side = math.isqrt(grid.shape[0])
        if side * side != grid.shape[0]:
            raise ValueError(
                f"Cannot infer the grid of {grid.shape[0]} position embeddings (not a square); "
                f"pass old_grid=(height, width)."
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != grid.shape[0]:
        raise ValueError(f"old_grid {old_grid} does not hold {grid.shape[0]} position embeddings.")
    zoom = (new_grid[0] / old_grid[0], new_grid[1] / old_grid[1], 1)
    return resample_grid_tokens(posemb, num_extra, old_grid, new_grid,
                                lambda grid: scipy.ndimage.zoom(grid, zoom, order=1))


def resample_grid_tokens(posemb, num_prefix_tokens, old_grid, new_grid, resize):
    """(1, prefix + gh * gw, D) position embeddings -> (1, prefix + gh' * gw', D): the prefix
    tokens' kept, the (gh, gw, D) grid resized to ``new_grid`` by ``resize``."""
    tokens, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
    resized = np.asarray(resize(grid.reshape(old_grid[0], old_grid[1], -1)))
    return np.concatenate([tokens, resized.reshape(1, new_grid[0] * new_grid[1], -1).astype(posemb.dtype)], axis=1)


# ---------------------------------------------------------------------------------------
# Loading and saving.
# ---------------------------------------------------------------------------------------
def load_npz(model, path, *, reset_head: Optional[bool] = None, old_grid=None):
    """Loads an original ``.npz`` checkpoint into ``model``, strictly.

    Args:
        model: a :class:`VisionTransformer` (as built by ``ViT``/``ViTB16``/``from_npz``).
        path: the ``.npz`` file (or a dict of arrays in its layout).
        reset_head: True replaces the head by a zero-initialised one (fine-tuning); None
            (default) does so only when the head's shape differs from the checkpoint's.
        old_grid: (height, width) of the checkpoint's patch grid when not square.

    Raises:
        ValueError: a key nothing consumed, a weight nothing filled, or a shape mismatch;
            the message names the key and both shapes. Nothing is assigned then.
    """
    source = "the given arrays" if isinstance(path, dict) else repr(os.fspath(path))
    return _load_params(model, read_npz(path), source, reset_head=reset_head, old_grid=old_grid)


def _fresh_heads(layout, params, reset_head):
    """The original fine-tuning's adaptations: a head of another size (or ``reset_head``)
    becomes a zero-initialised one, a head or ``pre_logits`` the model lacks is dropped.
    Returns the checkpoint keys so consumed and the zero assignments; ``layout`` loses the
    reset heads' keys."""
    consumed, assignments = set(), []
    for head in ("head", "head_dist"):
        keys = (f"{head}/kernel", f"{head}/bias")
        head_kernel = layout.get(keys[0])
        ckpt_head = params.get(keys[0])
        if head_kernel is not None and (
            reset_head or (ckpt_head is not None and ckpt_head.shape != head_kernel[1])
        ):
            if ckpt_head is not None:
                logger.warning("%s %s replaced by a zero-initialised %s (a new head, as fine-tuning starts).",
                               head.capitalize(), ckpt_head.shape, head_kernel[1])
            for key in keys:
                variable = layout.pop(key)[0]
                assignments.append((variable, np.zeros(variable.shape, variable.dtype)))
                consumed.add(key)
        if keys[0] not in layout:  # no head in the model (include_top=False) or reset above
            consumed.update(k for k in keys if k in params)
    if "pre_logits/kernel" not in layout and "pre_logits/kernel" in params:
        logger.warning("Checkpoint's pre_logits layer dropped: the model has no representation layer.")
        consumed.update(PRE_LOGITS_KEYS)
    return consumed, assignments


def _load_params(model, params, source, *, reset_head=None, old_grid=None):
    layout = checkpoint_layout(model)
    consumed, assignments = _fresh_heads(layout, params, reset_head)
    errors = []
    for key, (variable, ckpt_shape) in layout.items():
        if key not in params:
            errors.append(f"model weight {variable.path} {tuple(variable.shape)} has no checkpoint key {key!r}")
            continue
        value = params[key]
        consumed.add(key)
        if key == POS_EMBEDDING_KEY and value.shape != ckpt_shape and value.shape[-1] == ckpt_shape[-1]:
            value = resample_position_embedding(
                value,
                model.grid_size,
                has_class_token="cls" in params,
                old_grid=old_grid,
            )
            side = math.isqrt(params[key].shape[1] - int("cls" in params))
            before = tuple(old_grid) if old_grid is not None else (side, side)
            logger.warning("Position embeddings resampled from a %dx%d grid to %dx%d (bilinear, as the original "
                           "fine-tunes at another resolution).", *before, *model.grid_size)
        elif key.startswith(("gn_root/", "block")) and value.ndim == 1:
            value = value.reshape(ckpt_shape)  # some files store group-norm params as (C,)
        if value.shape != ckpt_shape:
            errors.append(
                f"checkpoint key {key!r} has shape {value.shape} but the model's weight "
                f"{variable.path} needs {ckpt_shape}"
            )
            continue
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            errors.append(f"checkpoint key {key!r} holds {value.dtype} values; a weight needs numbers")
            continue
        # Converted now, so that a value the variable cannot take fails before anything is assigned.
        assignments.append((variable, np.asarray(value.reshape(variable.shape), dtype=variable.dtype)))

    unused = sorted(set(params) - consumed)
    if unused:
        errors.append(
            "checkpoint keys not used by the model: "
            + ", ".join(f"{k!r} {params[k].shape}" for k in unused)
        )
    if errors:
        raise ValueError(f"Cannot load {source} into {model.name}:\n  - " + "\n  - ".join(errors))
    for variable, value in assignments:
        variable.assign(value)
    return model


def save_npz(model, path):
    """Writes ``model``'s weights in the published ``.npz`` layout (float32)."""
    arrays = {}
    for key, (variable, ckpt_shape) in checkpoint_layout(model).items():
        arrays[key] = np.asarray(keras.ops.convert_to_numpy(variable)).reshape(ckpt_shape)
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"  # what np.savez would write
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replaced_atomically(path) as temporary:
        np.savez(temporary, **arrays)
    return path


# ---------------------------------------------------------------------------------------
# Building a model from a checkpoint alone.
# ---------------------------------------------------------------------------------------
_BLOCK_RE = re.compile(r"^Transformer/encoderblock_(\d+)/")
_UNIT_RE = re.compile(r"^block(\d+)/unit(\d+)/")


def infer_config(params: Dict[str, np.ndarray]) -> dict:
    """Infers the :class:`VisionTransformer` arguments of a checkpoint from its shapes."""
    if "embedding/kernel" not in params:
        raise ValueError(
            "Not a ViT checkpoint: no 'embedding/kernel' key (found e.g. "
            f"{sorted(params)[:5]})."
        )
    ph, pw, in_channels, hidden_size = params["embedding/kernel"].shape
    blocks = sorted({int(m.group(1)) for k in params if (m := _BLOCK_RE.match(k))})
    if not blocks:
        raise ValueError("Not a ViT checkpoint: no 'Transformer/encoderblock_{i}' keys.")
    block = f"Transformer/encoderblock_{blocks[0]}"
    needed = [f"{block}/MultiHeadDotProductAttention_1/query/kernel", f"{block}/MlpBlock_3/Dense_0/kernel"]
    missing = [key for key in needed if key not in params]
    if missing:
        raise ValueError(f"Not a complete ViT checkpoint: no {missing} (the shapes that give the head count and MLP width).")
    num_heads = params[needed[0]].shape[1]
    mlp_dim = params[needed[1]].shape[1]
    has_class_token = "cls" in params
    config = dict(
        patch_size=(int(ph), int(pw)),
        hidden_size=int(hidden_size),
        num_layers=len(blocks),
        num_heads=int(num_heads),
        mlp_dim=int(mlp_dim),
        pooling="token" if has_class_token else "gap",
        representation_size=int(params["pre_logits/kernel"].shape[1]) if "pre_logits/kernel" in params else None,
        num_classes=int(params["head/bias"].shape[0]) if "head/bias" in params else None,
        channels=int(in_channels),
    )
    stride = 1
    if "conv_root/kernel" in params:
        units = {}
        for key in params:
            if m := _UNIT_RE.match(key):
                units[int(m.group(1))] = max(units.get(int(m.group(1)), 0), int(m.group(2)))
        stages = tuple(units[i] for i in sorted(units))
        config["resnet"] = (stages, params["conv_root/kernel"].shape[-1] / 64)
        config["channels"] = int(params["conv_root/kernel"].shape[2])
        stride = hybrid.stem_stride(stages)
    if POS_EMBEDDING_KEY in params:
        config["position_embedding"] = "learned"
        num = params[POS_EMBEDDING_KEY].shape[1] - int(has_class_token)
        side = math.isqrt(num)
        if side * side == num:
            config["image_size"] = (side * ph * stride, side * pw * stride)
    elif ROW_EMBEDDING_KEY in params:
        config["position_embedding"] = "learned_2d"
        config["image_size"] = (
            params[ROW_EMBEDDING_KEY].shape[0] * ph * stride,
            params[COLUMN_EMBEDDING_KEY].shape[0] * pw * stride,
        )
    else:
        config["position_embedding"] = "sincos2d"  # big_vision's fixed default
    return config


def _inferred_config(params, path) -> dict:
    try:
        return infer_config(params)
    except ValueError as error:  # infer_config sees arrays only: name the file they came from
        source = "the given arrays" if isinstance(path, dict) else repr(os.fspath(path))
        raise ValueError(f"{source}: {error}") from error


def from_npz(
    path,
    *,
    num_classes: Optional[int] = None,
    image_size=None,
    include_top: bool = True,
    reset_head: Optional[bool] = None,
    old_grid=None,
    **kwargs,
) -> VisionTransformer:
    """Builds the model a checkpoint describes and loads it.

    Args:
        path: the ``.npz`` checkpoint.
        num_classes: None keeps the checkpoint's head; another number gives a fresh
            zero-initialised head of that size (fine-tuning).
        image_size: None uses the checkpoint's resolution; another size resamples the
            position embeddings to the new grid.
        include_top: False returns the (pre-logits) representation.
        reset_head, old_grid: as :func:`load_npz`.
        **kwargs: other :class:`VisionTransformer` arguments (``dropout``, ``name``, ...).
    """
    params = read_npz(path)
    config = _inferred_config(params, path)
    checkpoint_classes = config.pop("num_classes")
    if image_size is not None:
        config["image_size"] = image_size
    if "image_size" not in config:
        raise ValueError(
            f"Cannot infer the image size of {path!r} (its position embeddings do not form a "
            f"square grid); pass image_size= and old_grid=."
        )
    if num_classes is None:
        num_classes = checkpoint_classes
        if include_top and num_classes is None:
            raise ValueError(
                f"{path!r} has no head; pass num_classes= for a new head or include_top=False."
            )
    config.update(kwargs)
    source = "the given arrays" if isinstance(path, dict) else repr(os.fspath(path))
    try:
        model = VisionTransformer(num_classes=num_classes, include_top=include_top, **config)
    except ValueError as error:  # shapes that describe no model: name the checkpoint they came from
        raise ValueError(f"{source} does not describe a model keras_vit builds: {error}") from error
    return _load_params(model, params, source, reset_head=reset_head, old_grid=old_grid)


def describe_checkpoint(path) -> dict:
    """What a checkpoint holds: the inferred model arguments, parameter count, keys."""
    params = read_npz(path)
    return {
        "path": os.fspath(path),
        "config": _inferred_config(params, path),
        "parameters": int(sum(value.size for value in params.values())),
        "keys": {key: list(value.shape) for key, value in sorted(params.items())},
    }
