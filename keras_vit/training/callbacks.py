"""The callbacks of a training run: NaN guard, epoch timer, checkpoints, backup, preemption, logs, curves."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time

import keras

from keras_vit.files import replaced_atomically, save_model, write_json
from keras_vit.run_folder import RunFolder
from keras_vit.training.ema import averaged_weights

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM

# Test seam (fault injection), off unless set: with KERAS_VIT_KILL_AFTER_WRITE=N in its
# environment, a training process SIGKILLs itself right after its N-th epoch-end write
# (history row, checkpoints, backup weights, backup state), so that a test can kill a real
# run between any two of them. Nothing reads it otherwise.
KILL_AFTER_WRITE_VARIABLE = "KERAS_VIT_KILL_AFTER_WRITE"
_epoch_end_writes = 0


def epoch_end_write_done() -> None:
    """Counts one epoch-end write; kills the process at the count the test seam names."""
    global _epoch_end_writes
    target = os.environ.get(KILL_AFTER_WRITE_VARIABLE)
    if not target:
        return
    _epoch_end_writes += 1
    if _epoch_end_writes == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


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
    improves, each atomically: a kill mid-save leaves the previous file whole. Both hold the
    model alone: the optimizer's state, needed only to resume, is in ``backup/``.
    With a weight average (``ema_decay``) they hold the averaged weights.

    Args:
        run: the run folder.
        best_val_accuracy: the best so far (a resumed run), or None.
    """

    def __init__(self, run: RunFolder, best_val_accuracy=None):
        super().__init__()
        self.run = run
        self.best = best_val_accuracy

    def on_epoch_end(self, epoch, logs=None):
        with averaged_weights(self.model):  # with ema_decay, the checkpoints hold the average
            save_model(self.model, self.run.last_checkpoint, include_optimizer=False)
            epoch_end_write_done()
            accuracy = (logs or {}).get("val_accuracy")
            if accuracy is not None and (self.best is None or accuracy > self.best):
                self.best = float(accuracy)
                save_model(self.model, self.run.best_checkpoint, include_optimizer=False)
                epoch_end_write_done()


class HistoryLogger(keras.callbacks.CSVLogger):
    """Appends each epoch's row to ``history.csv`` (Keras's ``CSVLogger``, flushed per row)."""

    def __init__(self, run: RunFolder):
        super().__init__(run.history_path, append=True)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        epoch_end_write_done()


# What ``keras-vit train`` exits with after each interruption: 128 + the signal's number,
# as a shell reports a process ended by it (SIGPIPE for a closed output pipe).
INTERRUPTION_EXIT_CODES = {"SIGTERM": PREEMPTED_EXIT_CODE, "SIGINT": 128 + 2, "output pipe closed": 128 + 13}


class Preempted(Exception):
    """Training stopped on SIGTERM, SIGINT (Ctrl-C) or a closed output pipe after saving its
    state; the same ``train`` call resumes it.

    Attributes:
        epoch: the epoch it stopped in, counted from 0.
        step: the steps of that epoch done and saved (0: at the epoch's start).
        reason: ``"SIGTERM"``, ``"SIGINT"`` or ``"output pipe closed"``.
        exit_code: what ``keras-vit train`` exits with (143, 130, 141).
    """

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, run: RunFolder, epoch: int, step: int, steps_per_epoch: int, epochs: int, reason="SIGTERM"):
        self.epoch, self.step, self.reason = epoch, step, reason
        self.exit_code = INTERRUPTION_EXIT_CODES[reason]
        stopped = "preempted" if reason == "SIGTERM" else "stopped"
        super().__init__(
            f"{stopped} ({reason}) at epoch {epoch + 1}/{epochs} step {step}/{steps_per_epoch}; the model, optimizer "
            f"and data position are saved in {run.backup_dir}; rerun the same command to resume from there."
        )


class Backup(keras.callbacks.Callback):
    """Saves the resumable state of the run in ``backup/``: every epoch, and on demand mid-epoch.

    The state is the model with its optimizer's variables (a ``.keras`` file) and
    where the run stands, ``{"epoch": E, "step": S}``: the next batch is step ``S`` of
    epoch ``E`` (both from 0). The weights go to a new file and ``state.json``, naming it,
    replaces the old one atomically; so a kill at any instant leaves one whole state.

    Args:
        run: the run folder.
        initial_step: the steps already done in the first epoch of the next ``fit`` (a run
            resumed mid-epoch); the same callback then serves the following ``fit`` calls.
    """

    def __init__(self, run: RunFolder, initial_step=0):
        super().__init__()
        self.run = run
        self.epoch, self.step = 0, initial_step
        self._initial_step = initial_step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.step = epoch, self._initial_step
        self._initial_step = 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1, 0)

    def save(self, epoch: int, step: int, preempted=False) -> None:
        save_backup(self.run, self.model, epoch, step, preempted=preempted)


def save_backup(run: RunFolder, model, epoch: int, step: int, preempted=False) -> None:
    """Writes the state of :class:`Backup` (see there) and removes the one it replaces."""
    os.makedirs(run.backup_dir, exist_ok=True)
    # A .keras file: Keras writes its weights through memory into the zip, so a refused
    # write is one clean OSError (h5py writing to disk leaves a handle that crashes at exit).
    name = f"epoch{epoch}-step{step}.keras"
    save_model(model, os.path.join(run.backup_dir, name))
    epoch_end_write_done()
    write_json(run.backup_state, {"epoch": epoch, "step": step, "weights": name, "preempted": preempted})
    epoch_end_write_done()
    keep = {os.path.basename(run.backup_state), name}
    for entry in os.listdir(run.backup_dir):  # the state replaced, and Keras's BackupAndRestore files of older runs
        if entry not in keep and not entry.startswith("."):
            os.remove(os.path.join(run.backup_dir, entry))


def read_backup(run: RunFolder):
    """``(weights path, epoch, step)`` of the run's saved state, or None when there is none.

    Runs of earlier versions (Keras's ``BackupAndRestore``: ``latest.weights.h5`` and
    ``training_metadata.json``) resume at the start of their saved epoch."""
    if os.path.isfile(run.backup_state):
        return _checked_backup(run)
    weights = os.path.join(run.backup_dir, "latest.weights.h5")
    metadata = os.path.join(run.backup_dir, "training_metadata.json")
    if os.path.isfile(weights) and os.path.isfile(metadata):
        with open(metadata) as file:
            return weights, int(json.load(file)["epoch"]), 0
    return None


def _checked_backup(run: RunFolder):
    # The state and the weights it names, refused in one line when damaged (not a KeyError or BadZipFile).
    import zipfile

    advice = "train it again with --overwrite to start over"
    try:
        with open(run.backup_state) as file:
            state = json.load(file)
        weights = os.path.join(run.backup_dir, os.path.basename(state["weights"]))
        epoch, step = int(state["epoch"]), int(state["step"])
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"Cannot resume: {run.backup_state!r} is damaged ({type(error).__name__}: {error}); "
                         f"{advice}.") from None
    if epoch < 0 or step < 0:
        raise ValueError(f"Cannot resume: {run.backup_state!r} says epoch={epoch}, step={step}; {advice}.")
    if not zipfile.is_zipfile(weights):
        state = "missing" if not os.path.exists(weights) else "damaged (not a whole .keras file)"
        raise ValueError(f"Cannot resume: the run's saved state {weights!r} is {state}; {advice}.")
    return weights, epoch, step


class Interruption(threading.Event):
    """Set when training is asked to stop; ``reason`` says why (see :class:`Preempted`)."""

    reason = "SIGTERM"

    def request(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
            self.set()


class _ClosedPipeGuard:
    """Standard output that turns a closed pipe (``keras-vit train | head -1``) into a stop
    request instead of a ``BrokenPipeError`` thrown out of a progress bar mid-step."""

    def __init__(self, stream, interruption: Interruption):
        self._stream, self._interruption, self._closed = stream, interruption, False

    def _guarded(self, call, *arguments):
        if self._closed:
            return None
        try:
            return call(*arguments)
        except BrokenPipeError:
            self._closed = True
            self._interruption.request("output pipe closed")
            with contextlib.suppress(OSError, ValueError):  # later writes and the exit's flush go nowhere
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
            return None

    def write(self, text):
        written = self._guarded(self._stream.write, text)
        return len(text) if written is None else written

    def flush(self):
        self._guarded(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def catching_sigterm():
    """Yields an :class:`Interruption` set, while the block runs, by SIGTERM, by SIGINT
    (Ctrl-C; a second one ends the process) or by a closed standard output, instead of the
    process ending; the previous handlers and stream come back after. Signals reach
    Python's main thread only, so elsewhere the event is never set and nothing changes."""
    requested = Interruption()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def on_sigint(signum, frame):
        if requested.is_set() and requested.reason == "SIGINT":
            raise KeyboardInterrupt
        requested.request("SIGINT")

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: requested.request("SIGTERM"))
    previous_sigint = signal.signal(signal.SIGINT, on_sigint)
    stdout, sys.stdout = sys.stdout, _ClosedPipeGuard(sys.stdout, requested)
    try:
        yield requested
    finally:
        sys.stdout = stdout
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_sigint)


class StopOnSigterm(keras.callbacks.Callback):
    """Once ``requested`` is set (by SIGTERM, what GPU/TPU schedulers send before they take
    the machine back, by Ctrl-C or a closed output pipe: :func:`catching_sigterm`), saves
    the state at the next step's end and raises :class:`Preempted`.

    Listed last, so that at an epoch's end every other callback has written its files
    before it stops the run. A request at an epoch's last step stops at that epoch's end
    (step 0 of the next); one after the last step of the last epoch lets the run finish.
    """

    def __init__(self, run: RunFolder, backup: Backup, requested: threading.Event, steps_per_epoch: int, epochs: int):
        super().__init__()
        self.run, self.backup, self.requested = run, backup, requested
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs

    def on_train_batch_end(self, batch, logs=None):
        step = self.backup.step  # the Backup, listed before, has counted this batch
        if self.requested.is_set() and step < self.steps_per_epoch:  # at the last step, stop at the epoch's end
            self.backup.save(self.backup.epoch, step, preempted=True)
            raise Preempted(self.run, self.backup.epoch, step, self.steps_per_epoch, self.epochs, self._reason())

    def on_epoch_end(self, epoch, logs=None):
        if self.requested.is_set() and epoch + 1 < self.epochs:
            raise Preempted(self.run, epoch + 1, 0, self.steps_per_epoch, self.epochs, self._reason())

    def _reason(self):
        return getattr(self.requested, "reason", "SIGTERM")


def build_callbacks(run: RunFolder, *, best_val_accuracy=None, tensorboard=True, backup=None):
    """The run's callbacks, in the order they must run at the end of an epoch.

    The backup comes last: its ``state.json`` says the epoch is done, so the epoch's
    history row and checkpoints are written before it, and a kill between any two writes
    resumes with every completed epoch's row (a row of an epoch the state does not count
    is written again by the resumed run).

    ``backup``: the :class:`Backup` to use (default a new one, from the first epoch)."""
    os.makedirs(run.checkpoints_dir, exist_ok=True)
    callbacks = [
        StopOnNaN(),
        EpochTimer(),
        HistoryLogger(run),
        Checkpoints(run, best_val_accuracy=best_val_accuracy),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run.logs_dir, write_graph=False))
    callbacks.append(backup or Backup(run))
    return callbacks
