"""Vision Transformer weights in timm's and Hugging Face transformers' layouts, in and out.

A hub repository (a local folder, or ``hf://<org>/<name>`` fetched with ``huggingface_hub``)
holds ``config.json`` and ``model.safetensors``. timm's config has ``architecture`` and
``pretrained_cfg`` (and often ``model_args``); Hugging Face's has ``model_type: "vit"``. The
tensors are renamed and transposed into the published ``.npz`` layout and loaded by the same
strict loader as the original checkpoints (:mod:`keras_vit.weights.npz`): an unknown key, a
missing weight or a shape mismatch names the key and both shapes, and nothing is assigned.

What each library computes is kept: exact GELU, its LayerNorm epsilon (1e-6 timm, the
config's for Hugging Face, 1e-12 by default), its normalisation (``pretrained_cfg`` mean/std,
``preprocessor_config.json``), timm's position-embedding resampling (antialiased bicubic),
the class names of the checkpoint (``id2label``, timm's ``label_names``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Dict, Optional

import numpy as np

from keras_vit.core.config import CROP_MODES, INTERPOLATIONS, as_pair
from keras_vit.core.layers import resample_grid
from keras_vit.core.models import VisionTransformer
from keras_vit.weights import metadata, npz

logger = logging.getLogger(__name__)

HF_PREFIX = "hf://"
WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
PREPROCESSOR_FILENAME = "preprocessor_config.json"
FORMATS = ("timm", "huggingface")

# timm's size names -> attention heads, where a hub config has no model_args (most AugReg
# and DeiT repositories): the paper's widths with 64-wide heads, Huge with 80.
_TIMM_HEADS = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "huge": 16, "giant": 16}
# Hugging Face's activation names -> keras_vit's GELU.
_HF_GELUS = {"gelu": "exact", "gelu_python": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}

# --------------------------------------------------------------------------- reading files
def _read_json(path):
    return metadata.read_json_object(path)


def read_safetensors(path) -> Dict[str, np.ndarray]:
    """``{name: array}`` of a ``.safetensors`` file (float16/bfloat16 tensors as float32)."""
    from safetensors import safe_open

    tensors = {}
    try:
        with safe_open(os.fspath(path), framework="numpy") as file:
            for key in file.keys():
                tensors[key] = file.get_tensor(key)
    except Exception as error:  # safetensors raises its own error types for torn or foreign files
        raise ValueError(f"{os.fspath(path)!r} is not a readable .safetensors file ({error}).") from error
    return {key: value.astype("float32") if value.dtype.kind == "f" else value for key, value in tensors.items()}


def resolve_source(source, *, cache_dir=None) -> str:
    """The local folder of ``source``: a folder as it is, ``hf://org/name`` downloaded (cached)."""
    source = os.fspath(source)
    if not source.startswith(HF_PREFIX):
        if not os.path.isdir(source):
            raise FileNotFoundError(
                f"{source!r} is not a folder; expected a folder holding {CONFIG_FILENAME} and "
                f"{WEIGHTS_FILENAME} (a timm or Hugging Face repository), an .npz file, or hf://<org>/<name>."
            )
        return source
    repo_id = source[len(HF_PREFIX):].strip("/")
    if repo_id.count("/") != 1:
        raise ValueError(f"{source!r}: expected hf://<org>/<name>, e.g. hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k.")
    try:
        import huggingface_hub
    except ImportError as error:
        raise ImportError(
            f"Downloading {source} needs huggingface_hub: pip install 'keras-vit[hub]' (or download the "
            f"repository's {CONFIG_FILENAME} and {WEIGHTS_FILENAME} and pass their folder)."
        ) from error
    try:
        return huggingface_hub.snapshot_download(
            repo_id, allow_patterns=["*.json", WEIGHTS_FILENAME], cache_dir=cache_dir
        )
    except Exception as error:  # offline, unknown repository, gated repository: one message
        cache = cache_dir or huggingface_hub.constants.HF_HUB_CACHE
        reason = " ".join(str(error).split())  # huggingface_hub's messages span lines
        raise OSError(
            f"Cannot download {repo_id!r} from the Hugging Face Hub ({type(error).__name__}: {reason}). "
            f"Offline, put its {CONFIG_FILENAME}, {WEIGHTS_FILENAME} (and {PREPROCESSOR_FILENAME} if any) "
            f"in a folder and pass that folder, or fill the cache at {cache}."
        ) from error


def detect_format(config: dict, folder) -> str:
    """``"timm"`` or ``"huggingface"`` from a repository's ``config.json``."""
    if "architecture" in config or "pretrained_cfg" in config:
        return "timm"
    if config.get("model_type") == "vit":
        return "huggingface"
    raise ValueError(
        f"{os.path.join(folder, CONFIG_FILENAME)!r} is neither timm's (an 'architecture' key) nor "
        f"Hugging Face's ViT (model_type 'vit'; got model_type={config.get('model_type')!r})."
    )


# --------------------------------------------------------------------------- timm -> layout
def _linear(weight):
    return np.ascontiguousarray(weight.T)  # PyTorch (out, in) -> Keras (in, out)


def _patch_kernel(weight):
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))  # (D, C, P, P) -> (P, P, C, D)


def _attention(prefix, query, key, value, out_weight, out_bias, num_heads):
    """The published layout of one attention layer from PyTorch (out, in) matrices."""
    width = query[0].shape[1]
    head_dim = width // num_heads
    arrays = {}
    for name, (weight, bias) in (("query", query), ("key", key), ("value", value)):
        arrays[f"{prefix}/{name}/kernel"] = _linear(weight).reshape(width, num_heads, head_dim)
        arrays[f"{prefix}/{name}/bias"] = bias.reshape(num_heads, head_dim)
    arrays[f"{prefix}/out/kernel"] = _linear(out_weight).reshape(num_heads, head_dim, width)
    arrays[f"{prefix}/out/bias"] = out_bias
    return arrays


def _norm(arrays, prefix, tensors, name):
    arrays[f"{prefix}/scale"] = tensors.pop(f"{name}.weight")
    arrays[f"{prefix}/bias"] = tensors.pop(f"{name}.bias")


def _dense(arrays, prefix, tensors, name):
    arrays[f"{prefix}/kernel"] = _linear(tensors.pop(f"{name}.weight"))
    arrays[f"{prefix}/bias"] = tensors.pop(f"{name}.bias")


def _pop_if(tensors, name):
    return tensors.pop(name) if name in tensors else None


def timm_to_layout(tensors: Dict[str, np.ndarray], num_heads: int) -> Dict[str, np.ndarray]:
    """timm ``VisionTransformer`` tensors -> the published layout (unknown names kept as they are)."""
    tensors = dict(tensors)
    arrays = {
        "embedding/kernel": _patch_kernel(tensors.pop("patch_embed.proj.weight")),
        "embedding/bias": tensors.pop("patch_embed.proj.bias"),
    }
    for name, key in (("cls_token", "cls"), ("dist_token", "dist"), ("reg_token", "reg"), ("pos_embed", npz.POS_EMBEDDING_KEY)):
        if name in tensors:
            arrays[key] = tensors.pop(name)
    blocks = sorted({int(m.group(1)) for k in tensors if (m := re.match(r"^blocks\.(\d+)\.", k))})
    for i in blocks:
        source, prefix = f"blocks.{i}", f"Transformer/encoderblock_{i}"
        qkv_weight = tensors.pop(f"{source}.attn.qkv.weight")
        qkv_bias = _pop_if(tensors, f"{source}.attn.qkv.bias")
        if qkv_bias is None:  # qkv_bias=False models: the layout's biases are zero
            qkv_bias = np.zeros(qkv_weight.shape[0], qkv_weight.dtype)
        weights, biases = np.split(qkv_weight, 3), np.split(qkv_bias, 3)  # query, key, value stacked
        arrays.update(_attention(
            f"{prefix}/MultiHeadDotProductAttention_1", *zip(weights, biases),
            tensors.pop(f"{source}.attn.proj.weight"), tensors.pop(f"{source}.attn.proj.bias"), num_heads,
        ))
        _norm(arrays, f"{prefix}/LayerNorm_0", tensors, f"{source}.norm1")
        _norm(arrays, f"{prefix}/LayerNorm_2", tensors, f"{source}.norm2")
        _dense(arrays, f"{prefix}/MlpBlock_3/Dense_0", tensors, f"{source}.mlp.fc1")
        _dense(arrays, f"{prefix}/MlpBlock_3/Dense_1", tensors, f"{source}.mlp.fc2")
        for n in (1, 2):
            gamma = _pop_if(tensors, f"{source}.ls{n}.gamma")
            if gamma is not None:
                arrays[f"{prefix}/LayerScale_{n}/scale"] = gamma
    for name, prefix in (("norm", "Transformer/encoder_norm"), ("fc_norm", "fc_norm")):
        if f"{name}.weight" in tensors:
            _norm(arrays, prefix, tensors, name)
    for name, prefix in (("pre_logits.fc", "pre_logits"), ("head", "head"), ("head_dist", "head_dist")):
        if f"{name}.weight" in tensors:
            _dense(arrays, prefix, tensors, name)
    arrays.update(tensors)  # what nothing consumed: the strict loader names it
    return arrays


def huggingface_to_layout(tensors: Dict[str, np.ndarray], num_heads: int) -> Dict[str, np.ndarray]:
    """Hugging Face ``ViTForImageClassification`` / ``ViTModel`` tensors -> the published layout."""
    tensors = dict(tensors)
    # ViTForImageClassification prefixes the backbone with "vit."; ViTModel does not.
    base = "vit." if any(key.startswith("vit.") for key in tensors) else ""
    arrays = {
        "embedding/kernel": _patch_kernel(tensors.pop(f"{base}embeddings.patch_embeddings.projection.weight")),
        "embedding/bias": tensors.pop(f"{base}embeddings.patch_embeddings.projection.bias"),
        "cls": tensors.pop(f"{base}embeddings.cls_token"),
        npz.POS_EMBEDDING_KEY: tensors.pop(f"{base}embeddings.position_embeddings"),
    }
    _pop_if(tensors, f"{base}embeddings.mask_token")  # masked-image-modeling only; unused by classification
    layer_re = re.compile(rf"^{re.escape(base)}encoder\.layer\.(\d+)\.")
    blocks = sorted({int(m.group(1)) for k in tensors if (m := layer_re.match(k))})
    for i in blocks:
        source, prefix = f"{base}encoder.layer.{i}", f"Transformer/encoderblock_{i}"
        projections = [
            (tensors.pop(f"{source}.attention.attention.{name}.weight"),
             tensors.pop(f"{source}.attention.attention.{name}.bias"))
            for name in ("query", "key", "value")
        ]
        arrays.update(_attention(
            f"{prefix}/MultiHeadDotProductAttention_1", *projections,
            tensors.pop(f"{source}.attention.output.dense.weight"), tensors.pop(f"{source}.attention.output.dense.bias"),
            num_heads,
        ))
        _norm(arrays, f"{prefix}/LayerNorm_0", tensors, f"{source}.layernorm_before")
        _norm(arrays, f"{prefix}/LayerNorm_2", tensors, f"{source}.layernorm_after")
        _dense(arrays, f"{prefix}/MlpBlock_3/Dense_0", tensors, f"{source}.intermediate.dense")
        _dense(arrays, f"{prefix}/MlpBlock_3/Dense_1", tensors, f"{source}.output.dense")
    _norm(arrays, "Transformer/encoder_norm", tensors, f"{base}layernorm")
    for name, prefix in ((f"{base}pooler.dense", "pre_logits"), ("classifier", "head")):
        if f"{name}.weight" in tensors:
            _dense(arrays, prefix, tensors, name)
    arrays.update(tensors)
    return arrays


# --------------------------------------------------------------------------- configurations
# PIL's resampling numbers (Hugging Face's processors) <-> interpolation names (timm's, the model's).
_PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "area": 4}
# Read: Lanczos (1) and Hamming (5) have no tf.image.resize form in keras_vit's list; bicubic
# is the nearest kernel.
_PIL_RESAMPLE_READ = {**{code: name for name, code in _PIL_RESAMPLE.items()}, 1: "bicubic", 5: "bicubic"}


def _input_settings(kind, document) -> dict:
    """The model's resize and crop (``interpolation``, ``crop_fraction``, ``crop_mode``) from
    timm's ``pretrained_cfg`` or Hugging Face's processor; a value the model cannot take
    leaves the library's default (the source itself is kept in ``source_metadata``)."""
    if kind == "timm":  # timm's defaults: bicubic, crop_pct 0.875, "center"
        interpolation, crop, mode = document.get("interpolation"), document.get("crop_pct"), document.get("crop_mode")
        interpolation = "bicubic" if interpolation in ("lanczos", "hamming") else interpolation
        defaults = ("bicubic", 0.875, "center")
    else:  # ViTImageProcessor resizes both sides (bilinear by default), then crops only with do_center_crop
        resample = document.get("resample")
        interpolation = _PIL_RESAMPLE_READ.get(resample) if isinstance(resample, int) else None
        crop, mode, defaults = _huggingface_crop_fraction(document), None, ("bilinear", 1.0, "squash")
    crop_ok = isinstance(crop, (int, float)) and not isinstance(crop, bool) and 0 < crop <= 1
    return dict(
        interpolation=interpolation if interpolation in INTERPOLATIONS else defaults[0],
        crop_fraction=float(crop) if crop_ok else defaults[1],
        crop_mode=mode if isinstance(mode, str) and mode in CROP_MODES else defaults[2],
    )


def _huggingface_crop_fraction(preprocessor):
    """``crop_size / size`` of a processor that centre-crops (``do_center_crop``), else None."""
    size, crop = preprocessor.get("size"), preprocessor.get("crop_size")
    if preprocessor.get("do_center_crop") is not True or not size or not crop:
        return None
    side = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
    cropped = crop.get("height") if isinstance(crop, dict) else crop
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (side, cropped))
    return min(1.0, float(cropped) / float(side)) if numbers else None


def _timm_gelu(model_args, path):
    activation = model_args.get("act_layer", "gelu")
    if activation not in ("gelu", "gelu_tanh"):
        raise metadata.refuse(f"{path} model_args", "act_layer", activation, "'gelu' or 'gelu_tanh'")
    return "exact" if activation == "gelu" else "tanh"


def _timm_num_heads(model_args, architecture, path) -> int:
    if "num_heads" in model_args:
        return metadata.positive_int(model_args, "num_heads", f"{path} model_args")
    size = next((word for word in architecture.split("_") if word in _TIMM_HEADS), None)
    if size is None:
        raise ValueError(
            f"Cannot tell the attention heads of timm architecture {architecture!r} ({path}): no "
            f"model_args.num_heads and the name holds none of {list(_TIMM_HEADS)}."
        )
    return _TIMM_HEADS[size]


def _timm_image_size(model_args, pretrained, channels, path) -> tuple:
    if "img_size" in model_args:
        return metadata.size_pair(model_args, "img_size", f"{path} model_args", None)
    return metadata.size_pair(pretrained, "input_size", f"{path} pretrained_cfg", [channels, 224, 224], 3)


def _timm_arguments(config: dict, folder, tensors) -> dict:
    """VisionTransformer arguments of a timm repository (model_args, else names and shapes)."""
    path = os.path.join(folder, CONFIG_FILENAME)
    model_args = metadata.optional_dict(config, "model_args", path)
    pretrained = metadata.optional_dict(config, "pretrained_cfg", path)
    architecture = metadata.string(config, "architecture", path, "")
    if not architecture.startswith(("vit_", "deit_", "deit3_")) or "hybrid" in architecture or "resnet" in architecture:
        raise metadata.refuse(path, "architecture", architecture, "a plain timm Vision Transformer (vit_*, deit_*, deit3_*)")
    weights_path = os.path.join(folder, WEIGHTS_FILENAME)
    metadata.check_tensors(tensors, metadata.TIMM_RANKS, weights_path)
    hidden_size, channels, ph, pw = tensors["patch_embed.proj.weight"].shape
    for name in ("cls_token", "dist_token", "reg_token", "pos_embed"):  # (1, tokens, width)
        metadata.check_axis(tensors, name, -1, hidden_size, weights_path, f"(1, tokens, {hidden_size})")
    num_heads = _timm_num_heads(model_args, architecture, path)
    depth = len({k.split(".")[1] for k in tensors if k.startswith("blocks.")})
    image_size = _timm_image_size(model_args, pretrained, channels, path)
    global_pool = model_args.get("global_pool", config.get("global_pool", "token"))
    if global_pool not in ("token", "avg"):
        raise metadata.refuse(path, "global_pool", global_pool, "'token' or 'avg' (the pools keras_vit has)")
    has_class_token = "cls_token" in tensors
    if global_pool == "token" and not has_class_token:
        raise ValueError(f"{path}: global_pool='token' but {WEIGHTS_FILENAME} has no cls_token to pool.")
    grid = (image_size[0] // ph) * (image_size[1] // pw)
    prefix = int(has_class_token) + int("dist_token" in tensors) + (
        tensors["reg_token"].shape[1] if "reg_token" in tensors else 0
    )
    pos_tokens = tensors["pos_embed"].shape[1] if "pos_embed" in tensors else None
    layer_scale = next((v for k, v in tensors.items() if k.endswith(".ls1.gamma")), None)
    arguments = dict(
        image_size=as_pair(image_size, "img_size"),
        patch_size=(int(ph), int(pw)),
        hidden_size=int(hidden_size),
        num_layers=depth,
        num_heads=int(num_heads),
        mlp_dim=int(tensors["blocks.0.mlp.fc1.weight"].shape[0]),
        channels=int(channels),
        pooling="token" if global_pool == "token" else "gap",
        representation_size=int(tensors["pre_logits.fc.weight"].shape[0]) if "pre_logits.fc.weight" in tensors else None,
        position_embedding="learned" if pos_tokens is not None else "none",
        layer_norm_epsilon=1e-6,
        gelu=_timm_gelu(model_args, path),
        # The initial value matters only to a fresh model; the checkpoint's gammas replace it.
        layer_scale_init=None if layer_scale is None else metadata.positive_number(
            {"init_values": model_args.get("init_values") or 1e-5}, "init_values", f"{path} model_args", None),
        num_register_tokens=int(tensors["reg_token"].shape[1]) if "reg_token" in tensors else 0,
        distillation_token="dist_token" in tensors,
        norm_after_pooling="fc_norm.weight" in tensors,
        patch_position_embedding_only=pos_tokens is not None and pos_tokens == grid and prefix > 0,
        pixel_mean=metadata.channel_values(pretrained, "mean", f"{path} pretrained_cfg", 0.5, int(channels)),
        pixel_std=metadata.channel_values(pretrained, "std", f"{path} pretrained_cfg", 0.5, int(channels), positive=True),
        position_resampling="bicubic",
        source_metadata={"format": "timm", "pretrained_cfg": pretrained},
        **_input_settings("timm", pretrained),
    )
    if "head.weight" in tensors:
        arguments["num_classes"] = int(tensors["head.weight"].shape[0])
    labels = metadata.string_list(config, "label_names", path) or metadata.string_list(
        pretrained, "label_names", f"{path} pretrained_cfg")
    if labels and len(labels) == arguments.get("num_classes"):
        arguments["class_names"] = tuple(str(label) for label in labels)
    return arguments


def _huggingface_arguments(config: dict, folder, tensors) -> dict:
    path = os.path.join(folder, CONFIG_FILENAME)
    activation = metadata.string(config, "hidden_act", path, "gelu")
    if activation not in _HF_GELUS:
        raise metadata.refuse(path, "hidden_act", activation, f"one of {sorted(_HF_GELUS)}")
    metadata.check_tensors(tensors, metadata.HF_RANKS, os.path.join(folder, WEIGHTS_FILENAME))
    channels = metadata.positive_int(config, "num_channels", path, 3)
    preprocessor = {}
    processor_path = os.path.join(folder, PREPROCESSOR_FILENAME)
    if os.path.isfile(processor_path):
        preprocessor = metadata.read_json_object(processor_path)
    mean, std = (0.0,) * channels, (1.0,) * channels
    if metadata.boolean(preprocessor, "do_normalize", processor_path, True):
        mean = metadata.channel_values(preprocessor, "image_mean", processor_path, 0.5, channels)
        std = metadata.channel_values(preprocessor, "image_std", processor_path, 0.5, channels, positive=True)
    arguments = dict(
        image_size=metadata.size_pair(config, "image_size", path, 224),
        patch_size=metadata.size_pair(config, "patch_size", path, 16),
        hidden_size=metadata.positive_int(config, "hidden_size", path, 768),
        num_layers=metadata.positive_int(config, "num_hidden_layers", path, 12),
        num_heads=metadata.positive_int(config, "num_attention_heads", path, 12),
        mlp_dim=metadata.positive_int(config, "intermediate_size", path, 3072),
        channels=channels,
        pooling="token",
        representation_size=next(
            (int(value.shape[0]) for key, value in tensors.items() if key.endswith("pooler.dense.weight")), None
        ),
        layer_norm_epsilon=metadata.positive_number(config, "layer_norm_eps", path, 1e-12),
        gelu=_HF_GELUS[activation],
        pixel_mean=mean,
        pixel_std=std,
        position_resampling="bicubic",
        source_metadata={"format": "huggingface", "preprocessor": preprocessor},
        **_input_settings("huggingface", preprocessor),
    )
    if "classifier.weight" in tensors:
        arguments["num_classes"] = int(tensors["classifier.weight"].shape[0])
        id2label = metadata.label_map(config, "id2label", path)
        labels = [id2label.get(str(i)) for i in range(arguments["num_classes"])]
        if all(labels):
            arguments["class_names"] = tuple(labels)
    return arguments


def _check_attention_shapes(tensors, kind, num_heads, path):
    """The attention tensors the layout splits into heads: (width, width) matrices, width heads-divisible."""
    embedding = "patch_embed.proj.weight" if kind == "timm" else next(
        (k for k in tensors if k.endswith("patch_embeddings.projection.weight")), None)
    if embedding not in tensors:
        return  # the missing tensor is named by the caller
    width = tensors[embedding].shape[0]
    if width % num_heads:
        raise metadata.refuse(path, "attention heads", num_heads, f"a divisor of the width {width} of {embedding!r}")
    patterns = {
        r"\.attn\.qkv\.weight$": (3 * width, width), r"\.attn\.qkv\.bias$": (3 * width,),
        r"\.attn\.proj\.weight$": (width, width), r"\.attn\.proj\.bias$": (width,),
    } if kind == "timm" else {
        r"\.attention\.attention\.(query|key|value)\.weight$": (width, width),
        r"\.attention\.attention\.(query|key|value)\.bias$": (width,),
        r"\.attention\.output\.dense\.weight$": (width, width), r"\.attention\.output\.dense\.bias$": (width,),
    }
    for name, value in tensors.items():
        shape = next((shape for pattern, shape in patterns.items() if re.search(pattern, name)), None)
        if shape is not None and value.shape != shape:
            raise metadata.refuse_tensor(path, name, f"shape {value.shape}", f"shape {shape}")


def read_repository(source, *, cache_dir=None):
    """``(format, VisionTransformer arguments, arrays in the published layout, folder)``."""
    folder = resolve_source(source, cache_dir=cache_dir)
    config_path = os.path.join(folder, CONFIG_FILENAME)
    weights_path = os.path.join(folder, WEIGHTS_FILENAME)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{folder!r} has no {os.path.basename(path)}; a timm or Hugging Face repository holds "
                f"{CONFIG_FILENAME} and {WEIGHTS_FILENAME} (.bin/.pth files are not read: convert them to safetensors)."
            )
    config = _read_json(config_path)
    tensors = read_safetensors(weights_path)
    kind = detect_format(config, folder)
    try:
        if kind == "timm":
            arguments = _timm_arguments(config, folder, tensors)
            _check_attention_shapes(tensors, kind, arguments["num_heads"], weights_path)
            arrays = timm_to_layout(tensors, arguments["num_heads"])
        else:
            arguments = _huggingface_arguments(config, folder, tensors)
            _check_attention_shapes(tensors, kind, arguments["num_heads"], weights_path)
            arrays = huggingface_to_layout(tensors, arguments["num_heads"])
    except KeyError as error:
        raise ValueError(
            f"{weights_path!r} lacks tensor {error.args[0]!r} that a {kind} Vision Transformer has "
            f"(it holds e.g. {sorted(tensors)[:6]})."
        ) from error
    return kind, arguments, arrays, folder


def _shapes_only(shapes) -> Dict[str, np.ndarray]:
    # Arrays of the right shapes that hold no memory: enough for the readers of configurations.
    return {key: np.broadcast_to(np.zeros((), "float32"), tuple(shape)) for key, shape in shapes.items()}


def _npz_shapes(path) -> Dict[str, tuple]:
    import zipfile

    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as file:
                    version = np.lib.format.read_magic(file)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else (
                        np.lib.format.read_array_header_2_0)
                    shape, _, _ = read_header(file)
                shapes[member[: -len(".npy")] if member.endswith(".npy") else member] = shape
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise ValueError(f"Checkpoint {os.fspath(path)!r} is not a readable .npz file ({error}).") from error
    return shapes


def read_checkpoint_arguments(source, *, cache_dir=None) -> dict:
    """The :class:`VisionTransformer` arguments of a checkpoint (architecture, options,
    input size, normalisation, ``num_classes``, ``class_names``) and ``name`` (the
    checkpoint's), read from its configuration and tensor shapes only: no weight is loaded.

    ``source`` is any checkpoint :func:`from_pretrained` reads (a timm or Hugging Face
    folder, ``hf://<org>/<name>``, an original ``.npz``).
    """
    text = os.fspath(source)
    if not text.startswith(HF_PREFIX) and text.endswith(".npz"):
        if not os.path.isfile(text):
            raise FileNotFoundError(f"Checkpoint {text!r} does not exist.")
        arguments = npz.infer_config(npz.normalize_keys(_shapes_only(_npz_shapes(text))))
        arguments.update(layer_norm_epsilon=1e-6, gelu="tanh", position_resampling="bilinear",
                         pixel_mean=(0.5,) * arguments["channels"], pixel_std=(0.5,) * arguments["channels"],
                         interpolation="bilinear", crop_fraction=1.0, crop_mode="squash")  # the original's
        return {**arguments, "name": os.path.splitext(os.path.basename(text))[0]}
    folder = resolve_source(text, cache_dir=cache_dir)
    config = _read_json(os.path.join(folder, CONFIG_FILENAME))
    from safetensors import safe_open

    with safe_open(os.path.join(folder, WEIGHTS_FILENAME), framework="numpy") as file:
        tensors = _shapes_only({key: file.get_slice(key).get_shape() for key in file.keys()})
    if detect_format(config, folder) == "timm":  # with the input contract (interpolation, crop)
        arguments, name = _timm_arguments(config, folder, tensors), config.get("architecture")
    else:
        arguments, name = _huggingface_arguments(config, folder, tensors), config.get("_name_or_path")
    name = name or os.path.basename(os.path.normpath(text[len(HF_PREFIX):] if text.startswith(HF_PREFIX) else text))
    return {**arguments, "name": name}


def read_image_spec(source, *, cache_dir=None):
    """The input spec (:class:`~keras_vit.core.image_spec.ImageSpec`) of a checkpoint: what
    ``from_pretrained(source)`` builds, from its configuration alone (no weight read)."""
    from keras_vit.core.image_spec import ImageSpec

    return ImageSpec.from_model_arguments(**read_checkpoint_arguments(source, cache_dir=cache_dir))


# --------------------------------------------------------------------------- loading
def resample_timm_position_embedding(posemb, old_grid, new_grid, num_prefix_tokens):
    """timm's ``resample_abs_pos_embed``: prefix tokens kept, the grid resized by antialiased bicubic."""
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1)
    resized = np.asarray(resample_grid(grid, new_grid, "bicubic")).reshape(1, new_grid[0] * new_grid[1], -1)
    return np.concatenate([prefix, resized.astype(posemb.dtype)], axis=1)


def load_pretrained(model, source, *, reset_head=None, cache_dir=None) -> VisionTransformer:
    """Loads a timm or Hugging Face repository into a model you built, strictly.

    Position embeddings of another grid are resampled as timm does; a head of another size
    becomes a zero-initialised one (``reset_head=True`` forces it). The model must have the
    checkpoint's options (``gelu``, ``layer_norm_epsilon``, tokens, ...): a weight it lacks
    or does not expect is named, and nothing is assigned.
    """
    _, arguments, arrays, folder = read_repository(source, cache_dir=cache_dir)
    key = npz.POS_EMBEDDING_KEY
    stored = arguments["image_size"]
    old_grid = (stored[0] // arguments["patch_size"][0], stored[1] // arguments["patch_size"][1])
    if key in arrays and isinstance(model, VisionTransformer) and tuple(old_grid) != tuple(model.grid_size):
        encoder = model.get_layer("embedding")
        arrays[key] = resample_timm_position_embedding(arrays[key], old_grid, model.grid_size, encoder.num_embedded_prefix)
        logger.warning("Position embeddings resampled from a %dx%d grid to %dx%d (antialiased bicubic, as timm "
                       "loads at another resolution).", *old_grid, *model.grid_size)
    for option in ("gelu", "layer_norm_epsilon"):
        if getattr(model, option, arguments[option]) != arguments[option]:
            logger.warning("%s has %s=%r; the checkpoint was trained with %r (outputs will differ).",
                           model.name, option, getattr(model, option), arguments[option])
    return npz._load_params(model, arrays, repr(folder), reset_head=reset_head)


def from_pretrained(
    source,
    *,
    include_top: bool = True,
    num_classes: Optional[int] = None,
    image_size=None,
    include_preprocessing: bool = False,
    class_names=None,
    cache_dir=None,
    **kwargs,
) -> VisionTransformer:
    """Builds the Vision Transformer of a timm or Hugging Face repository and loads its weights.

    Args:
        source: a folder in timm's or Hugging Face's layout (``config.json`` +
            ``model.safetensors``), ``hf://<org>/<name>`` (downloaded with huggingface_hub,
            cached), or an original ``.npz`` file (see :func:`keras_vit.from_npz`).
        include_top: False returns the pooled representation (timm's pre-logits).
        num_classes: None keeps the checkpoint's head; another number gives a fresh
            zero-initialised head (fine-tuning).
        image_size: None uses the checkpoint's resolution; another size resamples the position
            embeddings as the checkpoint's library does (timm: antialiased bicubic; the
            original's ``.npz``: ``zoom(order=1)``).
        include_preprocessing: the model takes pixels in [0, 255] and applies the
            checkpoint's own mean and std.
        class_names: the names of your classes, one per class, for a new head
            (fine-tuning): ``num_classes`` defaults to their number, and the model carries
            them (``model.class_names``, used by export and predict).
        cache_dir: huggingface_hub's cache folder for ``hf://`` sources.
        **kwargs: other VisionTransformer arguments (``dropout``, ``dynamic_image_size``,
            ``name``, ...).
    """
    if class_names is not None:
        kwargs["class_names"] = class_names
        if num_classes is None and not isinstance(class_names, str):
            num_classes = len(class_names)  # a new head when the checkpoint's has another size
    if not os.fspath(source).startswith(HF_PREFIX) and os.fspath(source).endswith(".npz"):
        return npz.from_npz(
            source, include_top=include_top, num_classes=num_classes, image_size=image_size,
            include_preprocessing=include_preprocessing, **kwargs,
        )
    kind, arguments, arrays, folder = read_repository(source, cache_dir=cache_dir)
    checkpoint_classes = arguments.pop("num_classes", None)
    class_names = arguments.pop("class_names", None)
    stored_size = arguments["image_size"]
    if image_size is not None:
        arguments["image_size"] = as_pair(image_size, "image_size")
    if num_classes is None:
        num_classes = checkpoint_classes
        if include_top and num_classes is None:
            raise ValueError(f"{source!r} has no classification head; pass num_classes= for a new head or include_top=False.")
    elif num_classes != checkpoint_classes:
        class_names = None  # a new head: the checkpoint's names no longer apply
    arguments.update(include_preprocessing=include_preprocessing, **kwargs)
    if include_top and class_names is not None and "class_names" not in kwargs:
        arguments["class_names"] = class_names
    try:
        model = VisionTransformer(num_classes=num_classes, include_top=include_top, **arguments)
    except ValueError as error:  # the checkpoint's numbers, not the caller's: name the file they came from
        raise ValueError(f"{os.path.join(folder, CONFIG_FILENAME)!r} does not describe a model keras_vit builds: {error}") from error
    key = npz.POS_EMBEDDING_KEY
    old_grid = (stored_size[0] // model.patch_size[0], stored_size[1] // model.patch_size[1])
    if key in arrays and tuple(old_grid) != tuple(model.grid_size):
        encoder = model.get_layer("embedding")
        arrays[key] = resample_timm_position_embedding(arrays[key], old_grid, model.grid_size, encoder.num_embedded_prefix)
        logger.warning("Position embeddings resampled from a %dx%d grid to %dx%d (antialiased bicubic, as timm "
                       "loads at another resolution).", *old_grid, *model.grid_size)
    return npz._load_params(model, arrays, repr(folder))


def convert_pretrained(source, output, *, overwrite: bool = False, **kwargs) -> VisionTransformer:
    """:func:`from_pretrained` (any source it reads), saved as a ``.keras`` file.

    Raises:
        ValueError: ``output`` does not end in ``.keras``, or exists and ``overwrite`` is False.
    """
    from keras_vit.files import save_model

    output = os.fspath(output)
    if not output.endswith(".keras"):
        raise ValueError(f"Output {output!r} must be a .keras file.")
    if os.path.exists(output) and not overwrite:
        raise ValueError(f"{output!r} already exists; pass overwrite=True (--overwrite) to replace it.")
    model = from_pretrained(source, **kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    save_model(model, output)
    return model


# --------------------------------------------------------------------------- writing back
# The transformers release whose ViT layout save_pretrained writes (and the tests check).
HF_LAYOUT_VERSION = "5.23.0"
# timm entry points whose model_args express every model below (create_model overrides them all).
_TIMM_ARCHITECTURE = "vit_base_patch16_224"
_TIMM_DISTILLED_ARCHITECTURE = "deit_tiny_distilled_patch16_224"


def _layout_arrays(model):
    return {
        key: np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable).reshape(shape)
        for key, (variable, shape) in npz.checkpoint_layout(model).items()
    }


def _torch_linear(kernel):
    width = kernel.shape[0]
    return np.ascontiguousarray(kernel.reshape(width, -1).T)  # (in, ...) -> PyTorch (out, in)


def _refuse_unless(condition, model, option, why, format):
    if not condition:
        raise ValueError(
            f"{model.name} cannot be written in {format}'s layout: {option}={getattr(model, option, None)!r} ({why})."
        )


def _check_writable(model, format):
    """Refuses, naming the builder option, every model whose written folder the client would compute otherwise.

    Options not named here are written exactly (the write-back fixtures check each with the
    client itself) or do not change the logits (dropout rates, drop_path_rate, dtype: the file
    holds float32 weights).
    """
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"{getattr(model, 'name', model)!r} is not a keras_vit VisionTransformer; save_pretrained writes only those.")
    _refuse_unless(model.resnet is None, model, "resnet", "a hybrid ResNet stem", format)
    _refuse_unless(model.position_embedding in ("learned", "none"), model, "position_embedding",
                   "only learned position embeddings (or none, for timm) are written", format)
    _refuse_unless(model.classifier_activation is None, model, "classifier_activation",
                   "the client computes logits; build the model with classifier_activation=None", format)
    _refuse_unless(model.representation_size is None, model, "representation_size",
                   f"a pre-logits layer; {format}'s ViT classifies without one", format)
    if format == "timm":
        _refuse_unless(model.layer_norm_epsilon == 1e-6, model, "layer_norm_epsilon", "timm's ViT uses 1e-6", format)
        _refuse_unless(not model.dynamic_image_size or model.position_resampling == "bicubic", model,
                       "position_resampling", "timm resamples dynamic sizes by antialiased bicubic", format)
        _timm_mlp_ratio(model)
        return
    _refuse_unless(model.pooling == "token", model, "pooling", "Hugging Face's ViT pools the class token", format)
    for option in ("norm_after_pooling", "num_register_tokens", "distillation_token", "layer_scale_init",
                   "patch_position_embedding_only", "dynamic_image_size"):
        _refuse_unless(not getattr(model, option), model, option, "Hugging Face's ViT has no such option", format)
    _refuse_unless(model.position_embedding == "learned", model, "position_embedding",
                   "Hugging Face's ViT always adds position embeddings", format)


def _timm_mlp_ratio(model):
    """The ``mlp_ratio`` from which timm builds ``int(embed_dim * mlp_ratio) == mlp_dim`` exactly."""
    for ratio in (model.mlp_dim / model.hidden_size, (model.mlp_dim + 0.5) / model.hidden_size):
        if int(model.hidden_size * ratio) == model.mlp_dim:
            return ratio
    _refuse_unless(False, model, "mlp_dim", f"no mlp_ratio makes timm build it from hidden_size {model.hidden_size}", "timm")


def _source(model, format) -> dict:
    """What the checkpoint ``model`` was read from said about its inputs, if it was ``format``."""
    source = getattr(model, "source_metadata", None) or {}
    if source.get("format") != format:
        return {}
    return dict(source.get("pretrained_cfg" if format == "timm" else "preprocessor") or {})


def _kept_channel_values(source, key, values, channels):
    """``source[key]`` as it was written when it means ``values``; else ``values`` as a list."""
    try:
        if metadata.channel_values(source, key, "", None, channels) == tuple(values):
            return source[key]
    except ValueError:
        pass
    return list(values)


def timm_state_dict(model) -> Dict[str, np.ndarray]:
    """``model``'s weights under timm's names and PyTorch's shapes."""
    arrays = _layout_arrays(model)
    tensors = {
        "patch_embed.proj.weight": np.ascontiguousarray(arrays.pop("embedding/kernel").transpose(3, 2, 0, 1)),
        "patch_embed.proj.bias": arrays.pop("embedding/bias"),
    }
    for key, name in (("cls", "cls_token"), ("dist", "dist_token"), ("reg", "reg_token"), (npz.POS_EMBEDDING_KEY, "pos_embed")):
        if key in arrays:
            tensors[name] = arrays.pop(key)
    for i in range(model.num_layers):
        source, target = f"Transformer/encoderblock_{i}", f"blocks.{i}"
        attention = f"{source}/MultiHeadDotProductAttention_1"
        tensors[f"{target}.norm1.weight"] = arrays.pop(f"{source}/LayerNorm_0/scale")
        tensors[f"{target}.norm1.bias"] = arrays.pop(f"{source}/LayerNorm_0/bias")
        tensors[f"{target}.attn.qkv.weight"] = np.concatenate(
            [_torch_linear(arrays.pop(f"{attention}/{name}/kernel")) for name in ("query", "key", "value")]
        )
        tensors[f"{target}.attn.qkv.bias"] = np.concatenate(
            [arrays.pop(f"{attention}/{name}/bias").reshape(-1) for name in ("query", "key", "value")]
        )
        out = arrays.pop(f"{attention}/out/kernel")
        tensors[f"{target}.attn.proj.weight"] = np.ascontiguousarray(out.reshape(-1, out.shape[-1]).T)
        tensors[f"{target}.attn.proj.bias"] = arrays.pop(f"{attention}/out/bias")
        for n in (1, 2):
            if f"{source}/LayerScale_{n}/scale" in arrays:
                tensors[f"{target}.ls{n}.gamma"] = arrays.pop(f"{source}/LayerScale_{n}/scale")
        tensors[f"{target}.norm2.weight"] = arrays.pop(f"{source}/LayerNorm_2/scale")
        tensors[f"{target}.norm2.bias"] = arrays.pop(f"{source}/LayerNorm_2/bias")
        for dense, name in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            tensors[f"{target}.mlp.{name}.weight"] = _torch_linear(arrays.pop(f"{source}/MlpBlock_3/{dense}/kernel"))
            tensors[f"{target}.mlp.{name}.bias"] = arrays.pop(f"{source}/MlpBlock_3/{dense}/bias")
    for key, name in (("Transformer/encoder_norm", "norm"), ("fc_norm", "fc_norm")):
        if f"{key}/scale" in arrays:
            tensors[f"{name}.weight"] = arrays.pop(f"{key}/scale")
            tensors[f"{name}.bias"] = arrays.pop(f"{key}/bias")
    for key in ("head", "head_dist"):
        if f"{key}/kernel" in arrays:
            tensors[f"{key}.weight"] = _torch_linear(arrays.pop(f"{key}/kernel"))
            tensors[f"{key}.bias"] = arrays.pop(f"{key}/bias")
    assert not arrays, f"weights without a timm name: {sorted(arrays)}"
    return tensors


def huggingface_state_dict(model) -> Dict[str, np.ndarray]:
    """``model``'s weights under Hugging Face ViT's names (``vit.`` prefixed with a classifier)."""
    arrays = _layout_arrays(model)
    prefix = "vit." if model.include_top else ""
    tensors = {
        f"{prefix}embeddings.cls_token": arrays.pop("cls"),
        f"{prefix}embeddings.position_embeddings": arrays.pop(npz.POS_EMBEDDING_KEY),
        f"{prefix}embeddings.patch_embeddings.projection.weight": np.ascontiguousarray(
            arrays.pop("embedding/kernel").transpose(3, 2, 0, 1)
        ),
        f"{prefix}embeddings.patch_embeddings.projection.bias": arrays.pop("embedding/bias"),
    }
    for i in range(model.num_layers):
        source, target = f"Transformer/encoderblock_{i}", f"{prefix}encoder.layer.{i}"
        attention = f"{source}/MultiHeadDotProductAttention_1"
        for name in ("query", "key", "value"):
            tensors[f"{target}.attention.attention.{name}.weight"] = _torch_linear(arrays.pop(f"{attention}/{name}/kernel"))
            tensors[f"{target}.attention.attention.{name}.bias"] = arrays.pop(f"{attention}/{name}/bias").reshape(-1)
        out = arrays.pop(f"{attention}/out/kernel")
        tensors[f"{target}.attention.output.dense.weight"] = np.ascontiguousarray(out.reshape(-1, out.shape[-1]).T)
        tensors[f"{target}.attention.output.dense.bias"] = arrays.pop(f"{attention}/out/bias")
        for norm, name in (("LayerNorm_0", "layernorm_before"), ("LayerNorm_2", "layernorm_after")):
            tensors[f"{target}.{name}.weight"] = arrays.pop(f"{source}/{norm}/scale")
            tensors[f"{target}.{name}.bias"] = arrays.pop(f"{source}/{norm}/bias")
        for dense, name in (("Dense_0", "intermediate.dense"), ("Dense_1", "output.dense")):
            tensors[f"{target}.{name}.weight"] = _torch_linear(arrays.pop(f"{source}/MlpBlock_3/{dense}/kernel"))
            tensors[f"{target}.{name}.bias"] = arrays.pop(f"{source}/MlpBlock_3/{dense}/bias")
    tensors[f"{prefix}layernorm.weight"] = arrays.pop("Transformer/encoder_norm/scale")
    tensors[f"{prefix}layernorm.bias"] = arrays.pop("Transformer/encoder_norm/bias")
    for key, name in (("pre_logits", f"{prefix}pooler.dense"), ("head", "classifier")):
        if f"{key}/kernel" in arrays:
            tensors[f"{name}.weight"] = _torch_linear(arrays.pop(f"{key}/kernel"))
            tensors[f"{name}.bias"] = arrays.pop(f"{key}/bias")
    assert not arrays, f"weights without a Hugging Face name: {sorted(arrays)}"
    return tensors


def _timm_config(model) -> dict:
    num_classes = model.num_classes if model.include_top else 0
    model_args = {
        "img_size": list(model.image_size),
        "patch_size": model.patch_size[0] if model.patch_size[0] == model.patch_size[1] else list(model.patch_size),
        "embed_dim": model.hidden_size,
        "depth": model.num_layers,
        "num_heads": model.num_heads,
        "num_classes": num_classes,
        "in_chans": model.channels,
        "global_pool": "token" if model.pooling == "token" else "avg",
    }
    if model.mlp_dim != 4 * model.hidden_size:  # timm's default ratio is left out, as timm's own files do
        model_args["mlp_ratio"] = _timm_mlp_ratio(model)
    if model.pooling != "token":
        model_args["class_token"] = False
    if model.pooling != "token" or model.norm_after_pooling:
        model_args["fc_norm"] = model.norm_after_pooling  # timm's default for "avg" would add one
    if model.num_register_tokens:
        model_args["reg_tokens"] = model.num_register_tokens
    if model.patch_position_embedding_only:
        model_args["no_embed_class"] = True
    if model.layer_scale_init is not None:
        model_args["init_values"] = model.layer_scale_init
    if model.gelu == "tanh":
        model_args["act_layer"] = "gelu_tanh"
    if model.position_embedding == "none":
        model_args["pos_embed"] = "none"
    if model.dynamic_image_size:
        model_args["dynamic_img_size"] = True
    source = _source(model, "timm")
    # The checkpoint's own settings (tag, license, ...) first; what the model itself decides
    # (size, classes, normalisation, resize and crop) over them, in the source's spelling
    # where that spelling reads back as the model's value.
    pretrained_cfg = {"tag": model.name, "custom_load": False, **source}
    own = {"interpolation": model.interpolation, "crop_pct": model.crop_fraction, "crop_mode": model.crop_mode}
    if any(key not in source for key in own) or _input_settings("timm", source) != _input_settings("timm", own):
        pretrained_cfg.update(own)
    pretrained_cfg.update(
        input_size=[model.channels, *model.image_size],
        fixed_input_size=not model.dynamic_image_size,
        mean=_kept_channel_values(source, "mean", model.pixel_mean, model.channels),
        std=_kept_channel_values(source, "std", model.pixel_std, model.channels),
        num_classes=num_classes,
        pool_size=source.get("pool_size"),
        first_conv="patch_embed.proj",
        classifier=["head", "head_dist"] if model.distillation_token else "head",
    )
    if "label_names" in pretrained_cfg and pretrained_cfg["label_names"] != list(model.class_names or []):
        del pretrained_cfg["label_names"]  # the source's names, for a head the model no longer has
    config = {
        "architecture": _TIMM_DISTILLED_ARCHITECTURE if model.distillation_token else _TIMM_ARCHITECTURE,
        "num_classes": num_classes,
        "num_features": model.hidden_size,
        "global_pool": model_args["global_pool"],
        "model_args": model_args,
        "pretrained_cfg": pretrained_cfg,
    }
    if model.class_names:
        config["label_names"] = list(model.class_names)
    return config


def _one_or_pair(pair):
    return pair[0] if pair[0] == pair[1] else list(pair)  # transformers' ViT takes an int or [h, w]


def _huggingface_config(model) -> tuple:
    num_classes = model.num_classes if model.include_top else None
    labels = list(model.class_names) if model.class_names else [f"LABEL_{i}" for i in range(num_classes or 0)]
    config = {
        "architectures": ["ViTForImageClassification" if model.include_top else "ViTModel"],
        "attention_probs_dropout_prob": model.attention_dropout,
        "dtype": "float32",
        "encoder_stride": model.patch_size[0],
        "hidden_act": "gelu" if model.gelu == "exact" else "gelu_pytorch_tanh",
        "hidden_dropout_prob": model.dropout,
        "hidden_size": model.hidden_size,
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "image_size": _one_or_pair(model.image_size),
        "initializer_range": 0.02,
        "intermediate_size": model.mlp_dim,
        "label2id": {label: i for i, label in enumerate(labels)},
        "layer_norm_eps": model.layer_norm_epsilon,
        "model_type": "vit",
        "num_attention_heads": model.num_heads,
        "num_channels": model.channels,
        "num_hidden_layers": model.num_layers,
        "patch_size": _one_or_pair(model.patch_size),
        "pooler_act": "tanh",
        "pooler_output_size": model.hidden_size,
        "qkv_bias": True,
        "transformers_version": HF_LAYOUT_VERSION,
    }
    source = _source(model, "huggingface")
    preprocessor = {
        "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_processor_type": "ViTImageProcessor", "rescale_factor": 1 / 255, **source,
    }
    if "resample" not in source or _input_settings("huggingface", source)["interpolation"] != model.interpolation:
        preprocessor["resample"] = _PIL_RESAMPLE[model.interpolation]  # the processor has no crop: resize only
    preprocessor["size"] = {"height": model.image_size[0], "width": model.image_size[1]}
    identity = model.pixel_mean == (0.0,) * model.channels and model.pixel_std == (1.0,) * model.channels
    if not (identity and source.get("do_normalize") is False):  # else the source's own "no normalisation"
        preprocessor["do_normalize"] = True
        preprocessor["image_mean"] = _kept_channel_values(source, "image_mean", model.pixel_mean, model.channels)
        preprocessor["image_std"] = _kept_channel_values(source, "image_std", model.pixel_std, model.channels)
    return config, dict(sorted(preprocessor.items()))


def save_pretrained(model, folder, *, format: str = "timm", overwrite: bool = False) -> str:
    """Writes ``model`` as a timm or Hugging Face repository folder that those libraries load.

    ``config.json`` (the keys timm's ``save_for_hf`` / transformers' ``save_pretrained``
    write), ``model.safetensors`` (float32, PyTorch names and shapes) and, for Hugging Face,
    ``preprocessor_config.json`` with the model's mean and std. The folder is written beside
    and renamed into place. Reading it back (:func:`from_pretrained`) gives the same tensors,
    bit for bit.

    Raises:
        ValueError: an unknown ``format``; a model option the layout cannot express (named);
            ``folder`` exists and ``overwrite`` is False, or holds files other than a repository's.
    """
    from safetensors.numpy import save_file

    from keras_vit.files import replaced_folder_atomically, write_json

    if format not in FORMATS:
        raise ValueError(f"format={format!r}; expected one of {list(FORMATS)}.")
    _check_writable(model, format)
    folder = os.fspath(folder)
    if os.path.exists(folder):
        if not overwrite:
            raise ValueError(f"{folder!r} already exists; pass overwrite=True to replace it.")
        foreign = sorted(set(os.listdir(folder)) - {CONFIG_FILENAME, WEIGHTS_FILENAME, PREPROCESSOR_FILENAME})
        if foreign or not os.path.isdir(folder):
            raise ValueError(
                f"{folder!r} holds files that are not a model repository's ({foreign[:5] or 'not a folder'}); "
                f"keras_vit replaces only a folder of {CONFIG_FILENAME}, {WEIGHTS_FILENAME}, {PREPROCESSOR_FILENAME}."
            )
    if format == "timm":
        tensors, config, preprocessor = timm_state_dict(model), _timm_config(model), None
    else:
        tensors = huggingface_state_dict(model)
        config, preprocessor = _huggingface_config(model)
    os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
    with replaced_folder_atomically(folder) as temporary:
        os.makedirs(temporary)
        save_file({k: np.ascontiguousarray(v, dtype="float32") for k, v in tensors.items()},
                  os.path.join(temporary, WEIGHTS_FILENAME), metadata={"format": "pt"})
        write_json(os.path.join(temporary, CONFIG_FILENAME), config)
        if preprocessor is not None:
            write_json(os.path.join(temporary, PREPROCESSOR_FILENAME), preprocessor)
    return folder
