"""Reading files whose paths come from options or data rows: regular files only, never more than a limit.

``/dev/zero`` would grow without end and a FIFO would block for ever, so a
path must name a regular file; its size is checked before reading (stat)
and again while reading (it may grow in between).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import InputError
from .limits import Limit, human_size


class FileRefused(Exception):
    """A file that cannot be read as asked; ``reason`` is the problem and its fix, ready for a message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _too_big(limit: Limit, max_bytes: int) -> FileRefused:
    return FileRefused(
        f"larger than the limit of {human_size(max_bytes)}; use a smaller file or raise {limit.variable}"
    )


def regular_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable regular file (following symlinks), or None if it is one."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "no such file; check the path"
    except NotADirectoryError:
        return "no such file (a part of the path is not a folder); check the path"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc}); check the path and permissions"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not a file; attach files one by one"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a device, FIFO or socket); name a regular file"
    return None


def read_regular_file(path: Path, limit: Limit) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; FileRefused otherwise."""
    max_bytes = int(limit.value())
    problem = regular_file_problem(path)
    if problem is not None:
        raise FileRefused(problem)
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the check, opening it must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise FileRefused(f"cannot read ({exc.strerror or exc}); check the file's permissions") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused("not a regular file (a device, FIFO or socket); name a regular file")
        if info.st_size > max_bytes:
            raise _too_big(limit, max_bytes)
        data = handle.read(max_bytes + 1)  # the file may have grown since stat
    if len(data) > max_bytes:
        raise _too_big(limit, max_bytes)
    return data


def read_text_file(path: Path, limit: Limit, label: str | None = None) -> str:
    """The UTF-8 text (a BOM dropped) of the regular file ``path``, at most ``limit`` bytes.

    InputError naming ``label`` (default: the path) when the file is refused or is not UTF-8.
    """
    where = str(path) if label is None else label
    try:
        data = read_regular_file(path, limit)
    except FileRefused as exc:
        raise InputError(f"{where}: {exc.reason}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text; save the file as UTF-8") from None
