"""Writing files so that a kill at any instant leaves the old file or the new one.

Every file keras_vit writes (models, checkpoints, ``.npz``, configs, history, metrics,
exports, figures, manifests) goes through :func:`replaced_atomically`: written under a
temporary name in the same folder, flushed to disk, then renamed over the target. A
write the system refuses (a full disk, a file-size limit, a read-only disk) raises an
``OSError`` naming the target, whose old version is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil


@contextlib.contextmanager
def replaced_atomically(path):
    """Yields a temporary path in ``path``'s folder; once the block has written it, the file
    is flushed to disk and renamed over ``path``. A kill at any instant leaves the old file
    or the new one, never a torn one. The temporary name keeps ``path``'s extension (Keras
    checks ``.keras`` and ``.weights.h5``)."""
    folder, name = os.path.split(os.fspath(path))
    extension = ".weights.h5" if name.endswith(".weights.h5") else os.path.splitext(name)[1]
    temporary = os.path.join(folder, f".{name}.tmp-{os.getpid()}{extension}")
    try:
        yield temporary
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise _named(error, path) from error
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


# A write that the system refused: the disk is full, the file too large for its limit, the
# disk read-only or failing. Other errors (a missing source file, say) pass unchanged.
_WRITE_FAILURES = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO}


def _named(error: OSError, path) -> OSError:
    """``error`` as one line naming ``path`` (not the temporary, which is gone), for a
    write the system refused; any other error unchanged."""
    if error.errno not in _WRITE_FAILURES:
        return error
    return OSError(error.errno, f"{os.strerror(error.errno)} (the file is left as it was)", os.fspath(path))


def write_json(path, values) -> None:
    """Writes ``values`` as indented JSON, atomically (:func:`replaced_atomically`)."""
    with replaced_atomically(path) as temporary, open(temporary, "w") as file:
        json.dump(values, file, indent=2)


def save_model(model, path, *, include_optimizer: bool = True) -> None:
    """``model.save(path)``, atomically (:func:`replaced_atomically`).

    ``include_optimizer=False`` writes the model alone, as an uncompiled model: no
    optimizer state (twice the weights for Adam) and no compile settings; Keras 3 ignores
    its own ``include_optimizer`` for ``.keras`` files, so the optimizer is set aside while
    the file is written."""
    with replaced_atomically(path) as temporary:
        if include_optimizer or getattr(model, "optimizer", None) is None:
            model.save(temporary)
            return
        optimizer, compiled = model.optimizer, model.compiled
        model.optimizer, model.compiled = None, False
        try:
            model.save(temporary)
        finally:
            model.optimizer, model.compiled = optimizer, compiled


@contextlib.contextmanager
def replaced_folder_atomically(path):
    """As :func:`replaced_atomically` for a folder (a SavedModel): written beside, then
    renamed into place; an existing folder at ``path`` is replaced only once the new one is whole."""
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    temporary = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    previous = os.path.join(parent, f".{name}.old-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        yield temporary
        if os.path.exists(path):
            os.replace(path, previous)
        os.replace(temporary, path)
        shutil.rmtree(previous, ignore_errors=True)
    except OSError as error:
        if os.path.exists(previous) and not os.path.exists(path):
            os.replace(previous, path)  # the old folder back where it was
        raise _named(error, path) from error
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
