"""From the files the trace server reports to an ordered list, in first-access order.

The server resolves every event itself (nothing here makes a system call) and sends each file once as the
workload's, and at most once more as an exec'd process's (FOREIGN); the paths are container-relative,
which is exactly what the list needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nri_optimizer.results.formats import Entry
from optimizer_server.protocol import DELETED, FOREIGN, UNKNOWN_RESIDENT, FileRecord

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
        self._records = 0  # records taken so far
        self._sources: list[int] = []  # per entry, the number of the record it came from

    def __call__(self, files: Sequence[FileRecord]) -> None:
        started_ns = self._started_ns
        append, source = self.entries.append, self._sources.append
        new = tuple.__new__  # Entry(...) and ._make run Python code per entry; this is one C call
        first = self._records
        self._records += len(files)
        for number, (mask, _, t_ns, dev, ino, size, path) in enumerate(files, first):
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
            append(new(Entry, (path, size, max(0, t_ns - started_ns) // 1000, None, None)))
            source(number)

    def take_residency(
        self, resident: Sequence[int], ranges: Mapping[int, tuple[tuple[int, int], ...]] | None = None
    ) -> None:
        """Each entry's bytes in the page cache, from the server's values for every record it sent, in order, and
        where they lie for a file cached in part, by record number (the trace client's StopResult.resident and
        .ranges; empty when not measured)."""
        if not resident:
            return
        values: list[int | None] = [None if value == UNKNOWN_RESIDENT else value for value in resident]
        values += [None] * (self._records - len(values))  # a report cut short: the rest unknown
        where = ranges or {}
        new = tuple.__new__
        self.entries = [
            new(Entry, (path, size, elapsed, values[number], where.get(number)))
            for (path, size, elapsed, _, _), number in zip(self.entries, self._sources, strict=True)
        ]
