"""Hugging Face transformers' ViT repositories (``ViTForImageClassification``, ``ViTModel``), in and out.

One table (:data:`TABLE`) maps the state dict to the published layout and back, and one
(:data:`_CONFIG_FIELDS`) maps ``config.json`` to the model's arguments and back. What
transformers computes is kept: exact or tanh GELU, the config's LayerNorm epsilon (1e-12 by
default), the normalisation and resize of ``preprocessor_config.json``, ``id2label``.
"""

from __future__ import annotations

import os
from typing import Dict

import numpy as np

from keras_vit.weights import metadata, npz, repository
from keras_vit.weights.tables import (
    ATTENTION, CONV, HEADS_BIAS, HEADS_IN, HEADS_OUT, OUR_BLOCK, QKV, Row, Table, dense, from_layout, layout_arrays,
    norm, to_layout,
)

_LAYER = "{base}encoder.layer.{i}"
TABLE = Table(
    name="Hugging Face",
    their_block=_LAYER,
    # masked-image-modeling only; unused by classification
    dropped=("{base}embeddings.mask_token",),
    rows=(
        Row("embedding/kernel", "{base}embeddings.patch_embeddings.projection.weight", CONV),
        Row("embedding/bias", "{base}embeddings.patch_embeddings.projection.bias"),
        Row("cls", "{base}embeddings.cls_token"),
        Row(npz.POS_EMBEDDING_KEY, "{base}embeddings.position_embeddings"),
        *(Row(f"{ATTENTION}/{name}/kernel", f"{_LAYER}.attention.attention.{name}.weight", HEADS_IN) for name in QKV),
        *(Row(f"{ATTENTION}/{name}/bias", f"{_LAYER}.attention.attention.{name}.bias", HEADS_BIAS) for name in QKV),
        Row(ATTENTION + "/out/kernel", _LAYER + ".attention.output.dense.weight", HEADS_OUT),
        Row(ATTENTION + "/out/bias", _LAYER + ".attention.output.dense.bias"),
        *norm(OUR_BLOCK + "/LayerNorm_0", _LAYER + ".layernorm_before"),
        *norm(OUR_BLOCK + "/LayerNorm_2", _LAYER + ".layernorm_after"),
        *dense(OUR_BLOCK + "/MlpBlock_3/Dense_0", _LAYER + ".intermediate.dense"),
        *dense(OUR_BLOCK + "/MlpBlock_3/Dense_1", _LAYER + ".output.dense"),
        *norm("Transformer/encoder_norm", "{base}layernorm"),
        *dense("pre_logits", "{base}pooler.dense", absent="skip"),
        *dense("head", "classifier", absent="skip"),
    ),
)
# ViTForImageClassification prefixes the backbone with "vit."; ViTModel does not.
_CLASSIFIER_BASE = "vit."


def embedding_name(tensors):
    return next((k for k in tensors if k.endswith("patch_embeddings.projection.weight")), None)


def attention_shapes(width) -> dict:
    """The attention tensors the layout splits into heads, by the model's width."""
    return {
        r"\.attention\.attention\.(query|key|value)\.weight$": (width, width),
        r"\.attention\.attention\.(query|key|value)\.bias$": (width,),
        r"\.attention\.output\.dense\.weight$": (width, width), r"\.attention\.output\.dense\.bias$": (width,),
    }


def to_published_layout(tensors: Dict[str, np.ndarray], num_heads: int) -> Dict[str, np.ndarray]:
    """``ViTForImageClassification`` / ``ViTModel`` tensors -> the published layout."""
    base = _CLASSIFIER_BASE if any(key.startswith(_CLASSIFIER_BASE) for key in tensors) else ""
    return to_layout(TABLE, tensors, num_heads, base=base)


def state_dict(model) -> Dict[str, np.ndarray]:
    """``model``'s weights under Hugging Face ViT's names (``vit.`` prefixed with a classifier)."""
    return from_layout(TABLE, layout_arrays(model), base=_CLASSIFIER_BASE if model.include_top else "")


# --------------------------------------------------------------------------- configurations
# Hugging Face's activation names -> keras_vit's GELU (written back as the first of each).
_GELUS = {"gelu": "exact", "gelu_python": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
_WRITTEN_GELUS = {"exact": "gelu", "tanh": "gelu_pytorch_tanh"}
# PIL's resampling numbers (Hugging Face's processors) <-> interpolation names (timm's, the model's).
_PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "area": 4}
# Read: Lanczos (1) and Hamming (5) have no tf.image.resize form in keras_vit's list; bicubic
# is the nearest kernel.
_PIL_RESAMPLE_READ = {**{code: name for name, code in _PIL_RESAMPLE.items()}, 1: "bicubic", 5: "bicubic"}


# config.json key <-> VisionTransformer argument: the check that reads it, transformers' default,
# how the model's value is written.
_CONFIG_FIELDS = (
    ("image_size", "image_size", metadata.size_pair, 224, repository.one_or_pair),
    ("patch_size", "patch_size", metadata.size_pair, 16, repository.one_or_pair),
    ("hidden_size", "hidden_size", metadata.positive_int, 768, None),
    ("num_hidden_layers", "num_layers", metadata.positive_int, 12, None),
    ("num_attention_heads", "num_heads", metadata.positive_int, 12, None),
    ("intermediate_size", "mlp_dim", metadata.positive_int, 3072, None),
    ("num_channels", "channels", metadata.positive_int, 3, None),
    ("layer_norm_eps", "layer_norm_epsilon", metadata.positive_number, 1e-12, None),
)


def _input_settings(preprocessor) -> dict:
    """ViTImageProcessor resizes both sides (bilinear by default), then crops only with do_center_crop."""
    resample = preprocessor.get("resample")
    interpolation = _PIL_RESAMPLE_READ.get(resample) if isinstance(resample, int) else None
    return repository.input_settings(interpolation, _crop_fraction(preprocessor), None, ("bilinear", 1.0, "squash"))


def _crop_fraction(preprocessor):
    """``crop_size / size`` of a processor that centre-crops (``do_center_crop``), else None."""
    size, crop = preprocessor.get("size"), preprocessor.get("crop_size")
    if preprocessor.get("do_center_crop") is not True or not size or not crop:
        return None
    side = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
    cropped = crop.get("height") if isinstance(crop, dict) else crop
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (side, cropped))
    return min(1.0, float(cropped) / float(side)) if numbers else None


def _normalization(folder, channels):
    """``(preprocessor_config.json as read, mean, std)``; no normalisation is mean 0, std 1."""
    preprocessor = {}
    processor_path = os.path.join(folder, repository.PREPROCESSOR_FILENAME)
    if os.path.isfile(processor_path):
        preprocessor = metadata.read_json_object(processor_path)
    mean, std = (0.0,) * channels, (1.0,) * channels
    if metadata.boolean(preprocessor, "do_normalize", processor_path, True):
        mean = metadata.channel_values(preprocessor, "image_mean", processor_path, 0.5, channels)
        std = metadata.channel_values(preprocessor, "image_std", processor_path, 0.5, channels, positive=True)
    return preprocessor, mean, std


def arguments(config: dict, folder, tensors) -> dict:
    """VisionTransformer arguments of a Hugging Face ViT repository."""
    path = os.path.join(folder, repository.CONFIG_FILENAME)
    activation = metadata.string(config, "hidden_act", path, "gelu")
    if activation not in _GELUS:
        raise metadata.refuse(path, "hidden_act", activation, f"one of {sorted(_GELUS)}")
    metadata.check_tensors(tensors, metadata.HF_RANKS, os.path.join(folder, repository.WEIGHTS_FILENAME))
    result = {ours: read(config, theirs, path, default) for theirs, ours, read, default, _ in _CONFIG_FIELDS}
    preprocessor, mean, std = _normalization(folder, result["channels"])
    result.update(
        pooling="token",
        representation_size=next(
            (int(value.shape[0]) for key, value in tensors.items() if key.endswith("pooler.dense.weight")), None
        ),
        gelu=_GELUS[activation],
        pixel_mean=mean,
        pixel_std=std,
        position_resampling="bicubic",
        source_metadata={"format": "huggingface", "preprocessor": preprocessor},
        **_input_settings(preprocessor),
    )
    if "classifier.weight" in tensors:
        result["num_classes"] = int(tensors["classifier.weight"].shape[0])
        id2label = metadata.label_map(config, "id2label", path)
        labels = [id2label.get(str(i)) for i in range(result["num_classes"])]
        if all(labels):
            result["class_names"] = tuple(labels)
    return result


def checkpoint_name(config):
    return config.get("_name_or_path")


# --------------------------------------------------------------------------- writing back
# The transformers release whose ViT layout save_pretrained writes (and the tests check).
HF_LAYOUT_VERSION = "5.23.0"


def check_writable(model):
    """The Hugging Face-only refusals (the common ones are :func:`keras_vit.weights.hub` 's)."""
    refuse = repository.refuse_unless
    refuse(model.pooling == "token", model, "pooling", "Hugging Face's ViT pools the class token", "huggingface")
    for option in ("norm_after_pooling", "num_register_tokens", "distillation_token", "layer_scale_init",
                   "patch_position_embedding_only", "dynamic_image_size"):
        refuse(not getattr(model, option), model, option, "Hugging Face's ViT has no such option", "huggingface")
    refuse(model.position_embedding == "learned", model, "position_embedding",
           "Hugging Face's ViT always adds position embeddings", "huggingface")


def _config(model) -> dict:
    labels = list(model.class_names) if model.class_names else [
        f"LABEL_{i}" for i in range(model.num_classes if model.include_top else 0)]
    config = {theirs: (write or (lambda value: value))(getattr(model, ours))
              for theirs, ours, _, _, write in _CONFIG_FIELDS}
    config.update({
        "architectures": ["ViTForImageClassification" if model.include_top else "ViTModel"],
        "attention_probs_dropout_prob": model.attention_dropout,
        "dtype": "float32",
        "encoder_stride": model.patch_size[0],
        "hidden_act": _WRITTEN_GELUS[model.gelu],
        "hidden_dropout_prob": model.dropout,
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "initializer_range": 0.02,
        "label2id": {label: i for i, label in enumerate(labels)},
        "model_type": "vit",
        "pooler_act": "tanh",
        "pooler_output_size": model.hidden_size,
        "qkv_bias": True,
        "transformers_version": HF_LAYOUT_VERSION,
    })
    return config


def _preprocessor(model) -> dict:
    source = repository.source_settings(model, "huggingface")
    preprocessor = {
        "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_processor_type": "ViTImageProcessor", "rescale_factor": 1 / 255, **source,
    }
    if "resample" not in source or _input_settings(source)["interpolation"] != model.interpolation:
        preprocessor["resample"] = _PIL_RESAMPLE[model.interpolation]  # the processor has no crop: resize only
    preprocessor["size"] = {"height": model.image_size[0], "width": model.image_size[1]}
    identity = model.pixel_mean == (0.0,) * model.channels and model.pixel_std == (1.0,) * model.channels
    if not (identity and source.get("do_normalize") is False):  # else the source's own "no normalisation"
        preprocessor["do_normalize"] = True
        kept = repository.kept_channel_values
        preprocessor["image_mean"] = kept(source, "image_mean", model.pixel_mean, model.channels)
        preprocessor["image_std"] = kept(source, "image_std", model.pixel_std, model.channels)
    return dict(sorted(preprocessor.items()))


def repository_files(model) -> tuple:
    """``(config.json, preprocessor_config.json)`` as transformers' ``save_pretrained`` writes them."""
    return _config(model), _preprocessor(model)
