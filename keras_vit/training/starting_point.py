"""Where a training run starts: a checkpoint's own model, and its weights in the run's model.

``weights`` (``--weights``) is anything :func:`keras_vit.from_pretrained` reads (a timm or
Hugging Face folder, ``hf://<org>/<name>``, an original ``.npz``), a ``.keras`` model, or a
published name of the variant (``imagenet21k``, ...). For the first two,
:func:`checkpoint_model_fields` gives the model section's fields of the checkpoint (its
architecture, its options such as the GELU form and LayerNorm epsilon, its input size and
normalisation, its name), read from configuration files and tensor shapes only;
:func:`load_starting_weights` then loads its weights into the model the run built, with
a new zero-initialised head for the run's classes.
"""

from __future__ import annotations

import json
import os
import re
import zipfile

# The model-section fields a checkpoint decides when the configuration leaves them out.
CHECKPOINT_FIELDS = (
    "patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "image_size", "channels", "pooling",
    "representation_size", "resnet", "position_embedding", "layer_norm_epsilon", "gelu", "layer_scale_init",
    "num_register_tokens", "distillation_token", "norm_after_pooling", "patch_position_embedding_only",
    "pixel_mean", "pixel_std", "interpolation", "crop_fraction", "crop_mode", "position_resampling", "name",
)
# Fields every checkpoint gives (others, such as layer_scale_init, may be None): all set means resolved before.
ALWAYS_GIVEN = ("name", "gelu", "layer_norm_epsilon", "image_size", "patch_size", "hidden_size", "pixel_mean",
                "position_resampling")
ACCEPTED = (
    "a timm or Hugging Face folder (config.json + model.safetensors), hf://<org>/<name>, an original .npz "
    "checkpoint, a .keras model, or a published name with --variant (e.g. imagenet21k)"
)


def is_checkpoint_file(weights) -> bool:
    """Whether ``weights`` names a checkpoint (a path or ``hf://``), not a published name."""
    from keras_vit.weights.hub import HF_PREFIX

    text = str(weights)
    return text.startswith(HF_PREFIX) or os.sep in text or text.endswith((".npz", ".keras")) or os.path.exists(text)


def check_exists(weights) -> None:
    """Refuses a local checkpoint path that is not there, naming what is accepted."""
    from keras_vit.weights.hub import HF_PREFIX

    if is_checkpoint_file(weights) and not str(weights).startswith(HF_PREFIX) and not os.path.exists(weights):
        raise FileNotFoundError(f"Invalid configuration: weights={weights!r} does not exist; expected {ACCEPTED}.")


def _keras_model_arguments(path) -> dict:
    # A .keras file is a zip whose config.json holds the model's get_config: read, not built.
    try:
        with zipfile.ZipFile(path) as archive, archive.open("config.json") as file:
            saved = json.load(file)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"weights={path!r} is not a readable .keras model ({error}).") from None
    if saved.get("class_name") != "VisionTransformer":
        raise ValueError(
            f"weights={path!r} holds a {saved.get('class_name')!r}; a .keras starting point must be a keras_vit "
            f"VisionTransformer (saved by keras-vit train, keras-vit convert or model.save)."
        )
    return dict(saved["config"])


def _model_name(name) -> str:
    # Keras names hold no "/" and the run name becomes a folder: keep it plain.
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_.") or "vit"


def checkpoint_model_fields(weights, *, cache_dir=None) -> dict:
    """The model-section fields of a checkpoint (:data:`CHECKPOINT_FIELDS`), in
    configuration form (square sizes as ints, tuples as lists), read without its weights.

    Raises:
        ValueError: a non-square input size or patch, or a file that is not a ViT checkpoint.
    """
    from keras_vit.weights.hub import read_checkpoint_arguments

    if str(weights).endswith(".keras"):
        arguments = _keras_model_arguments(weights)
    else:
        arguments = read_checkpoint_arguments(weights, cache_dir=cache_dir)
    fields = {}
    for field in CHECKPOINT_FIELDS:
        value = arguments.get(field)
        if field in ("image_size", "patch_size") and value is not None:
            height, width = (value, value) if isinstance(value, int) else value
            if height != width:
                raise ValueError(
                    f"weights={weights!r} has {field} {height}x{width}; training takes square images: pass "
                    f"--{field.replace('_', '-')} (image_size resamples the position embeddings)."
                )
            value = int(height)
        fields[field] = json.loads(json.dumps(value))  # tuples as lists, as config.json holds them
    fields["name"] = _model_name(fields["name"] or "vit")
    return fields


def load_starting_weights(model, weights, *, variant=None):
    """Loads ``weights`` into ``model`` (built with the checkpoint's fields, perhaps at another
    image size) strictly, the head replaced by a zero-initialised one for the run's classes.

    Position embeddings of another grid are resampled as the checkpoint's library does
    (timm's and Hugging Face's: antialiased bicubic; the original's and ``.keras``: bilinear).
    """
    from keras_vit.weights import npz
    from keras_vit.weights.hub import HF_PREFIX, load_pretrained
    from keras_vit.zoo import load_weights

    text = str(weights)
    if text.endswith(".keras"):
        from keras_vit.run_folder import load_model

        source = load_model(text)
        arrays = {key: variable.numpy().reshape(shape) for key, (variable, shape) in npz.checkpoint_layout(source).items()}
        return npz._load_params(model, arrays, repr(text), reset_head=True)
    if text.startswith(HF_PREFIX) or os.path.isdir(text):
        return load_pretrained(model, text, reset_head=True)
    if os.path.isfile(text):
        return npz.load_npz(model, text, reset_head=True)
    return load_weights(model, text, variant=variant)
