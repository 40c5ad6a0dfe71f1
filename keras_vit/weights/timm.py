"""timm's ``VisionTransformer`` repositories, in and out.

One table (:data:`TABLE`) maps timm's state dict to the published layout and back; the
configuration is read from ``model_args`` where it has them, else from the architecture's
name and the tensors' shapes, and written as timm's ``save_for_hf`` writes it. What timm
computes is kept: its LayerNorm epsilon (1e-6), its normalisation (``pretrained_cfg``
mean/std), its position-embedding resampling (antialiased bicubic), its ``label_names``.
"""

from __future__ import annotations

import os
from typing import Dict

import numpy as np

from keras_vit.core.config import as_pair
from keras_vit.core.layers import resample_grid
from keras_vit.weights import metadata, npz
from keras_vit.weights.repository import (
    CONFIG_FILENAME,
    WEIGHTS_FILENAME,
    input_settings,
    kept_channel_values,
    one_or_pair,
    refuse_unless,
    source_settings,
)
from keras_vit.weights.tables import (
    ATTENTION, CONV, HEADS_BIAS, HEADS_IN, HEADS_OUT, OUR_BLOCK, QKV, Row, Table, dense, from_layout, layout_arrays,
    norm, to_layout,
)

TABLE = Table(
    name="timm",
    their_block="blocks.{i}",
    rows=(
        Row("embedding/kernel", "patch_embed.proj.weight", CONV),
        Row("embedding/bias", "patch_embed.proj.bias"),
        Row("cls", "cls_token", absent="skip"),
        Row("dist", "dist_token", absent="skip"),
        Row("reg", "reg_token", absent="skip"),
        Row(npz.POS_EMBEDDING_KEY, "pos_embed", absent="skip"),
        *norm(OUR_BLOCK + "/LayerNorm_0", "blocks.{i}.norm1"),
        # query, key and value stacked in one (3 * width, width) matrix
        Row(tuple(f"{ATTENTION}/{name}/kernel" for name in QKV), "blocks.{i}.attn.qkv.weight", HEADS_IN),
        Row(tuple(f"{ATTENTION}/{name}/bias" for name in QKV), "blocks.{i}.attn.qkv.bias", HEADS_BIAS, "zeros"),
        Row(ATTENTION + "/out/kernel", "blocks.{i}.attn.proj.weight", HEADS_OUT),
        Row(ATTENTION + "/out/bias", "blocks.{i}.attn.proj.bias"),
        Row(OUR_BLOCK + "/LayerScale_1/scale", "blocks.{i}.ls1.gamma", absent="skip"),
        *norm(OUR_BLOCK + "/LayerNorm_2", "blocks.{i}.norm2"),
        *dense(OUR_BLOCK + "/MlpBlock_3/Dense_0", "blocks.{i}.mlp.fc1"),
        *dense(OUR_BLOCK + "/MlpBlock_3/Dense_1", "blocks.{i}.mlp.fc2"),
        Row(OUR_BLOCK + "/LayerScale_2/scale", "blocks.{i}.ls2.gamma", absent="skip"),
        *norm("Transformer/encoder_norm", "norm", absent="skip"),
        *norm("fc_norm", "fc_norm", absent="skip"),
        *dense("pre_logits", "pre_logits.fc", absent="skip"),
        *dense("head", "head", absent="skip"),
        *dense("head_dist", "head_dist", absent="skip"),
    ),
)

EMBEDDING = "patch_embed.proj.weight"


def embedding_name(tensors):
    return EMBEDDING


def attention_shapes(width) -> dict:
    """The attention tensors the layout splits into heads, by the model's width."""
    return {
        r"\.attn\.qkv\.weight$": (3 * width, width), r"\.attn\.qkv\.bias$": (3 * width,),
        r"\.attn\.proj\.weight$": (width, width), r"\.attn\.proj\.bias$": (width,),
    }


def to_published_layout(tensors: Dict[str, np.ndarray], num_heads: int) -> Dict[str, np.ndarray]:
    """timm ``VisionTransformer`` tensors -> the published layout (unknown names kept as they are)."""
    return to_layout(TABLE, tensors, num_heads)


def state_dict(model) -> Dict[str, np.ndarray]:
    """``model``'s weights under timm's names and PyTorch's shapes."""
    return from_layout(TABLE, layout_arrays(model))


def resample_position_embedding(posemb, old_grid, new_grid, num_prefix_tokens):
    """timm's ``resample_abs_pos_embed``: prefix tokens kept, the grid resized by antialiased bicubic."""
    return npz.resample_grid_tokens(posemb, num_prefix_tokens, old_grid, new_grid,
                                    lambda grid: resample_grid(grid[None], new_grid, "bicubic"))


# --------------------------------------------------------------------------- reading the configuration
# timm's size names -> attention heads, where a hub config has no model_args (most AugReg
# and DeiT repositories): the paper's widths with 64-wide heads, Huge with 80.
_HEADS = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "huge": 16, "giant": 16}


def _input_settings(pretrained) -> dict:
    """Resize and crop from ``pretrained_cfg`` (timm's defaults: bicubic, crop_pct 0.875, "center")."""
    interpolation = pretrained.get("interpolation")
    interpolation = "bicubic" if interpolation in ("lanczos", "hamming") else interpolation
    return input_settings(interpolation, pretrained.get("crop_pct"), pretrained.get("crop_mode"),
                          ("bicubic", 0.875, "center"))


def _gelu(model_args, path):
    activation = model_args.get("act_layer", "gelu")
    if activation not in ("gelu", "gelu_tanh"):
        raise metadata.refuse(f"{path} model_args", "act_layer", activation, "'gelu' or 'gelu_tanh'")
    return "exact" if activation == "gelu" else "tanh"


def _num_heads(model_args, architecture, path) -> int:
    if "num_heads" in model_args:
        return metadata.positive_int(model_args, "num_heads", f"{path} model_args")
    size = next((word for word in architecture.split("_") if word in _HEADS), None)
    if size is None:
        raise ValueError(
            f"Cannot tell the attention heads of timm architecture {architecture!r} ({path}): no "
            f"model_args.num_heads and the name holds none of {list(_HEADS)}."
        )
    return _HEADS[size]


def _image_size(model_args, pretrained, channels, path) -> tuple:
    if "img_size" in model_args:
        return metadata.size_pair(model_args, "img_size", f"{path} model_args", None)
    return metadata.size_pair(pretrained, "input_size", f"{path} pretrained_cfg", [channels, 224, 224], 3)


def _architecture(config, path) -> str:
    architecture = metadata.string(config, "architecture", path, "")
    if not architecture.startswith(("vit_", "deit_", "deit3_")) or "hybrid" in architecture or "resnet" in architecture:
        raise metadata.refuse(path, "architecture", architecture, "a plain timm Vision Transformer (vit_*, deit_*, deit3_*)")
    return architecture


def _tokens(config, model_args, tensors, image_size, patch_size, path) -> dict:
    """Pooling, prefix tokens, position embeddings and layer scale, from the tensors present."""
    global_pool = model_args.get("global_pool", config.get("global_pool", "token"))
    if global_pool not in ("token", "avg"):
        raise metadata.refuse(path, "global_pool", global_pool, "'token' or 'avg' (the pools keras_vit has)")
    has_class_token = "cls_token" in tensors
    if global_pool == "token" and not has_class_token:
        raise ValueError(f"{path}: global_pool='token' but {WEIGHTS_FILENAME} has no cls_token to pool.")
    registers = int(tensors["reg_token"].shape[1]) if "reg_token" in tensors else 0
    prefix = int(has_class_token) + int("dist_token" in tensors) + registers
    grid = (image_size[0] // patch_size[0]) * (image_size[1] // patch_size[1])
    pos_tokens = tensors["pos_embed"].shape[1] if "pos_embed" in tensors else None
    has_layer_scale = any(key.endswith(".ls1.gamma") for key in tensors)
    return dict(
        pooling="token" if global_pool == "token" else "gap",
        position_embedding="learned" if pos_tokens is not None else "none",
        # The initial value matters only to a fresh model; the checkpoint's gammas replace it.
        layer_scale_init=metadata.positive_number(
            {"init_values": model_args.get("init_values") or 1e-5}, "init_values", f"{path} model_args", None
        ) if has_layer_scale else None,
        num_register_tokens=registers,
        distillation_token="dist_token" in tensors,
        norm_after_pooling="fc_norm.weight" in tensors,
        patch_position_embedding_only=pos_tokens is not None and pos_tokens == grid and prefix > 0,
    )


def arguments(config: dict, folder, tensors) -> dict:
    """VisionTransformer arguments of a timm repository (model_args, else names and shapes)."""
    path = os.path.join(folder, CONFIG_FILENAME)
    model_args = metadata.optional_dict(config, "model_args", path)
    pretrained = metadata.optional_dict(config, "pretrained_cfg", path)
    architecture = _architecture(config, path)
    weights_path = os.path.join(folder, WEIGHTS_FILENAME)
    metadata.check_tensors(tensors, metadata.TIMM_RANKS, weights_path)
    hidden_size, channels, ph, pw = tensors[EMBEDDING].shape
    for name in ("cls_token", "dist_token", "reg_token", "pos_embed"):  # (1, tokens, width)
        metadata.check_axis(tensors, name, -1, hidden_size, weights_path, f"(1, tokens, {hidden_size})")
    num_heads = _num_heads(model_args, architecture, path)
    image_size = _image_size(model_args, pretrained, channels, path)
    result = dict(
        image_size=as_pair(image_size, "img_size"),
        patch_size=(int(ph), int(pw)),
        hidden_size=int(hidden_size),
        num_layers=len({k.split(".")[1] for k in tensors if k.startswith("blocks.")}),
        num_heads=int(num_heads),
        mlp_dim=int(tensors["blocks.0.mlp.fc1.weight"].shape[0]),
        channels=int(channels),
        representation_size=int(tensors["pre_logits.fc.weight"].shape[0]) if "pre_logits.fc.weight" in tensors else None,
        layer_norm_epsilon=1e-6,
        gelu=_gelu(model_args, path),
        pixel_mean=metadata.channel_values(pretrained, "mean", f"{path} pretrained_cfg", 0.5, int(channels)),
        pixel_std=metadata.channel_values(pretrained, "std", f"{path} pretrained_cfg", 0.5, int(channels), positive=True),
        position_resampling="bicubic",
        source_metadata={"format": "timm", "pretrained_cfg": pretrained},
        **_tokens(config, model_args, tensors, image_size, (ph, pw), path),
        **_input_settings(pretrained),
    )
    if "head.weight" in tensors:
        result["num_classes"] = int(tensors["head.weight"].shape[0])
    labels = metadata.string_list(config, "label_names", path) or metadata.string_list(
        pretrained, "label_names", f"{path} pretrained_cfg")
    if labels and len(labels) == result.get("num_classes"):
        result["class_names"] = tuple(str(label) for label in labels)
    return result


def checkpoint_name(config):
    return config.get("architecture")


# --------------------------------------------------------------------------- writing the configuration
# timm entry points whose model_args express every model below (create_model overrides them all).
_ARCHITECTURE = "vit_base_patch16_224"
_DISTILLED_ARCHITECTURE = "deit_tiny_distilled_patch16_224"


def _mlp_ratio(model):
    """The ``mlp_ratio`` from which timm builds ``int(embed_dim * mlp_ratio) == mlp_dim`` exactly."""
    for ratio in (model.mlp_dim / model.hidden_size, (model.mlp_dim + 0.5) / model.hidden_size):
        if int(model.hidden_size * ratio) == model.mlp_dim:
            return ratio
    refuse_unless(False, model, "mlp_dim", f"no mlp_ratio makes timm build it from hidden_size {model.hidden_size}", "timm")


def check_writable(model):
    """The timm-only refusals (the common ones are :func:`keras_vit.weights.hub` 's)."""
    refuse_unless(model.layer_norm_epsilon == 1e-6, model, "layer_norm_epsilon", "timm's ViT uses 1e-6", "timm")
    refuse_unless(not model.dynamic_image_size or model.position_resampling == "bicubic", model,
                  "position_resampling", "timm resamples dynamic sizes by antialiased bicubic", "timm")
    _mlp_ratio(model)


# model_args every file has: timm key -> its value for the model.
_MODEL_ARGS = (
    ("img_size", lambda model: list(model.image_size)),
    ("patch_size", lambda model: one_or_pair(model.patch_size)),
    ("embed_dim", lambda model: model.hidden_size),
    ("depth", lambda model: model.num_layers),
    ("num_heads", lambda model: model.num_heads),
    ("num_classes", lambda model: model.num_classes if model.include_top else 0),
    ("in_chans", lambda model: model.channels),
    ("global_pool", lambda model: "token" if model.pooling == "token" else "avg"),
)
# model_args written only where the model leaves timm's default, as timm's own files do:
# timm key, whether the model leaves the default, its value then.
_OPTIONAL_MODEL_ARGS = (
    ("mlp_ratio", lambda model: model.mlp_dim != 4 * model.hidden_size, _mlp_ratio),
    ("class_token", lambda model: model.pooling != "token", lambda model: False),
    # timm's default for "avg" would add an fc_norm
    ("fc_norm", lambda model: model.pooling != "token" or model.norm_after_pooling,
     lambda model: model.norm_after_pooling),
    ("reg_tokens", lambda model: model.num_register_tokens, lambda model: model.num_register_tokens),
    ("no_embed_class", lambda model: model.patch_position_embedding_only, lambda model: True),
    ("init_values", lambda model: model.layer_scale_init is not None, lambda model: model.layer_scale_init),
    ("act_layer", lambda model: model.gelu == "tanh", lambda model: "gelu_tanh"),
    ("pos_embed", lambda model: model.position_embedding == "none", lambda model: "none"),
    ("dynamic_img_size", lambda model: model.dynamic_image_size, lambda model: True),
)


def _pretrained_cfg(model, num_classes) -> dict:
    """The checkpoint's own settings (tag, license, ...) first; what the model itself decides
    (size, classes, normalisation, resize and crop) over them, in the source's spelling where
    that spelling reads back as the model's value."""
    source = source_settings(model, "timm")
    pretrained_cfg = {"tag": model.name, "custom_load": False, **source}
    own = {"interpolation": model.interpolation, "crop_pct": model.crop_fraction, "crop_mode": model.crop_mode}
    if any(key not in source for key in own) or _input_settings(source) != _input_settings(own):
        pretrained_cfg.update(own)
    pretrained_cfg.update(
        input_size=[model.channels, *model.image_size],
        fixed_input_size=not model.dynamic_image_size,
        mean=kept_channel_values(source, "mean", model.pixel_mean, model.channels),
        std=kept_channel_values(source, "std", model.pixel_std, model.channels),
        num_classes=num_classes,
        pool_size=source.get("pool_size"),
        first_conv="patch_embed.proj",
        classifier=["head", "head_dist"] if model.distillation_token else "head",
    )
    if "label_names" in pretrained_cfg and pretrained_cfg["label_names"] != list(model.class_names or []):
        del pretrained_cfg["label_names"]  # the source's names, for a head the model no longer has
    return pretrained_cfg


def repository_files(model) -> tuple:
    """``(config.json, None)``: timm's repositories have no preprocessor file."""
    model_args = {key: value(model) for key, value in _MODEL_ARGS}
    model_args.update({key: value(model) for key, differs, value in _OPTIONAL_MODEL_ARGS if differs(model)})
    config = {
        "architecture": _DISTILLED_ARCHITECTURE if model.distillation_token else _ARCHITECTURE,
        "num_classes": model_args["num_classes"],
        "num_features": model.hidden_size,
        "global_pool": model_args["global_pool"],
        "model_args": model_args,
        "pretrained_cfg": _pretrained_cfg(model, model_args["num_classes"]),
    }
    if model.class_names:
        config["label_names"] = list(model.class_names)
    return config, None
