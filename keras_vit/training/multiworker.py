"""Multi-worker training: a custom distributed loop under ``MultiWorkerMirroredStrategy``.

Keras 3's ``model.fit`` does not run under ``tf.distribute.MultiWorkerMirroredStrategy``
(keras-team/keras#20585: fit fails converting a ``PerReplica`` value). A training step
written with ``strategy.run`` inside a ``tf.function`` on a Keras 3 model and optimizer
built in the strategy's scope does work, so multi-worker runs use this loop. It shares
its preparation with :func:`keras_vit.training.fit.train`
(:mod:`keras_vit.training.preparation`: batch arithmetic, data, precision, ``jit_compile``,
model, optimizer with layer decay and the weights' average, loss) and the run lifecycle
(:mod:`keras_vit.training.lifecycle`):

* each step computes the replica's loss and gradients in one ``tf.function`` compiled
  with XLA when ``jit_compile`` is on, under the run's dtype policy (``mixed_float16``
  scales the loss through the compiled ``LossScaleOptimizer``), then applies the
  all-reduced gradients;

* ``TF_CONFIG`` names the cluster and this worker; worker 0 (or the ``chief`` task) is
  the chief and the only one to write into the run folder;
* every epoch ends with a checkpoint (model, optimizer and so the schedule's step) that
  a restarted run resumes from, mid-epoch included; ``PreemptionCheckpointHandler``
  also saves when the cluster announces a preemption (SIGTERM); the data stream
  (``Datasets.stream``) goes on from the saved step, with the batches it would have given;
* ``history.csv``, TensorBoard scalars, the curve PNG, ``model.keras`` and
  ``metrics.json`` come out as with ``fit``.

Every worker runs the same command, e.g. on two machines::

    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}' \\
        keras-vit train --strategy multiworker --output /shared/runs/vit
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time

import keras
import numpy as np

from keras_vit import backends
from keras_vit.training import lifecycle
from keras_vit.training.resolution import resolve_config
from keras_vit.training.ema import averaged_weights, use_averaged_weights
from keras_vit.training.preparation import (
    build_trainee,
    nan_stop_error,
    prepare,
    refuse_accumulation,
    refuse_unsupported,
)
from keras_vit.training.recipes import build_strategy, classification_loss, cluster_role

__all__ = ["train", "cluster_role", "weights_fingerprint"]


def weights_fingerprint(model):
    """SHA-256 of every weight's bytes: equal on all workers when their weights are identical."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def train(config, *, resume=False, overwrite=False, verbose=1):
    """Trains ``config`` on the ``TF_CONFIG`` cluster with a custom distributed loop.

    Arguments, return value and errors as :func:`keras_vit.training.fit.train`. Every worker
    prints one line per epoch with the loss, accuracies and the weights' fingerprint.
    """
    config = resolve_config(config)
    refuse_unsupported(config, "multiworker")
    task_type, task_index, is_chief, _ = cluster_role()
    strategy = build_strategy("multiworker")
    refuse_accumulation(config, strategy.num_replicas_in_sync, "multiworker")  # before the run folder is touched
    run, resuming = lifecycle.start(config, resume=resume, overwrite=overwrite, decide=is_chief)  # the chief decides
    try:
        return _train(config, run, resuming, strategy, (task_type, task_index, is_chief), overwrite=overwrite,
                      verbose=verbose)
    finally:
        run.unlock()


def _train(config, run, resuming, strategy, role, *, overwrite, verbose):
    # The loop itself, with the run folder locked by train() (the chief's).
    task_type, task_index, is_chief = role
    prepared = prepare(config, strategy, loop="multiworker", verbose=verbose and is_chief)
    previous_rows = []
    if is_chief:
        previous_rows = lifecycle.begin(run, config, prepared.datasets.class_names, resuming=resuming,
                                        overwrite=overwrite)
    with prepared.precision():
        model = build_trainee(prepared)
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
        manager, preemption, write_dir = _checkpointing(run, model, strategy, task_index, is_chief, resuming)
        done_steps = int(model.optimizer.iterations.numpy())
        if verbose:
            print(
                f"[{task_type} {task_index}{' chief' if is_chief else ''}] multi-worker training of {model.name}: "
                f"{prepared.describe()}, {prepared.steps_per_epoch} steps/epoch, run folder {run.path}"
                + (f" (resuming at step {done_steps}, epoch {done_steps // prepared.steps_per_epoch + 1})"
                   if done_steps else ""),
                flush=True,
            )
        _run_epochs(prepared, model, run, manager, preemption, role, done_steps, verbose)
        use_averaged_weights(model)  # the average is what is saved and exported (no-op without ema_decay)
    if not is_chief:
        shutil.rmtree(os.path.dirname(write_dir), ignore_errors=True)
        return {"run_dir": run.path, "chief": False, "weights_sha256": weights_fingerprint(model)}
    metrics = lifecycle.finish(
        run, model, datasets=prepared.datasets, steps_per_epoch=prepared.steps_per_epoch,
        global_batch=prepared.global_batch, previous_rows=previous_rows, resuming=resuming,
        extra={**prepared.metrics(), "strategy": "multiworker", "weights_sha256": weights_fingerprint(model)},
    )
    shutil.rmtree(run.backup_dir, ignore_errors=True)
    return {**metrics, "chief": True}


def _checkpointing(run, model, strategy, task_index, is_chief, resuming):
    """``(manager, preemption handler, folder written)``, the model restored from the
    chief's backup when there is one to resume from."""
    import tensorflow as tf

    # Every worker takes part in a save; the others write beside the chief's (TF's convention)
    # and delete theirs at the end. All restore from the chief's backup (a shared folder).
    write_dir = run.backup_dir if is_chief else run.worker_backup_dir(task_index)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=1)
    latest = tf.train.latest_checkpoint(run.backup_dir) if (resuming or not is_chief) else None
    if latest:
        checkpoint.restore(latest)
    # Saves (and exits) when the cluster announces a preemption with SIGTERM.
    preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, checkpoint, run.backup_dir)
    return manager, preemption, write_dir


def _step_functions(prepared, model):
    """``(distributed_step, validate)``: one training step over all replicas, returning the
    summed loss and correct count, and a whole pass over the validation data."""
    import tensorflow as tf

    strategy, optimizer, global_batch = prepared.strategy, model.optimizer, prepared.global_batch
    per_example_loss = classification_loss(model, prepared.config, reduction=None)

    @tf.function(jit_compile=prepared.jit_compile)
    def replica_gradients(images, labels):
        with tf.GradientTape() as tape, backends.fused_forms():
            logits = model(images, training=True)
            loss = tf.nn.compute_average_loss(per_example_loss(labels, logits), global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss)  # the loss scale under mixed_float16, else the loss
        gradients = tape.gradient(scaled, model.trainable_variables)
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, -1) == tf.argmax(labels, -1), tf.float32))
        return loss, correct, gradients

    def step_fn(images, labels):
        loss, correct, gradients = replica_gradients(images, labels)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))  # all-reduced across workers
        return loss, correct

    @tf.function
    def distributed_step(iterator):
        loss, correct = strategy.run(step_fn, args=next(iterator))
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None),
        )

    @tf.function(jit_compile=prepared.jit_compile)
    def eval_step(images, labels):
        with backends.fused_forms():
            logits = model(images, training=False)
        per_example = keras.losses.categorical_crossentropy(labels, logits, from_logits=per_example_loss.from_logits)
        correct = tf.cast(tf.argmax(logits, -1) == tf.argmax(labels, -1), tf.float32)
        return tf.reduce_sum(per_example), tf.reduce_sum(correct)

    def validate():
        # Every worker evaluates the whole validation set on its (identical) weights, averaged with ema_decay.
        loss_sum = correct = count = 0.0
        with averaged_weights(model):
            for images, labels in prepared.datasets.validation:
                batch_loss, batch_correct = eval_step(images, labels)
                loss_sum += float(batch_loss)
                correct += float(batch_correct)
                count += int(images.shape[0])
        return loss_sum / count, correct / count

    return distributed_step, validate


def _run_epochs(prepared, model, run, manager, preemption, role, done_steps, verbose):
    # Trains the epochs left after done_steps; every worker saves, the chief logs.
    import tensorflow as tf

    task_type, task_index, is_chief = role
    config, steps_per_epoch = prepared.config, prepared.steps_per_epoch
    distributed_step, validate = _step_functions(prepared, model)
    options = tf.data.Options()
    # In-memory and file lists cannot be sharded by file: each worker takes every n-th batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # The stream after the steps done: a resumed run goes on with the batches it would have seen.
    train_data = prepared.datasets.stream(done_steps).with_options(options)
    iterator = iter(prepared.strategy.experimental_distribute_dataset(train_data))
    writers = _SummaryWriters(run) if is_chief else None
    start_epoch = done_steps // steps_per_epoch
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        first_step = done_steps % steps_per_epoch if epoch == start_epoch else 0
        show = verbose == 1 and is_chief
        loss_sum, correct = _train_epoch(distributed_step, iterator, preemption, epoch, first_step, prepared, run, show)
        steps = steps_per_epoch - first_step
        val_loss, val_accuracy = validate()
        row = {"epoch": epoch, "loss": loss_sum / steps, "accuracy": correct / (steps * prepared.global_batch),
               "val_loss": val_loss, "val_accuracy": val_accuracy, "epoch_seconds": time.perf_counter() - started}
        manager.save(checkpoint_number=int(model.optimizer.iterations.numpy()))
        if verbose:
            print(
                f"[{task_type} {task_index}] epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.4f}, accuracy "
                f"{row['accuracy']:.4f}, val_loss {val_loss:.4f}, val_accuracy {val_accuracy:.4f}, "
                f"weights {weights_fingerprint(model)}",
                flush=True,
            )
        if is_chief:
            run.append_history(row)
            writers.write(row)
    if writers is not None:
        writers.close()


def _train_epoch(distributed_step, iterator, preemption, epoch, first_step, prepared, run, show):
    """``(loss sum, correct count)`` of the steps from ``first_step`` to the epoch's end.

    Raises:
        RuntimeError: when the loss stops being finite (the last epoch's backup is kept).
    """
    loss_sum = correct = 0.0
    progress = keras.utils.Progbar(prepared.steps_per_epoch - first_step, verbose=1 if show else 0)
    for _ in range(first_step, prepared.steps_per_epoch):
        loss, batch_correct = preemption.run(distributed_step, iterator)
        loss = float(loss)
        if not math.isfinite(loss):
            raise nan_stop_error(f"the loss became {loss} at epoch {epoch + 1}",
                                 f"the last good epoch is kept in {run.backup_dir}", prepared.config)
        loss_sum += loss
        correct += float(batch_correct)
        progress.add(1, [("loss", loss)])
    return loss_sum, correct


class _SummaryWriters:
    """The chief's TensorBoard scalars, one writer per role as Keras's callback writes them."""

    def __init__(self, run):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self.metadata = summary_pb2.SummaryMetadata()
        self.metadata.plugin_data.plugin_name = "scalars"
        self.writers = {
            role: tf.summary.create_file_writer(os.path.join(run.logs_dir, role)) for role in ("train", "validation")
        }

    def write(self, row):
        import tensorflow as tf

        for key, value in row.items():
            if key == "epoch":
                continue
            role, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self.writers[role].as_default():
                tf.summary.write(f"epoch_{name}", tf.constant(float(value)), step=row["epoch"], metadata=self.metadata)

    def close(self):
        for writer in self.writers.values():
            writer.close()
