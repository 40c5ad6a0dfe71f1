"""The training configuration in sections, with recipe and dataset defaults and every check.

A :class:`TrainConfig` has five sections: ``data`` (what the data pipelines take),
``model`` (exactly the keyword arguments of :func:`keras_vit.ViT`, the number of classes
aside, which the data gives), ``optimization``, ``hardware`` and ``run``. Field names are
unique across sections, so a flat mapping (CLI flags, a flat YAML file, or
``TrainConfig(epochs=3, image_folder="photos")``) maps onto them; nested YAML/JSON
(``model: {variant: S/16}``) works too. :func:`keras_vit.training.resolution.resolve_config`
(:mod:`keras_vit.training.resolution`) fills the fields left ``None`` from the recipe and
the dataset and checks each section before any work starts, naming the field, its value
and what is accepted.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Optional

from keras_vit import run_folder
from keras_vit.core.config import ARGUMENT_NAMES, decode_variant, did_you_mean, optional_fields

RECIPES = ("scratch", "finetune")
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", "on", "off")
DISTILLATION_KINDS = ("hard", "soft")
EMBEDDED_DATASET = "mnist"
WARMUP_FRACTION = 0.1

# The default small ViT for the embedded 28x28 digits: 7x7 patches of 4x4 pixels, mean
# pooling (steadier than a class token on 4,000 images), and the recipe that trains it
# well on a CPU (its accuracy and training time: docs/performance.md).
MNIST_MODEL = dict(variant="Ti/4", hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128, pooling="gap")
MNIST_RECIPE = dict(epochs=50, learning_rate=3e-3)
DEFAULT_EPOCHS = 30

# Recipe defaults; a field left None in TrainConfig takes the value of its recipe.
RECIPE_DEFAULTS = {
    # AugReg / DeiT style: AdamW, warm-up + cosine, weight decay, label smoothing.
    "scratch": dict(optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, label_smoothing=0.1),
    # Paper, appendix B.1.1: SGD momentum 0.9, no weight decay, clipping at 1, batch 512.
    # Sized for a folder of photos on a CPU: the checkpoint's own input size, one update per
    # batch of 32 (the paper's 384 px and batch 512 by accumulation: --image-size 384
    # --total-batch-size 512), 10 epochs.
    "finetune": dict(optimizer="sgd", learning_rate=0.01, weight_decay=0.0, label_smoothing=0.0, batch_size=32,
                     epochs=10),
}
# Without weights, an image folder trains this small model (5.5 M parameters at 224 px with 10 classes,
# about 1/15 of B/16's compute) from scratch; starting from a checkpoint (--weights) is the
# better road, and the command says so.
SMALL_VARIANT = "Ti/16"
SCRATCH_BATCH_SIZE = 128
IMAGE_SPEC_DEFAULTS = dict(interpolation="bilinear", crop_fraction=1.0, crop_mode="squash")


@dataclasses.dataclass
class DataConfig:
    """What the data pipelines take (:mod:`keras_vit.data`); image size and channels come
    from the model section.

    dataset: ``"mnist"`` (the embedded digits) or a TFDS name (``"cifar10"``, ...).
    image_folder: train on a folder of images (one sub-folder per class) instead.
    validation_folder: validation folder laid out the same way (image folders only).
    validation_fraction: share of each class held out when there is no validation folder.
    data_dir, download, train_split, validation_split: TFDS's.
    crop, flip, eval_crop_fraction, randaugment, mixup, cutmix: see
        :mod:`keras_vit.data` (crop defaults to ``"translate"`` and flip to off for
        digits, ``"inception"`` and on otherwise; eval_crop_fraction, when given, becomes
        the model's ``crop_fraction``, else it is the model's).
    random_erasing: probability of timm's RandomErasing (per-pixel noise), or null.
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
    eval_crop_fraction: Optional[float] = None
    randaugment: Optional[list] = None
    mixup: Optional[float] = None
    cutmix: Optional[float] = None
    random_erasing: Optional[float] = None


_MODEL_SECTION_DOC = """The keyword arguments of :func:`keras_vit.ViT` (``ViT(**model, num_classes=K)``).

variant: ``"B/16"``-style; default the small MNIST ViT on the embedded digits
    (``Ti/4`` at width 64, 4 blocks), the checkpoint's architecture with ``weights``,
    ``"B/16"`` with a published name, and ``"Ti/16"`` otherwise.
patch_size, hidden_size, num_layers, num_heads, mlp_dim: override the variant's.
image_size, channels: input; defaults 28 and 1 for the digits, the checkpoint's with
    ``weights`` (another image size resamples the position embeddings), 224 and 3 otherwise.
pooling, dropout, drop_path_rate, representation_size: as ``keras_vit.ViT``
    (pooling defaults to ``"gap"`` for the small MNIST ViT, ``"token"`` otherwise).
pixel_mean, pixel_std, interpolation, crop_fraction, crop_mode: the model's input
    contract (:class:`keras_vit.core.image_spec.ImageSpec`), which the training and
    evaluation pipelines follow: mean/std per channel of [0, 1] pixels (default 0.5,
    the original's x / 127.5 - 1), resize method (default bilinear), evaluation crop
    (default 1.0, squash); with ``weights``, the checkpoint's.
weights: checkpoint to start from (fine-tuning): a timm or Hugging Face folder,
    ``hf://<org>/<name>``, an original ``.npz``, a ``.keras`` model, or a published name
    of ``variant``. The fields left ``None`` then take the checkpoint's values
    (architecture, options, input size, normalisation, name); the head is a new
    zero-initialised one for the data's classes.
name, resnet, position_embedding, layer_norm_epsilon, gelu, layer_scale_init,
    num_register_tokens, distillation_token, norm_after_pooling,
    patch_position_embedding_only, position_resampling: as
    ``keras_vit.ViT``; ``None`` is the checkpoint's value, else the builder's default.
"""


def _builder_arguments(model) -> dict:
    """The arguments ``ViT(variant, **fields)`` builds with: the fields that are set (None
    takes the builder's default) and a hybrid variant's ResNet stem."""
    arguments = {name: value for name, value in dataclasses.asdict(model).items()
                 if name in ARGUMENT_NAMES and value is not None}
    if model.variant is not None and "resnet" not in arguments:
        arguments["resnet"] = decode_variant(model.variant).resnet
    return arguments


# The builder's own fields (names and defaults from VisionTransformerConfig), in this order.
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig",
    [
        ("variant", Optional[str], dataclasses.field(default=None)),
        *optional_fields(
            ("patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "image_size", "channels", "pooling",
             "dropout", "drop_path_rate", "representation_size", "pixel_mean", "pixel_std", "interpolation",
             "crop_fraction", "crop_mode"),
            keep_defaults=("dropout", "drop_path_rate"),
        ),
        ("weights", Optional[str], dataclasses.field(default=None)),
        ("name", Optional[str], dataclasses.field(default=None)),
        *optional_fields(
            ("resnet", "position_embedding", "layer_norm_epsilon", "gelu", "layer_scale_init", "num_register_tokens",
             "distillation_token", "norm_after_pooling", "patch_position_embedding_only", "position_resampling"),
        ),
    ],
    namespace={"__module__": __name__, "__doc__": _MODEL_SECTION_DOC, "builder_arguments": _builder_arguments},
)


@dataclasses.dataclass
class OptimizationConfig:
    """The recipe and its schedule.

    recipe: ``"scratch"`` (AdamW) or ``"finetune"`` (SGD momentum 0.9); default
        ``finetune`` when the model starts from ``weights``, else ``scratch``.
    epochs: number of epochs (default 50 for the small MNIST ViT, else 30).
    batch_size: images per replica and step (default 128, 32 when fine-tuning); a
        folder holding fewer training images makes one batch of them all.
    total_batch_size: images per optimizer update; a multiple of the global batch
        (``batch_size x replicas``) reached by gradient accumulation. Fine-tuning
        defaults to 512 as in the paper (or the global batch when that is larger).
    steps_per_epoch: cap the steps of an epoch (default: one pass over the data).
    learning_rate, weight_decay, label_smoothing: recipe defaults.
    warmup_epochs: linear warm-up length (default 10% of the epochs).
    clipnorm: global-norm gradient clipping (1.0 as in the paper; 0 disables).
    ema_decay: keep timm's exponential moving average of the weights with this decay;
        the average is what is validated, saved and exported (null: off).
    layer_decay: layer-wise learning-rate decay (BEiT/timm): block ``i`` of ``L`` learns
        at ``layer_decay ** (L - i)`` times the rate; also no weight decay on biases,
        norms, tokens and position embeddings (null: off).
    teacher: a ``.keras`` classifier of the same classes to distil from (DeiT); the
        student is built with a distillation token.
    distillation: ``"hard"`` (the teacher's argmax) or ``"soft"`` (KL at ``distillation_tau``).
    distillation_alpha, distillation_tau: DeiT's weight of the distillation loss and
        temperature (0.5 and 1.0).
    """

    recipe: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    total_batch_size: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    learning_rate: Optional[float] = None
    weight_decay: Optional[float] = None
    label_smoothing: Optional[float] = None
    warmup_epochs: Optional[float] = None
    clipnorm: float = 1.0
    ema_decay: Optional[float] = None
    layer_decay: Optional[float] = None
    teacher: Optional[str] = None
    distillation: Optional[str] = None
    distillation_alpha: float = 0.5
    distillation_tau: float = 1.0


@dataclasses.dataclass
class HardwareConfig:
    """Where and how it computes.

    strategy: ``auto``, ``default``, ``mirrored``, ``multiworker`` or ``tpu``.
    precision: ``auto`` (``mixed_float16`` on GPU, ``mixed_bfloat16`` on TPU, ``float32``
        on CPU where bfloat16 arithmetic is emulated and slower), or a policy name.
    jit_compile: ``auto`` (on for GPU/TPU, off on CPU where XLA is slower), ``on``, ``off``.
    seed: initialisation, shuffling and augmentation seed.
    """

    strategy: str = "auto"
    precision: str = "auto"
    jit_compile: str = "auto"
    seed: int = 0


@dataclasses.dataclass
class RunConfig:
    """Where the run folder is.

    run_name: folder name under ``saved_models/`` (default from dataset and variant).
    output: the run folder itself, overriding ``run_name``.
    """

    run_name: Optional[str] = None
    output: Optional[str] = None


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "optimization": OptimizationConfig,
    "hardware": HardwareConfig,
    "run": RunConfig,
}
# Flat field name -> its section (names are unique across sections).
FIELD_SECTIONS = {field.name: section for section, cls in SECTIONS.items() for field in dataclasses.fields(cls)}


def _unknown_fields_message(unknown, source):
    hints = []
    for key in unknown:
        hints.append(repr(key) + did_you_mean(key, list(FIELD_SECTIONS) + list(SECTIONS)))
    return (
        f"Unknown field(s) {unknown} in {source}: {', '.join(hints)}; accepted sections {list(SECTIONS)} and "
        f"fields {list(FIELD_SECTIONS)}."
    )


class TrainConfig:
    """Everything a training run needs, in five sections; ``None`` fields take recipe or
    dataset defaults (:func:`keras_vit.training.resolution.resolve_config`).

    Build it from sections, from flat fields, or both::

        TrainConfig(image_folder="photos", variant="S/16", epochs=10)
        TrainConfig(model=ModelConfig(variant="S/16"), optimization={"epochs": 10})

    Reading a field by its flat name (``config.epochs``) reads it from its section.
    """

    __slots__ = tuple(SECTIONS)

    def __init__(self, *, data=None, model=None, optimization=None, hardware=None, run=None, **fields):
        given = dict(data=data, model=model, optimization=optimization, hardware=hardware, run=run)
        unknown = [key for key in fields if key not in FIELD_SECTIONS]
        if unknown:
            raise TypeError(_unknown_fields_message(unknown, "TrainConfig"))
        for name, cls in SECTIONS.items():
            value = given[name]
            if value is None:
                value = cls()
            elif isinstance(value, dict):
                value = _section_from_dict(cls, name, value, f"section {name!r}")
            elif not isinstance(value, cls):
                raise TypeError(f"TrainConfig section {name}= must be a {cls.__name__} or a dict; got {type(value).__name__}.")
            else:
                value = dataclasses.replace(value)
            object.__setattr__(self, name, value)
        for key, value in fields.items():
            setattr(getattr(self, FIELD_SECTIONS[key]), key, value)

    def __getattr__(self, name):
        section = FIELD_SECTIONS.get(name)
        if section is None:
            raise AttributeError(f"TrainConfig has no field {name!r}")
        return getattr(object.__getattribute__(self, section), name)

    def __setattr__(self, name, value):
        if name in SECTIONS:
            object.__setattr__(self, name, value)
        elif name in FIELD_SECTIONS:
            setattr(getattr(self, FIELD_SECTIONS[name]), name, value)
        else:
            raise AttributeError(f"TrainConfig has no field {name!r}")

    def __eq__(self, other):
        return isinstance(other, TrainConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return "TrainConfig(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in SECTIONS) + ")"

    @staticmethod
    def field_names():
        """Every field's flat name, section by section."""
        return list(FIELD_SECTIONS)

    def replace(self, **fields) -> "TrainConfig":
        """A copy with some fields (flat names) or whole sections changed."""
        sections = {name: fields.pop(name) if name in fields else getattr(self, name) for name in SECTIONS}
        return TrainConfig(**sections, **fields)

    def to_dict(self) -> Dict[str, dict]:
        """``{section: {field: value}}``, as written to ``config.json``."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_flat_dict(self) -> dict:
        return {key: value for section in self.to_dict().values() for key, value in section.items()}

    @classmethod
    def from_dict(cls, values, source="configuration"):
        """Builds a config from a mapping of sections and/or flat fields, refusing unknown keys.

        Raises:
            ValueError: for a key that is neither a section nor a field (with a near match).
        """
        if not isinstance(values, dict):
            raise ValueError(f"{source} must be a mapping of field: value; got {type(values).__name__}.")
        values = {str(key).replace("-", "_"): value for key, value in values.items()}
        unknown = [key for key in values if key not in SECTIONS and key not in FIELD_SECTIONS]
        if unknown:
            raise ValueError(_unknown_fields_message(unknown, source))
        sections = {}
        for name, section_cls in SECTIONS.items():
            if name in values:
                sections[name] = _section_from_dict(section_cls, name, values[name], f"section {name!r} of {source}")
        flat = {key: value for key, value in values.items() if key in FIELD_SECTIONS}
        return cls(**sections, **flat)


def _section_from_dict(section_cls, name, values, source):
    if not isinstance(values, dict):
        raise ValueError(f"{source} must be a mapping of field: value; got {type(values).__name__}.")
    names = [field.name for field in dataclasses.fields(section_cls)]
    unknown = [key for key in values if str(key).replace("-", "_") not in names]
    if unknown:
        hints = [repr(key) + did_you_mean(key, names) for key in unknown]
        raise ValueError(f"Unknown field(s) {unknown} in {source}: {', '.join(hints)}; the {name} section takes {names}.")
    return section_cls(**{str(key).replace("-", "_"): value for key, value in values.items()})


def load_config_file(path):
    """Reads a YAML (``.yaml``/``.yml``) or JSON (``.json``) configuration file, nested in
    sections or flat.

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


def run_directory(config: TrainConfig) -> str:
    """The run folder of a resolved config: ``output``, else ``saved_models/<run_name>``."""
    return config.output or os.path.join(run_folder.DEFAULT_RUNS_DIR, config.run_name)
