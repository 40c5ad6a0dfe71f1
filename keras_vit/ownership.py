"""What keras-vit owns: the marker file of the folders it creates, and names made safe for paths.

Every folder keras-vit creates for its output (a run folder, an export folder) holds
``.keras-vit.json``: what the folder is (``"run"`` or ``"export"``), the keras-vit version,
and the names of the entries (top-level files and folders) keras-vit writes there, each
recorded before it is written, so a kill never leaves an entry keras-vit wrote unlisted.

The rules that follow from it:

- a folder without the marker is never deleted or replaced, whatever it holds (a model
  downloaded from a hub, a project with its own ``config.json``);
- a marked folder is replaced only whole (built beside it, then swapped in with one
  atomic exchange, :func:`put_in_place`), and only when it holds nothing the marker does
  not list: anything else in it makes the command refuse, naming it. Carrying the user's
  files across a swap would make their safety depend on a multi-step move a kill can
  interrupt; refusing loses nothing and costs the user one ``mv``;
- image-folder scanning skips marked folders (:func:`is_marked`), so keras-vit's outputs
  never become its inputs;
- a name that becomes a file name (a class name, say) goes through :func:`safe_filename`
  and :func:`path_inside`, so nothing is written outside the folder it belongs to.

Standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
from typing import Callable, Iterable, List, Optional, Set

MARKER = ".keras-vit.json"
KINDS = ("run", "export")


def _version() -> str:
    from keras_vit.version import __version__

    return __version__


def read_marker(folder) -> Optional[dict]:
    """The marker of ``folder`` (``kind``, ``entries``), or None when it has none or an unreadable one."""
    try:
        with open(os.path.join(folder, MARKER)) as file:
            marker = json.load(file)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("kind") not in KINDS or not isinstance(marker.get("entries"), list):
        return None
    return marker


def is_marked(folder) -> bool:
    """Whether ``folder`` is one keras-vit created (a run or an export)."""
    return os.path.isfile(os.path.join(folder, MARKER))


def mark(folder, kind: str, entries: Iterable[str] = ()) -> None:
    """Writes ``folder``'s marker (atomically): it is a keras-vit ``kind`` that writes ``entries``."""
    from keras_vit.files import write_json

    write_json(os.path.join(folder, MARKER),
               {"kind": kind, "keras_vit_version": _version(), "entries": sorted(set(entries))})


def record(folder, *names: str) -> None:
    """Adds ``names`` to ``folder``'s marker, before they are written (no marker: nothing)."""
    marker = read_marker(folder)
    if marker is not None and not set(names) <= set(marker["entries"]):
        mark(folder, marker["kind"], [*marker["entries"], *names])


def entries(folder, ignore: Iterable[str] = ()) -> List[str]:
    """The entries of ``folder`` other than the marker and ``ignore``, sorted."""
    skipped = {MARKER, *ignore}
    return sorted(name for name in os.listdir(folder) if name not in skipped)


def owned(folder, kind: str, legacy: Optional[Callable[[str], Optional[Set[str]]]] = None) -> Optional[Set[str]]:
    """The entries keras-vit owns in ``folder`` as a ``kind``: those its marker lists, or for
    an unmarked folder written by an earlier version, what ``legacy(folder)`` recognises.
    None when ``folder`` is not a keras-vit ``kind``."""
    marker = read_marker(folder)
    if marker is not None:
        return set(marker["entries"]) if marker["kind"] == kind else None
    return legacy(folder) if legacy is not None and not is_marked(folder) else None


def describe(names: List[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def refuse_unless_replaceable(folder, kind: str, mine: Optional[Set[str]], ignore: Iterable[str] = (),
                              choose: str = "choose another --output") -> None:
    """Raises ValueError (one line) unless ``folder`` may be replaced whole: it is a keras-vit
    ``kind`` (``mine``: what :func:`owned` returned) and holds nothing else."""
    held = entries(folder, ignore)
    if mine is None:
        found = read_marker(folder)
        what = f"a keras-vit {found['kind']}, not {kind}" if found else f"not a keras-vit {kind} (no {MARKER})"
        raise ValueError(f"{folder!r} is {what}; it holds {describe(held) or 'nothing'}. Nothing in it is touched, "
                         f"even with --overwrite: {choose}.")
    foreign = [name for name in held if name not in mine]
    if foreign:
        raise ValueError(f"{folder!r} holds files keras-vit did not write ({describe(foreign)}); --overwrite replaces a "
                         f"{kind} only whole and never deletes them: move them out first, or {choose}.")


def remove_owned(folder, mine: Set[str], ignore: Iterable[str] = ()) -> List[str]:
    """Deletes the entries of ``folder`` in ``mine`` (and ``ignore``, the marker), then the
    folder if nothing is left. Returns what is left (files keras-vit did not write)."""
    for name in entries(folder) + [MARKER]:
        if name in mine or name in ignore or name == MARKER:
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
    left = os.listdir(folder)
    if not left:
        os.rmdir(folder)
    return sorted(left)


def real_folder(path) -> str:
    """``path`` with symbolic links followed (a linked output is written where it points,
    never replaced); refuses a link to nothing."""
    path = os.fspath(path)
    if os.path.islink(path) and not os.path.exists(path):
        raise ValueError(f"{path!r} is a symbolic link to {os.readlink(path)!r}, which does not exist; "
                         f"create the folder it points to or choose another --output.")
    return os.path.realpath(path)


# renameat2(2) with RENAME_EXCHANGE swaps two paths in one step (Linux >= 3.15, glibc >= 2.28).
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(first, second) -> None:
    """Swaps two folders atomically where the system can (a kill leaves one or the other in
    each place, never neither), else with three renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        renameat2 = None
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
            return
        error = ctypes.get_errno()
        if error not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(error, os.strerror(error), os.fspath(second))
    aside = f"{os.fspath(first)}.exchange"
    os.replace(second, aside)
    os.replace(first, second)
    os.replace(aside, first)


def put_in_place(built, target, replaced: Optional[Set[str]]) -> List[str]:
    """Moves the finished folder ``built`` to ``target`` (a real path). ``replaced``: what
    keras-vit owns in the folder at ``target`` (None when there is none or it is empty);
    that folder is swapped out whole and its owned entries deleted. Returns the entries
    left in the swapped-out folder (at ``built``) because keras-vit did not write them."""
    if replaced is None:
        os.replace(built, target)  # onto nothing, or onto an empty folder
        return []
    exchange(built, target)
    return remove_owned(built, replaced)


# --------------------------------------------------------------------------- names that become paths
_UNSAFE = re.compile(r"[^\w.+-]+")
MAX_NAME_CHARS = 80


def safe_filename(name: str, fallback: str = "unnamed") -> str:
    """``name`` as one file name inside a folder: separators, ``..``, control and other
    characters than letters, digits, ``.``, ``+``, ``-`` and ``_`` become ``_``; no leading
    dot; at most ``MAX_NAME_CHARS`` characters; ``fallback`` when nothing is left."""
    safe = _UNSAFE.sub("_", str(name)).lstrip(".")[:MAX_NAME_CHARS]
    return safe if safe.strip("_") else fallback


def path_inside(folder, name: str) -> str:
    """``folder/name``, refusing a name that would lead outside ``folder``."""
    path = os.path.join(folder, name)
    root = os.path.realpath(folder)
    if os.path.dirname(os.path.realpath(path)) != root:
        raise ValueError(f"File name {name!r} would be written outside {folder!r}; expected a plain file name.")
    return path
