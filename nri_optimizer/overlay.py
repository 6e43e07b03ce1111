"""Which files a container created or wrote: those its overlay root has in its upper (writable) layer.

A file the workload only reads stays in the image's lower layers; creating or writing one puts it in the
upper directory (overlayfs copies a file up before the first write or metadata change). So a listed path
that exists in the upper directory is not image content and does not belong in a prefetch list.

The upper directory is the container's to fill, so it is only ever looked up (lstat), never opened, read
or written, from an fd opened while the container was being set up.
"""

from __future__ import annotations

import contextlib
import logging
import os

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
