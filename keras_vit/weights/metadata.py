"""Checks of what a checkpoint's files say, before anything is built from them.

Every field read from ``config.json``, ``preprocessor_config.json``, an ``.npz`` or a
``.safetensors`` file goes through one of these checks, so that a malformed file ends in
one ``ValueError`` line naming the file, the field, the value received and what is
accepted, never in an ``IndexError`` or ``ZeroDivisionError`` deep inside the reader.
"""

from __future__ import annotations

import json
import math
import re
from typing import Dict, Optional

import numpy as np

_MISSING = object()


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def refuse(path, field, value, accepted) -> ValueError:
    """The one-line error of a field: file, field, value received, what is accepted."""
    return ValueError(f"{path}: {field} = {_shown(value)}; expected {accepted}.")


def refuse_tensor(path, name, has, accepted) -> ValueError:
    """The one-line error of a tensor: file, name, what it has, what is accepted."""
    return ValueError(f"{path}: tensor {name!r} has {has}; expected {accepted}.")


def read_json_object(path) -> dict:
    """A JSON file that must hold an object (``{...}``)."""
    try:
        with open(path) as file:
            value = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path!r} is not valid JSON ({' '.join(str(error).split())}).") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path!r} holds a JSON {type(value).__name__}; expected a JSON object ({{...}}).")
    return value


def optional_dict(config, key, path) -> dict:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise refuse(path, key, value, "a JSON object")
    return value


def positive_int(config, key, path, default=_MISSING) -> int:
    value = config.get(key, default)
    if value is _MISSING:
        raise refuse(path, key, "missing", "a positive integer")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise refuse(path, key, value, "a positive integer")
    return value


def positive_number(config, key, path, default) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise refuse(path, key, value, "a positive finite number")
    return float(value)


def string(config, key, path, default) -> str:
    value = config.get(key, default)
    if not isinstance(value, str):
        raise refuse(path, key, value, "a string")
    return value


def boolean(config, key, path, default) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise refuse(path, key, value, "true or false")
    return value


def size_pair(config, key, path, default, length=2) -> tuple:
    """An int or a list of ``length`` positive ints; the last two are (height, width)."""
    value = config.get(key, default)
    items = [value] * 2 if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, (list, tuple)) or len(items) != length or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items
    ):
        what = "a positive integer or [height, width]" if length == 2 else f"a list of {length} positive integers"
        raise refuse(path, key, value, what)
    return tuple(int(v) for v in items[-2:])


def channel_values(config, key, path, default, channels, *, positive=False) -> tuple:
    """Per-channel numbers (mean or std): a number for every channel, or one list of them."""
    value = config.get(key, default)
    items = [value] * channels if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(items, (list, tuple)) or len(items) != channels or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0)
        for v in items
    ):
        sign = "positive " if positive else ""
        raise refuse(path, key, value, f"{channels} {sign}finite numbers, one per channel")
    return tuple(float(v) for v in items)


def string_list(config, key, path) -> Optional[list]:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise refuse(path, key, value, "a list of class-name strings")
    return list(value)


def label_map(config, key, path) -> dict:
    """Hugging Face's ``id2label``: an object from class index (as a string) to a name."""
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(name, str) and re.fullmatch(r"\d+", str(index)) for index, name in value.items()
    ):
        raise refuse(path, key, value, 'an object of class index to name, {"0": "cat", ...}')
    return {str(int(index)): name for index, name in value.items()}


def check_tensors(tensors: Dict[str, np.ndarray], ranks, path) -> None:
    """Every tensor floating point with no empty axis; those ``ranks`` names, of that rank.

    ``ranks`` is a list of ``(regular expression, rank)``: the first that matches a name gives
    its rank; names no pattern matches are left to the strict loader (which names them).
    """
    for name, value in tensors.items():
        value = np.asarray(value)
        if value.dtype.kind != "f":
            raise refuse_tensor(path, name, f"dtype {value.dtype}", "a floating-point tensor")
        if 0 in value.shape:
            raise refuse_tensor(path, name, f"shape {value.shape}", "a tensor without an empty axis")
        rank = next((r for pattern, r in ranks if re.search(pattern, name)), None)
        if rank is not None and value.ndim != rank:
            raise refuse_tensor(path, name, f"shape {value.shape}", f"a {rank}-D tensor")


def check_axis(tensors, name, axis, expected, path, what) -> None:
    """``tensors[name].shape[axis] == expected`` (when the tensor is there)."""
    if name in tensors and tensors[name].shape[axis] != expected:
        raise refuse_tensor(path, name, f"shape {tensors[name].shape}", what)


# The published layout (also what timm and Hugging Face tensors are renamed into).
NPZ_RANKS = [
    (r"^embedding/kernel$", 4), (r"^embedding/bias$", 1),
    (r"^(cls|dist|reg)$", 3), (r"posembed_input/pos_embedding$", 3), (r"posembed_input/(row|column)_embedding$", 2),
    (r"MultiHeadDotProductAttention_1/(query|key|value)/kernel$", 3),
    (r"MultiHeadDotProductAttention_1/(query|key|value)/bias$", 2),
    (r"MultiHeadDotProductAttention_1/out/kernel$", 3), (r"MultiHeadDotProductAttention_1/out/bias$", 1),
    (r"/(LayerNorm_\d|encoder_norm|LayerScale_\d)/(scale|bias)$", 1), (r"^fc_norm/(scale|bias)$", 1),
    (r"(Dense_\d|^pre_logits|^head|^head_dist)/kernel$", 2), (r"(Dense_\d|^pre_logits|^head|^head_dist)/bias$", 1),
    (r"^conv_root/kernel$", 4), (r"^block\d+/unit\d+/conv\d/kernel$", 4),
]

# timm's VisionTransformer state dict; Hugging Face's ViT state dict.
TIMM_RANKS = [
    (r"^patch_embed\.proj\.weight$", 4), (r"^(cls_token|dist_token|reg_token|pos_embed)$", 3),
    (r"\.(qkv|proj|fc1|fc2|fc)\.weight$", 2), (r"^(head|head_dist)\.weight$", 2),
    (r"\.(bias|gamma)$", 1), (r"(norm1|norm2|^norm|^fc_norm)\.weight$", 1),
]
HF_RANKS = [
    (r"patch_embeddings\.projection\.weight$", 4),
    (r"embeddings\.(cls_token|position_embeddings|mask_token)$", 3),
    (r"(query|key|value|dense)\.weight$", 2), (r"^classifier\.weight$", 2),
    (r"\.bias$", 1), (r"(layernorm_before|layernorm_after|layernorm)\.weight$", 1),
]
