"""One preparation of a training run, shared by the ``fit`` loop and the multi-worker loop.

Both loops need the same facts before their first step: the strategy and its replicas,
the batch arithmetic (per-replica and global batch, accumulation, steps per epoch and
updates per epoch, with their refusals), the data, the dtype policy and ``jit_compile``
resolved for the device, the distillation teacher, then the model, its optimizer (with
layer decay and the weights' average) and its loss built under that policy in the
strategy's scope. :func:`prepare` computes them once into a frozen :class:`Prepared`;
:func:`build_trainee` builds the model from it, so neither loop can drift from the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Optional

import keras

from keras_vit.training.config import TrainConfig
from keras_vit.training.recipes import (
    accelerator,
    accumulation_steps,
    build_datasets,
    build_model,
    build_optimizer,
    compile_model,
    resolve_jit_compile,
    resolve_precision,
)

LOOPS = ("fit", "multiworker")
# What the multi-worker loop cannot do: distillation replaces the student's compiled loss
# and metrics inside Keras's train step (training/distillation.py), which its own step does not run.
MULTIWORKER_UNSUPPORTED = ("teacher",)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything a loop needs before building the model, computed once by :func:`prepare`."""

    config: TrainConfig
    loop: str
    strategy: Any
    device: str  # "cpu", "gpu" or "tpu"
    replicas: int
    accumulation: int  # micro-batches per optimizer update
    global_batch: int  # images per step over all replicas (capped by a small image folder)
    datasets: Any  # keras_vit.data.Datasets
    steps_per_epoch: int
    updates_per_epoch: int
    policy: str  # the Keras dtype policy, e.g. "mixed_bfloat16"
    jit_compile: bool
    teacher: Optional[keras.Model] = None

    @property
    def replica_batch(self) -> int:
        return self.global_batch // self.replicas

    def describe(self) -> str:
        """The batch arithmetic and numerics, as both loops print them."""
        accumulated = f" x {self.accumulation} accumulated" if self.accumulation > 1 else ""
        return (f"{self.replicas} replica(s) x batch {self.replica_batch}{accumulated}, {self.policy}, "
                f"jit_compile={self.jit_compile}")

    def metrics(self) -> dict:
        """The facts of the preparation that ``metrics.json`` records."""
        return {"accumulation_steps": self.accumulation, "replicas": self.replicas, "strategy": self.config.strategy,
                "device": self.device, "precision": self.policy, "jit_compile": self.jit_compile}

    @contextlib.contextmanager
    def precision(self):
        """Within the block Keras builds layers under :attr:`policy`; after it, the policy before."""
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.policy)
        try:
            yield
        finally:
            keras.config.set_dtype_policy(previous)


def refuse_unsupported(config: TrainConfig, loop: str) -> None:
    """Refuses, before any work, the options ``loop`` cannot honour (one line naming them)."""
    if loop not in LOOPS:
        raise ValueError(f"Unknown training loop {loop!r}; expected one of {list(LOOPS)}.")
    used = [field for field in MULTIWORKER_UNSUPPORTED if getattr(config, field) is not None]
    if loop == "multiworker" and used:
        raise ValueError(
            f"Invalid configuration: {', '.join(f'{field}={getattr(config, field)!r}' for field in used)} "
            f"(distillation) is not supported by the multi-worker loop; train on one machine (strategy 'default' "
            f"or 'mirrored') or leave it out."
        )


def prepare(config: TrainConfig, strategy, *, loop: str = "fit", verbose=1) -> Prepared:
    """The batch arithmetic, data, numerics and teacher of a resolved ``config`` under ``strategy``.

    Raises:
        ValueError: when the batch cannot be made (accumulation the loop cannot do with
            replicas, a batch larger than the data, no optimizer update in the whole run)
            or an option the loop cannot honour.
    """
    refuse_unsupported(config, loop)
    replicas = strategy.num_replicas_in_sync
    accumulation = refuse_accumulation(config, replicas, loop)
    global_batch = config.batch_size * replicas
    datasets = build_datasets(config, global_batch)
    if datasets.batch_size is not None and datasets.batch_size < global_batch:
        global_batch = datasets.batch_size
        if verbose:
            print(f"Batch {config.batch_size * replicas} capped at {global_batch}: the data holds "
                  f"{datasets.train_examples} training images.")
    if datasets.train_examples // global_batch < 1:
        raise ValueError(
            f"Invalid configuration: batch_size={config.batch_size} x {replicas} replicas = {global_batch} "
            f"exceeds the {datasets.train_examples} training images."
        )
    steps_per_epoch = config.steps_per_epoch or datasets.train_examples // global_batch
    _check_some_update(config, steps_per_epoch, accumulation, global_batch)
    # The teacher is checked against the data's classes before the run folder is written.
    from keras_vit.training.distillation import load_teacher

    teacher = None if config.teacher is None else load_teacher(
        config.teacher, class_names=datasets.class_names, channels=config.channels)
    device = accelerator(config.strategy)
    return Prepared(
        config=config, loop=loop, strategy=strategy, device=device, replicas=replicas, accumulation=accumulation,
        global_batch=global_batch, datasets=datasets, steps_per_epoch=steps_per_epoch,
        updates_per_epoch=max(1, steps_per_epoch // accumulation),
        policy=resolve_precision(config.precision, device), jit_compile=resolve_jit_compile(config.jit_compile, device),
        teacher=teacher,
    )


def refuse_accumulation(config: TrainConfig, replicas: int, loop: str) -> int:
    """The micro-batches per update (:func:`~keras_vit.training.recipes.accumulation_steps`),
    refused where ``loop`` cannot accumulate them over ``replicas``."""
    # Keras's accumulation branch (a cond around the all-reduce) fails under fit with replicas;
    # the multi-worker loop applies every step's gradients.
    accumulation = accumulation_steps(config, replicas)
    if accumulation == 1 or (loop == "fit" and replicas == 1):
        return accumulation
    which = "Keras's fit does not support" if loop == "fit" else "the multi-worker loop does not do"
    raise ValueError(
        f"Invalid configuration: total_batch_size={config.total_batch_size} needs gradient accumulation, "
        f"which {which} with {replicas} replicas; set total_batch_size to the global "
        f"batch {config.batch_size * replicas} or raise batch_size."
    )


def _check_some_update(config, steps_per_epoch, accumulation, global_batch):
    # A run whose micro-batches never reach one optimizer update would end "finished" with its initial weights.
    if config.epochs * steps_per_epoch < accumulation:
        raise ValueError(
            f"Invalid configuration: {config.epochs} epoch(s) x steps_per_epoch={steps_per_epoch} = "
            f"{config.epochs * steps_per_epoch} micro-batches never reach one optimizer update, which accumulates "
            f"{accumulation} (total_batch_size={config.total_batch_size} / global batch {global_batch}); expected at "
            f"least {accumulation} steps in all: raise steps_per_epoch or epochs, or lower total_batch_size."
        )


def build_trainee(prepared: Prepared):
    """The model of ``prepared``, compiled with its optimizer and loss (and the teacher's
    loss when distilling), built under its dtype policy in its strategy's scope.

    Call it inside ``prepared.precision()`` (the policy must outlive the build for
    Keras to keep it) and enter ``prepared.strategy.scope()`` again to restore weights.
    The compiled optimizer (``model.optimizer``) is a ``LossScaleOptimizer`` under
    ``mixed_float16``; both loops apply their gradients through it.
    """
    from keras_vit.training.distillation import attach_teacher

    config, datasets = prepared.config, prepared.datasets
    with prepared.strategy.scope():
        model = build_model(config, datasets.num_classes, datasets.class_names)
        optimizer = build_optimizer(config, prepared.updates_per_epoch, prepared.accumulation, prepared.replicas,
                                    model=model)
        compile_model(model, config, optimizer, jit_compile=prepared.jit_compile)
        if prepared.teacher is not None:
            attach_teacher(model, prepared.teacher, kind=config.distillation, alpha=config.distillation_alpha,
                           tau=config.distillation_tau, label_smoothing=config.label_smoothing)
    return model


def nan_stop_error(what: str, kept: str, config: TrainConfig) -> RuntimeError:
    """The error both loops raise when the loss stops being finite: what happened, what
    was kept and what to change."""
    return RuntimeError(
        f"Training stopped: {what}; {kept}. Lower learning_rate (now {config.learning_rate}) "
        f"or check the data, then train again with --overwrite."
    )


def scratch_hint(config: TrainConfig, model_name: str) -> Optional[str]:
    """The advice printed when a folder of photos is trained from scratch."""
    if config.weights is not None or config.image_folder is None:
        return None
    return (f"Training {model_name} from scratch; starting from pretrained weights is the better road for "
            f"photos: add --weights with a timm or Hugging Face folder, hf://<org>/<name>, an .npz or a .keras "
            f"model (docs/fine-tuning.md).")
