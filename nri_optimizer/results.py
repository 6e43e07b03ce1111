"""Result files: the plain list, the CSV and the nydus JSON prefetch file, written atomically and never
through a symlink.

Names, as upstream: ``<persist_dir>/<repository path>/<name>:<tag>`` (``.timeout<N>s`` appended when a
timeout is set), and beside it ``<same>.csv`` and ``<same>.json``.

The odd-name rule: the plain list is one path per line and nydus-image trims each line, so a path that
contains a line break (``\\n``, ``\\r``), begins or ends with white space, or is not valid UTF-8 cannot be
carried. Such a path is left out of all three files, and the number left out is logged.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii as encode_json_string
from typing import NamedTuple

log = logging.getLogger(__name__)

FILE_MODE = 0o644
DIR_MODE = 0o755


class Entry(NamedTuple):  # a tuple: one is made per file, and a frozen dataclass costs three times as much
    path: bytes  # as the kernel gave it: container-absolute, not necessarily UTF-8
    size: int  # bytes
    elapsed_us: int  # from StartContainer to the first access


def listable(path: bytes) -> str | None:
    """The path as list text, or None if the list format cannot carry it (the module's odd-name rule)."""
    if not path.startswith(b"/") or b"\n" in path or b"\r" in path:  # begins with "/": no leading white space
        return None
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if text[-1].isspace() else text


def readable_size(size: int) -> str:
    """Upstream's ByteToReadableIEC: "999 B", "1.2 KiB", "3.0 GiB"."""
    if size < 1024:
        return f"{size} B"
    div, exp = 1024, 0
    n = size // 1024
    while n >= 1024:
        div *= 1024
        exp += 1
        n //= 1024
    return f"{size / div:.1f} {'KMGTPE'[exp]}iB"


def readable_elapsed(us: int) -> str:
    """Upstream's MicroSecondToReadable: "850 us", "1.500 ms", "2.000 s"."""
    if us < 1000:
        return f"{us} us"
    if us < 1000_000:
        return f"{us / 1000:.3f} ms"
    return f"{us / 1000_000:.3f} s"


def render(
    entries: Sequence[Entry], *, readable: bool, incomplete: str | None = None
) -> tuple[bytes, bytes, bytes, int]:
    """(plain list, CSV, nydus JSON, number of paths left out by the odd-name rule).

    An ``incomplete`` list (the kernel lost events) says so in its first line, ``# incomplete: <why>``:
    not a path, so nydus-image skips it (it takes absolute paths only), and every path line starts with "/".
    """
    lines: list[str] = [f"# incomplete: {incomplete}"] if incomplete else []
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["path", "size", "elapsed"])
    left_out = 0
    for entry in entries:
        text = listable(entry.path)
        if text is None:
            left_out += 1
            continue
        lines.append(text)
        if readable:
            writer.writerow([text, readable_size(entry.size), readable_elapsed(entry.elapsed_us)])
        elif _CSV_PLAIN(text):
            table.write(f"{text},{entry.size},{entry.elapsed_us}\n")  # what the writer would write, at a third the cost
        else:
            writer.writerow([text, entry.size, entry.elapsed_us])
    plain = "".join(f"{line}\n" for line in lines)
    paths = lines[1:] if incomplete else lines
    # What json.dumps({"version": "v1", "files": [{"path": path}, ...]}) writes, at a fifth of the cost: one
    # dict per file is most of the work of persisting a long list.
    files = ", ".join(['{"path": ' + encode_json_string(path) + "}" for path in paths])
    prefetch = f'{{"version": "v1", "files": [{files}]}}\n'
    return plain.encode(), table.getvalue().encode(), prefetch.encode(), left_out


# A field the csv module writes as it is (QUOTE_MINIMAL quotes one holding the delimiter, the quote character
# or a line break; listable paths hold no line break).
_CSV_PLAIN = re.compile(r'[^,"]*\Z').match


class PersistError(Exception):
    pass


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
