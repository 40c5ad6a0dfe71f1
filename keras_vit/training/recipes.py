"""The paper's recipes as Keras objects: strategy, precision, data, model, optimizer, loss.

Each ``build_*`` function turns a resolved :class:`~keras_vit.training.config.TrainConfig`
into what ``fit`` or the multi-worker loop needs; both loops call the same ones.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras

from keras_vit.training import layer_decay, optimizers
from keras_vit.training.config import EMBEDDED_DATASET, RECIPE_DEFAULTS, STRATEGIES, TrainConfig

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


def tf_config() -> dict:
    """The cluster description in ``TF_CONFIG`` (``{}`` when it is unset or empty).

    Raises:
        ValueError: if ``TF_CONFIG`` is not a JSON object.
    """
    text = os.environ.get("TF_CONFIG", "")
    try:
        spec = json.loads(text) if text else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}); got {text!r}.") from None
    if not isinstance(spec, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object with a cluster and a task; got {text!r}.")
    return spec


def multiworker_requested() -> bool:
    """Whether ``TF_CONFIG`` lists more than one worker (and chief) task."""
    cluster = tf_config().get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1


def cluster_role():
    """``(task_type, task_index, is_chief, num_workers)`` from ``TF_CONFIG``.

    Raises:
        ValueError: if ``TF_CONFIG`` is missing or does not describe a cluster and a task.
    """
    spec = tf_config()
    cluster, task = spec.get("cluster", {}), spec.get("task", {})
    if not cluster.get("worker") and not cluster.get("chief") or "type" not in task:
        raise ValueError(
            'strategy "multiworker" needs TF_CONFIG with a cluster and this task, e.g. '
            '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}; '
            f"got {os.environ.get('TF_CONFIG', '')!r}."
        )
    task_type, index = task["type"], int(task.get("index", 0))
    has_chief = bool(cluster.get("chief"))
    is_chief = task_type == "chief" or (not has_chief and task_type == "worker" and index == 0)
    return task_type, index, is_chief, len(cluster.get("worker", [])) + len(cluster.get("chief", []))


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
        if multiworker_requested():
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
    """The :class:`keras_vit.data.Datasets` a resolved config asks for: its data section, at
    the model section's image size and channels."""
    from keras_vit import data

    from keras_vit.core.image_spec import ImageSpec

    source = config.data
    common = dict(
        image_size=config.model.image_size,
        channels=config.model.channels,
        image_spec=ImageSpec.from_model_arguments(**dataclasses.asdict(config.model)),
        crop=source.crop,
        flip=source.flip,
        eval_crop_fraction=source.eval_crop_fraction,
        randaugment=source.randaugment,
        mixup=source.mixup,
        cutmix=source.cutmix,
        random_erasing=source.random_erasing,
        seed=config.hardware.seed,
    )
    if source.image_folder is not None:
        return data.image_folder(
            source.image_folder,
            global_batch_size,
            validation_directory=source.validation_folder,
            validation_fraction=source.validation_fraction,
            shrink_batch=True,  # a small folder of photos is one batch (Datasets.batch_size)
            **common,
        )
    if source.dataset == EMBEDDED_DATASET:
        return data.embedded_mnist(global_batch_size, **common)
    return data.tfds_dataset(
        source.dataset,
        global_batch_size,
        data_dir=source.data_dir,
        download=source.download,
        train_split=source.train_split,
        validation_split=source.validation_split,
        **common,
    )


def build_model(config: TrainConfig, num_classes: int, class_names=None):
    """The ViT of a resolved config: its model section is the builder's keyword arguments
    (``None`` options take the builder's defaults; without a variant, the checkpoint's
    architecture), started from ``weights`` when given, with a zeroed head named after
    ``class_names``."""
    from keras_vit.core.models import VisionTransformer
    from keras_vit.training.starting_point import load_starting_weights
    from keras_vit.zoo import ViT

    keras.utils.set_random_seed(config.hardware.seed)
    arguments = {key: value for key, value in dataclasses.asdict(config.model).items() if value is not None}
    weights, variant = arguments.pop("weights", None), arguments.pop("variant", None)
    if config.optimization.teacher is not None:
        arguments["distillation_token"] = True  # DeiT's student: the token the teacher trains
    arguments.update(num_classes=num_classes, class_names=None if class_names is None else list(class_names))
    model = ViT(variant, **arguments) if variant is not None else VisionTransformer(**arguments)
    if weights is not None:
        load_starting_weights(model, weights, variant=variant)
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


def build_optimizer(config: TrainConfig, updates_per_epoch: int, accumulation: int = 1, replicas: int = 1, model=None):
    """The recipe's optimizer: AdamW (scratch) or SGD with momentum 0.9 (fine-tune), from
    :mod:`keras_vit.optimizers` (Keras's update in TensorFlow's fused kernels).

    Both clip the global gradient norm at ``clipnorm`` and follow
    :func:`learning_rate_schedule`; with ``accumulation > 1`` the optimizer averages that
    many micro-batch gradients per update (Keras's ``gradient_accumulation_steps``).
    With ``replicas > 1`` the clipping applies to the all-reduced gradient.
    ``ema_decay`` keeps an average of ``model``'s weights and ``layer_decay`` scales each
    of its variables' learning rate (:mod:`keras_vit.training.layer_decay`); the latter
    needs ``model``.
    """
    schedule = learning_rate_schedule(config, updates_per_epoch)
    if accumulation > 1:
        schedule = optimizers.PerUpdateSchedule(schedule, accumulation)
    common = dict(learning_rate=schedule, gradient_accumulation_steps=accumulation if accumulation > 1 else None)
    sgd = RECIPE_DEFAULTS[config.recipe]["optimizer"] == "sgd"
    if replicas > 1:
        common["reduced_clipnorm"] = config.clipnorm or None
        sgd_class, adamw_class = optimizers.ReplicaSafeSGD, optimizers.ReplicaSafeAdamW
    else:
        common["global_clipnorm"] = config.clipnorm or None
        sgd_class, adamw_class = optimizers.SGD, optimizers.AdamW
    if config.ema_decay:
        common.update(use_ema=True, ema_momentum=config.ema_decay)
    if config.layer_decay is not None:
        if model is None:
            raise ValueError("layer_decay needs the model: call build_optimizer(..., model=model).")
        common["learning_rate_scales"] = layer_decay.learning_rate_scales(model, config.layer_decay)
    if sgd:
        optimizer = sgd_class(momentum=0.9, weight_decay=config.weight_decay or None, **common)
    else:
        optimizer = adamw_class(weight_decay=config.weight_decay, **common)
    if config.layer_decay is not None and optimizer.weight_decay:  # timm's no_weight_decay, with its param groups
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if not layer_decay.uses_weight_decay(v)]
        )
    return optimizer


def classification_loss(model, config: TrainConfig, reduction="sum_over_batch_size"):
    """The recipe's loss: cross-entropy (on logits unless the head has an activation) with
    label smoothing; ``reduction=None`` gives it per example, as a custom loop needs."""
    from_logits = getattr(model, "classifier_activation", None) is None
    return keras.losses.CategoricalCrossentropy(
        from_logits=from_logits, label_smoothing=config.label_smoothing, reduction=reduction
    )


def compile_model(model, config: TrainConfig, optimizer, jit_compile=False):
    """Compiles with the recipe's loss (:func:`classification_loss`) and accuracy."""
    model.compile(
        optimizer=optimizer, loss=classification_loss(model, config), metrics=["accuracy"], jit_compile=jit_compile
    )
    return model
