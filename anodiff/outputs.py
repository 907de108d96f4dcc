"""How anodiff writes its outputs: each file atomically, into folders it made, and it removes only those.

Every file is written to a temporary name beside its target and renamed into place
(:func:`replaced_atomically`), so a killed run leaves no half-written file under a
real name; its stale temporaries are recognised by name and removed by the next write.

A folder anodiff creates for its output (a synthetic cohort, a model, a prepared
case, an evaluation report) carries a marker file, :data:`MARKER`, naming the
command that made it. ``--overwrite`` empties or replaces such a folder; any other
non-empty folder is refused, so a mistyped path never removes a user's data.

This module does not decide what goes into a file or folder; the commands do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from anodiff.errors import DataError

MARKER = ".anodiff"


def mark(folder: Path, made_by: str) -> Path:
    """Create ``folder`` if needed and mark it as made by ``made_by`` (e.g. ``"anodiff evaluate"``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"made_by": made_by}) + "\n", encoding="utf-8")
    return folder


def is_marked(folder: Path) -> bool:
    """Whether ``folder`` carries anodiff's marker."""
    return (folder / MARKER).is_file()


def is_empty(folder: Path) -> bool:
    """True for a folder that does not exist or holds nothing."""
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def check_removable(folder: Path, *, what: str = "folder") -> None:
    """Raise DataError unless ``folder`` may be removed: absent, empty, or marked as anodiff's."""
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: is a file, not a {what}; choose another path")
    if not is_empty(folder) and not is_marked(folder):
        raise DataError(f"{folder}: not a {what} anodiff made (no {MARKER} marker in it); refusing to replace "
                        "it: choose a new or empty folder, or remove it yourself")


def remove(folder: Path, *, what: str = "folder") -> None:
    """Remove ``folder`` and all it holds, if anodiff made it (see :func:`check_removable`)."""
    check_removable(folder, what=what)
    if folder.exists():
        shutil.rmtree(folder)


def fresh_folder(folder: Path, made_by: str, *, overwrite: bool, what: str = "folder") -> Path:
    """``folder`` empty and marked: created, or with ``overwrite`` emptied when anodiff made it.

    Raises:
        DataError: ``folder`` holds files and ``overwrite`` is False, or it holds files anodiff did not make.
    """
    if not is_empty(folder):
        if not overwrite:
            raise DataError(f"{folder}: {what} exists and is not empty (pass --overwrite to replace it)")
        remove(folder, what=what)
    return mark(folder, made_by)


@contextmanager
def replaced_atomically(path: Path, *, suffix: str = "") -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed onto ``path`` if the block succeeds, removed if not.

    The name is ``.<name>.<8 hex>.tmp<suffix>`` in the same folder (the same file
    system, so the rename is atomic); ``suffix`` keeps a format-telling ending.
    """
    stem = path.name[: len(path.name) - len(suffix)]
    tmp = path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(path: Path, *, suffix: str = "") -> None:
    """Delete the temporaries of ``path`` that a killed :func:`replaced_atomically` left beside it."""
    stem = path.name[: len(path.name) - len(suffix)]
    own = re.compile(re.escape(f".{stem}.") + "[0-9a-f]{8}" + re.escape(f".tmp{suffix}"))
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            if own.fullmatch(candidate.name):
                candidate.unlink(missing_ok=True)


def normal_file_mode() -> int:
    """The mode ``open()`` gives a new file here (0o666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path``, whole or not at all."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, content: dict) -> None:
    write_text(path, json.dumps(content, indent=2))
