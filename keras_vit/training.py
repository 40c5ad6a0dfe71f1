"""Training: the paper's recipes with ``model.fit`` on tf.data, under a tf.distribute strategy.

``train(TrainConfig(...))`` resolves and checks a configuration, builds the data
pipelines, the model and its optimizer inside the strategy's scope, and fits with
callbacks that make the run crash-proof (``BackupAndRestore``), logged (``CSVLogger``,
TensorBoard, a curve PNG) and safe from NaN losses. Every run writes one folder::

    saved_models/<run-name>/
        config.json          the resolved configuration
        model.keras          the trained model (``keras.saving.load_model``)
        checkpoints/         last.keras (every epoch) and best.keras (best val_accuracy)
        backup/              BackupAndRestore state while the run is unfinished
        logs/                TensorBoard
        history.csv          one row per completed epoch
        training_curves.png  loss and accuracy per epoch
        metrics.json         val_accuracy, train_seconds, images_per_second, ...

Multi-worker runs use the custom loop of :mod:`keras_vit.multiworker` because Keras 3's
``fit`` does not run under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
from typing import Optional

import keras

from keras_vit import optimizers

RECIPES = ("scratch", "finetune")
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", "on", "off")
EMBEDDED_DATASET = "mnist"
DEFAULT_RUNS_DIR = "saved_models"
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
    from keras_vit.config import decode_variant
    from keras_vit.data import CROPS

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
    return config.output or os.path.join(DEFAULT_RUNS_DIR, config.run_name)


# --------------------------------------------------------------------------- hardware
def accelerator(strategy_name="auto"):
    """``"tpu"``, ``"gpu"`` or ``"cpu"``: what the run will compute on."""
    import tensorflow as tf

    if strategy_name == "tpu":
        return "tpu"
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def resolve_precision(precision, device):
    """The Keras dtype policy for ``precision`` on ``device`` (see :class:`TrainConfig`)."""
    if precision != "auto":
        return precision
    return {"gpu": "mixed_float16", "tpu": "mixed_bfloat16"}.get(device, "float32")


def resolve_jit_compile(jit_compile, device):
    """``jit_compile`` as a bool: ``auto`` means on for GPU/TPU, off on CPU."""
    if jit_compile == "auto":
        return device in ("gpu", "tpu")
    return jit_compile == "on"


def _multiworker_requested():
    spec = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = spec.get("cluster", {}).get("worker", [])
    return len(workers) + len(spec.get("cluster", {}).get("chief", [])) > 1


def build_strategy(name="auto"):
    """Creates a ``tf.distribute`` strategy.

    Args:
        name: ``"default"`` (one device), ``"mirrored"`` (all local GPUs, or all logical
            CPU devices when there is no GPU), ``"multiworker"`` (``TF_CONFIG`` workers),
            ``"tpu"`` (the TPU found by ``TPUClusterResolver``), or ``"auto"``:
            multi-worker when ``TF_CONFIG`` lists several workers, mirrored with several
            GPUs, else default.

    Returns:
        A ``tf.distribute.Strategy``.

    Raises:
        ValueError: for an unknown name.
        RuntimeError: when ``"tpu"`` is asked for and no TPU is found.
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {list(STRATEGIES)}.")
    if name == "auto":
        if _multiworker_requested():
            name = "multiworker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.NotFoundError, tf.errors.UnavailableError) as error:
        raise RuntimeError(f"strategy 'tpu' was asked for but no TPU was found: {error}") from None
    return tf.distribute.TPUStrategy(resolver)


# --------------------------------------------------------------------------- data, model, optimizer
def accumulation_steps(config: TrainConfig, replicas: int) -> int:
    """Micro-batches per optimizer update, so that each update sees ``total_batch_size``.

    Raises:
        ValueError: if ``total_batch_size`` is not a multiple of the global batch.
    """
    global_batch = config.batch_size * replicas
    if config.total_batch_size is None or config.total_batch_size <= global_batch:
        return 1
    if config.total_batch_size % global_batch:
        raise ValueError(
            f"Invalid configuration: total_batch_size={config.total_batch_size} is not a multiple of the "
            f"global batch {global_batch} (batch_size={config.batch_size} x {replicas} replicas)."
        )
    return config.total_batch_size // global_batch


def build_datasets(config: TrainConfig, global_batch_size: int):
    """The :class:`keras_vit.data.Datasets` a resolved config asks for."""
    from keras_vit import data

    common = dict(
        image_size=config.image_size,
        channels=config.channels,
        crop=config.crop,
        flip=config.flip,
        eval_crop_fraction=config.eval_crop_fraction,
        randaugment=config.randaugment,
        mixup=config.mixup,
        cutmix=config.cutmix,
        seed=config.seed,
    )
    if config.image_folder is not None:
        return data.image_folder(
            config.image_folder,
            global_batch_size,
            validation_directory=config.validation_folder,
            validation_fraction=config.validation_fraction,
            **common,
        )
    if config.dataset == EMBEDDED_DATASET:
        return data.embedded_mnist(global_batch_size, **common)
    return data.tfds_dataset(
        config.dataset,
        global_batch_size,
        data_dir=config.data_dir,
        download=config.download,
        train_split=config.train_split,
        validation_split=config.validation_split,
        **common,
    )


def build_model(config: TrainConfig, num_classes: int):
    """The ViT of a resolved config (from ``weights`` when given, with a zeroed head)."""
    from keras_vit.models import ViT

    keras.utils.set_random_seed(config.seed)
    model = ViT(
        config.variant,
        num_classes=num_classes,
        image_size=config.image_size,
        channels=config.channels,
        patch_size=config.patch_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        mlp_dim=config.mlp_dim,
        pooling=config.pooling,
        dropout=config.dropout,
        drop_path_rate=config.drop_path_rate,
        representation_size=config.representation_size,
        weights=config.weights,
    )
    if config.weights is not None:
        # Fine-tuning starts from a zero head (paper, appendix B.1.1).
        head = model.get_layer("head")
        head.set_weights([0 * w for w in head.get_weights()])
    return model


def learning_rate_schedule(config: TrainConfig, updates_per_epoch: int):
    """Linear warm-up from 0 to ``learning_rate`` then cosine decay to 0, per optimizer update."""
    total = max(1, config.epochs * updates_per_epoch)
    warmup = min(int(round(config.warmup_epochs * updates_per_epoch)), total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=total - warmup,
        alpha=0.0,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


@keras.saving.register_keras_serializable(package="keras_vit")
class PerUpdateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Steps a schedule once per optimizer update when gradients are accumulated.

    Keras evaluates a schedule at the micro-batch count (``optimizer._iterations``), so
    with accumulation over N micro-batches it would run N times too fast; this divides
    the step by N first.

    Args:
        schedule: a ``LearningRateSchedule`` over optimizer updates.
        accumulation: micro-batches per update.
    """

    def __init__(self, schedule, accumulation):
        self.schedule = schedule
        self.accumulation = accumulation

    def __call__(self, step):
        return self.schedule(keras.ops.floor_divide(step, self.accumulation))

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "accumulation": self.accumulation}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["accumulation"])


def build_optimizer(config: TrainConfig, updates_per_epoch: int, accumulation: int = 1, replicas: int = 1):
    """The recipe's optimizer: AdamW (scratch) or SGD with momentum 0.9 (fine-tune), from
    :mod:`keras_vit.optimizers` (Keras's update in TensorFlow's fused kernels).

    Both clip the global gradient norm at ``clipnorm`` and follow
    :func:`learning_rate_schedule`; with ``accumulation > 1`` the optimizer averages that
    many micro-batch gradients per update (Keras's ``gradient_accumulation_steps``).
    With ``replicas > 1`` the clipping applies to the all-reduced gradient.
    """
    schedule = learning_rate_schedule(config, updates_per_epoch)
    if accumulation > 1:
        schedule = PerUpdateSchedule(schedule, accumulation)
    common = dict(learning_rate=schedule, gradient_accumulation_steps=accumulation if accumulation > 1 else None)
    sgd = RECIPE_DEFAULTS[config.recipe]["optimizer"] == "sgd"
    if replicas > 1:
        common["reduced_clipnorm"] = config.clipnorm or None
        sgd_class, adamw_class = optimizers.ReplicaSafeSGD, optimizers.ReplicaSafeAdamW
    else:
        common["global_clipnorm"] = config.clipnorm or None
        sgd_class, adamw_class = optimizers.SGD, optimizers.AdamW
    if sgd:
        return sgd_class(momentum=0.9, weight_decay=config.weight_decay or None, **common)
    return adamw_class(weight_decay=config.weight_decay, **common)


def compile_model(model, config: TrainConfig, optimizer, jit_compile=False):
    """Compiles with the recipe's loss (cross-entropy on logits, label smoothing) and accuracy."""
    from_logits = getattr(model, "classifier_activation", None) is None
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


# --------------------------------------------------------------------------- run folder
def _json_ready(values):
    return json.loads(json.dumps(values))


def check_run_directory(config: TrainConfig, *, resume=False, overwrite=False):
    """Decides what to do with the run folder before any work starts.

    A missing or empty folder starts a new run. An unfinished run (``config.json`` but no
    ``metrics.json``) with the same configuration resumes, so that a killed run continues
    when its command is given again. Anything else is refused unless ``overwrite``.

    Args:
        config: a resolved :class:`TrainConfig`.
        resume: insist on resuming (refused when there is nothing to resume).
        overwrite: delete an existing folder and start again.

    Returns:
        ``(run_dir, resuming)``.

    Raises:
        ValueError: when the folder holds a finished run, another configuration, or
            files that are not a run, and ``overwrite`` is not given; or when both
            ``resume`` and ``overwrite`` are given.
        FileNotFoundError: when ``resume`` is given and there is no run to resume.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues a run, overwrite deletes it.")
    run_dir = run_directory(config)
    exists = os.path.isdir(run_dir) and bool(os.listdir(run_dir))
    if not exists:
        if resume:
            raise FileNotFoundError(f"Nothing to resume: run folder {run_dir!r} does not exist or is empty.")
        return run_dir, False
    if overwrite:
        return run_dir, False
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(
            f"Run folder {run_dir!r} exists and is not a keras-vit run (no config.json); nothing in it is "
            f"touched. Choose another run_name/--output, or pass --overwrite to replace it."
        )
    if os.path.isfile(os.path.join(run_dir, "metrics.json")):
        raise ValueError(
            f"Run folder {run_dir!r} holds a finished run. Choose another run_name/--output, or pass "
            f"--overwrite to replace it."
        )
    with open(config_path) as file:
        saved = json.load(file)
    current = _json_ready(config.to_dict())
    different = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    if different:
        changes = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in different)
        raise ValueError(
            f"Run folder {run_dir!r} holds an unfinished run with another configuration ({changes}). Give the "
            f"same configuration to resume it, or pass --overwrite to start again."
        )
    return run_dir, True


# --------------------------------------------------------------------------- callbacks
class NaNLossError(RuntimeError):
    """The training loss stopped being finite."""


class StopOnNaN(keras.callbacks.Callback):
    """Ends training at the first non-finite loss by raising :class:`NaNLossError`.

    It raises instead of setting ``stop_training`` so that no epoch-end callback runs on
    the broken weights: the last checkpoint and backup stay those of the last good epoch.
    """

    epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NaNLossError(f"the loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}")


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time of the epoch, validation included) to the logs."""

    start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self.start


def read_history(path):
    """Rows of ``history.csv`` as dicts of floats, one per epoch (the latest if repeated)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    by_epoch = {}
    for row in rows:
        by_epoch[int(row["epoch"])] = {key: float(value) for key, value in row.items() if value not in ("", None)}
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _rewrite_history(path):
    # A kill between CSVLogger's row and the backup of an epoch repeats that epoch on resume.
    rows = read_history(path)
    if not rows:
        return rows
    columns = ["epoch"] + sorted({key for row in rows for key in row} - {"epoch"})
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "epoch": int(row["epoch"])})
    return rows


def plot_history(rows, path):
    """Writes the loss and accuracy curves of ``rows`` (see :func:`read_history`) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] + 1 for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = [row.get(prefix + metric, float("nan")) for row in rows]
            axis.plot(epochs, values, marker="o", markersize=3, label=label)
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle("Training curves")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def build_callbacks(run_dir, *, best_val_accuracy=None, tensorboard=True):
    """The run's callbacks, in the order they must run at the end of an epoch."""
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    callbacks = [
        StopOnNaN(),
        EpochTimer(),
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup"), double_checkpoint=True),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
        keras.callbacks.ModelCheckpoint(os.path.join(run_dir, "checkpoints", "last.keras")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, "checkpoints", "best.keras"),
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
            initial_value_threshold=best_val_accuracy,
        ),
    ]
    if tensorboard:
        log_dir = os.path.join(run_dir, "logs")
        callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False))
    return callbacks


# --------------------------------------------------------------------------- train
def train(config: Optional[TrainConfig] = None, *, resume=False, overwrite=False, verbose=1):
    """Trains a ViT as ``config`` says and writes its run folder.

    With no argument it trains the default small ViT on the embedded MNIST digits. The
    configuration is resolved and checked, the run folder checked and the data found
    before any training starts. A run killed at any moment resumes from its last
    completed epoch when ``train`` is called again with the same configuration.

    Args:
        config: a :class:`TrainConfig` (defaults: the embedded MNIST recipe).
        resume: insist on resuming an unfinished run.
        overwrite: replace an existing run folder.
        verbose: Keras progress bars (1), one line per epoch (2) or silent (0).

    Returns:
        The metrics dict also written to ``metrics.json``, plus ``run_dir``.

    Raises:
        ValueError: for an invalid configuration (naming the field) or a run folder that
            may not be used (see :func:`check_run_directory`).
        FileNotFoundError: for missing data or weights.
        RuntimeError: when the loss becomes NaN (the last good checkpoint is kept).
    """
    config = resolve_config(config or TrainConfig())
    keras.utils.set_random_seed(config.seed)
    if config.strategy == "multiworker" or (config.strategy == "auto" and _multiworker_requested()):
        from keras_vit import multiworker

        return multiworker.train(config, resume=resume, overwrite=overwrite, verbose=verbose)
    run_dir, resuming = check_run_directory(config, resume=resume, overwrite=overwrite)
    device = accelerator(config.strategy)
    strategy = build_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    accumulation = accumulation_steps(config, replicas)
    if accumulation > 1 and replicas > 1:
        # Keras's accumulation branch (a cond around the all-reduce) fails under fit with replicas.
        raise ValueError(
            f"Invalid configuration: total_batch_size={config.total_batch_size} needs gradient accumulation, "
            f"which Keras's fit does not support with {replicas} replicas; set total_batch_size to the global "
            f"batch {config.batch_size * replicas} or raise batch_size."
        )
    global_batch = config.batch_size * replicas
    datasets = build_datasets(config, global_batch)
    steps_per_epoch = datasets.train_examples // global_batch
    train_data = datasets.train
    if config.steps_per_epoch is not None:
        steps_per_epoch = config.steps_per_epoch
        train_data = train_data.repeat()
    if steps_per_epoch < 1:
        raise ValueError(
            f"Invalid configuration: batch_size={config.batch_size} x {replicas} replicas = {global_batch} "
            f"exceeds the {datasets.train_examples} training images."
        )
    updates_per_epoch = max(1, steps_per_epoch // accumulation)
    policy = resolve_precision(config.precision, device)
    jit_compile = resolve_jit_compile(config.jit_compile, device)

    if overwrite and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    history_path = os.path.join(run_dir, "history.csv")
    if not resuming:
        with open(os.path.join(run_dir, "config.json"), "w") as file:
            json.dump(_json_ready(config.to_dict()), file, indent=2)
    previous_rows = read_history(history_path) if resuming else []
    best = max((row.get("val_accuracy", -1.0) for row in previous_rows), default=None)

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        with strategy.scope():
            model = build_model(config, datasets.num_classes)
            optimizer = build_optimizer(config, updates_per_epoch, accumulation, replicas)
            compile_model(model, config, optimizer, jit_compile=jit_compile)
        callbacks = build_callbacks(run_dir, best_val_accuracy=best)
        if verbose:
            print(
                f"Training {model.name} ({model.count_params():,} parameters) on {datasets.train_examples} "
                f"images for {config.epochs} epochs: {replicas} replica(s) x batch {config.batch_size}"
                f"{f' x {accumulation} accumulated' if accumulation > 1 else ''}, {policy}, "
                f"jit_compile={jit_compile}; run folder {run_dir}"
                + (f" (resuming after epoch {len(previous_rows)})" if resuming else "")
            )
        try:
            model.fit(
                train_data,
                validation_data=datasets.validation,
                epochs=config.epochs,
                steps_per_epoch=steps_per_epoch if config.steps_per_epoch is not None else None,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # The pipeline shuffles.
            )
        except NaNLossError as error:
            rows = read_history(history_path)
            kept = (
                f"the last good epoch ({len(rows)}) is kept in {os.path.join(run_dir, 'checkpoints', 'last.keras')}"
                if rows
                else "no epoch completed, so there is no checkpoint"
            )
            raise RuntimeError(
                f"Training stopped: {error}; {kept}. Lower learning_rate (now {config.learning_rate}) "
                f"or check the data, then train again with --overwrite."
            ) from None
        model.save(os.path.join(run_dir, "model.keras"))
        rows = _rewrite_history(history_path)
        plot_history(rows, os.path.join(run_dir, "training_curves.png"))
        last = rows[-1]
        train_seconds = sum(row.get("epoch_seconds", 0.0) for row in rows)
        images = len(rows) * steps_per_epoch * global_batch
        metrics = {
            "val_accuracy": last["val_accuracy"],
            "val_loss": last["val_loss"],
            "best_val_accuracy": max(row["val_accuracy"] for row in rows),
            "train_accuracy": last["accuracy"],
            "train_loss": last["loss"],
            "epochs": len(rows),
            "train_seconds": round(train_seconds, 2),
            "images_per_second": round(images / train_seconds, 1) if train_seconds else None,
            "optimizer_steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
            "steps_per_epoch": steps_per_epoch,
            "global_batch_size": global_batch,
            "accumulation_steps": accumulation,
            "replicas": replicas,
            "device": device,
            "precision": policy,
            "jit_compile": jit_compile,
            "parameters": model.count_params(),
            "train_examples": datasets.train_examples,
            "validation_examples": datasets.validation_examples,
            "resumed_after_epoch": len(previous_rows) if resuming else None,
        }
        with open(os.path.join(run_dir, "metrics.json"), "w") as file:
            json.dump(metrics, file, indent=2)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return {**metrics, "run_dir": run_dir}


# --------------------------------------------------------------------------- evaluate
def evaluate(path, *, config: Optional[TrainConfig] = None, batch_size=None, verbose=1):
    """Held-out accuracy of a trained model.

    Args:
        path: a run folder (its ``model.keras`` and ``config.json`` are used) or a
            ``.keras`` file.
        config: the data to evaluate on; default the run's configuration, or the
            embedded MNIST validation digits for a bare ``.keras`` file.
        batch_size: evaluation batch (default the run's ``batch_size``).
        verbose: Keras progress bar (1) or silent (0).

    Returns:
        ``{"accuracy", "loss", "examples", "model"}``.

    Raises:
        FileNotFoundError: if there is no model at ``path``.
        ValueError: if the model's input or classes do not fit the data.
    """
    from keras_vit.models import VisionTransformer

    if os.path.isdir(path):
        model_path = os.path.join(path, "model.keras")
        if not os.path.isfile(model_path):
            raise FileNotFoundError(
                f"Run folder {path!r} has no model.keras (is the run unfinished? train it again to resume)."
            )
        config_path = os.path.join(path, "config.json")
        if config is None and os.path.isfile(config_path):
            with open(config_path) as file:
                config = TrainConfig.from_dict(json.load(file), source=config_path)
    elif os.path.isfile(path):
        if not path.endswith(".keras"):
            raise ValueError(f"Expected a run folder or a .keras model file; got {path!r}.")
        model_path = path
    else:
        raise FileNotFoundError(f"No run folder or .keras model at {path!r}.")
    model = keras.saving.load_model(model_path, compile=False)
    if config is None:
        config = TrainConfig()
    if isinstance(model, VisionTransformer):
        config = dataclasses.replace(
            config, image_size=model.image_size[0], channels=model.channels, patch_size=model.patch_size[0]
        )
    config = resolve_config(dataclasses.replace(config, output=config.output or "unused"))
    datasets = build_datasets(config, batch_size or config.batch_size)
    expected_input = (config.image_size, config.image_size, config.channels)
    if tuple(model.input_shape[1:]) != expected_input:
        raise ValueError(f"Model {model_path!r} takes inputs {model.input_shape[1:]}; the data has {expected_input}.")
    if model.output_shape[-1] != datasets.num_classes:
        raise ValueError(
            f"Model {model_path!r} has {model.output_shape[-1]} classes; the data has {datasets.num_classes}."
        )
    compile_model(model, dataclasses.replace(config, label_smoothing=0.0), optimizer="sgd")
    loss, accuracy = model.evaluate(datasets.validation, verbose=verbose)
    return {"accuracy": float(accuracy), "loss": float(loss), "examples": datasets.validation_examples, "model": model_path}
