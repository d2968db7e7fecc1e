"""Durable and atomic file writes: evo_mpi's one write-then-rename.

After a crash, a file written by :func:`write_atomic` (or its text, JSON and
save-to-a-path forms) is either its old self or the whole new file, never a
part: the data goes to a temporary file in the same directory, is flushed
and fsynced, and is then renamed over the target (``os.replace`` is atomic
on POSIX file systems). :func:`write_synced` and :func:`fsync_dir` are the
steps for files inside a temporary directory that is renamed as a whole
(checkpoints).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import IO, Any


def write_synced(path: str, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` (binary) through ``write(fh)``, then flush and fsync it. Not atomic by itself."""
    with open(path, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(path: str) -> None:
    """Fsync a directory, so that the names created or renamed in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, write: Callable[[IO[bytes]], object], tmp: str | None = None) -> None:
    """Replace ``path`` atomically by what ``write(fh)`` writes.

    Args:
        path: The file to write.
        write: Writes the content to the binary file object it is given.
        tmp: The temporary file, in ``path``'s directory; default ``path + ".tmp"``.

    """
    tmp = path + ".tmp" if tmp is None else tmp
    write_synced(tmp, write)
    os.replace(tmp, path)


def write_text_atomic(path: str, text: str, tmp: str | None = None) -> None:
    """Replace ``path`` atomically by ``text`` in UTF-8 (``tmp`` as in :func:`write_atomic`)."""
    data = text.encode("utf-8")
    write_atomic(path, lambda fh: fh.write(data), tmp)


def write_json_atomic(path: str, data: Any) -> None:
    """Replace ``path`` atomically by ``data`` as strict JSON (NaN raises: write it as null), indented by 2,
    keys sorted, a final newline.
    """
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def save_atomic(path: str, save: Callable[[str], object], tmp: str) -> None:
    """Replace ``path`` atomically by the file ``save(tmp)`` creates (writers that take a path, e.g. SB3's save).

    Args:
        path: The file to write.
        save: Creates the file at the path it is given.
        tmp: The temporary file, in ``path``'s directory (with the suffix ``save`` expects).

    """
    save(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


__all__ = ["fsync_dir", "save_atomic", "write_atomic", "write_json_atomic", "write_synced", "write_text_atomic"]
