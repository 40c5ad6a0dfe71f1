"""A timm or Hugging Face repository folder: its files, where it comes from, which format it is,
and the input settings (resize, crop, normalisation) both formats spell their own way.

A hub repository (a local folder, or ``hf://<org>/<name>`` fetched with ``huggingface_hub``)
holds ``config.json`` and ``model.safetensors``. timm's config has ``architecture`` and
``pretrained_cfg`` (and often ``model_args``); Hugging Face's has ``model_type: "vit"``.
"""

from __future__ import annotations

import os
from typing import Dict

import numpy as np

from keras_vit.core.config import CROP_MODES, INTERPOLATIONS
from keras_vit.weights import metadata

HF_PREFIX = "hf://"
WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
PREPROCESSOR_FILENAME = "preprocessor_config.json"
FORMATS = ("timm", "huggingface")


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


def input_settings(interpolation, crop, mode, defaults) -> dict:
    """The model's resize and crop (``interpolation``, ``crop_fraction``, ``crop_mode``) from
    what a format's file says; a value the model cannot take leaves the format's ``defaults``
    (the source itself is kept in ``source_metadata``)."""
    crop_ok = isinstance(crop, (int, float)) and not isinstance(crop, bool) and 0 < crop <= 1
    return dict(
        interpolation=interpolation if interpolation in INTERPOLATIONS else defaults[0],
        crop_fraction=float(crop) if crop_ok else defaults[1],
        crop_mode=mode if isinstance(mode, str) and mode in CROP_MODES else defaults[2],
    )


# --------------------------------------------------------------------------- writing back
def refuse_unless(condition, model, option, why, format):
    if not condition:
        raise ValueError(
            f"{model.name} cannot be written in {format}'s layout: {option}={getattr(model, option, None)!r} ({why})."
        )


def one_or_pair(pair):
    return pair[0] if pair[0] == pair[1] else list(pair)  # timm and transformers take an int or [h, w]


def source_settings(model, format) -> dict:
    """What the checkpoint ``model`` was read from said about its inputs, if it was ``format``."""
    source = getattr(model, "source_metadata", None) or {}
    if source.get("format") != format:
        return {}
    return dict(source.get("pretrained_cfg" if format == "timm" else "preprocessor") or {})


def kept_channel_values(source, key, values, channels):
    """``source[key]`` as it was written when it means ``values``; else ``values`` as a list."""
    try:
        if metadata.channel_values(source, key, "", None, channels) == tuple(values):
            return source[key]
    except ValueError:
        pass
    return list(values)
