"""From the files the trace server reports to an ordered list, in first-access order.

The server resolves every event itself (nothing here makes a system call) and sends each file once as the
workload's, and at most once more as an exec'd process's (FOREIGN); the paths are container-relative,
which is exactly what the list needs.
"""

from __future__ import annotations

from collections.abc import Sequence

from nri_optimizer.results.formats import Entry
from optimizer_server.protocol import DELETED, FOREIGN, FileRecord

_FLAGS = FOREIGN | DELETED


class Recorder:
    """The event sink of one trace session; ``entries`` is the list so far, in order of first access."""

    def __init__(self, container_id: str, started_ns: int, *, include_exec: bool = False) -> None:
        """``include_exec``: also list files read by processes exec'd into the container from outside
        (exec probes, kubectl exec); by default they are noise."""
        self.container_id = container_id
        self._started_ns = started_ns
        self._include_exec = include_exec
        self.foreign = 0  # files first read by exec'd processes, left out
        self._seen: set[int] = set()  # with include_exec: (st_dev << 64) | st_ino of every file listed
        self.entries: list[Entry] = []
        self.deleted = 0  # files gone before the server looked: created and removed by the container

    def __call__(self, files: Sequence[FileRecord]) -> None:
        started_ns = self._started_ns
        append = self.entries.append
        new = tuple.__new__  # Entry(...) and ._make run Python code per entry; this is one C call
        for mask, _, t_ns, dev, ino, size, path in files:
            if mask & _FLAGS:
                if mask & FOREIGN and not self._include_exec:
                    # The workload's own access of the same file still comes (the server sends it apart).
                    self.foreign += 1
                    continue
                if mask & DELETED:
                    self.deleted += 1
                    continue
            if self._include_exec:
                # A file may come twice, as an exec'd process's and as the workload's: list it once.
                key = (dev << 64) | ino
                if key in self._seen:
                    continue
                self._seen.add(key)
            append(new(Entry, (path, size, max(0, t_ns - started_ns) // 1000)))
