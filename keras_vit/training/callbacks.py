"""The callbacks of a training run: NaN guard, epoch timer, checkpoints, backup, logs, curves."""

from __future__ import annotations

import math
import os
import time

import keras

from keras_vit.files import replaced_atomically, save_model
from keras_vit.run_folder import RunFolder

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
    with replaced_atomically(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)


class Checkpoints(keras.callbacks.Callback):
    """Saves ``checkpoints/last.keras`` every epoch and ``best.keras`` when ``val_accuracy``
    improves, each atomically: a kill mid-save leaves the previous file whole.

    Args:
        run: the run folder.
        best_val_accuracy: the best so far (a resumed run), or None.
    """

    def __init__(self, run: RunFolder, best_val_accuracy=None):
        super().__init__()
        self.run = run
        self.best = best_val_accuracy

    def on_epoch_end(self, epoch, logs=None):
        save_model(self.model, self.run.last_checkpoint)
        accuracy = (logs or {}).get("val_accuracy")
        if accuracy is not None and (self.best is None or accuracy > self.best):
            self.best = float(accuracy)
            save_model(self.model, self.run.best_checkpoint)


def build_callbacks(run: RunFolder, *, best_val_accuracy=None, tensorboard=True):
    """The run's callbacks, in the order they must run at the end of an epoch."""
    os.makedirs(run.checkpoints_dir, exist_ok=True)
    callbacks = [
        StopOnNaN(),
        EpochTimer(),
        keras.callbacks.BackupAndRestore(run.backup_dir, double_checkpoint=True),
        keras.callbacks.CSVLogger(run.history_path, append=True),
        Checkpoints(run, best_val_accuracy=best_val_accuracy),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run.logs_dir, write_graph=False))
    return callbacks
