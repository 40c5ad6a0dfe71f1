"""One run's life, shared by the ``fit`` loop and the multi-worker loop.

``start`` decides, before any work, whether the run folder starts a new run, resumes an
unfinished one or is refused; ``begin`` writes ``config.json`` (with the class names the
data reported) once the data has been found; ``finish`` saves the model, tidies the
history, draws the curves and writes ``metrics.json`` last, so that its presence marks a
finished run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Dict, List, Optional

import keras

from keras_vit.files import save_model
from keras_vit.run_folder import RunFolder
from keras_vit.training.callbacks import plot_history
from keras_vit.training.config import TrainConfig, run_directory


def start(config: TrainConfig, *, resume=False, overwrite=False, decide=True):
    """``(RunFolder, resuming)`` for a resolved config, the folder locked for this process.

    With ``overwrite`` on an existing run, the folder returned is its replacement, built
    beside it and swapped in by :func:`finish` (the old run is kept until then).
    ``decide=False`` (a non-chief worker) opens the same folder without judging or locking it.
    """
    run = RunFolder(run_directory(config))
    refuse_output_inside_data(config)
    if not decide:
        return (run.replacement() if overwrite and run.is_run() else run), False
    canonical = _canonical(config)
    if overwrite:  # the rerun of an interrupted `--overwrite` command resumes what it started
        pending = _interrupted_run(run, config, canonical)
        if pending is run:
            overwrite = False
        elif pending is not None:
            run.lock()
            try:
                pending.lock()
            except BaseException:
                run.unlock()
                raise
            return pending, True
    run.check(config.to_dict(), resume=resume, overwrite=overwrite, canonical=canonical)  # before touching the folder
    run.lock()
    try:  # again under the lock: another process may have finished the run meanwhile
        resuming = run.check(config.to_dict(), resume=resume, overwrite=overwrite, canonical=canonical)
        if overwrite and run.is_run():
            replacement = run.replacement()
            replacement.lock()
            return replacement, False
        return run, resuming
    except BaseException:
        run.unlock()
        raise


def refuse_output_inside_data(config: TrainConfig) -> None:
    """Refuses a run folder inside the folders it trains or validates on: its own files
    (curves, sample images of an export) would be read as images of a class next time."""
    output = os.path.realpath(run_directory(config))
    for field in ("image_folder", "validation_folder"):
        folder = getattr(config, field)
        if folder and os.path.commonpath([output, os.path.realpath(folder)]) == os.path.realpath(folder):
            raise ValueError(
                f"The run folder {run_directory(config)!r} (--output) is inside the {field} {folder!r} "
                f"(--{field.replace('_', '-')}): its files would become training images. Choose an --output "
                f"outside {folder!r}."
            )


def _canonical(config: TrainConfig):
    # A saved configuration in the form of ``config.to_dict()`` (flat files of earlier versions
    # too), less where the folder is: the folder compared is the one found there, however its
    # path was spelled (relative or absolute, --output or --run-name).
    def canonical(saved):
        values = TrainConfig.from_dict(saved).to_dict()
        values["run"].update(output=config.output, run_name=config.run_name)
        return values

    return canonical


def _interrupted_run(run: RunFolder, config: TrainConfig, canonical) -> Optional[RunFolder]:
    """The unfinished run of this configuration that an interrupted ``--overwrite`` of
    ``run`` left: its replacement being built, or ``run`` itself; None when there is none."""
    for candidate in ([run.replacement()] if run.is_run() else []) + [run]:
        try:
            if candidate.is_run() and candidate.check(config.to_dict(), canonical=canonical):
                return candidate
        except ValueError:  # another configuration, or not a run: --overwrite replaces it
            continue
    return None


def begin(run: RunFolder, config: TrainConfig, class_names: List[str], *, resuming: bool, overwrite: bool):
    """Creates the folder and, for a new run, writes the configuration and class names.

    Returns the history rows of the epochs already done (empty for a new run)."""
    # A run resumed under --overwrite (see start) is continued, not emptied.
    run.begin(config.to_dict(), class_names, resuming=resuming, overwrite=overwrite and not resuming)
    return run.read_history() if resuming else []


def finish(run: RunFolder, model, *, datasets, steps_per_epoch: int, global_batch: int, previous_rows: List[Dict],
           resuming: bool, extra: Optional[Dict] = None) -> Dict:
    """Saves the model, rewrites the history, draws the curves, writes ``metrics.json``.

    A finished run keeps one copy of each model it needs: ``model.keras`` (the last
    epoch's, without optimizer state) and ``checkpoints/best.keras`` only where the best
    epoch was not the last; the resumable state and ``last.keras`` (``model.keras`` now)
    go once ``metrics.json`` is written.

    Returns the metrics (those of every loop plus ``extra``) and ``run_dir``."""
    save_model(model, run.model_path, include_optimizer=False)
    rows = run.rewrite_history()
    plot_history(rows, run.curves_path)
    last = rows[-1]
    train_seconds = sum(row.get("epoch_seconds", 0.0) for row in rows)
    images = len(rows) * steps_per_epoch * global_batch
    metrics = {
        "val_accuracy": last["val_accuracy"],
        "val_loss": last["val_loss"],
        "best_val_accuracy": max(row["val_accuracy"] for row in rows),
        "train_accuracy": last["accuracy"],
        "train_loss": last["loss"],
        "epochs": len(rows),
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(images / train_seconds, 1) if train_seconds else None,
        "optimizer_steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "steps_per_epoch": steps_per_epoch,
        "global_batch_size": global_batch,
        "parameters": model.count_params(),
        "train_examples": datasets.train_examples,
        "validation_examples": datasets.validation_examples,
        "class_names": list(datasets.class_names),
        "resumed_after_epoch": len(previous_rows) if resuming else None,
        **(extra or {}),
    }
    run.write_metrics(metrics)  # the run is finished from here on
    shutil.rmtree(run.backup_dir, ignore_errors=True)  # resumable state of an unfinished run only
    _remove_copies_of_the_model(run, rows)
    if run.replaces is not None:
        run.promote()  # only now does the replaced run go
    return {**metrics, "run_dir": run.path}


def _remove_copies_of_the_model(run: RunFolder, rows: List[Dict]) -> None:
    # last.keras holds what model.keras holds; best.keras too when the last epoch was the best.
    paths = [run.last_checkpoint]
    if rows and "val_accuracy" in rows[-1] and rows[-1]["val_accuracy"] >= max(row["val_accuracy"] for row in rows):
        paths.append(run.best_checkpoint)
    for path in paths:
        if os.path.exists(path):
            os.remove(path)
    with contextlib.suppress(OSError):
        os.rmdir(run.checkpoints_dir)  # only when nothing is left in it
