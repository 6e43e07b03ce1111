"""How many bytes of a file are in the page cache, and which: what a trace's workload read of it, give or take
readahead (the kernel reads ahead of a reader: at first four times what it asked, up to the device's read_ahead_kb,
128 KiB by default) and pages another reader brought in.

Asked of an fd the server holds, never of a path: mincore(2) over a read-only shared mapping of the whole
file, which maps no page in and reads nothing. cachestat(2) (Linux >= 6.5) would be one call, but on
overlayfs it asks the overlay's own inode, which caches nothing (the pages belong to the lower file, which a
mapping of the overlay file reaches).
"""

from __future__ import annotations

import heapq
import mmap
import os
import re
from collections.abc import Sequence
from typing import NamedTuple

from optimizer_server.libc import check, ffi, lib

PAGE = os.sysconf("SC_PAGE_SIZE")
# Files no larger than this are not looked at: a consumer that fetches one whole pays little for it, while looking
# at every file (most files of an image are small) would cost about as much again as tracing it.
MIN_SIZE = 128 * 1024
# Pages asked about per mincore call: a 16 KiB vector covers 64 MiB (at 4 KiB pages) of a mapping.
_PAGES_PER_CALL = 16 * 1024
_MAP_FAILED = ffi.cast("void *", -1)
# mincore sets bit 0 of a page's byte when it is resident; the other bits are reserved.
_LOW_BIT = bytes(b & 1 for b in range(256))
_RUNS = re.compile(b"\x01+").finditer  # runs of resident pages in a vector reduced to its low bits
# Ranges said per file, at most. nydus fetches a file's data a chunk (1 MiB by default) at a time, so ranges finer
# than that buy little; while a file read in scattered places (a library's pages touched here and there) would
# otherwise cost a range per page in the list and in the plugin's memory. 64 keep a file's RANGES message at 1 KiB.
MAX_RANGES = 64


class Cached(NamedTuple):
    """What of a file is in the page cache."""

    resident: int  # bytes
    ranges: tuple[tuple[int, int], ...]  # (offset, length) of each run of resident pages, in order; at most MAX_RANGES


class Residency:
    """mincore's vector, allocated once."""

    def __init__(self) -> None:
        self._vector = ffi.new("unsigned char[]", _PAGES_PER_CALL)
        self._buffer = ffi.buffer(self._vector)

    def cached(self, fd: int, size: int) -> Cached:
        """What of fd's file is in the page cache; size is its st_size. Raises OSError.

        The ranges are page aligned, the last clipped to size; bounded to MAX_RANGES (see bounded), they may
        cover a little more than is resident, never less. The byte count is exact."""
        if size <= 0:
            return Cached(0, ())
        address = lib.mmap(ffi.NULL, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address == _MAP_FAILED:
            check(-1, "mmap")
        runs: list[list[int]] = []  # [first page, page after the last] of each run
        try:
            pages = -(-size // PAGE)
            start = ffi.cast("char *", address)
            for first in range(0, pages, _PAGES_PER_CALL):
                count = min(_PAGES_PER_CALL, pages - first)
                check(lib.mincore(start + first * PAGE, count * PAGE, self._vector), "mincore")
                bits = self._buffer[:count].translate(_LOW_BIT)
                resident = bits.count(1)
                if not resident:
                    continue
                # A file read whole (the common case) is one run a call, found without a search.
                found = [(0, count)] if resident == count else [match.span() for match in _RUNS(bits)]
                for begin, end in found:
                    if runs and runs[-1][1] == first + begin:  # a run across two calls' vectors
                        runs[-1][1] = first + end
                    else:
                        runs.append([first + begin, first + end])
        finally:
            lib.munmap(address, size)
        # The last page holds only the file's tail.
        ranges = [(begin * PAGE, min(end * PAGE, size) - begin * PAGE) for begin, end in runs]
        return Cached(sum(length for _, length in ranges), bounded(ranges))


def bounded(ranges: Sequence[tuple[int, int]], limit: int = MAX_RANGES) -> tuple[tuple[int, int], ...]:
    """Ordered, disjoint (offset, length) ranges as at most limit ranges: neighbours joined across the smallest
    gaps between them, so that the result covers all of them and of what lies between, as little as it can. Of
    equal gaps, the later ones are joined first (any rule would do; one makes the result deterministic)."""
    if len(ranges) <= limit:
        return tuple(ranges)
    ends = [offset + length for offset, length in ranges]
    gaps = ((ranges[i + 1][0] - ends[i], -i) for i in range(len(ranges) - 1))
    # The gaps kept: the largest limit - 1 (of equal ones, the earlier), by the index of the range before them.
    kept = sorted(-i for _, i in heapq.nlargest(limit - 1, gaps))
    out = []
    begin = 0
    for last in [*kept, len(ranges) - 1]:
        offset = ranges[begin][0]
        out.append((offset, ends[last] - offset))
        begin = last + 1
    return tuple(out)
