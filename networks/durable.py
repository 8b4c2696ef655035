# Copyright (c) the dermseg contributors. Apache-2.0.
"""Writing a file so that a reader, or a rerun after a crash, sees either the old file or the whole new one.

Every layer writes through here: the app's outputs, the edge store, the PACS transfer record, the bundle's
weights, logs and exports.  A file is written under a temporary name in its own folder (``.<name>.<random>.part``,
which :func:`is_partial_name` recognises, so a cleaner can remove what a killed process left), flushed to disk and
renamed into place.  The temporary file is created with the process's umask, as an ordinary open would.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable, Union

__all__ = ["atomic_write_with", "atomic_write_bytes", "atomic_symlink", "fsync_folder", "is_partial_name", "partial_name"]

PathLike = Union[str, os.PathLike]


def partial_name(path: PathLike) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.<random>.part``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")


def is_partial_name(name: str) -> bool:
    """Whether a file name is one :func:`partial_name` makes."""
    return name.startswith(".") and name.endswith(".part")


def atomic_write_with(path: PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary name beside ``path``, fsync the result, then rename it into place.

    Where ``write`` raises, the temporary file is removed and ``path`` is left as it was.  Flushing the folder
    itself is the caller's business where a rename must survive a power cut (the edge store does it).
    """
    path = Path(path)
    tmp = partial_name(path)
    open(tmp, "xb").close()
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_with`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write_with(path, write)


def fsync_folder(folder: PathLike) -> None:
    """Make renames and new entries in ``folder`` durable (a rename is only safe once its folder is synced)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_symlink(target: str, link: PathLike) -> None:
    """Make ``link`` a symbolic link to ``target``, replacing what is there by one atomic rename, and sync its
    folder: a reader sees the old link or the new one, never none."""
    link = Path(link)
    tmp = partial_name(link)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_folder(link.parent)
