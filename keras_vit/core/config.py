"""The paper's model family as one table, decoded from short variant strings.

A variant is written as big_vision writes it: ``"B/16"`` is the Base width/depth with
16x16 patches, ``"R50+B/16"`` the hybrid with a ResNet-50 stem (see ``hybrid.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from typing import Optional, Tuple

# name -> (hidden_size, num_layers, num_heads, mlp_dim), paper Table 1 plus Ti/S (DeiT, AugReg).
WIDTHS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}

# The paper's hybrids (vit_jax configs): name -> (width, ResNet v2 stage sizes, patch size on
# the stem's feature map). The stem has stride 4 (root) times 2 per stage after the first.
HYBRIDS = {
    "R+Ti/16": ("Ti", (), 8),
    "R26+S/32": ("S", (2, 2, 2, 2), 1),
    "R26+B/32": ("B", (2, 2, 2, 2), 1),
    "R50+B/16": ("B", (3, 4, 9), 1),
    "R50+L/32": ("L", (3, 4, 6, 3), 1),
}

POOLINGS = ("token", "gap")
POSITION_EMBEDDINGS = ("learned", "learned_2d", "sincos2d", "none")
GELUS = ("tanh", "exact")  # the original's approximation; timm's and Hugging Face's erf form
# How learned position embeddings move to another grid: the original's corner-aligned
# linear zoom, timm's antialiased bicubic.
POSITION_RESAMPLINGS = ("bilinear", "bicubic")
# A model's preprocessing (core/image_spec.py). Resize methods by tf.image.resize's names
# (timm's and PIL's "bicubic" is the same Keys kernel); timm's eval crop modes: "squash"
# resizes both sides to size / crop_fraction (aspect not kept; the original's and Hugging
# Face's resize) and keeps the centre, "center" resizes the shorter side (timm's default).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")
CROP_MODES = ("squash", "center")

_VARIANT_RE = re.compile(r"^(Ti|S|B|L|H)/(\d+)$")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture hyper-parameters of one Vision Transformer."""

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    patch_size: Tuple[int, int]
    resnet: Optional[Tuple[Tuple[int, ...], float]] = None  # (stage sizes, width factor)


def decode_variant(variant: str) -> ViTConfig:
    """Decodes ``"B/16"`` (any width, any patch size) or a hybrid such as ``"R50+B/16"``.

    Raises:
        ValueError: the string names no known width, patch size or hybrid.
    """
    if isinstance(variant, str) and variant in HYBRIDS:
        width, stages, patch = HYBRIDS[variant]
        return dataclasses.replace(
            decode_variant(f"{width}/{patch}"), resnet=(stages, 1.0)
        )
    match = _VARIANT_RE.match(variant) if isinstance(variant, str) else None
    if match is None or int(match.group(2)) < 1:
        raise ValueError(
            f"Unknown variant {variant!r}. Expected '<width>/<patch>' with width one of "
            f"{list(WIDTHS)} and a positive patch size (e.g. 'B/16'), or a hybrid, one of "
            f"{list(HYBRIDS)}."
        )
    width, patch = match.group(1), int(match.group(2))
    hidden_size, num_layers, num_heads, mlp_dim = WIDTHS[width]
    return ViTConfig(hidden_size, num_layers, num_heads, mlp_dim, (patch, patch))


def as_pair(value, name: str) -> Tuple[int, int]:
    """Returns ``(h, w)`` from an int or a pair, refusing anything else by name."""
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"`{name}` must be an int or a pair of ints (height, width); got {value!r}.")
    if min(pair) < 1:
        raise ValueError(f"`{name}` must be positive; got {value!r}.")
    return pair


# The value checks and the wording of every "<name>=<value>; expected ..." refusal, shared
# by the builders, the data pipelines and the training configuration.
def is_int(value, minimum=1) -> bool:
    """An int (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_rate(value) -> bool:
    return is_number(value) and 0 <= value < 1


def refuse(name, value, accepted):
    """Raises ``ValueError("<name>=<value>; expected <accepted>.")``."""
    raise ValueError(f"{name}={value!r}; expected {accepted}.")


def did_you_mean(name, choices) -> str:
    """`` (did you mean 'x'?)`` with the closest of ``choices`` to ``name``, or an empty string."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_architecture(
    *,
    hidden_size,
    num_layers,
    num_heads,
    mlp_dim,
    patch_size=16,
    image_size=None,
    channels=3,
    pooling="token",
    dropout=0.0,
    attention_dropout=0.0,
    drop_path_rate=0.0,
    representation_size=None,
    stem_stride=1,
    layer_norm_epsilon=1e-6,
    gelu="tanh",
    layer_scale_init=None,
    num_register_tokens=0,
    distillation_token=False,
    norm_after_pooling=False,
    patch_position_embedding_only=False,
    include_preprocessing=False,
    pixel_mean=None,
    pixel_std=None,
    dynamic_image_size=False,
    position_resampling="bilinear",
    position_embedding="learned",
    interpolation="bilinear",
    crop_fraction=1.0,
    crop_mode="squash",
):
    """Checks a Vision Transformer's arguments before anything is built.

    Each failure is a ``ValueError`` that starts ``"<name>=<value>; expected ..."``, so the
    builders and the training configuration report the same words.
    """
    for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers), ("num_heads", num_heads),
                        ("mlp_dim", mlp_dim)):
        if not is_int(value):
            refuse(name, value, "a positive integer")
    if hidden_size % num_heads:
        refuse("num_heads", num_heads, f"a divisor of hidden_size={hidden_size}")
    patch = as_pair(patch_size, "patch_size")
    if image_size is not None:
        size = as_pair(image_size, "image_size")
        step = (patch[0] * stem_stride, patch[1] * stem_stride)
        if size[0] % step[0] or size[1] % step[1]:
            refuse("image_size", image_size, f"a positive multiple of patch_size={patch[0]}"
                    + (f" times the ResNet stem's stride {stem_stride}" if stem_stride > 1 else ""))
    if not is_int(channels):
        refuse("channels", channels, "a positive integer (3 for RGB, 1 for grayscale)")
    if pooling not in POOLINGS:
        refuse("pooling", pooling, " or ".join(repr(p) for p in POOLINGS))
    for name, value in (("dropout", dropout), ("attention_dropout", attention_dropout), ("drop_path_rate", drop_path_rate)):
        if not _is_rate(value):
            refuse(name, value, "a number in [0, 1)")
    if representation_size is not None and not is_int(representation_size):
        refuse("representation_size", representation_size, "a positive integer or None")
    if not (is_number(layer_norm_epsilon) and layer_norm_epsilon > 0):
        refuse("layer_norm_epsilon", layer_norm_epsilon, "a positive number (1e-6 in the original and timm)")
    if gelu not in GELUS:
        refuse("gelu", gelu, " or ".join(repr(g) for g in GELUS))
    if layer_scale_init is not None and not (is_number(layer_scale_init) and layer_scale_init > 0):
        refuse("layer_scale_init", layer_scale_init, "None or a positive number (timm's init_values)")
    if not is_int(num_register_tokens, minimum=0):
        refuse("num_register_tokens", num_register_tokens, "an integer >= 0")
    for name, value in (("distillation_token", distillation_token), ("norm_after_pooling", norm_after_pooling),
                        ("patch_position_embedding_only", patch_position_embedding_only),
                        ("include_preprocessing", include_preprocessing), ("dynamic_image_size", dynamic_image_size)):
        if not isinstance(value, bool):
            refuse(name, value, "True or False")
    if distillation_token and pooling != "token":
        refuse("distillation_token", distillation_token, "False with pooling='gap' (DeiT's heads read the class and distillation tokens)")
    if distillation_token and representation_size:
        refuse("distillation_token", distillation_token, "False with a representation_size (DeiT has no pre-logits layer)")
    for name, value in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
        if value is None:
            continue
        if not (isinstance(value, (tuple, list)) and len(value) in (1, channels if is_int(channels) else 3)
                and all(is_number(v) for v in value)) or (name == "pixel_std" and min(value) <= 0):
            refuse(name, value, f"{channels} numbers (per channel, of pixels scaled to [0, 1])"
                   + (", each positive" if name == "pixel_std" else ""))
    if position_resampling not in POSITION_RESAMPLINGS:
        refuse("position_resampling", position_resampling, " or ".join(repr(r) for r in POSITION_RESAMPLINGS))
    if dynamic_image_size and position_embedding not in ("learned", "none"):
        refuse("dynamic_image_size", dynamic_image_size,
               f"False with position_embedding={position_embedding!r} (only learned embeddings are resampled)")
    if interpolation not in INTERPOLATIONS:
        refuse("interpolation", interpolation, " or ".join(repr(i) for i in INTERPOLATIONS))
    if not (is_number(crop_fraction) and 0 < crop_fraction <= 1):
        refuse("crop_fraction", crop_fraction, "a number in (0, 1] (1: the whole image; 0.875: resize 256, crop 224)")
    if crop_mode not in CROP_MODES:
        refuse("crop_mode", crop_mode, " or ".join(repr(m) for m in CROP_MODES))


# keras.applications' names for what keras_vit calls otherwise.
KERAS_APPLICATIONS_NAMES = {
    "classes": "num_classes=",
    "input_shape": "image_size=(height, width) and channels=",
    "input_tensor": "a functional call instead: model(tensor)",
    "classifier_activation": None,  # the same name: accepted
}


def refuse_unknown_arguments(function_name, given, accepted):
    """Raises ``TypeError`` for keyword arguments ``function_name`` does not take, with the
    closest accepted name, or keras_vit's name for a keras.applications argument."""
    unknown = [name for name in given if name not in accepted]
    if not unknown:
        return
    reasons = []
    for name in unknown:
        if KERAS_APPLICATIONS_NAMES.get(name):
            reasons.append(f"{name!r} (keras.applications' name; keras_vit takes {KERAS_APPLICATIONS_NAMES[name]})")
            continue
        reasons.append(f"{name!r}" + did_you_mean(name, accepted))
    raise TypeError(
        f"{function_name}() got unexpected keyword argument(s) {', '.join(reasons)}; it accepts {sorted(accepted)}."
    )


def block_flops(tokens: int, width: int, mlp_dim: int) -> int:
    """One encoder block's matrix products over ``tokens`` tokens of ``width`` (2 FLOPs per
    multiply-accumulate)."""
    projections = 2 * tokens * width * 4 * width  # q, k, v and output projections
    attention = 2 * 2 * tokens * tokens * width  # scores and weighted sum
    return projections + attention + 2 * 2 * tokens * width * mlp_dim


def parameter_count(spec: ViTConfig, image_size=224, num_classes: int = 1000, channels: int = 3) -> int:
    """Parameters of a plain ViT (class token, learned position embeddings, no pre-logits)
    from its numbers alone; equal to ``count_params()`` of the built model."""
    if spec.resnet is not None:
        raise ValueError("parameter_count covers plain ViTs; a hybrid's stem is counted by building it.")
    height, width = as_pair(image_size, "image_size")
    ph, pw = spec.patch_size
    d, m = spec.hidden_size, spec.mlp_dim
    patches = (height // ph) * (width // pw)
    embedding = ph * pw * channels * d + d + d + (patches + 1) * d  # projection, class token, positions
    block = 2 * 2 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)  # two norms, attention, MLP
    return embedding + spec.num_layers * block + 2 * d + d * num_classes + num_classes
