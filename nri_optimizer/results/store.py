"""Result files: the plain list, the CSV and the nydus JSON prefetch file, written atomically and never
through a symlink.

Names, as upstream: ``<persist_dir>/<repository path>/<name>:<tag>`` (``.timeout<N>s`` appended when a
timeout is set), and beside it ``<same>.csv`` and ``<same>.json``.

What goes into each file is results.formats' business; this module only puts the set in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Sequence

from nri_optimizer.errors import PersistError
from nri_optimizer.results.formats import Entry, render

log = logging.getLogger(__name__)

FILE_MODE = 0o644
DIR_MODE = 0o755


def _open_dir(persist_dir: str, components: Iterable[str]) -> int:
    """Open persist_dir/components..., creating what is missing, refusing any symlink on the way down
    (persist_dir itself is the administrator's choice, and may be one)."""
    os.makedirs(persist_dir, DIR_MODE, exist_ok=True)
    fd = os.open(persist_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in components:
            if name in ("", ".", "..") or "/" in name or "\0" in name:
                raise PersistError(f"refusing path component {name!r}")
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, DIR_MODE, dir_fd=fd)
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                raise PersistError(f"{name}: not a directory we can use ({exc.strerror})") from exc
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _write_atomically(dir_fd: int, name: str, data: bytes) -> None:
    """Write to a fresh temp file beside the target, fsync, rename over it: a reader sees the old file or
    the whole new one, and a crash leaves at most a stray temp file, never half a list. rename() replaces a
    symlink at the target instead of following it."""
    temp = f".{name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, FILE_MODE)  # whatever the umask
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


def exists(persist_dir: str, relative_dir: str, name: str) -> bool:
    """Whether a result (its plain list) is already there; upstream's overwrite=false test."""
    path = os.path.join(persist_dir, relative_dir, name)
    return os.path.isfile(path) and not os.path.islink(path)


def persist(
    persist_dir: str,
    relative_dir: str,
    name: str,
    entries: Sequence[Entry],
    *,
    readable: bool,
    overwrite: bool,
    incomplete: str | None = None,
) -> tuple[str, int] | None:
    """Write the three files; returns (path of the plain list, paths listed), or None when a result
    exists and ``overwrite`` is false (the earlier result is kept untouched). Paths the odd-name rule
    leaves out are the difference between ``len(entries)`` and the paths listed."""
    plain, table, prefetch, left_out = render(entries, readable=readable, incomplete=incomplete)
    components = [c for c in relative_dir.split("/") if c]
    try:
        dir_fd = _open_dir(persist_dir, components)
    except OSError as exc:
        raise PersistError(f"{persist_dir}/{relative_dir}: {exc.strerror or exc}") from exc
    try:
        if not overwrite:
            try:
                os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                return None
            except FileNotFoundError:
                pass
        # The CSV and JSON first, the list last: the list's presence is what says "this image is done".
        for suffix, data in ((".csv", table), (".json", prefetch), ("", plain)):
            try:
                _write_atomically(dir_fd, name + suffix, data)
            except OSError as exc:
                raise PersistError(f"{name + suffix}: {exc.strerror or exc}") from exc
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return os.path.join(persist_dir, *components, name), len(entries) - left_out
