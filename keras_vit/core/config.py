"""The paper's model family as one table, decoded from short variant strings.

A variant is written as big_vision writes it: ``"B/16"`` is the Base width/depth with
16x16 patches, ``"R50+B/16"`` the hybrid with a ResNet-50 stem (see ``hybrid.py``).

:class:`VisionTransformerConfig` is the one statement of a model's arguments, their
defaults and their checks; the builder, ``get_config``, the input contract and the
training configuration's model section are read from it. Plain Python: no Keras import.
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


LAYER_NORM_EPSILON = 1e-6  # the original's and timm's (Keras defaults to 1e-3)


def stem_stride(stages) -> int:
    """Total downsampling of a hybrid's ResNet stem: 4, times 2 for every stage after the first."""
    return 4 * 2 ** max(len(stages) - 1, 0)


def check_divisible(image_size, patch_size, stride: int = 1) -> Tuple[int, int]:
    """Returns the patch grid (rows, columns) of ``image_size`` cut into ``patch_size``
    patches after a stem of ``stride``, refusing a size that does not divide.

    The one place this check is written: :class:`VisionTransformerConfig` calls it, and
    the builders and the training configuration make one before anything is built.
    """
    size, patch = as_pair(image_size, "image_size"), as_pair(patch_size, "patch_size")
    step = (patch[0] * stride, patch[1] * stride)
    if size[0] % step[0] or size[1] % step[1]:
        what = f"the patch size {patch[0]}x{patch[1]}" + (
            f" times the ResNet stem's stride {stride}" if stride > 1 else "")
        example = "x".join(str(max(1, round(got / unit)) * unit) for got, unit in zip(size, step))
        raise ValueError(f"image_size={image_size!r} is not divisible by {what}; expected height and width "
                         f"multiples of {step[0]}x{step[1]} (e.g. {example}).")
    return (size[0] // step[0], size[1] // step[1])


def _one_of(name, value, choices):
    if value not in choices:
        refuse(name, value, " or ".join(repr(choice) for choice in choices))


@dataclasses.dataclass(frozen=True)
class VisionTransformerConfig:
    """Every argument of :class:`~keras_vit.core.models.VisionTransformer`, with its default,
    checked and normalised once, here.

    The one statement of a model's arguments: the builder's keyword signature, its
    ``get_config`` (:meth:`to_dict`) and the training section's model fields
    (:func:`optional_fields`) are derived from these fields; ``VisionTransformer``'s
    docstring says what each means. Construction refuses the first invalid value with
    ``"<name>=<value>; expected ..."``; sizes become (height, width) pairs, the pixel
    statistics one float per channel, ``resnet`` a (stage sizes, width factor) pair.
    """

    image_size: Tuple[int, int] = 224
    patch_size: Tuple[int, int] = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: Optional[int] = 1000
    channels: int = 3
    include_top: bool = True
    pooling: str = "token"
    representation_size: Optional[int] = None
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path_rate: float = 0.0
    classifier_activation: Optional[str] = None
    position_embedding: str = "learned"
    resnet: Optional[Tuple[Tuple[int, ...], float]] = None
    layer_norm_epsilon: float = LAYER_NORM_EPSILON
    gelu: str = "tanh"
    layer_scale_init: Optional[float] = None
    num_register_tokens: int = 0
    distillation_token: bool = False
    norm_after_pooling: bool = False
    patch_position_embedding_only: bool = False
    include_preprocessing: bool = False
    pixel_mean: Optional[Tuple[float, ...]] = None
    pixel_std: Optional[Tuple[float, ...]] = None
    dynamic_image_size: bool = False
    position_resampling: str = "bilinear"
    interpolation: str = "bilinear"
    crop_fraction: float = 1.0
    crop_mode: str = "squash"
    class_names: Optional[Tuple[str, ...]] = None
    source_metadata: Optional[dict] = None

    def __post_init__(self):
        if not isinstance(self.include_top, bool):
            refuse("include_top", self.include_top, "True or False")
        given_size = self.image_size  # named as given in a refusal
        self._set(image_size=as_pair(self.image_size, "image_size"), patch_size=as_pair(self.patch_size, "patch_size"))
        _check_choices_and_head(self)
        _check_sizes_and_rates(self)
        _check_options(self)
        _check_input_contract(self)
        self._set(**_normalised(self))
        check_divisible(given_size, self.patch_size, self.stem_stride)

    def _set(self, **values):
        for name, value in values.items():
            object.__setattr__(self, name, value)  # normalising a frozen instance once, while it is made

    @classmethod
    def from_arguments(cls, function_name: str, arguments: dict) -> "VisionTransformerConfig":
        """The configuration of ``function_name(**arguments)``; an unknown name is a
        ``TypeError`` naming it and the closest accepted one."""
        refuse_unknown_arguments(function_name, arguments, ARGUMENT_NAMES)
        return cls(**arguments)

    @property
    def stem_stride(self) -> int:
        """The ResNet stem's downsampling (1 without one)."""
        return 1 if self.resnet is None else stem_stride(self.resnet[0])

    @property
    def grid_size(self) -> Tuple[int, int]:
        """Rows and columns of the patch grid at ``image_size``."""
        return check_divisible(self.image_size, self.patch_size, self.stem_stride)

    def to_dict(self) -> dict:
        """The arguments as ``get_config`` returns them (sizes as tuples, class names as a list)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        values["class_names"] = None if self.class_names is None else list(self.class_names)
        return values


def _check_choices_and_head(config):
    _one_of("pooling", config.pooling, POOLINGS)
    _one_of("position_embedding", config.position_embedding, POSITION_EMBEDDINGS)
    if config.include_top and not is_int(config.num_classes):
        raise ValueError(
            f"num_classes must be a positive integer when include_top=True; got {config.num_classes!r}. "
            f"Use include_top=False for a model without a head."
        )
    if config.representation_size is not None and not is_int(config.representation_size):
        refuse("representation_size", config.representation_size, "a positive integer or None")
    names = config.class_names
    if names is not None and (isinstance(names, str) or not all(isinstance(c, str) for c in names) or (
            config.include_top and len(names) != config.num_classes)):
        refuse("class_names", names, f"None or {config.num_classes} strings, one per class of the head")
    if config.source_metadata is not None and not isinstance(config.source_metadata, dict):
        refuse("source_metadata", config.source_metadata, "None or a dict")


def _check_sizes_and_rates(config):
    for name in ("hidden_size", "num_layers", "num_heads", "mlp_dim"):
        if not is_int(getattr(config, name)):
            refuse(name, getattr(config, name), "a positive integer")
    if config.hidden_size % config.num_heads:
        refuse("num_heads", config.num_heads, f"a divisor of hidden_size={config.hidden_size}")
    if not is_int(config.channels):
        refuse("channels", config.channels, "a positive integer (3 for RGB, 1 for grayscale)")
    for name in ("dropout", "attention_dropout", "drop_path_rate"):
        if not _is_rate(getattr(config, name)):
            refuse(name, getattr(config, name), "a number in [0, 1)")
    if not (is_number(config.layer_norm_epsilon) and config.layer_norm_epsilon > 0):
        refuse("layer_norm_epsilon", config.layer_norm_epsilon, "a positive number (1e-6 in the original and timm)")
    if config.layer_scale_init is not None and not (is_number(config.layer_scale_init) and config.layer_scale_init > 0):
        refuse("layer_scale_init", config.layer_scale_init, "None or a positive number (timm's init_values)")
    if not is_int(config.num_register_tokens, minimum=0):
        refuse("num_register_tokens", config.num_register_tokens, "an integer >= 0")
    resnet = config.resnet
    if resnet is not None and not (
        isinstance(resnet, (tuple, list)) and len(resnet) == 2 and isinstance(resnet[0], (tuple, list))
        and all(is_int(stage) for stage in resnet[0]) and is_number(resnet[1]) and resnet[1] > 0
    ):
        refuse("resnet", resnet, "None or (stage sizes, width factor), e.g. ((3, 4, 9), 1.0)")


def _check_options(config):
    _one_of("gelu", config.gelu, GELUS)
    for name in ("distillation_token", "norm_after_pooling", "patch_position_embedding_only",
                 "include_preprocessing", "dynamic_image_size"):
        if not isinstance(getattr(config, name), bool):
            refuse(name, getattr(config, name), "True or False")
    if config.distillation_token and config.pooling != "token":
        refuse("distillation_token", True, "False with pooling='gap' (DeiT's heads read the class and distillation tokens)")
    if config.distillation_token and config.representation_size:
        refuse("distillation_token", True, "False with a representation_size (DeiT has no pre-logits layer)")
    _one_of("position_resampling", config.position_resampling, POSITION_RESAMPLINGS)
    if config.dynamic_image_size and config.position_embedding not in ("learned", "none"):
        refuse("dynamic_image_size", True,
               f"False with position_embedding={config.position_embedding!r} (only learned embeddings are resampled)")


def _check_input_contract(config):
    for name in ("pixel_mean", "pixel_std"):
        value = getattr(config, name)
        if value is None:
            continue
        if not (isinstance(value, (tuple, list)) and len(value) in (1, config.channels)
                and all(is_number(v) for v in value)) or (name == "pixel_std" and min(value) <= 0):
            refuse(name, value, f"{config.channels} numbers (per channel, of pixels scaled to [0, 1])"
                   + (", each positive" if name == "pixel_std" else ""))
    _one_of("interpolation", config.interpolation, INTERPOLATIONS)
    if not (is_number(config.crop_fraction) and 0 < config.crop_fraction <= 1):
        refuse("crop_fraction", config.crop_fraction, "a number in (0, 1] (1: the whole image; 0.875: resize 256, crop 224)")
    _one_of("crop_mode", config.crop_mode, CROP_MODES)


def _normalised(config) -> dict:
    # One form for each value, so that a configuration and its saved copy compare equal.
    unit = (0.5,) * config.channels  # the original's x / 127.5 - 1
    return dict(
        pixel_mean=unit if config.pixel_mean is None else tuple(float(m) for m in config.pixel_mean),
        pixel_std=unit if config.pixel_std is None else tuple(float(s) for s in config.pixel_std),
        resnet=None if config.resnet is None else (
            tuple(int(s) for s in config.resnet[0]), float(config.resnet[1])),
        layer_norm_epsilon=float(config.layer_norm_epsilon),
        crop_fraction=float(config.crop_fraction),
        class_names=None if config.class_names is None else tuple(config.class_names),
    )


ARGUMENT_NAMES = frozenset(field.name for field in dataclasses.fields(VisionTransformerConfig))


def check_architecture(**arguments) -> VisionTransformerConfig:
    """Checks a Vision Transformer's arguments before anything is built (those left out
    take the builder's defaults); returns their :class:`VisionTransformerConfig`.

    Each failure is a ``ValueError`` that names the argument, its value and what is
    accepted, so the builders and the training configuration report the same words.
    """
    return VisionTransformerConfig.from_arguments("check_architecture", arguments)


def optional_fields(names, keep_defaults=()):
    """``dataclasses.make_dataclass`` field specifications for the named model arguments,
    each defaulting to None (filled in later, from a recipe or a checkpoint), except those
    in ``keep_defaults``, which keep the builder's default."""
    defaults = {field.name: field.default for field in dataclasses.fields(VisionTransformerConfig)}
    refuse_unknown_arguments("optional_fields", names, ARGUMENT_NAMES)
    return [(name, Optional[object], dataclasses.field(default=defaults[name] if name in keep_defaults else None))
            for name in names]


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
