"""Multi-worker training: a custom distributed loop under ``MultiWorkerMirroredStrategy``.

Keras 3's ``model.fit`` does not run under ``tf.distribute.MultiWorkerMirroredStrategy``
(keras-team/keras#20585: fit fails converting a ``PerReplica`` value). A training step
written with ``strategy.run`` inside a ``tf.function`` on a Keras 3 model and optimizer
built in the strategy's scope does work, so multi-worker runs use this loop. It shares
the model, optimizer, schedule, loss, data pipelines and run folder of
:func:`keras_vit.training.train`:

* ``TF_CONFIG`` names the cluster and this worker; worker 0 (or the ``chief`` task) is
  the chief and the only one to write into the run folder;
* every epoch ends with a checkpoint (model, optimizer and so the schedule's step) that
  a restarted run resumes from, mid-epoch included; ``PreemptionCheckpointHandler``
  also saves when the cluster announces a preemption (SIGTERM);
* ``history.csv``, TensorBoard scalars, the curve PNG, ``model.keras`` and
  ``metrics.json`` come out as with ``fit``.

Every worker runs the same command, e.g. on two machines::

    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}' \\
        keras-vit train --strategy multiworker --output /shared/runs/vit
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import time

import keras
import numpy as np

from keras_vit import training


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

    Arguments, return value and errors as :func:`keras_vit.training.train`. Every worker
    prints one line per epoch with the loss, accuracies and the weights' fingerprint.
    """
    import tensorflow as tf

    config = training.resolve_config(config)
    task_type, task_index, is_chief, _ = cluster_role()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    replicas = strategy.num_replicas_in_sync
    if training.accumulation_steps(config, replicas) > 1:
        raise ValueError(
            f"Invalid configuration: total_batch_size={config.total_batch_size} needs gradient accumulation, "
            f"which the multi-worker loop does not do; set it to the global batch {config.batch_size * replicas}."
        )
    if is_chief:
        run_dir, resuming = training.check_run_directory(config, resume=resume, overwrite=overwrite)
    else:
        run_dir, resuming = training.run_directory(config), False  # Only the chief decides.
    backup_dir = os.path.join(run_dir, "backup")
    global_batch = config.batch_size * replicas
    datasets = training.build_datasets(config, global_batch)
    steps_per_epoch = config.steps_per_epoch or datasets.train_examples // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"Invalid configuration: the global batch {global_batch} exceeds the {datasets.train_examples} "
            f"training images."
        )
    options = tf.data.Options()
    # In-memory and file lists cannot be sharded by file: each worker takes every n-th batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_data = datasets.train.repeat().with_options(options)

    if is_chief:
        if overwrite and os.path.isdir(run_dir):
            shutil.rmtree(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        if not resuming:
            with open(os.path.join(run_dir, "config.json"), "w") as file:
                json.dump(training._json_ready(config.to_dict()), file, indent=2)
        write_dir = backup_dir
    else:
        # Every worker takes part in a save; the others write beside the chief's (TF's convention)
        # and delete theirs at the end. All restore from the chief's backup (a shared folder).
        write_dir = os.path.join(run_dir, f"workertemp_{task_index}", "backup")

    with strategy.scope():
        model = training.build_model(config, datasets.num_classes)
        optimizer = training.build_optimizer(config, steps_per_epoch, replicas=replicas)
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
        with tf.GradientTape() as tape:
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

    history_path = os.path.join(run_dir, "history.csv")
    previous_rows = training.read_history(history_path) if resuming and is_chief else []
    writers = None
    if is_chief:
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        writers = {
            role: tf.summary.create_file_writer(os.path.join(run_dir, "logs", role)) for role in ("train", "validation")
        }
    done_steps = int(optimizer.iterations.numpy())
    start_epoch = done_steps // steps_per_epoch
    if verbose:
        print(
            f"[{task_type} {task_index}{' chief' if is_chief else ''}] multi-worker training of {model.name}: "
            f"{replicas} replicas x batch {config.batch_size}, {steps_per_epoch} steps/epoch, run folder {run_dir}"
            + (f" (resuming at step {done_steps}, epoch {start_epoch + 1})" if done_steps else ""),
            flush=True,
        )
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
            _append_history(history_path, row)
            for key, value in row.items():
                if key == "epoch":
                    continue
                role, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
                with writers[role].as_default():
                    tf.summary.write(f"epoch_{name}", tf.constant(float(value)), step=epoch, metadata=metadata)

    if not is_chief:
        shutil.rmtree(os.path.dirname(write_dir), ignore_errors=True)
        return {"run_dir": run_dir, "chief": False, "weights_sha256": weights_fingerprint(model)}
    for writer in writers.values():
        writer.close()
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    model.save(os.path.join(run_dir, "model.keras"))
    rows = training._rewrite_history(history_path)
    training.plot_history(rows, os.path.join(run_dir, "training_curves.png"))
    train_seconds = sum(r.get("epoch_seconds", 0.0) for r in rows)
    metrics = {
        "val_accuracy": rows[-1]["val_accuracy"],
        "val_loss": rows[-1]["val_loss"],
        "best_val_accuracy": max(r["val_accuracy"] for r in rows),
        "train_accuracy": rows[-1]["accuracy"],
        "train_loss": rows[-1]["loss"],
        "epochs": len(rows),
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(len(rows) * steps_per_epoch * global_batch / train_seconds, 1),
        "optimizer_steps": int(optimizer.iterations.numpy()),
        "steps_per_epoch": steps_per_epoch,
        "global_batch_size": global_batch,
        "accumulation_steps": 1,
        "replicas": replicas,
        "strategy": "multiworker",
        "parameters": model.count_params(),
        "train_examples": datasets.train_examples,
        "validation_examples": datasets.validation_examples,
        "resumed_after_epoch": len(previous_rows) if resuming else None,
        "weights_sha256": weights_fingerprint(model),
    }
    with open(os.path.join(run_dir, "metrics.json"), "w") as file:
        json.dump(metrics, file, indent=2)
    shutil.rmtree(os.path.join(run_dir, "backup"), ignore_errors=True)
    return {**metrics, "run_dir": run_dir, "chief": True}


def _append_history(path, row):
    new = not os.path.isfile(path)
    with open(path, "a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
