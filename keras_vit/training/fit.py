"""Training with ``model.fit`` on tf.data under a tf.distribute strategy, and evaluation.

``train(TrainConfig(...))`` resolves and checks a configuration, prepares the run
(:mod:`keras_vit.training.preparation`: batch arithmetic, data, precision, XLA, the model
and its optimizer inside the strategy's scope), and fits with
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
from keras_vit.training.config import TrainConfig
from keras_vit.training.resolution import resolve_config
from keras_vit.training.ema import AveragedValidation, use_averaged_weights
from keras_vit.training.preparation import build_trainee, nan_stop_error, prepare, scratch_hint
from keras_vit.training.recipes import build_datasets, build_strategy, compile_model, multiworker_requested

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

        return multiworker.train(config, resume=resume, overwrite=overwrite, verbose=verbose)
    run, resuming = lifecycle.start(config, resume=resume, overwrite=overwrite)
    try:
        with catching_sigterm() as sigterm:  # from here on, SIGTERM stops at the next step
            return _fit(config, run, resuming, sigterm, overwrite=overwrite, verbose=verbose)
    finally:
        run.unlock()


def _fit(config: TrainConfig, run, resuming: bool, sigterm, *, overwrite: bool, verbose):
    # The run itself, with its folder locked by train().
    prepared = prepare(config, build_strategy(config.strategy), loop="fit", verbose=verbose)
    previous_rows = lifecycle.begin(run, config, prepared.datasets.class_names, resuming=resuming, overwrite=overwrite)
    with prepared.precision():
        model = build_trainee(prepared)
        with prepared.strategy.scope():
            epoch, step = _restore(run, model) if resuming else (0, 0)
        # The backup's state is written last at an epoch's end: rows of later epochs are of a
        # kill before it, and the resumed run writes them again.
        previous_rows = [row for row in previous_rows if row["epoch"] < epoch]
        callbacks = _callbacks(prepared, run, previous_rows, step, sigterm)
        if verbose:
            _announce(prepared, model, run, resuming, len(previous_rows), epoch, step)
        try:
            _fit_epochs(prepared, model, callbacks, epoch, step, verbose)
        except NaNLossError as error:
            rows = run.read_history()
            kept = (
                f"the last good epoch ({len(rows)}) is kept in {run.last_checkpoint}"
                if rows
                else "no epoch completed, so there is no checkpoint"
            )
            raise nan_stop_error(str(error), kept, config) from None
        use_averaged_weights(model)  # the average is what is saved and exported (no-op without ema_decay)
        return lifecycle.finish(
            run, model, datasets=prepared.datasets, steps_per_epoch=prepared.steps_per_epoch,
            global_batch=prepared.global_batch, previous_rows=previous_rows, resuming=resuming,
            extra={**prepared.metrics(), "resumed_at_step": step or None},
        )


def _callbacks(prepared, run, previous_rows, step, sigterm):
    best = max((row.get("val_accuracy", -1.0) for row in previous_rows), default=None)
    backup = Backup(run, initial_step=step)
    callbacks = build_callbacks(run, best_val_accuracy=best, backup=backup)
    if prepared.config.ema_decay:
        callbacks.insert(0, AveragedValidation())  # validation sees the average, as timm's EMA model
    # last: see its doc
    callbacks.append(StopOnSigterm(run, backup, sigterm, prepared.steps_per_epoch, prepared.config.epochs))
    return callbacks


def _announce(prepared, model, run, resuming, epochs_done, epoch, step):
    config, datasets = prepared.config, prepared.datasets
    hint = scratch_hint(config, model.name)
    if hint:
        print(hint)
    print(
        f"Training {model.name} ({model.count_params():,} parameters) on {datasets.train_examples} "
        f"images for {config.epochs} epochs: {prepared.describe()}; run folder {run.path}"
        + (f" (resuming after epoch {epochs_done})" if resuming and not step else "")
        + (f" (resuming at epoch {epoch + 1} step {step}/{prepared.steps_per_epoch}, where it was preempted)"
           if step else "")
    )


def _fit_epochs(prepared, model, callbacks, epoch, step, verbose):
    # The stream skips the batches already trained on; a run resumed mid-epoch first
    # finishes that epoch with the steps it has left, then goes on with whole epochs.
    config, datasets, steps_per_epoch = prepared.config, prepared.datasets, prepared.steps_per_epoch
    fit = dict(validation_data=datasets.validation, callbacks=callbacks, verbose=verbose, shuffle=False)
    if step:  # (epochs=config.epochs and a stop after one, so that the bar says "Epoch E/epochs")
        stop = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: setattr(model, "stop_training", True))
        fit_one = {**fit, "callbacks": callbacks + [stop]}
        model.fit(datasets.stream(epoch * steps_per_epoch + step), initial_epoch=epoch, epochs=config.epochs,
                  steps_per_epoch=steps_per_epoch - step, **fit_one)
        epoch += 1
    if epoch < config.epochs:
        model.fit(datasets.stream(epoch * steps_per_epoch), initial_epoch=epoch, epochs=config.epochs,
                  steps_per_epoch=steps_per_epoch, **fit)


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
