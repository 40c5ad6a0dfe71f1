"""The paper's model family: one registry from which everything about a variant comes.

Each named variant is registered once, below, with the published checkpoints that exist
for it; its builder (``ViTB16``), its row of the model table (``keras-vit models``, the
README), :func:`list_models`, :func:`list_weights`, :func:`published_weights`,
:func:`data_config` and ``weights=`` all read that one entry. ``ViT(variant)`` builds any
variant string, named or not (``"S/8"``). Keras is imported only to build a model, so the
registry answers at once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Union

from keras_vit.core.config import as_pair, block_flops, decode_variant, parameter_count, refuse_unknown_arguments
from keras_vit.weights import published

if TYPE_CHECKING:
    from keras_vit.core.models import VisionTransformer


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A named variant: its builder and its published checkpoints (name -> bucket path)."""

    variant: str
    builder: Callable[..., VisionTransformer]
    weights: Dict[str, str]

    @property
    def hybrid(self) -> bool:
        return "+" in self.variant


REGISTRY: Dict[str, ZooEntry] = {}


def builder_name(variant: str) -> str:
    """``"B/16"`` -> ``"ViTB16"``, ``"R50+B/16"`` -> ``"ViTR50_B16"``."""
    return "ViT" + variant.replace("/", "").replace("+", "_")


def _published_files(original, augreg_in21k, augreg_lr, augreg_in1k) -> Dict[str, str]:
    # The bucket's layout: imagenet21k[+imagenet2012]/<original>.npz and augreg/<stem>[--<fine-tune>].npz.
    files = {}
    if original:
        files["imagenet21k"] = f"imagenet21k/{original}.npz"
        if original != "ViT-H_14":  # H/14 was never published fine-tuned
            files["imagenet21k+imagenet2012"] = f"imagenet21k+imagenet2012/{original}.npz"
    if augreg_in21k:
        files["augreg_in21k"] = f"augreg/{augreg_in21k}.npz"
        files["augreg_in21k_ft_in1k"] = f"augreg/{augreg_in21k}--imagenet2012-steps_20k-lr_{augreg_lr}-res_224.npz"
    if augreg_in1k:
        files["augreg_in1k"] = f"augreg/{augreg_in1k}--imagenet2012-steps_20k-lr_0.01-res_224.npz"
    return files


def _register(variant, *, original=None, augreg_in21k=None, augreg_lr=0.01, augreg_in1k=None):
    def build(num_classes=1000, *, image_size=224, weights=None, **kwargs):
        return ViT(variant, num_classes=num_classes, image_size=image_size, weights=weights, **kwargs)

    build.__name__ = build.__qualname__ = builder_name(variant)
    build.__doc__ = f"ViT-{variant} of the paper. Arguments as :func:`keras_vit.ViT`."
    REGISTRY[variant] = ZooEntry(variant, build, _published_files(original, augreg_in21k, augreg_lr, augreg_in1k))
    return build


# The paper's Table 1 plus Ti/S (DeiT, AugReg), then the hybrids (patches from a ResNet v2
# feature map, see keras_vit.core.hybrid). The checkpoint names are the public bucket's:
# the paper's ImageNet-21k pre-training (and its ImageNet fine-tunes at 384) and the
# recommended checkpoints of "How to train your ViT?" (Steiner et al., 2021).
ViTTi16 = _register("Ti/16", augreg_in21k="Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", augreg_lr=0.03)
ViTS16 = _register(
    "S/16", augreg_in21k="S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0", augreg_lr=0.03,
    augreg_in1k="S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0",
)
ViTS32 = _register("S/32", augreg_in21k="S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0", augreg_lr=0.03)
ViTB8 = _register("B/8", augreg_in21k="B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0")
ViTB16 = _register(
    "B/16", original="ViT-B_16", augreg_in21k="B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
    augreg_in1k="B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1",
)
ViTB32 = _register(
    "B/32", original="ViT-B_32", augreg_in21k="B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0",
    augreg_lr=0.03, augreg_in1k="B_32-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.1-sd_0.1",
)
ViTL16 = _register("L/16", original="ViT-L_16", augreg_in21k="L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1")
ViTL32 = _register("L/32", original="ViT-L_32")
ViTH14 = _register("H/14", original="ViT-H_14")
ViTR_Ti16 = _register(
    "R+Ti/16", augreg_in21k="R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", augreg_lr=0.03
)
ViTR26_S32 = _register(
    "R26+S/32", augreg_in21k="R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.1-sd_0.1", augreg_lr=0.03
)
ViTR26_B32 = _register("R26+B/32")
ViTR50_B16 = _register("R50+B/16", original="R50+ViT-B_16")
ViTR50_L32 = _register("R50+L/32")


# timm's name of each named variant (at 224), so that a timm pattern ("vit_base_*") selects here
# the models it selects there.
_TIMM_NAMES = {
    "Ti/16": "vit_tiny_patch16_224", "S/16": "vit_small_patch16_224", "S/32": "vit_small_patch32_224",
    "B/8": "vit_base_patch8_224", "B/16": "vit_base_patch16_224", "B/32": "vit_base_patch32_224",
    "L/16": "vit_large_patch16_224", "L/32": "vit_large_patch32_224", "H/14": "vit_huge_patch14_224",
    "R+Ti/16": "vit_tiny_r_s16_p8_224", "R26+S/32": "vit_small_r26_s32_224", "R26+B/32": "vit_base_r26_s32_224",
    "R50+B/16": "vit_base_r50_s16_224", "R50+L/32": "vit_large_r50_s32_224",
}


def model_names(variant: str) -> List[str]:
    """The names a pattern of :func:`list_models` is matched against: the variant (``"B/16"``),
    the model (``"ViT-B/16"``), its builder (``"ViTB16"``) and timm's name (``"vit_base_patch16_224"``)."""
    return [variant, f"ViT-{variant}", builder_name(variant)] + ([_TIMM_NAMES[variant]] if variant in _TIMM_NAMES else [])


def list_models(filter: Union[str, Sequence[str]] = "", *, hybrids: bool = True) -> List[str]:
    """The named variants, in table order (``"Ti/16"``, ..., ``"R50+L/32"``), as timm's ``list_models``.

    Args:
        filter: a shell-style pattern (``fnmatch``: ``*``, ``?``, ``[...]``), or a list of them;
            a variant is listed when any pattern matches any of its :func:`model_names`,
            case-insensitively: ``"vit_*"``, ``"*b16*"`` (ViTB16, ViTR50_B16), ``"B/*"``,
            ``"*/16"``. Empty: every variant.
        hybrids: also list the ResNet hybrids (``"R50+B/16"``, ...).
    """
    if isinstance(filter, str):
        patterns = [filter] if filter else []
    elif isinstance(filter, (list, tuple)) and all(isinstance(pattern, str) for pattern in filter):
        patterns = [pattern for pattern in filter if pattern]
    else:
        raise TypeError(
            f"list_models(filter={filter!r}): expected a name pattern such as 'vit_*' or a list of them "
            f"(hybrids are chosen by the keyword: list_models(hybrids=False))."
        )
    patterns = [pattern.lower() for pattern in patterns]
    return [
        variant
        for variant, entry in REGISTRY.items()
        if (hybrids or not entry.hybrid)
        and (not patterns or any(fnmatch.fnmatchcase(name.lower(), p) for name in model_names(variant) for p in patterns))
    ]


def builders(hybrids: bool = True) -> Dict[str, Callable[..., VisionTransformer]]:
    """Variant -> builder function, in table order."""
    return {variant: REGISTRY[variant].builder for variant in list_models(hybrids=hybrids)}


def list_weights(variant: Optional[str] = None):
    """The published checkpoint names: of one variant (a list), or ``{variant: [names]}``
    for every named variant that has any."""
    if variant is not None:
        return sorted(published_weights(variant))
    return {name: sorted(entry.weights) for name, entry in REGISTRY.items() if entry.weights}


# What each published checkpoint was trained at and on: (image size, classes).
_WEIGHTS_DATA = {
    "imagenet21k": (224, 21843),
    "imagenet21k+imagenet2012": (384, 1000),
    "augreg_in21k": (224, 21843),
    "augreg_in21k_ft_in1k": (224, 1000),
    "augreg_in1k": (224, 1000),
}


def data_config(variant: str, weights: Optional[str] = None) -> dict:
    """The input a variant's checkpoint expects, as timm's ``resolve_model_data_config`` gives it.

    Every original and AugReg checkpoint takes RGB scaled by ``x / 127.5 - 1`` (mean and
    std 0.5 of [0, 1] pixels), resized with bilinear interpolation to its training size
    without a crop, as the original evaluates.

    Returns:
        ``{"image_size", "channels", "mean", "std", "interpolation", "crop_fraction",
        "num_classes"}``; without ``weights``, the builders' defaults (224, 1000 classes).

    Raises:
        ValueError: an unknown variant, or weights the variant was not published with.
    """
    decode_variant(variant)
    if weights is not None and weights not in published_weights(variant):
        raise ValueError(
            f"No published weights {weights!r} for ViT-{variant}; available: {list_weights(variant) or 'none'}."
        )
    image_size, num_classes = _WEIGHTS_DATA.get(weights, (224, 1000))
    return {
        "image_size": (image_size, image_size),
        "channels": 3,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bilinear",
        "crop_fraction": 1.0,
        "num_classes": num_classes,
    }


def published_weights(variant: str) -> Dict[str, str]:
    """The published checkpoints of ``variant``: name -> path under the bucket (``{}`` if none).

    ``imagenet21k``: the paper's ImageNet-21k pre-training; ``imagenet21k+imagenet2012``:
    those fine-tuned on ImageNet at 384; ``augreg_in21k``, ``augreg_in21k_ft_in1k`` (224)
    and ``augreg_in1k``: the recommended checkpoints of "How to train your ViT?".
    """
    entry = REGISTRY.get(variant)
    return dict(entry.weights) if entry else {}


def weights_url(variant: str, name: str) -> str:
    """The URL of a published checkpoint, under ``$KERAS_VIT_WEIGHTS_URL`` when set."""
    names = published_weights(variant)
    if name not in names:
        raise ValueError(
            f"No published weights {name!r} for ViT-{variant}. Available for this variant: "
            f"{sorted(names) or 'none'}; or pass the path of a local .npz file."
        )
    return published.bucket_url(names[name])


def fetch_weights(variant: str, name: str) -> str:
    """Downloads a published checkpoint once into the Keras cache; returns its path."""
    return published.fetch(weights_url(variant, name), f"the {name!r} weights of ViT-{variant}")


def load_weights(model, weights, *, variant: Optional[str] = None, **kwargs):
    """``weights=`` of the builders: a local ``.npz`` path, a timm or Hugging Face repository
    (a folder or ``hf://<org>/<name>``), or a published name of ``variant``."""
    from keras_vit.weights.hub import HF_PREFIX, load_pretrained
    from keras_vit.weights.npz import load_npz

    if os.path.isdir(str(weights)) or str(weights).startswith(HF_PREFIX):
        return load_pretrained(model, weights, **kwargs)
    if os.path.exists(str(weights)):
        return load_npz(model, weights, **kwargs)
    if variant is not None and weights in published_weights(variant):
        _check_published_fit(model, variant, weights)  # before a download of hundreds of MB
        return load_npz(model, fetch_weights(variant, weights), **kwargs)
    accepted = sorted(published_weights(variant)) if variant else []
    raise ValueError(
        f"weights={weights!r} is neither an existing file nor a published name"
        + (f" for ViT-{variant} (accepted: {accepted})." if variant else ".")
    )


def _check_published_fit(model, variant, name):
    spec = decode_variant(variant)
    expected = dict(hidden_size=spec.hidden_size, num_layers=spec.num_layers, num_heads=spec.num_heads,
                    mlp_dim=spec.mlp_dim, patch_size=tuple(spec.patch_size))
    actual = dict(hidden_size=model.hidden_size, num_layers=model.num_layers, num_heads=model.num_heads,
                  mlp_dim=model.mlp_dim, patch_size=tuple(model.patch_size))
    different = {key: (actual[key], expected[key]) for key in expected if actual[key] != expected[key]}
    if different:
        raise ValueError(
            f"weights={name!r} are ViT-{variant}'s, and this model differs from it ("
            + ", ".join(f"{key}={got!r}, the checkpoint's {want!r}" for key, (got, want) in different.items())
            + "): build it without those overrides, or pass weights=None."
        )


def ViT(
    variant: str = "B/16",
    *,
    num_classes: int = 1000,
    image_size=224,
    weights: Optional[str] = None,
    name: Optional[str] = None,
    **kwargs,
) -> VisionTransformer:
    """Builds a Vision Transformer of the paper's family from a variant string.

    Args:
        variant: ``"Ti/16"``, ``"S/16"``, ``"B/16"``, ``"L/32"``, ... (any patch size), or a
            hybrid such as ``"R50+B/16"``.
        num_classes: classes of the head.
        image_size: int or (height, width).
        weights: None (random init), a path to an original ``.npz`` checkpoint, or a
            published name (``"imagenet21k"``, ``"imagenet21k+imagenet2012"``, AugReg
            names; see :func:`published_weights`), adapted to this model as the
            original fine-tuning loader does.
        name: model name; defaults to ``vit_b16``-style.
        **kwargs: any other :class:`VisionTransformer` argument (``pooling``,
            ``include_top``, ``representation_size``, ``dropout``, ``channels``, ...),
            overriding the variant's.
    """
    from keras_vit.core.models import CONSTRUCTOR_ARGUMENTS, VisionTransformer

    refuse_unknown_arguments("ViT", kwargs, CONSTRUCTOR_ARGUMENTS | {"variant", "weights"})
    config = decode_variant(variant)
    arguments = dict(
        patch_size=config.patch_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        mlp_dim=config.mlp_dim,
        resnet=config.resnet,
    )
    arguments.update(kwargs)
    if name is None:
        name = "vit_" + variant.lower().replace("/", "").replace("+", "_")
    model = VisionTransformer(image_size=image_size, num_classes=num_classes, name=name, **arguments)
    if weights is not None:
        load_weights(model, weights, variant=variant)
    return model


def variant_forward_flops(variant: str, image_size: int = 224, num_classes: int = 1000) -> int:
    """:func:`~keras_vit.core.models.forward_flops` of ``ViT(variant, image_size, num_classes)``
    (class token, no pre-logits, no ResNet), from the variant's numbers alone, without
    building the model."""
    spec = decode_variant(variant)
    if spec.resnet is not None:
        raise ValueError(f"variant_forward_flops covers plain ViTs; {variant!r} is a hybrid (use forward_flops).")
    height, width = as_pair(image_size, "image_size")
    patches = (height // spec.patch_size[0]) * (width // spec.patch_size[1])
    hidden = spec.hidden_size
    embedding = 2 * patches * spec.patch_size[0] * spec.patch_size[1] * 3 * hidden
    blocks = spec.num_layers * block_flops(patches + 1, hidden, spec.mlp_dim)
    return embedding + blocks + 2 * hidden * num_classes


def variant_table(include_hybrids: bool = False, image_size: int = 224, num_classes: int = 1000, filter: str = ""):
    """One row per named variant: architecture, parameters, GFLOPs and published weights.

    Plain ViTs are counted from their numbers (equal to the built models'; a test checks
    it), so the table needs no Keras; hybrids are built to count their ResNet stems.
    ``filter``: only the variants :func:`list_models` lists for that pattern.
    """
    rows = []
    for variant in list_models(filter, hybrids=include_hybrids):
        build = REGISTRY[variant].builder
        spec = decode_variant(variant)
        if spec.resnet is None:
            params = parameter_count(spec, image_size, num_classes)
            flops = variant_forward_flops(variant, image_size, num_classes)
        else:
            params, flops = _built_counts(build, image_size, num_classes)
        rows.append(
            {
                "model": f"ViT-{variant}",
                "builder": build.__name__,
                "layers": spec.num_layers,
                "width": spec.hidden_size,
                "heads": spec.num_heads,
                "mlp": spec.mlp_dim,
                "patch": spec.patch_size[0],
                "params": params,
                f"GFLOPs@{image_size}": flops / 1e9,
                "weights": ", ".join(list_weights(variant)) or "-",
            }
        )
    return rows


def _built_counts(build, image_size, num_classes):
    import keras

    from keras_vit.core.models import forward_flops

    model = build(num_classes=num_classes, image_size=image_size)
    counts = model.count_params(), forward_flops(model)
    del model
    keras.backend.clear_session()
    return counts
