"""Training with ``model.fit`` on tf.data under a tf.distribute strategy, and evaluation.

``train(TrainConfig(...))`` resolves and checks a configuration, builds the data
pipelines, the model and its optimizer inside the strategy's scope, and fits with
callbacks that make the run crash-proof (a backup every epoch, and on SIGTERM at the
next step), logged (``CSVLogger``, TensorBoard, a curve PNG) and safe from NaN losses.
It fits on the data's endless stream (``Datasets.stream``), whose batches depend on the
seed and the step alone, so a run resumed mid-epoch sees the batches it would have seen.
Every run writes one folder (:mod:`keras_vit.run_folder`), through the lifecycle it
shares with the multi-worker loop (:mod:`keras_vit.training.lifecycle`).

Multi-worker runs use the custom loop of :mod:`keras_vit.training.multiworker` because
Keras 3's ``fit`` does not run under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585).
"""

from __future__ import annotations

import os
from typing import Optional

import keras

from keras_vit import run_folder
from keras_vit.training import lifecycle
from keras_vit.training.callbacks import (
    Backup,
    NaNLossError,
    StopOnSigterm,
    build_callbacks,
    catching_sigterm,
    read_backup,
)
from keras_vit.training.config import TrainConfig, resolve_config
from keras_vit.training.distillation import attach_teacher, load_teacher
from keras_vit.training.ema import AveragedValidation, use_averaged_weights
from keras_vit.training.recipes import (
    accelerator,
    accumulation_steps,
    build_datasets,
    build_model,
    build_optimizer,
    build_strategy,
    compile_model,
    multiworker_requested,
    resolve_jit_compile,
    resolve_precision,
)

# --------------------------------------------------------------------------- train
def train(config: Optional[TrainConfig] = None, *, resume=False, overwrite=False, verbose=1):
    """Trains a ViT as ``config`` says and writes its run folder.

    With no argument it trains the default small ViT on the embedded MNIST digits. The
    configuration is resolved and checked, the run folder checked and the data found
    before any training starts. A run killed at any moment resumes from its last
    completed epoch when ``train`` is called again with the same configuration; one ended
    by SIGTERM (a scheduler's preemption) saves its state at the next step and resumes
    from that step, with the data where it was.

    Args:
        config: a :class:`TrainConfig` (defaults: the embedded MNIST recipe).
        resume: insist on resuming an unfinished run.
        overwrite: replace an existing run folder.
        verbose: Keras progress bars (1), one line per epoch (2) or silent (0).

    Returns:
        The metrics dict also written to ``metrics.json``, plus ``run_dir``.

    Raises:
        ValueError: for an invalid configuration (naming the field) or a run folder that
            may not be used (see :meth:`keras_vit.run_folder.RunFolder.check`).
        FileNotFoundError: for missing data or weights.
        RuntimeError: when the loss becomes NaN (the last good checkpoint is kept).
        Preempted: on SIGTERM, SIGINT (Ctrl-C) or a closed standard output, once the state is
            saved (``keras-vit train`` exits with 143, 130 or 141).
    """
    config = resolve_config(config or TrainConfig())
    keras.utils.set_random_seed(config.seed)
    if config.strategy == "multiworker" or (config.strategy == "auto" and multiworker_requested()):
        from keras_vit.training import multiworker

        used = [field for field in ("ema_decay", "layer_decay", "teacher") if getattr(config, field) is not None]
        if used:
            raise ValueError(f"Invalid configuration: {', '.join(used)} are not supported by the multi-worker loop yet; "
                             f"train on one machine (strategy 'default' or 'mirrored').")
        return multiworker.train(config, resume=resume, overwrite=overwrite, verbose=verbose)
    run, resuming = lifecycle.start(config, resume=resume, overwrite=overwrite)
    try:
        with catching_sigterm() as sigterm:  # from here on, SIGTERM stops at the next step
            return _fit(config, run, resuming, sigterm, overwrite=overwrite, verbose=verbose)
    finally:
        run.unlock()


def _fit(config: TrainConfig, run, resuming: bool, sigterm, *, overwrite: bool, verbose):
    # The run itself, with its folder locked by train().
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
    updates_per_epoch = max(1, steps_per_epoch // accumulation)
    # The teacher is checked against the data's classes before the run folder is written.
    teacher = None if config.teacher is None else load_teacher(
        config.teacher, class_names=datasets.class_names, channels=config.channels)
    policy = resolve_precision(config.precision, device)
    jit_compile = resolve_jit_compile(config.jit_compile, device)

    previous_rows = lifecycle.begin(run, config, datasets.class_names, resuming=resuming, overwrite=overwrite)

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        with strategy.scope():
            model = build_model(config, datasets.num_classes, datasets.class_names)
            optimizer = build_optimizer(config, updates_per_epoch, accumulation, replicas, model=model)
            compile_model(model, config, optimizer, jit_compile=jit_compile)
            if teacher is not None:
                attach_teacher(model, teacher, kind=config.distillation, alpha=config.distillation_alpha,
                               tau=config.distillation_tau, label_smoothing=config.label_smoothing)
            epoch, step = _restore(run, model) if resuming else (0, 0)
        # The backup's state is written last at an epoch's end: rows of later epochs are of a
        # kill before it, and the resumed run writes them again.
        previous_rows = [row for row in previous_rows if row["epoch"] < epoch]
        best = max((row.get("val_accuracy", -1.0) for row in previous_rows), default=None)
        backup = Backup(run, initial_step=step)
        callbacks = build_callbacks(run, best_val_accuracy=best, backup=backup)
        if config.ema_decay:
            callbacks.insert(0, AveragedValidation())  # validation sees the average, as timm's EMA model
        callbacks.append(StopOnSigterm(run, backup, sigterm, steps_per_epoch, config.epochs))  # last: see its doc
        if verbose and config.weights is None and config.image_folder is not None:
            print(f"Training {model.name} from scratch; starting from pretrained weights is the better road for "
                  f"photos: add --weights with a timm or Hugging Face folder, hf://<org>/<name>, an .npz or a .keras "
                  f"model (docs/fine-tuning.md).")
        if verbose:
            print(
                f"Training {model.name} ({model.count_params():,} parameters) on {datasets.train_examples} "
                f"images for {config.epochs} epochs: {replicas} replica(s) x batch {global_batch // replicas}"
                f"{f' x {accumulation} accumulated' if accumulation > 1 else ''}, {policy}, "
                f"jit_compile={jit_compile}; run folder {run.path}"
                + (f" (resuming after epoch {len(previous_rows)})" if resuming and not step else "")
                + (f" (resuming at epoch {epoch + 1} step {step}/{steps_per_epoch}, where it was preempted)"
                   if step else "")
            )
        fit = dict(validation_data=datasets.validation, callbacks=callbacks, verbose=verbose, shuffle=False)
        try:
            # The stream skips the batches already trained on; a run resumed mid-epoch first
            # finishes that epoch with the steps it has left, then goes on with whole epochs.
            if step:  # (epochs=config.epochs and a stop after one, so that the bar says "Epoch E/epochs")
                stop = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: setattr(model, "stop_training", True))
                fit_one = {**fit, "callbacks": callbacks + [stop]}
                model.fit(datasets.stream(epoch * steps_per_epoch + step), initial_epoch=epoch, epochs=config.epochs,
                          steps_per_epoch=steps_per_epoch - step, **fit_one)
                epoch += 1
            if epoch < config.epochs:
                model.fit(datasets.stream(epoch * steps_per_epoch), initial_epoch=epoch, epochs=config.epochs,
                          steps_per_epoch=steps_per_epoch, **fit)
        except NaNLossError as error:
            rows = run.read_history()
            kept = (
                f"the last good epoch ({len(rows)}) is kept in {run.last_checkpoint}"
                if rows
                else "no epoch completed, so there is no checkpoint"
            )
            raise RuntimeError(
                f"Training stopped: {error}; {kept}. Lower learning_rate (now {config.learning_rate}) "
                f"or check the data, then train again with --overwrite."
            ) from None
        use_averaged_weights(model)  # the average is what is saved and exported (no-op without ema_decay)
        return lifecycle.finish(
            run, model, datasets=datasets, steps_per_epoch=steps_per_epoch, global_batch=global_batch,
            previous_rows=previous_rows, resuming=resuming,
            extra={"accumulation_steps": accumulation, "replicas": replicas, "strategy": config.strategy,
                   "device": device, "precision": policy, "jit_compile": jit_compile,
                   "resumed_at_step": step or None},
        )
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _check_some_update(config, steps_per_epoch, accumulation, global_batch):
    # A run whose micro-batches never reach one optimizer update would end "finished" with its initial weights.
    if config.epochs * steps_per_epoch < accumulation:
        raise ValueError(
            f"Invalid configuration: {config.epochs} epoch(s) x steps_per_epoch={steps_per_epoch} = "
            f"{config.epochs * steps_per_epoch} micro-batches never reach one optimizer update, which accumulates "
            f"{accumulation} (total_batch_size={config.total_batch_size} / global batch {global_batch}); expected at "
            f"least {accumulation} steps in all: raise steps_per_epoch or epochs, or lower total_batch_size."
        )


def _restore(run, model):
    """Loads the run's backup into ``model`` and its optimizer; returns ``(epoch, step)``
    where it stands ((0, 0) when the run was killed before its first backup)."""
    saved = read_backup(run)
    if saved is None:
        return 0, 0
    weights, epoch, step = saved
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(weights)
    return epoch, step


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
    from keras_vit.core.models import VisionTransformer

    model_path = run_folder.resolve_model_path(path)
    if config is None and os.path.isdir(path):
        run = run_folder.RunFolder(path)
        saved = run.training_config()
        if saved is not None:
            config = TrainConfig.from_dict(saved, source=run.config_path)
    model = run_folder.load_model(model_path)
    if config is None:
        config = TrainConfig()
    if isinstance(model, VisionTransformer):
        spec = model.image_spec  # evaluate as the model's input contract says
        config = config.replace(
            image_size=model.image_size[0], channels=model.channels, patch_size=model.patch_size[0],
            pixel_mean=list(spec.mean), pixel_std=list(spec.std), interpolation=spec.interpolation,
            crop_fraction=spec.crop_fraction, crop_mode=spec.crop_mode, eval_crop_fraction=None,
        )
    # (the teacher trained the run; evaluating needs neither it nor its file)
    config = resolve_config(config.replace(output=config.output or "unused", teacher=None, distillation=None))
    datasets = build_datasets(config, batch_size or config.batch_size)
    expected_input = (config.image_size, config.image_size, config.channels)
    if tuple(model.input_shape[1:]) != expected_input:
        raise ValueError(f"Model {model_path!r} takes inputs {model.input_shape[1:]}; the data has {expected_input}.")
    if model.output_shape[-1] != datasets.num_classes:
        raise ValueError(
            f"Model {model_path!r} has {model.output_shape[-1]} classes; the data has {datasets.num_classes}."
        )
    if os.path.basename(model_path) == run_folder.MODEL_FILE:  # a run's model: its config.json names the classes
        _check_class_names(run_folder.of_model(model_path).class_names(), list(datasets.class_names), model_path)
    compile_model(model, config.replace(label_smoothing=0.0), optimizer="sgd")
    loss, accuracy = model.evaluate(datasets.validation, verbose=verbose)
    return {"accuracy": float(accuracy), "loss": float(loss), "examples": datasets.validation_examples, "model": model_path}


def _check_class_names(trained, found, model_path):
    # Labels are indices: the data's classes must be the run's, by name and in order, or
    # every score would be of one class against another (`kitten/dog` for `cat/dog`: 0.0).
    if trained is None or trained == found:
        return
    unknown = [name for name in found if name not in trained]
    missing = [name for name in trained if name not in found]
    differences = "; ".join(
        part for part in (f"unknown to the model: {unknown}" if unknown else "",
                          f"missing from the data: {missing}" if missing else "") if part
    ) or "the same names in another order"
    raise ValueError(
        f"The data's classes {found} are not those model {model_path!r} was trained on, {trained} ({differences}); "
        f"expected an image folder with one sub-folder named after each of the model's classes."
    )
