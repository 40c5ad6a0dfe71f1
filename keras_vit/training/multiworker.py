"""Multi-worker training: a custom distributed loop under ``MultiWorkerMirroredStrategy``.

Keras 3's ``model.fit`` does not run under ``tf.distribute.MultiWorkerMirroredStrategy``
(keras-team/keras#20585: fit fails converting a ``PerReplica`` value). A training step
written with ``strategy.run`` inside a ``tf.function`` on a Keras 3 model and optimizer
built in the strategy's scope does work, so multi-worker runs use this loop. It shares
the model, optimizer, schedule, loss, data pipelines and run lifecycle of
:func:`keras_vit.training.fit.train` (:mod:`keras_vit.training.lifecycle`):

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
import json
import math
import os
import shutil
import time

import keras
import numpy as np

from keras_vit import backends
from keras_vit.training import lifecycle
from keras_vit.training.config import resolve_config
from keras_vit.training.recipes import accumulation_steps, build_datasets, build_model, build_optimizer, compile_model


def cluster_role():
    """``(task_type, task_index, is_chief, num_workers)`` from ``TF_CONFIG``.

    Raises:
        ValueError: if ``TF_CONFIG`` is missing or does not describe a cluster and a task.
    """
    text = os.environ.get("TF_CONFIG", "")
    try:
        spec = json.loads(text) if text else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}); got {text!r}.") from None
    cluster, task = spec.get("cluster", {}), spec.get("task", {})
    if not cluster.get("worker") and not cluster.get("chief") or "type" not in task:
        raise ValueError(
            'strategy "multiworker" needs TF_CONFIG with a cluster and this task, e.g. '
            '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}; '
            f"got {text!r}."
        )
    task_type, index = task["type"], int(task.get("index", 0))
    has_chief = bool(cluster.get("chief"))
    is_chief = task_type == "chief" or (not has_chief and task_type == "worker" and index == 0)
    return task_type, index, is_chief, len(cluster.get("worker", [])) + len(cluster.get("chief", []))


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
    import tensorflow as tf

    config = resolve_config(config)
    task_type, task_index, is_chief, _ = cluster_role()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    replicas = strategy.num_replicas_in_sync
    if accumulation_steps(config, replicas) > 1:
        raise ValueError(
            f"Invalid configuration: total_batch_size={config.total_batch_size} needs gradient accumulation, "
            f"which the multi-worker loop does not do; set it to the global batch {config.batch_size * replicas}."
        )
    run, resuming = lifecycle.start(config, resume=resume, overwrite=overwrite, decide=is_chief)  # the chief decides
    try:
        return _train(config, run, resuming, strategy, task_type, task_index, is_chief, overwrite=overwrite,
                      verbose=verbose)
    finally:
        run.unlock()


def _train(config, run, resuming, strategy, task_type, task_index, is_chief, *, overwrite, verbose):
    # The loop itself, with the run folder locked by train() (the chief's).
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    backup_dir = run.backup_dir
    global_batch = config.batch_size * replicas
    datasets = build_datasets(config, global_batch)
    steps_per_epoch = config.steps_per_epoch or datasets.train_examples // global_batch
    if datasets.train_examples // global_batch < 1:
        raise ValueError(
            f"Invalid configuration: the global batch {global_batch} exceeds the {datasets.train_examples} "
            f"training images."
        )
    options = tf.data.Options()
    # In-memory and file lists cannot be sharded by file: each worker takes every n-th batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA

    previous_rows = []
    if is_chief:
        previous_rows = lifecycle.begin(run, config, datasets.class_names, resuming=resuming, overwrite=overwrite)
        write_dir = backup_dir
    else:
        # Every worker takes part in a save; the others write beside the chief's (TF's convention)
        # and delete theirs at the end. All restore from the chief's backup (a shared folder).
        write_dir = run.worker_backup_dir(task_index)

    with strategy.scope():
        model = build_model(config, datasets.num_classes, datasets.class_names)
        optimizer = build_optimizer(config, steps_per_epoch, replicas=replicas)
        optimizer.build(model.trainable_variables)
    from_logits = model.classifier_activation is None
    loss_fn = keras.losses.CategoricalCrossentropy(
        from_logits=from_logits, label_smoothing=config.label_smoothing, reduction=None
    )

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=1)
    latest = tf.train.latest_checkpoint(backup_dir) if (resuming or not is_chief) else None
    if latest:
        checkpoint.restore(latest)
    # Saves (and exits) when the cluster announces a preemption with SIGTERM.
    preemption = tf.distribute.experimental.PreemptionCheckpointHandler(strategy.cluster_resolver, checkpoint, backup_dir)

    def step_fn(images, labels):
        with tf.GradientTape() as tape, backends.fused_forms():
            logits = model(images, training=True)
            per_example = loss_fn(labels, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, -1) == tf.argmax(labels, -1), tf.float32))
        return loss, correct

    @tf.function
    def distributed_step(iterator):
        loss, correct = strategy.run(step_fn, args=next(iterator))
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None),
        )

    @tf.function
    def eval_step(images, labels):
        with backends.fused_forms():
            logits = model(images, training=False)
        per_example = keras.losses.categorical_crossentropy(labels, logits, from_logits=from_logits)
        correct = tf.cast(tf.argmax(logits, -1) == tf.argmax(labels, -1), tf.float32)
        return tf.reduce_sum(per_example), tf.reduce_sum(correct)

    def validate():
        # Every worker evaluates the whole validation set on its (identical) weights.
        loss_sum = correct = count = 0.0
        for images, labels in datasets.validation:
            batch_loss, batch_correct = eval_step(images, labels)
            loss_sum += float(batch_loss)
            correct += float(batch_correct)
            count += int(images.shape[0])
        return loss_sum / count, correct / count

    writers = None
    if is_chief:
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        writers = {
            role: tf.summary.create_file_writer(os.path.join(run.logs_dir, role)) for role in ("train", "validation")
        }
    done_steps = int(optimizer.iterations.numpy())
    start_epoch = done_steps // steps_per_epoch
    if verbose:
        print(
            f"[{task_type} {task_index}{' chief' if is_chief else ''}] multi-worker training of {model.name}: "
            f"{replicas} replicas x batch {config.batch_size}, {steps_per_epoch} steps/epoch, run folder {run.path}"
            + (f" (resuming at step {done_steps}, epoch {start_epoch + 1})" if done_steps else ""),
            flush=True,
        )
    # The stream after the steps done: a resumed run goes on with the batches it would have seen.
    train_data = datasets.stream(done_steps).with_options(options)
    iterator = iter(strategy.experimental_distribute_dataset(train_data))
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        loss_sum = correct = 0.0
        first_step = done_steps % steps_per_epoch if epoch == start_epoch else 0
        progress = keras.utils.Progbar(steps_per_epoch - first_step, verbose=1 if verbose == 1 and is_chief else 0)
        for _ in range(first_step, steps_per_epoch):
            loss, batch_correct = preemption.run(distributed_step, iterator)
            loss = float(loss)
            if not math.isfinite(loss):
                raise RuntimeError(
                    f"Training stopped: the loss became {loss} at epoch {epoch + 1}; the last good epoch is kept "
                    f"in {backup_dir}. Lower learning_rate (now {config.learning_rate}) or check the data."
                )
            loss_sum += loss
            correct += float(batch_correct)
            progress.add(1, [("loss", loss)])
        steps = steps_per_epoch - first_step
        val_loss, val_accuracy = validate()
        row = {
            "epoch": epoch,
            "loss": loss_sum / steps,
            "accuracy": correct / (steps * global_batch),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "epoch_seconds": time.perf_counter() - started,
        }
        manager.save(checkpoint_number=int(optimizer.iterations.numpy()))
        if verbose:
            print(
                f"[{task_type} {task_index}] epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.4f}, accuracy "
                f"{row['accuracy']:.4f}, val_loss {val_loss:.4f}, val_accuracy {val_accuracy:.4f}, "
                f"weights {weights_fingerprint(model)}",
                flush=True,
            )
        if is_chief:
            run.append_history(row)
            for key, value in row.items():
                if key == "epoch":
                    continue
                role, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
                with writers[role].as_default():
                    tf.summary.write(f"epoch_{name}", tf.constant(float(value)), step=epoch, metadata=metadata)

    if not is_chief:
        shutil.rmtree(os.path.dirname(write_dir), ignore_errors=True)
        return {"run_dir": run.path, "chief": False, "weights_sha256": weights_fingerprint(model)}
    for writer in writers.values():
        writer.close()
    compile_model(model, config, optimizer)
    metrics = lifecycle.finish(
        run, model, datasets=datasets, steps_per_epoch=steps_per_epoch, global_batch=global_batch,
        previous_rows=previous_rows, resuming=resuming,
        extra={"accumulation_steps": 1, "replicas": replicas, "strategy": "multiworker",
               "weights_sha256": weights_fingerprint(model)},
    )
    shutil.rmtree(run.backup_dir, ignore_errors=True)
    return {**metrics, "chief": True}
