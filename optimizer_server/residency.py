"""How many bytes of a file are in the page cache: what a trace's workload read of it, give or take readahead
(the kernel reads ahead of a reader: at first four times what it asked, up to the device's read_ahead_kb,
128 KiB by default) and pages another reader brought in.

Asked of an fd the server holds, never of a path: mincore(2) over a read-only shared mapping of the whole
file, which maps no page in and reads nothing. cachestat(2) (Linux >= 6.5) would be one call, but on
overlayfs it asks the overlay's own inode, which caches nothing (the pages belong to the lower file, which a
mapping of the overlay file reaches).
"""

from __future__ import annotations

import mmap
import os

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


class Residency:
    """mincore's vector, allocated once."""

    def __init__(self) -> None:
        self._vector = ffi.new("unsigned char[]", _PAGES_PER_CALL)
        self._buffer = ffi.buffer(self._vector)

    def resident_bytes(self, fd: int, size: int) -> int:
        """Bytes of fd's file resident in the page cache; size is its st_size. Raises OSError."""
        if size <= 0:
            return 0
        address = lib.mmap(ffi.NULL, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address == _MAP_FAILED:
            check(-1, "mmap")
        try:
            pages = -(-size // PAGE)
            resident = 0
            start = ffi.cast("char *", address)
            for first in range(0, pages, _PAGES_PER_CALL):
                count = min(_PAGES_PER_CALL, pages - first)
                check(lib.mincore(start + first * PAGE, count * PAGE, self._vector), "mincore")
                resident += self._buffer[:count].translate(_LOW_BIT).count(1)
                last_resident = self._vector[count - 1] & 1
        finally:
            lib.munmap(address, size)
        # The last page holds only the file's tail.
        return resident * PAGE - (pages * PAGE - size if last_resident else 0)
