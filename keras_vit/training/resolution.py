"""From a :class:`~keras_vit.training.config.TrainConfig` as given to a complete, checked one.

:func:`resolve_config` fills the fields left ``None`` from the recipe, the dataset and
the starting checkpoint, and checks each section with the code that uses it
(:func:`keras_vit.core.config.check_architecture`,
:func:`keras_vit.data.pipelines.check_options`, this module for the rest) before any
work starts, naming the field, its value and what is accepted. One function per section,
in the order a reader meets them: where the data comes from, the model, how the data is
augmented, the optimization, the hardware, the run folder.
"""

from __future__ import annotations

import os

from keras_vit.core.config import is_int, is_number, refuse
from keras_vit.training.config import (
    DEFAULT_EPOCHS,
    DISTILLATION_KINDS,
    EMBEDDED_DATASET,
    IMAGE_SPEC_DEFAULTS,
    JIT_CHOICES,
    MNIST_MODEL,
    MNIST_RECIPE,
    PRECISIONS,
    RECIPE_DEFAULTS,
    RECIPES,
    SCRATCH_BATCH_SIZE,
    SMALL_VARIANT,
    STRATEGIES,
    WARMUP_FRACTION,
    ModelConfig,
    OptimizationConfig,
    TrainConfig,
)

MAX_EPOCHS = 1_000_000
MAX_STEPS = 1_000_000_000
MAX_BATCH = 1 << 20
MAX_SEED = 2**32 - 1


def _int_within(value, maximum, minimum=1) -> bool:
    return is_int(value, minimum=minimum) and value <= maximum


def _fail(field, value, accepted):
    _checked(refuse, name=field, value=value, accepted=accepted)


def _checked(check, **arguments):
    # The sections' own checks say "<field>=<value>; expected ..."; this says where it came from.
    try:
        return check(**arguments)
    except (ValueError, TypeError) as error:
        raise ValueError(f"Invalid configuration: {error}") from None


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fills the ``None`` fields with recipe and dataset defaults and checks every section.

    Args:
        config: a :class:`TrainConfig`.

    Returns:
        A new, fully specified :class:`TrainConfig` (the one written to ``config.json``).

    Raises:
        ValueError: naming the first invalid field, its value and what is accepted.
    """
    c = config.replace()
    if c.optimization.recipe is None:
        c.optimization.recipe = "scratch" if c.model.weights is None else "finetune"
    if c.optimization.recipe not in RECIPES:
        _fail("recipe", c.optimization.recipe, f"one of {list(RECIPES)}")
    defaults = RECIPE_DEFAULTS[c.optimization.recipe]
    digits = _check_data_source(c)
    from_checkpoint = _resolve_model(c, digits, defaults)
    _resolve_augmentation(c, digits)
    _resolve_optimization(c.optimization, defaults)
    _check_hardware(c.hardware)
    _resolve_run(c, from_checkpoint)
    return c


def _check_data_source(c: TrainConfig) -> bool:
    # Where the images come from; returns whether they are the embedded digits.
    data = c.data
    digits = data.image_folder is None and data.dataset == EMBEDDED_DATASET
    if not isinstance(data.dataset, str) or not data.dataset:
        _fail("dataset", data.dataset, f"'{EMBEDDED_DATASET}' or a TFDS dataset name")
    for section, field in (("data", "image_folder"), ("data", "validation_folder"), ("data", "data_dir"),
                           ("model", "weights"), ("run", "run_name"), ("run", "output"), ("data", "validation_split")):
        value = getattr(getattr(c, section), field)
        if value is not None and (not isinstance(value, str) or not value):
            _fail(field, value, "a non-empty string or null")
    if data.validation_folder is not None and data.image_folder is None:
        _fail("validation_folder", data.validation_folder, "to be used together with image_folder")
    for field in ("image_folder", "validation_folder"):
        folder = getattr(data, field)
        if isinstance(folder, str) and folder and not os.path.isdir(folder):
            raise FileNotFoundError(f"Invalid configuration: {field}={folder!r} is not a folder.")
    if not isinstance(data.train_split, str) or not data.train_split:
        _fail("train_split", data.train_split, "a TFDS split such as 'train' or 'train[:90%]'")
    if not (is_number(data.validation_fraction) and 0 < data.validation_fraction < 1):
        _fail("validation_fraction", data.validation_fraction, "a number in (0, 1)")
    if not isinstance(data.download, bool):
        _fail("download", data.download, "true or false")
    return digits


def _resolve_model(c: TrainConfig, digits: bool, defaults: dict) -> bool:
    # The builder's arguments, a checkpoint's own where one is given (with --variant too, the
    # checkpoint's options and input contract; the variant's sizes). Returns whether the
    # architecture came from a checkpoint file.
    from keras_vit.core.config import check_architecture, decode_variant

    model = c.model
    from_checkpoint = model.variant is None and model.weights is not None and _fill_from_checkpoint(model)
    if model.variant is not None and model.weights is not None:
        _fill_from_checkpoint(model, options_only=True)
    if model.variant is None and not from_checkpoint:
        if digits:
            for key, value in {**MNIST_MODEL, **MNIST_RECIPE}.items():
                if getattr(c, key) is None:
                    setattr(c, key, value)
        else:  # the paper's B/16 for its published weights; a small model from scratch
            model.variant = "B/16" if model.weights is not None else SMALL_VARIANT
    if model.pooling is None:
        model.pooling = "token"
    for field, default in IMAGE_SPEC_DEFAULTS.items():  # the builder's, where no checkpoint gave them
        if getattr(model, field) is None:
            setattr(model, field, default)
    try:
        variant = None if from_checkpoint else decode_variant(model.variant)
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"Invalid configuration: variant={model.variant!r}; {error}") from None
    for field in ("patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim"):
        if getattr(model, field) is None:
            setattr(model, field, getattr(variant, field) if field != "patch_size" else variant.patch_size[0])
    if model.image_size is None:
        model.image_size = 28 if digits else defaults.get("image_size", 224)
    if model.channels is None:
        model.channels = 1 if digits else 3
    if not is_int(model.patch_size):
        _fail("patch_size", model.patch_size, "a positive integer")
    if not is_int(model.image_size):
        _fail("image_size", model.image_size, f"a positive multiple of patch_size={model.patch_size}")
    _checked(check_architecture, **model.builder_arguments())  # the builder's checks, divisibility included
    return from_checkpoint


def _resolve_augmentation(c: TrainConfig, digits: bool) -> None:
    # What the pipelines take besides the source, checked by the pipelines' own check.
    from keras_vit.data.pipelines import check_options

    data, model = c.data, c.model
    if data.eval_crop_fraction is None:
        data.eval_crop_fraction = model.crop_fraction
    elif is_number(data.eval_crop_fraction) and 0 < data.eval_crop_fraction <= 1:
        model.crop_fraction = data.eval_crop_fraction  # what evaluation used becomes the model's contract
    if data.crop is None:
        data.crop = "translate" if digits else "inception"
    if data.flip is None:
        data.flip = not digits
    if isinstance(data.randaugment, tuple):
        data.randaugment = list(data.randaugment)
    _checked(
        check_options, image_size=model.image_size, channels=model.channels, crop=data.crop, flip=data.flip,
        eval_crop_fraction=data.eval_crop_fraction, randaugment=data.randaugment, mixup=data.mixup, cutmix=data.cutmix,
        random_erasing=data.random_erasing,
    )
    if data.randaugment is not None:
        data.randaugment = [int(data.randaugment[0]), float(data.randaugment[1])]


def _resolve_optimization(optimization: OptimizationConfig, defaults: dict) -> None:
    if optimization.epochs is None:
        optimization.epochs = defaults.get("epochs", DEFAULT_EPOCHS)
    if optimization.batch_size is None:
        optimization.batch_size = defaults.get("batch_size", SCRATCH_BATCH_SIZE)
    # Counts are bounded here, before TensorFlow sizes anything by them or a run folder is made.
    if not _int_within(optimization.epochs, MAX_EPOCHS):
        _fail("epochs", optimization.epochs, f"a positive integer up to {MAX_EPOCHS:,}")
    if not _int_within(optimization.batch_size, MAX_BATCH):
        _fail("batch_size", optimization.batch_size, f"a positive integer up to {MAX_BATCH:,} (images per replica)")
    if optimization.steps_per_epoch is not None and not _int_within(optimization.steps_per_epoch, MAX_STEPS):
        _fail("steps_per_epoch", optimization.steps_per_epoch, f"a positive integer up to {MAX_STEPS:,} or null")
    if optimization.total_batch_size is not None:
        # Given by the user: it must be reachable, or it would be silently ignored.
        if not _int_within(optimization.total_batch_size, MAX_BATCH):
            _fail("total_batch_size", optimization.total_batch_size, f"a positive integer up to {MAX_BATCH:,} or null")
        if optimization.total_batch_size < optimization.batch_size:
            _fail("total_batch_size", optimization.total_batch_size,
                  f"at least batch_size={optimization.batch_size} (a multiple of the global batch; lower batch_size "
                  f"or leave total_batch_size out)")
    elif "total_batch_size" in defaults:  # the paper's 512, or one batch when that is larger
        optimization.total_batch_size = max(defaults["total_batch_size"], optimization.batch_size)
    if optimization.warmup_epochs is None:
        optimization.warmup_epochs = round(WARMUP_FRACTION * optimization.epochs, 6)
    for field in ("learning_rate", "weight_decay", "label_smoothing"):
        if getattr(optimization, field) is None:
            setattr(optimization, field, defaults[field])
    if not (is_number(optimization.learning_rate) and optimization.learning_rate > 0):
        _fail("learning_rate", optimization.learning_rate, "a positive number")
    if not (is_number(optimization.weight_decay) and optimization.weight_decay >= 0):
        _fail("weight_decay", optimization.weight_decay, "a number >= 0")
    if not (is_number(optimization.label_smoothing) and 0 <= optimization.label_smoothing < 1):
        _fail("label_smoothing", optimization.label_smoothing, "a number in [0, 1)")
    if not (is_number(optimization.warmup_epochs) and 0 <= optimization.warmup_epochs < optimization.epochs):
        _fail("warmup_epochs", optimization.warmup_epochs, f"a number in [0, epochs={optimization.epochs})")
    if not (is_number(optimization.clipnorm) and optimization.clipnorm >= 0):
        _fail("clipnorm", optimization.clipnorm, "a number >= 0 (0 disables clipping)")
    _check_fine_tuning_tools(optimization)


def _check_hardware(hardware) -> None:
    if hardware.strategy not in STRATEGIES:
        _fail("strategy", hardware.strategy, f"one of {list(STRATEGIES)}")
    if hardware.precision not in PRECISIONS:
        _fail("precision", hardware.precision, f"one of {list(PRECISIONS)}")
    if isinstance(hardware.jit_compile, bool):
        hardware.jit_compile = "on" if hardware.jit_compile else "off"
    if hardware.jit_compile not in JIT_CHOICES:
        _fail("jit_compile", hardware.jit_compile, f"one of {list(JIT_CHOICES)}")
    if not _int_within(hardware.seed, MAX_SEED, minimum=0):  # NumPy's and TensorFlow's seeds are 32-bit
        _fail("seed", hardware.seed, f"an integer in [0, {MAX_SEED:,}]")


def _resolve_run(c: TrainConfig, from_checkpoint: bool) -> None:
    run, data, model = c.run, c.data, c.model
    if run.output is not None:  # one spelling of a folder ("./x", "x/", "x"), so a rerun finds its run
        run.output = os.path.normpath(run.output)
    if run.run_name is None:
        source = os.path.basename(os.path.normpath(data.image_folder)) if data.image_folder else data.dataset
        if from_checkpoint:
            run.run_name = f"{source}_{model.name}".replace(":", "-")
        else:
            run.run_name = f"{source}_vit-{model.variant.lower().replace('/', '').replace('+', '_')}".replace(":", "-")
    if os.sep in run.run_name or run.run_name in (".", ".."):
        _fail("run_name", run.run_name, "a folder name without path separators (use output for a path)")


def _fill_from_checkpoint(model: ModelConfig, options_only=False) -> bool:
    """Fills the model fields left ``None`` from the checkpoint ``weights`` names (see
    :mod:`keras_vit.training.starting_point`); False for a published name."""
    from keras_vit.training import starting_point

    if not starting_point.is_checkpoint_file(model.weights):
        return False
    if all(getattr(model, field) is not None for field in starting_point.ALWAYS_GIVEN):
        return True  # resolved before (a run's config.json): the checkpoint need not be there any more
    starting_point.check_exists(model.weights)
    try:
        found = starting_point.checkpoint_model_fields(model.weights)
    except (ValueError, OSError, ImportError) as error:
        raise ValueError(f"Invalid configuration: weights={model.weights!r}: {error}") from None
    for field, value in found.items():
        if options_only and field in ("patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "name"):
            continue  # the variant's
        if getattr(model, field) is None:
            setattr(model, field, value)
    return True


def _check_fine_tuning_tools(optimization: OptimizationConfig):
    # Checked here, before Keras loads: the tools' own modules import it.
    from keras_vit.training.layer_decay import check_layer_decay

    ema_decay = optimization.ema_decay
    if ema_decay is not None and not (is_number(ema_decay) and 0 < ema_decay < 1):
        _fail("ema_decay", ema_decay, "null or a number in (0, 1), e.g. 0.9998 (timm's default for ViTs)")
    _checked(check_layer_decay, value=optimization.layer_decay)
    teacher, kind = optimization.teacher, optimization.distillation
    if teacher is not None and (not isinstance(teacher, str) or not teacher):
        _fail("teacher", teacher, "null or the path of a .keras classifier (or a run folder)")
    if teacher is not None and not os.path.exists(teacher):
        raise FileNotFoundError(f"Invalid configuration: teacher={teacher!r} does not exist.")
    if kind is not None and kind not in DISTILLATION_KINDS:
        _fail("distillation", kind, f"null or one of {list(DISTILLATION_KINDS)}")
    if kind is not None and teacher is None:
        _fail("distillation", kind, "to be given with teacher (a .keras classifier to distil from)")
    if teacher is not None and kind is None:
        optimization.distillation = "hard"  # DeiT's better one
    if not (is_number(optimization.distillation_alpha) and 0 <= optimization.distillation_alpha <= 1):
        _fail("distillation_alpha", optimization.distillation_alpha, "a number in [0, 1] (DeiT: 0.5)")
    if not (is_number(optimization.distillation_tau) and optimization.distillation_tau > 0):
        _fail("distillation_tau", optimization.distillation_tau, "a positive number (DeiT: 1.0)")
