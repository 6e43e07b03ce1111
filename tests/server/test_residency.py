"""What of a file is in the page cache: mincore's runs of resident pages as byte ranges, and their bound."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from optimizer_server import protocol
from optimizer_server.residency import _PAGES_PER_CALL, MAX_RANGES, PAGE, Cached, Residency, bounded

# A vector of one mincore call covers this much of a file.
CALL_SPAN = _PAGES_PER_CALL * PAGE


@pytest.fixture
def sparse() -> Iterator[Path]:
    """A path on a tmpfs, which keeps a page in memory exactly where something was written, and none in a hole (nor
    maps one in when asked)."""
    path = Path("/dev/shm") / f"residency-test-{os.getpid()}"
    yield path
    path.unlink(missing_ok=True)


def cached(path: Path, size: int, writes: Sequence[tuple[int, bytes]]) -> Cached:
    with path.open("wb") as file:
        file.truncate(size)
        for offset, data in writes:
            os.pwrite(file.fileno(), data, offset)
    fd = os.open(path, os.O_RDONLY)
    try:
        return Residency().cached(fd, size)
    finally:
        os.close(fd)


def test_the_ranges_are_the_runs_of_resident_pages_the_last_clipped_to_the_file_size(sparse: Path) -> None:
    # A page at 0, one at 512 KiB, two across the end of the first mincore call's span, and the file's last page,
    # which holds 100 bytes of the file.
    size = 3 * CALL_SPAN + 100
    writes = [
        (0, b"a" * PAGE),
        (512 * 1024, b"b"),
        (CALL_SPAN - PAGE, b"c" * 2 * PAGE),
        (3 * CALL_SPAN, b"d" * 100),
    ]
    assert cached(sparse, size, writes) == Cached(
        PAGE + PAGE + 2 * PAGE + 100,
        ((0, PAGE), (512 * 1024, PAGE), (CALL_SPAN - PAGE, 2 * PAGE), (3 * CALL_SPAN, 100)),
    )


def test_a_file_cached_whole_is_one_range_and_one_not_cached_none(sparse: Path) -> None:
    assert cached(sparse, 300000, [(0, b"x" * 300000)]) == Cached(300000, ((0, 300000),))
    assert cached(sparse, 1 << 20, []) == Cached(0, ())
    assert cached(sparse, 0, []) == Cached(0, ())


def test_more_runs_than_the_bound_are_joined_across_the_later_of_equal_gaps(sparse: Path) -> None:
    # 100 runs of a page, a page apart: the 63 first gaps are kept, the rest joined. The count stays exact.
    found = cached(sparse, 200 * PAGE, [(2 * i * PAGE, b"x") for i in range(100)])
    assert found == Cached(100 * PAGE, (*((2 * i * PAGE, PAGE) for i in range(63)), (126 * PAGE, (199 - 126) * PAGE)))


def test_bounded_joins_ranges_across_the_smallest_gaps() -> None:
    ranges = [(0, 10), (15, 5), (100, 10), (111, 4), (200, 1), (203, 2)]  # gaps: 5, 80, 1, 85, 2
    assert bounded(ranges, 6) == tuple(ranges)
    assert bounded(ranges, 5) == ((0, 10), (15, 5), (100, 15), (200, 1), (203, 2))
    assert bounded(ranges, 4) == ((0, 10), (15, 5), (100, 15), (200, 5))
    assert bounded(ranges, 3) == ((0, 20), (100, 15), (200, 5))
    assert bounded(ranges, 2) == ((0, 115), (200, 5))
    assert bounded(ranges, 1) == ((0, 205),)
    assert bounded([], 1) == ()


def test_bounded_keeps_the_earlier_of_equal_gaps() -> None:
    assert bounded([(0, 1), (2, 1), (4, 1), (6, 1)], 3) == ((0, 1), (2, 1), (4, 3))
    assert bounded([(0, 1), (2, 1), (4, 1), (6, 1)], 2) == ((0, 1), (2, 5))


def test_a_files_ranges_fit_one_datagram() -> None:
    assert MAX_RANGES <= protocol.MAX_RANGES_PER_DATAGRAM
