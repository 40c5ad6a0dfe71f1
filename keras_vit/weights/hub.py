"""Vision Transformer weights in timm's and Hugging Face transformers' layouts, in and out.

A hub repository (a local folder, or ``hf://<org>/<name>``; :mod:`~keras_vit.weights.repository`)
is read through its format's module (:mod:`~keras_vit.weights.timm`,
:mod:`~keras_vit.weights.huggingface`): the configuration becomes the model's arguments, the
tensors are renamed and transposed into the published ``.npz`` layout by the format's table
(:mod:`~keras_vit.weights.tables`) and loaded by the same strict loader as the original
checkpoints (:mod:`keras_vit.weights.npz`): an unknown key, a missing weight or a shape
mismatch names the key and both shapes, and nothing is assigned. Writing back runs the same
table the other way.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Dict, Optional

import numpy as np

from keras_vit.core.config import as_pair
from keras_vit.core.models import VisionTransformer
from keras_vit.weights import huggingface, metadata, npz, timm
from keras_vit.weights.huggingface import HF_LAYOUT_VERSION  # noqa: F401  (re-exported)
from keras_vit.weights.repository import (  # noqa: F401  (re-exported: callers import them from here)
    CONFIG_FILENAME,
    FORMATS,
    HF_PREFIX,
    PREPROCESSOR_FILENAME,
    WEIGHTS_FILENAME,
    detect_format,
    read_safetensors,
    refuse_unless,
    resolve_source,
)

logger = logging.getLogger(__name__)

# Each format's module reads and writes its repositories through the same functions.
_FORMAT_MODULES = {"timm": timm, "huggingface": huggingface}


# --------------------------------------------------------------------------- reading
def _check_attention_shapes(tensors, kind, num_heads, path):
    """The attention tensors the layout splits into heads: (width, width) matrices, width heads-divisible."""
    embedding = _FORMAT_MODULES[kind].embedding_name(tensors)
    if embedding not in tensors:
        return  # the missing tensor is named by the caller
    width = tensors[embedding].shape[0]
    if width % num_heads:
        raise metadata.refuse(path, "attention heads", num_heads, f"a divisor of the width {width} of {embedding!r}")
    patterns = _FORMAT_MODULES[kind].attention_shapes(width)
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
    config = metadata.read_json_object(config_path)
    tensors = read_safetensors(weights_path)
    kind = detect_format(config, folder)
    module = _FORMAT_MODULES[kind]
    try:
        arguments = module.arguments(config, folder, tensors)
        _check_attention_shapes(tensors, kind, arguments["num_heads"], weights_path)
        arrays = module.to_published_layout(tensors, arguments["num_heads"])
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
    config = metadata.read_json_object(os.path.join(folder, CONFIG_FILENAME))
    from safetensors import safe_open

    with safe_open(os.path.join(folder, WEIGHTS_FILENAME), framework="numpy") as file:
        tensors = _shapes_only({key: file.get_slice(key).get_shape() for key in file.keys()})
    module = _FORMAT_MODULES[detect_format(config, folder)]  # with the input contract (interpolation, crop)
    arguments, name = module.arguments(config, folder, tensors), module.checkpoint_name(config)
    name = name or os.path.basename(os.path.normpath(text[len(HF_PREFIX):] if text.startswith(HF_PREFIX) else text))
    return {**arguments, "name": name}


def read_image_spec(source, *, cache_dir=None):
    """The input spec (:class:`~keras_vit.core.image_spec.ImageSpec`) of a checkpoint: what
    ``from_pretrained(source)`` builds, from its configuration alone (no weight read)."""
    from keras_vit.core.image_spec import ImageSpec

    return ImageSpec.from_model_arguments(**read_checkpoint_arguments(source, cache_dir=cache_dir))


# --------------------------------------------------------------------------- loading
def _resample_to_model(arrays, model, stored_size, patch_size):
    """The checkpoint's position embeddings (of ``stored_size`` images) resampled in place
    to ``model``'s grid when it differs, as timm loads at another resolution."""
    key = npz.POS_EMBEDDING_KEY
    old_grid = (stored_size[0] // patch_size[0], stored_size[1] // patch_size[1])
    if key not in arrays or not isinstance(model, VisionTransformer) or tuple(old_grid) == tuple(model.grid_size):
        return
    prefix_tokens = model.get_layer("embedding").num_embedded_prefix
    arrays[key] = timm.resample_position_embedding(arrays[key], old_grid, model.grid_size, prefix_tokens)
    logger.warning("Position embeddings resampled from a %dx%d grid to %dx%d (antialiased bicubic, as timm "
                   "loads at another resolution).", *old_grid, *model.grid_size)


def load_pretrained(model, source, *, reset_head=None, cache_dir=None) -> VisionTransformer:
    """Loads a timm or Hugging Face repository into a model you built, strictly.

    Position embeddings of another grid are resampled as timm does; a head of another size
    becomes a zero-initialised one (``reset_head=True`` forces it). The model must have the
    checkpoint's options (``gelu``, ``layer_norm_epsilon``, tokens, ...): a weight it lacks
    or does not expect is named, and nothing is assigned.
    """
    _, arguments, arrays, folder = read_repository(source, cache_dir=cache_dir)
    _resample_to_model(arrays, model, arguments["image_size"], arguments["patch_size"])
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
    stored_size, stored_patch_size = arguments["image_size"], arguments["patch_size"]
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
    _resample_to_model(arrays, model, stored_size, stored_patch_size)
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
def _check_writable(model, format):
    """Refuses, naming the builder option, every model whose written folder the client would compute otherwise.

    Options not named here are written exactly (the write-back fixtures check each with the
    client itself) or do not change the logits (dropout rates, drop_path_rate, dtype: the file
    holds float32 weights).
    """
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"{getattr(model, 'name', model)!r} is not a keras_vit VisionTransformer; save_pretrained writes only those.")
    refuse_unless(model.resnet is None, model, "resnet", "a hybrid ResNet stem", format)
    refuse_unless(model.position_embedding in ("learned", "none"), model, "position_embedding",
                  "only learned position embeddings (or none, for timm) are written", format)
    refuse_unless(model.classifier_activation is None, model, "classifier_activation",
                  "the client computes logits; build the model with classifier_activation=None", format)
    refuse_unless(model.representation_size is None, model, "representation_size",
                  f"a pre-logits layer; {format}'s ViT classifies without one", format)
    _FORMAT_MODULES[format].check_writable(model)


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
    module = _FORMAT_MODULES[format]
    tensors = module.state_dict(model)
    config, preprocessor = module.repository_files(model)
    os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
    with replaced_folder_atomically(folder) as temporary:
        os.makedirs(temporary)
        save_file({k: np.ascontiguousarray(v, dtype="float32") for k, v in tensors.items()},
                  os.path.join(temporary, WEIGHTS_FILENAME), metadata={"format": "pt"})
        write_json(os.path.join(temporary, CONFIG_FILENAME), config)
        if preprocessor is not None:
            write_json(os.path.join(temporary, PREPROCESSOR_FILENAME), preprocessor)
    return folder
