"""The run folder: the only code that knows which files a training run writes, and where.

::

    saved_models/<run-name>/
        config.json          the resolved training configuration, with the class names
        model.keras          the trained model, without optimizer state (``keras.saving.load_model``)
        checkpoints/         last.keras (every epoch) and best.keras (best val_accuracy); once the
                             run has finished, only best.keras where the best epoch was not the last
        backup/              resumable state while the run is unfinished (state.json, weights)
        logs/                TensorBoard
        history.csv          one row per completed epoch
        training_curves.png  loss and accuracy per epoch
        metrics.json         written last: its presence marks a finished run
        export/              what ``keras-vit export`` writes by default
        .keras-vit.json      the marker: a keras-vit run, and the entries above it writes

Training (both loops), evaluation, export, prediction and the figures open runs through
:class:`RunFolder`; no other module spells these names.

Ownership (:mod:`keras_vit.ownership`): a run folder is keras-vit's only when it holds the
marker (or, written by an earlier version without one, when every entry is a run file and
its ``config.json`` is a keras-vit configuration). ``--overwrite`` replaces only such a
folder, only when it holds nothing but what the marker lists (anything else is named and
the command refuses), and only whole: the new run is built beside it
(:meth:`RunFolder.replacement`) and swapped in by one atomic exchange once it has finished
(:meth:`RunFolder.promote`). A symbolically linked run folder is followed, never replaced.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import os
import shutil
from typing import Dict, List, Optional

from keras_vit import ownership
from keras_vit.files import replaced_atomically, write_json

logger = logging.getLogger(__name__)

DEFAULT_RUNS_DIR = "saved_models"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
CLASS_NAMES_KEY = "class_names"  # in config.json, beside the configuration's fields
LOCK_FILE = ".lock"  # held by the process that trains into the folder
EXPORT_DIR = "export"
# What a run writes in its folder, recorded in its marker before any of it is written.
RUN_ENTRIES = (CONFIG_FILE, MODEL_FILE, "checkpoints", "backup", "logs", HISTORY_FILE, CURVES_FILE, METRICS_FILE,
               EXPORT_DIR, LOCK_FILE)
# Keys one of which every keras-vit config.json has held (sections, or the flat fields of old versions).
_RUN_CONFIG_KEYS = {CLASS_NAMES_KEY, "model", "optimization", "epochs"}


class RunFolder:
    """One run folder's files (see the module docstring).

    Args:
        path: the folder (``saved_models/<run>`` by default for training).
    """

    def __init__(self, path, replaces: Optional["RunFolder"] = None):
        self.path = os.fspath(path)
        self.replaces = replaces  # the run this one takes the place of once it has finished

    def __repr__(self):
        return f"RunFolder({self.path!r})" if self.replaces is None else f"RunFolder({self.path!r}, replaces={self.replaces!r})"

    # ------------------------------------------------------------------ replacing a run
    def replacement(self) -> "RunFolder":
        """The folder beside this one where a run that replaces it (``--overwrite``) is built.

        The old run stays whole until the new one has finished; :meth:`promote` then swaps
        them. A replacement killed half-way leaves the old run as it was."""
        parent, name = os.path.split(ownership.real_folder(self.path))  # a linked run is replaced where it lies
        return RunFolder(os.path.join(parent, f".{name}.replacement"), replaces=self)

    def promote(self) -> None:
        """Puts this finished replacement in the place of the run it replaces (one atomic
        exchange), then deletes what keras-vit wrote in the old run."""
        target = self.replaces
        replaced = target.owned_entries() or set()
        left = ownership.put_in_place(self.path, ownership.real_folder(target.path), replaced | {LOCK_FILE})
        if left:  # written into the old run while this one trained: kept where the old run went
            logger.warning("Kept files keras-vit did not write in the replaced run: %s in %s",
                           ownership.describe(left), self.path)
        target.unlock()
        self.path, self.replaces = target.path, None

    def file(self, *parts) -> str:
        return os.path.join(self.path, *parts)

    @property
    def model_path(self) -> str:
        return self.file(MODEL_FILE)

    @property
    def config_path(self) -> str:
        return self.file(CONFIG_FILE)

    @property
    def history_path(self) -> str:
        return self.file(HISTORY_FILE)

    @property
    def metrics_path(self) -> str:
        return self.file(METRICS_FILE)

    @property
    def curves_path(self) -> str:
        return self.file(CURVES_FILE)

    @property
    def checkpoints_dir(self) -> str:
        return self.file("checkpoints")

    @property
    def last_checkpoint(self) -> str:
        return self.file("checkpoints", "last.keras")

    @property
    def best_checkpoint(self) -> str:
        return self.file("checkpoints", "best.keras")

    @property
    def backup_dir(self) -> str:
        return self.file("backup")

    @property
    def backup_state(self) -> str:
        """``backup/state.json``: where the run stands and which weights file holds its state."""
        return self.file("backup", "state.json")

    def worker_backup_dir(self, task_index: int) -> str:
        """Where a non-chief worker writes its share of a multi-worker save (TF's convention)."""
        return self.file(f"workertemp_{task_index}", "backup")

    @property
    def logs_dir(self) -> str:
        return self.file("logs")

    @property
    def export_dir(self) -> str:
        return self.file(EXPORT_DIR)

    # ------------------------------------------------------------------ state
    def is_empty(self) -> bool:
        return not os.path.exists(self.path) or (os.path.isdir(self.path) and not self._entries())

    def _entries(self) -> List[str]:
        return ownership.entries(self.path, ignore=[LOCK_FILE])

    def owned_entries(self):
        """What keras-vit wrote here as a run (see the module docstring); None when this is not a run."""
        return ownership.owned(self.path, "run", _legacy_run) if os.path.isdir(self.path) else None

    def is_run(self) -> bool:
        return self.owned_entries() is not None

    def is_finished(self) -> bool:
        return os.path.isfile(self.metrics_path)

    def repair(self) -> Optional[str]:
        """Makes a finished run's model file whole again if it is missing or damaged.

        ``checkpoints/last.keras`` holds the weights of the last epoch, which is what
        ``model.keras`` holds once training has finished; it is copied over (atomically).
        Returns a one-line account of the repair, or None when nothing needed it.

        Raises:
            ValueError: the model file is damaged and no whole checkpoint can replace it.
        """
        import zipfile

        if not self.is_finished() or zipfile.is_zipfile(self.model_path):
            return None
        state = "missing" if not os.path.exists(self.model_path) else "damaged (not a whole .keras file)"
        if not zipfile.is_zipfile(self.last_checkpoint):
            raise ValueError(
                f"Run folder {self.path!r}: {MODEL_FILE} is {state} and no whole checkpoint can replace it "
                f"({self.last_checkpoint} is missing or damaged too); train it again with --overwrite."
            )
        with replaced_atomically(self.model_path) as temporary:
            shutil.copyfile(self.last_checkpoint, temporary)
        return f"{self.model_path} was {state}; restored from {self.last_checkpoint} (the last epoch's model)."

    # ------------------------------------------------------------------ config and class names
    def read_config(self) -> Optional[Dict]:
        """The whole ``config.json`` (configuration fields and class names), or None."""
        if not os.path.isfile(self.config_path):
            return None
        with open(self.config_path) as file:
            try:
                values = json.load(file)
            except json.JSONDecodeError as error:
                raise ValueError(f"Cannot read {self.config_path!r} as JSON: {error}.") from error
        if not isinstance(values, dict):
            raise ValueError(f"{self.config_path!r} holds {type(values).__name__}, not a configuration mapping.")
        return values

    def training_config(self) -> Optional[Dict]:
        """The configuration fields of ``config.json`` (the class names left out), or None."""
        values = self.read_config()
        if values is None:
            return None
        return {key: value for key, value in values.items() if key != CLASS_NAMES_KEY}

    def class_names(self) -> Optional[List[str]]:
        """The class names the run was trained with, in label order, or None."""
        values = self.read_config() or {}
        names = values.get(CLASS_NAMES_KEY)
        return [str(name) for name in names] if names else None

    def image_folder(self) -> Optional[str]:
        """The image folder the run was validated on (or trained on), if it still exists."""
        values = _leaves(self.training_config() or {})
        for key in ("validation_folder", "image_folder"):
            folder = values.get(key)
            if folder and os.path.isdir(folder):
                return folder
        return None

    def write_config(self, config: Dict, class_names: Optional[List[str]] = None) -> None:
        values = dict(config)
        if class_names is not None:
            values[CLASS_NAMES_KEY] = [str(name) for name in class_names]
        write_json(self.config_path, values)

    def write_metrics(self, metrics: Dict) -> None:
        write_json(self.metrics_path, metrics)

    def read_metrics(self) -> Optional[Dict]:
        if not os.path.isfile(self.metrics_path):
            return None
        with open(self.metrics_path) as file:
            return json.load(file)

    # ------------------------------------------------------------------ history
    def read_history(self) -> List[Dict[str, float]]:
        """Rows of ``history.csv`` as dicts of floats, one per epoch (the latest if repeated)."""
        if not os.path.isfile(self.history_path):
            return []
        with open(self.history_path, newline="") as file:
            reader = csv.DictReader(file)
            rows, header = list(reader), reader.fieldnames
        refused = (f"{self.history_path!r} is not a keras-vit history (one row per epoch under a header with an "
                   f"'epoch' column and numbers); move it away or train again with --overwrite")
        if header is not None and "epoch" not in header:  # (an empty file: no epoch has ended yet)
            raise ValueError(f"{refused}: its header is {header}.")
        by_epoch = {}
        for number, row in enumerate(rows, start=2):
            try:
                values = {key: float(value) for key, value in row.items() if value not in ("", None)}
                by_epoch[int(values["epoch"])] = values
            except (ValueError, TypeError, KeyError):
                raise ValueError(f"{refused}: line {number} reads {list(row.values())}.") from None
        return [by_epoch[epoch] for epoch in sorted(by_epoch)]

    def append_history(self, row: Dict) -> None:
        new = not os.path.isfile(self.history_path)
        with open(self.history_path, "a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def rewrite_history(self) -> List[Dict[str, float]]:
        """Rewrites ``history.csv`` with one row per epoch and returns the rows.

        A kill between an epoch's row and its backup repeats that epoch on resume.
        """
        rows = self.read_history()
        if not rows:
            return rows
        columns = ["epoch"] + sorted({key for row in rows for key in row} - {"epoch"})
        with replaced_atomically(self.history_path) as temporary, open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "epoch": int(row["epoch"])})
        return rows

    # ------------------------------------------------------------------ starting a run
    def check(self, config: Dict, *, resume=False, overwrite=False, canonical=None) -> bool:
        """Decides what to do with this folder before any work starts; returns whether to resume.

        A missing or empty folder starts a new run. An unfinished run (``config.json`` but
        no ``metrics.json``) with the same configuration resumes, so that a killed run
        continues when its command is given again. Anything else is refused unless
        ``overwrite``.

        Raises:
            ValueError: when the folder holds a finished run, another configuration, or
                files that are not a run, and ``overwrite`` is not given; or when both
                ``resume`` and ``overwrite`` are given.
            FileNotFoundError: when ``resume`` is given and there is no run to resume.

        ``canonical`` maps a saved configuration to the form of ``config`` (for files
        written in an older layout) before the two are compared.
        """
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: resume continues a run, overwrite deletes it.")
        ownership.real_folder(self.path)  # refuses a link to nothing
        if self.is_empty():
            if resume:
                raise FileNotFoundError(f"Nothing to resume: run folder {self.path!r} does not exist or is empty.")
            return False
        if not self.is_run():
            if not os.path.isdir(self.path):
                raise ValueError(f"Run folder {self.path!r} is a file, not a folder; choose another run_name/--output.")
            marker = ownership.read_marker(self.path)
            raise ValueError(
                f"Run folder {self.path!r} exists and is not a keras-vit run "
                f"({'a keras-vit ' + marker['kind'] if marker else 'no ' + ownership.MARKER}; it holds "
                f"{ownership.describe(self._entries())}); nothing in it is touched, and --overwrite "
                f"replaces only keras-vit runs. Choose another run_name/--output."
            )
        if overwrite:  # refused now, before any work, if the run holds files keras-vit did not write
            ownership.refuse_unless_replaceable(self.path, "run", self.owned_entries(), ignore=[LOCK_FILE],
                                                choose="choose another run_name/--output")
            return False
        if self.is_finished():
            raise ValueError(
                f"Run folder {self.path!r} holds a finished run. Choose another run_name/--output, or pass "
                f"--overwrite to replace it."
            )
        saved = self.training_config()
        if canonical is not None:
            try:
                saved = canonical(saved)
            except (ValueError, TypeError) as error:
                raise ValueError(f"Run folder {self.path!r} holds an unreadable configuration ({error}).") from None
        saved, current = _leaves(json.loads(json.dumps(saved))), _leaves(json.loads(json.dumps(config)))
        different = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
        if different:
            changes = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in different)
            raise ValueError(
                f"Run folder {self.path!r} holds an unfinished run with another configuration ({changes}). Give the "
                f"same configuration to resume it, or pass --overwrite to start again."
            )
        return True

    def lock(self) -> None:
        """Takes the folder for this process until it exits or :meth:`unlock`; a second
        process training into it is refused with one line naming the holder."""
        import fcntl

        os.makedirs(self.path, exist_ok=True)
        handle = open(self.file(LOCK_FILE), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RuntimeError(
                f"Run folder {self.path!r} is in use by keras-vit process {holder}; wait for it to finish, or "
                f"choose another run_name/--output."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        """Releases the folder; a folder left holding nothing but the lock is removed."""
        if self.replaces is not None:
            self.replaces.unlock()
        handle = getattr(self, "_lock", None)
        if handle is None:
            return
        if self.is_empty():  # the run stopped before writing anything (bad data, say)
            os.remove(self.file(LOCK_FILE))
            with contextlib.suppress(OSError):
                os.remove(self.file(ownership.MARKER))
            with contextlib.suppress(OSError):
                os.rmdir(self.path)
        handle.close()  # releases the lock
        self._lock = None

    def begin(self, config: Dict, class_names: List[str], *, resuming: bool, overwrite: bool) -> None:
        """Marks the folder as a run (listing what it will write, before writing it), empties
        it of what keras-vit wrote with ``overwrite`` (a replacement left by a killed one)
        and, for a new run, writes ``config.json`` with the class names."""
        os.makedirs(self.path, exist_ok=True)
        if overwrite:
            for entry in set(self._entries()) & (self.owned_entries() or set()):
                target = self.file(entry)
                shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) else os.remove(target)
        if ownership.read_marker(self.path) is None:  # a new run, or one an earlier version wrote
            ownership.mark(self.path, "run", RUN_ENTRIES)
        if not resuming:
            self.write_config(json.loads(json.dumps(config)), class_names)


def _legacy_run(folder) -> Optional[set]:
    """A run written before the marker: nothing but run files, and a keras-vit ``config.json``."""
    names = set(os.listdir(folder))
    if CONFIG_FILE not in names or not names <= set(RUN_ENTRIES):
        return None
    try:
        with open(os.path.join(folder, CONFIG_FILE)) as file:
            config = json.load(file)
    except (OSError, ValueError):
        return None
    return set(RUN_ENTRIES) if isinstance(config, dict) and _RUN_CONFIG_KEYS & set(config) else None


def _leaves(values: Dict) -> Dict:
    # A configuration's fields, sections flattened (field names are unique across sections).
    leaves = {}
    for key, value in values.items():
        leaves.update(_leaves(value) if isinstance(value, dict) else {key: value})
    return leaves


# ---------------------------------------------------------------------- models given by path
def resolve_model_path(path) -> str:
    """The ``.keras`` file that ``path`` names: the file itself, or a run folder's model.

    Raises:
        FileNotFoundError: nothing there, or a run folder without its model (unfinished).
        ValueError: a path that is neither a ``.keras`` file nor a folder.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        run = RunFolder(path)
        repaired = run.repair()
        if repaired:
            logger.warning("%s", repaired)
        candidate = run.model_path
        if not os.path.isfile(candidate):
            raise FileNotFoundError(
                f"Run folder {path!r} has no {MODEL_FILE} (an unfinished run? train it again to resume); pass a "
                f".keras file or a run folder written by training ({DEFAULT_RUNS_DIR}/<run>/{MODEL_FILE})."
            )
        return candidate
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such model file: {path!r}.")
    if not path.endswith(".keras"):
        raise ValueError(f"Expected a .keras model file or a run folder; got {path!r}.")
    return path


def load_model(path):
    """The Keras model that ``path`` names (a ``.keras`` file or a run folder), for inference.

    keras_vit's classes are registered first, so this works from the command line too,
    where ``import keras_vit`` loads nothing eagerly. Not compiled: the optimizer is not needed.
    """
    import keras

    from keras_vit.core import models  # noqa: F401  (registers the layers and the model)

    return keras.saving.load_model(resolve_model_path(path), compile=False)


def of_model(path) -> RunFolder:
    """The run folder that holds the model ``path`` names (a ``.keras`` file or a run folder)."""
    return RunFolder(os.path.dirname(os.path.abspath(resolve_model_path(path))))
