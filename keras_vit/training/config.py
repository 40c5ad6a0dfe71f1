"""The training configuration: fields, recipe and dataset defaults, and every check.

``TrainConfig`` holds everything a run needs; :func:`resolve_config` fills the fields left
``None`` from the recipe and the dataset and checks each one before any work starts,
naming the field, its value and what is accepted. YAML/JSON files and CLI flags map onto
the same fields (:func:`load_config_file`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional

from keras_vit import run_folder

RECIPES = ("scratch", "finetune")
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", "on", "off")
EMBEDDED_DATASET = "mnist"
WARMUP_FRACTION = 0.1

# The default small ViT for the embedded 28x28 digits: 7x7 patches of 4x4 pixels, mean
# pooling (steadier than a class token on 4,000 images), and its measured recipe
# (>= 96% held-out accuracy in under 5 minutes of training on a 2-core CPU, measured with
# `keras-vit train` then `keras-vit evaluate`).
MNIST_MODEL = dict(variant="Ti/4", hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128, pooling="gap")
MNIST_RECIPE = dict(epochs=50, learning_rate=3e-3)
DEFAULT_EPOCHS = 30

# Recipe defaults; a field left None in TrainConfig takes the value of its recipe.
RECIPE_DEFAULTS = {
    # AugReg / DeiT style: AdamW, warm-up + cosine, weight decay, label smoothing.
    "scratch": dict(optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, label_smoothing=0.1),
    # Paper, appendix B.1.1: SGD momentum 0.9, no weight decay, clipping at 1, batch 512.
    "finetune": dict(
        optimizer="sgd", learning_rate=0.01, weight_decay=0.0, label_smoothing=0.0, total_batch_size=512,
        image_size=384,
    ),
}


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; ``None`` fields take recipe or dataset defaults.

    Data:
        dataset: ``"mnist"`` (the embedded digits) or a TFDS name (``"cifar10"``, ...).
        image_folder: train on a folder of images (one sub-folder per class) instead.
        validation_folder: validation folder laid out the same way (image folders only).
        validation_fraction: share of each class held out when there is no validation folder.
        data_dir: TFDS data directory.
        download: let TFDS download and prepare a dataset that is not in ``data_dir``.
        train_split, validation_split: TFDS splits.
        crop, flip, eval_crop_fraction, randaugment, mixup, cutmix: see
            :mod:`keras_vit.data` (crop defaults to ``"translate"`` and flip to off for
            digits, ``"inception"`` and on otherwise).
    Model:
        variant: ``"B/16"``-style; default the small MNIST ViT on the embedded digits
            (``Ti/4`` at width 64, 4 blocks) and ``"B/16"`` otherwise.
        patch_size, hidden_size, num_layers, num_heads, mlp_dim: override the variant.
        image_size, channels: input; defaults 28 and 1 for the digits, 224 (384 when
            fine-tuning) and 3 otherwise.
        pooling, dropout, drop_path_rate, representation_size: as ``keras_vit.ViT``
            (pooling defaults to ``"gap"`` for the small MNIST ViT, ``"token"`` otherwise).
        weights: checkpoint to start from (fine-tuning); the head is zero-initialised.
    Optimisation:
        recipe: ``"scratch"`` (AdamW) or ``"finetune"`` (SGD momentum 0.9).
        epochs: number of epochs (default 50 for the small MNIST ViT, else 30).
        batch_size: images per replica and step.
        total_batch_size: images per optimizer update; a multiple of the global batch
            (``batch_size x replicas``) reached by gradient accumulation. Fine-tuning
            defaults to 512 as in the paper (or the global batch when that is larger).
        steps_per_epoch: cap the steps of an epoch (default: one pass over the data).
        learning_rate, weight_decay, label_smoothing: recipe defaults.
        warmup_epochs: linear warm-up length (default 10% of the epochs).
        clipnorm: global-norm gradient clipping (1.0 as in the paper; 0 disables).
    Hardware:
        strategy: ``auto``, ``default``, ``mirrored``, ``multiworker`` or ``tpu``.
        precision: ``auto`` (``mixed_float16`` on GPU, ``mixed_bfloat16`` on TPU,
            ``float32`` on CPU where bfloat16 arithmetic is emulated and slower), or a
            policy name.
        jit_compile: ``auto`` (on for GPU/TPU, off on CPU where XLA is slower), ``on``, ``off``.
        seed: initialisation, shuffling and augmentation seed.
    Run:
        run_name: folder name under ``saved_models/`` (default from dataset and variant).
        output: the run folder itself, overriding ``run_name``.
    """

    dataset: str = EMBEDDED_DATASET
    image_folder: Optional[str] = None
    validation_folder: Optional[str] = None
    validation_fraction: float = 0.1
    data_dir: Optional[str] = None
    download: bool = False
    train_split: str = "train"
    validation_split: Optional[str] = None
    crop: Optional[str] = None
    flip: Optional[bool] = None
    eval_crop_fraction: float = 1.0
    randaugment: Optional[list] = None
    mixup: Optional[float] = None
    cutmix: Optional[float] = None

    variant: Optional[str] = None
    patch_size: Optional[int] = None
    hidden_size: Optional[int] = None
    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_dim: Optional[int] = None
    image_size: Optional[int] = None
    channels: Optional[int] = None
    pooling: Optional[str] = None
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    representation_size: Optional[int] = None
    weights: Optional[str] = None

    recipe: str = "scratch"
    epochs: Optional[int] = None
    batch_size: int = 128
    total_batch_size: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    learning_rate: Optional[float] = None
    weight_decay: Optional[float] = None
    label_smoothing: Optional[float] = None
    warmup_epochs: Optional[float] = None
    clipnorm: float = 1.0

    strategy: str = "auto"
    precision: str = "auto"
    jit_compile: str = "auto"
    seed: int = 0

    run_name: Optional[str] = None
    output: Optional[str] = None

    @classmethod
    def field_names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values, source="configuration"):
        """Builds a config from a mapping, refusing unknown keys by name.

        Raises:
            ValueError: for a key that is not a field (listing the accepted ones).
        """
        if not isinstance(values, dict):
            raise ValueError(f"{source} must be a mapping of field: value; got {type(values).__name__}.")
        names = cls.field_names()
        unknown = [key for key in values if key.replace("-", "_") not in names]
        if unknown:
            raise ValueError(f"Unknown field(s) {unknown} in {source}; accepted fields: {names}.")
        return cls(**{key.replace("-", "_"): value for key, value in values.items()})

    def to_dict(self):
        return dataclasses.asdict(self)


def load_config_file(path):
    """Reads a YAML (``.yaml``/``.yml``) or JSON (``.json``) configuration file.

    Returns:
        A :class:`TrainConfig` (not yet resolved).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for another extension, unparsable content or unknown fields.
    """
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Configuration file {path!r} does not exist.")
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".yaml", ".yml", ".json"):
        raise ValueError(f"Configuration file {path!r} must end in .yaml, .yml or .json; got {extension!r}.")
    with open(path) as file:
        try:
            values = json.load(file) if extension == ".json" else yaml.safe_load(file)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise ValueError(f"Configuration file {path!r} is not valid {extension[1:].upper()}: {error}") from None
    return TrainConfig.from_dict(values or {}, source=f"configuration file {path!r}")


# --------------------------------------------------------------------------- resolution and checks
def _is_int(value, minimum=1):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fail(field, value, accepted):
    raise ValueError(f"Invalid configuration: {field}={value!r}; expected {accepted}.")


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fills the ``None`` fields with recipe and dataset defaults and checks every field.

    Args:
        config: a :class:`TrainConfig`.

    Returns:
        A new, fully specified :class:`TrainConfig` (the one written to ``config.json``).

    Raises:
        ValueError: naming the first invalid field, its value and what is accepted.
    """
    from keras_vit.core.config import decode_variant
    from keras_vit.data.pipelines import CROPS

    c = dataclasses.replace(config)
    if c.recipe not in RECIPES:
        _fail("recipe", c.recipe, f"one of {list(RECIPES)}")
    defaults = RECIPE_DEFAULTS[c.recipe]
    digits = c.image_folder is None and c.dataset == EMBEDDED_DATASET
    if not isinstance(c.dataset, str) or not c.dataset:
        _fail("dataset", c.dataset, f"'{EMBEDDED_DATASET}' or a TFDS dataset name")
    for field in ("image_folder", "validation_folder", "data_dir", "weights", "run_name", "output", "validation_split"):
        value = getattr(c, field)
        if value is not None and (not isinstance(value, str) or not value):
            _fail(field, value, "a non-empty string or null")
    if c.validation_folder is not None and c.image_folder is None:
        _fail("validation_folder", c.validation_folder, "to be used together with image_folder")
    if not isinstance(c.train_split, str) or not c.train_split:
        _fail("train_split", c.train_split, "a TFDS split such as 'train' or 'train[:90%]'")
    if not (_is_number(c.validation_fraction) and 0 < c.validation_fraction < 1):
        _fail("validation_fraction", c.validation_fraction, "a number in (0, 1)")
    if not isinstance(c.download, bool):
        _fail("download", c.download, "true or false")

    if c.variant is None:
        if digits:
            for key, value in {**MNIST_MODEL, **MNIST_RECIPE}.items():
                if getattr(c, key) is None:
                    setattr(c, key, value)
        else:
            c.variant = "B/16"
    if c.pooling is None:
        c.pooling = "token"
    if c.epochs is None:
        c.epochs = DEFAULT_EPOCHS
    try:
        variant = decode_variant(c.variant)
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"Invalid configuration: variant={c.variant!r}; {error}") from None
    for field in ("patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim"):
        value = getattr(c, field)
        if value is None:
            setattr(c, field, getattr(variant, field) if field != "patch_size" else variant.patch_size[0])
        elif not _is_int(value):
            _fail(field, value, "a positive integer")
    if c.hidden_size % c.num_heads:
        _fail("num_heads", c.num_heads, f"a divisor of hidden_size={c.hidden_size}")
    if c.image_size is None:
        c.image_size = 28 if digits else defaults.get("image_size", 224)
    if not _is_int(c.image_size) or c.image_size % c.patch_size:
        _fail("image_size", c.image_size, f"a positive multiple of patch_size={c.patch_size}")
    if c.channels is None:
        c.channels = 1 if digits else 3
    if c.channels not in (1, 3):
        _fail("channels", c.channels, "1 or 3")
    if c.pooling not in ("token", "gap"):
        _fail("pooling", c.pooling, "'token' or 'gap'")
    for field in ("dropout", "drop_path_rate"):
        value = getattr(c, field)
        if not (_is_number(value) and 0 <= value < 1):
            _fail(field, value, "a number in [0, 1)")
    if c.representation_size is not None and not _is_int(c.representation_size):
        _fail("representation_size", c.representation_size, "a positive integer or null")
    looks_like_path = c.weights is not None and (os.sep in c.weights or c.weights.endswith(".npz"))
    if looks_like_path and not os.path.isfile(c.weights):
        raise FileNotFoundError(f"Invalid configuration: weights={c.weights!r} is not a file.")

    if c.crop is None:
        c.crop = "translate" if digits else "inception"
    if c.crop not in CROPS:
        _fail("crop", c.crop, f"one of {list(CROPS)}")
    if c.flip is None:
        c.flip = not digits
    if not isinstance(c.flip, bool):
        _fail("flip", c.flip, "true or false")
    if not (_is_number(c.eval_crop_fraction) and 0 < c.eval_crop_fraction <= 1):
        _fail("eval_crop_fraction", c.eval_crop_fraction, "a number in (0, 1]")
    if c.randaugment is not None:
        ra = c.randaugment
        if not (isinstance(ra, (list, tuple)) and len(ra) == 2 and _is_int(ra[0]) and _is_number(ra[1]) and 0 < ra[1] <= 1):
            _fail("randaugment", ra, "null or [num_ops >= 1, magnitude in (0, 1]], e.g. [2, 0.5]")
        c.randaugment = [int(ra[0]), float(ra[1])]
    for field in ("mixup", "cutmix"):
        value = getattr(c, field)
        if value is not None and not (_is_number(value) and value > 0):
            _fail(field, value, "null or a positive number")

    if not _is_int(c.epochs):
        _fail("epochs", c.epochs, "a positive integer")
    if not _is_int(c.batch_size):
        _fail("batch_size", c.batch_size, "a positive integer (images per replica)")
    if c.steps_per_epoch is not None and not _is_int(c.steps_per_epoch):
        _fail("steps_per_epoch", c.steps_per_epoch, "a positive integer or null")
    if c.total_batch_size is None and "total_batch_size" in defaults:
        c.total_batch_size = defaults["total_batch_size"]
    if c.total_batch_size is not None and not _is_int(c.total_batch_size):
        _fail("total_batch_size", c.total_batch_size, "a positive integer or null")
    if c.warmup_epochs is None and _is_int(c.epochs):
        c.warmup_epochs = round(WARMUP_FRACTION * c.epochs, 6)
    for field in ("learning_rate", "weight_decay", "label_smoothing"):
        if getattr(c, field) is None:
            setattr(c, field, defaults[field])
    if not (_is_number(c.learning_rate) and c.learning_rate > 0):
        _fail("learning_rate", c.learning_rate, "a positive number")
    if not (_is_number(c.weight_decay) and c.weight_decay >= 0):
        _fail("weight_decay", c.weight_decay, "a number >= 0")
    if not (_is_number(c.label_smoothing) and 0 <= c.label_smoothing < 1):
        _fail("label_smoothing", c.label_smoothing, "a number in [0, 1)")
    if not (_is_number(c.warmup_epochs) and 0 <= c.warmup_epochs < c.epochs):
        _fail("warmup_epochs", c.warmup_epochs, f"a number in [0, epochs={c.epochs})")
    if not (_is_number(c.clipnorm) and c.clipnorm >= 0):
        _fail("clipnorm", c.clipnorm, "a number >= 0 (0 disables clipping)")

    if c.strategy not in STRATEGIES:
        _fail("strategy", c.strategy, f"one of {list(STRATEGIES)}")
    if c.precision not in PRECISIONS:
        _fail("precision", c.precision, f"one of {list(PRECISIONS)}")
    if isinstance(c.jit_compile, bool):
        c.jit_compile = "on" if c.jit_compile else "off"
    if c.jit_compile not in JIT_CHOICES:
        _fail("jit_compile", c.jit_compile, f"one of {list(JIT_CHOICES)}")
    if not _is_int(c.seed, minimum=0):
        _fail("seed", c.seed, "an integer >= 0")
    if c.run_name is None:
        source = os.path.basename(os.path.normpath(c.image_folder)) if c.image_folder else c.dataset
        c.run_name = f"{source}_vit-{c.variant.lower().replace('/', '').replace('+', '_')}".replace(":", "-")
    if os.sep in c.run_name or c.run_name in (".", ".."):
        _fail("run_name", c.run_name, "a folder name without path separators (use output for a path)")
    return c


def run_directory(config: TrainConfig) -> str:
    """The run folder of a resolved config: ``output``, else ``saved_models/<run_name>``."""
    return config.output or os.path.join(run_folder.DEFAULT_RUNS_DIR, config.run_name)
