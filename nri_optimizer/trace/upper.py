"""Which files a container created or wrote: those its overlay root has in its upper (writable) layer.

A file the workload only reads stays in the image's lower layers; creating or writing one puts it in the
upper directory (overlayfs copies a file up before the first write or metadata change). So a listed path
that exists in the upper directory is not image content and does not belong in a prefetch list.

The upper directory is the container's to fill, so it is only ever listed or looked up (lstat), from an fd
opened while the container was being set up; no file in it is opened, read or written, and no symlink in it
is followed while listing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Generator, Sequence
from typing import cast

from nri_optimizer.results.formats import Entry

log = logging.getLogger(__name__)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _split_options(options: str) -> list[str]:
    """overlayfs escapes a comma inside a path option as "\\,"."""
    parts, current, i = [], [], 0
    while i < len(options):
        if options[i] == "\\" and i + 1 < len(options) and options[i + 1] == ",":
            current.append(",")
            i += 2
        elif options[i] == ",":
            parts.append("".join(current))
            current = []
            i += 1
        else:
            current.append(options[i])
            i += 1
    parts.append("".join(current))
    return parts


def upper_dir(mountinfo: str) -> str | None:
    """The upperdir of the overlay mounted at "/" in this mountinfo text, or None (not overlay, read-only)."""
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or fields[4] != "/":
            continue
        separator = fields.index("-", 6)
        fstype, options = fields[separator + 1], fields[separator + 3]
        if fstype != "overlay":
            return None
        for option in _split_options(_unescape(options)):
            if option.startswith("upperdir="):
                return option.removeprefix("upperdir=")
        return None
    return None


def _raise(error: OSError) -> None:
    """os.fwalk skips directories it cannot list unless told otherwise: a partial listing would be wrong."""
    raise error


class UpperLayer:
    """The upper directory of a container's root, opened once; ``wrote(path)`` answers per listed path."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.unreadable = 0  # lookups refused (EACCES: no CAP_DAC_READ_SEARCH?): those paths stay listed

    @classmethod
    def of_process(cls, pid: int) -> UpperLayer | None:
        """Read the container's root mount from its own mountinfo and open its upper directory (as seen
        from the host: the path is a host path). None when the root is not a writable overlay."""
        try:
            with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
                path = upper_dir(info.read())
            if path is None:
                return None
            return cls(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC))
        except OSError as exc:
            log.warning("pid %d: cannot open the container's upper layer: %s", pid, exc)
            return None

    def without_written(self, entries: Sequence[Entry]) -> list[Entry]:
        """The entries whose paths the container did not create or write.

        The upper layer is usually far smaller than the list (a pid file, a log): listing it once is cheaper
        than a lookup per listed path. A layer with more entries than the list has paths is not listed
        beyond that: then each path is looked up instead, so the cost is bounded by the smaller of the two.
        """
        written = self._contents(limit=len(entries))
        if written is None:
            return [entry for entry in entries if not self.wrote(entry.path)]
        return [entry for entry in entries if entry.path not in written]

    def _contents(self, limit: int) -> set[bytes] | None:
        """Every path in the upper layer, as container-absolute paths; None if there are more than limit,
        or if the layer cannot be listed (then the caller looks paths up one by one)."""
        found: set[bytes] = set()
        walk = cast(
            Generator[tuple[bytes, list[bytes], list[bytes], int], None, None],
            os.fwalk(b".", dir_fd=self._fd, follow_symlinks=False, onerror=_raise),
        )
        try:
            for top, dirs, files, _ in walk:
                prefix = top[1:] + b"/"  # b"." -> b"/", b"./etc" -> b"/etc/"
                found.update(prefix + name for name in dirs)
                found.update(prefix + name for name in files)
                if len(found) > limit:
                    return None
        except OSError as exc:
            log.debug("cannot list the upper layer (%s): looking paths up instead", exc)
            return None
        finally:
            walk.close()  # closes the directory fds of a walk left early
        return found

    def wrote(self, path: bytes) -> bool:
        """Whether the container-absolute ``path`` exists in the upper layer (created or copied up)."""
        relative = path.lstrip(b"/")
        if not relative:
            return False
        try:
            # One lstat, relative to the upper directory's fd. A symlink the container planted in a parent
            # directory would be followed, possibly out of the layer: a lookup only, whose one effect is to
            # leave that container's own path out of that container's list. Walking component by component
            # with O_NOFOLLOW cost four times the syscalls, per listed file, for no protection of the host.
            os.stat(relative, dir_fd=self._fd, follow_symlinks=False)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            # Cannot tell: keep the path (a written file listed costs a little prefetch; a dropped image
            # file costs a miss), and count it so that the log says so.
            self.unreadable += 1
            return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
