"""From fanotify event fds to an ordered list of files: fstat, dedup by (device, inode), resolve the path.

The recorder runs in the plugin, in the host's mount namespace. An event fd passed out of the container's
mount reads back as the container-relative path (the container's root is unreachable from ours), which is
exactly what the list needs. Nothing here opens a path of the container's: fstat and readlink act on the
fd the kernel opened for us.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence

from optimizer_server.protocol import FOREIGN

from .results import Entry
from .tracer import TraceEvent

log = logging.getLogger(__name__)

_DELETED = b" (deleted)"


class Recorder:
    """The event sink of one trace session; ``entries`` is the list so far, in order of first access."""

    def __init__(self, container_id: str, started_ns: int, *, include_exec: bool = False) -> None:
        """``include_exec``: also list files read by processes exec'd into the container from outside
        (exec probes, kubectl exec); by default they are noise."""
        self.container_id = container_id
        self._started_ns = started_ns
        self._include_exec = include_exec
        self.foreign = 0  # events from exec'd processes left out
        self._seen: set[int] = set()  # (st_dev << 64) | st_ino: an int costs half a tuple
        self.entries: list[Entry] = []
        self.events = 0
        self.deleted = 0  # files gone before we looked: created and removed by the container

    def __call__(self, events: Sequence[TraceEvent]) -> None:
        self.events += len(events)
        for event in events:
            fd = event.fd
            if event.mask & FOREIGN and not self._include_exec:
                # Not marked seen: the workload's own read of the same file must still count.
                self.foreign += 1
                os.close(fd)
                continue
            try:
                info = os.fstat(fd)
                key = (info.st_dev << 64) | info.st_ino
                if key in self._seen or not stat.S_ISREG(info.st_mode):
                    continue
                self._seen.add(key)
                path = os.readlink(b"/proc/self/fd/%d" % fd)
            except OSError as exc:
                log.warning("%s cannot resolve an event fd: %s", self.container_id, exc)
                continue
            finally:
                os.close(fd)
            if info.st_nlink == 0 and path.endswith(_DELETED):
                self.deleted += 1
                continue
            elapsed_us = max(0, event.t_ns - self._started_ns) // 1000
            self.entries.append(Entry(path, info.st_size, elapsed_us))
