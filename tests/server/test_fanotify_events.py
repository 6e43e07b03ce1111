"""Parsing what read() on a fanotify group returns, from bytes packed here as the kernel packs them."""

from __future__ import annotations

import struct

import pytest

from optimizer_server.fanotify import METADATA_LEN, EventFormatError, iter_events


def kernel_event(fd: int, mask: int, pid: int, *, info: bytes = b"", vers: int = 3) -> bytes:
    """struct fanotify_event_metadata followed by optional info records."""
    return struct.pack("=IBBHQii", 24 + len(info), vers, 0, 24, mask, fd, pid) + info


def test_metadata_is_24_bytes() -> None:
    assert METADATA_LEN == 24


def test_events_come_out_in_order() -> None:
    buf = kernel_event(5, 0x20, 100) + kernel_event(6, 0x1, 101) + kernel_event(-1, 0x4000, 0)
    assert list(iter_events(buf)) == [(5, 0x20, 100), (6, 0x1, 101), (-1, 0x4000, 0)]


def test_info_records_are_skipped_by_event_len() -> None:
    buf = kernel_event(5, 0x20, 1, info=b"\x01" * 16) + kernel_event(6, 0x20, 2)
    assert list(iter_events(buf)) == [(5, 0x20, 1), (6, 0x20, 2)]


def test_an_event_with_info_after_plain_ones_is_walked_from_where_they_end() -> None:
    # 24 + 24 + 48 bytes: a multiple of 24, so plain events are taken in one go until the one with info.
    buf = kernel_event(5, 0x20, 1) + kernel_event(6, 0x20, 2) + kernel_event(7, 0x20, 3, info=b"\x01" * 24)
    assert list(iter_events(buf)) == [(5, 0x20, 1), (6, 0x20, 2), (7, 0x20, 3)]


def test_empty_read_has_no_events() -> None:
    assert list(iter_events(b"")) == []


@pytest.mark.parametrize(
    ("buf", "error"),
    [
        (kernel_event(5, 0x20, 1)[:20], "20 trailing bytes, shorter than an event"),
        (kernel_event(5, 0x20, 1, vers=2), "metadata version 2, expected 3"),
        (struct.pack("=IBBHQii", 8, 3, 0, 24, 0x20, 5, 1), "event_len 8 at offset 0 of 24"),
        (struct.pack("=IBBHQii", 48, 3, 0, 24, 0x20, 5, 1), "event_len 48 at offset 0 of 24"),
    ],
)
def test_malformed_stream_is_refused(buf: bytes, error: str) -> None:
    with pytest.raises(EventFormatError, match=error):
        list(iter_events(buf))


def test_events_before_a_malformed_one_are_still_yielded() -> None:
    """So the caller can close their fds."""
    events = iter_events(kernel_event(5, 0x20, 1) + kernel_event(6, 0x20, 1, vers=9))
    assert next(events) == (5, 0x20, 1)
    with pytest.raises(EventFormatError):
        next(events)


def test_the_committed_cffi_module_is_what_libc_build_generates(tmp_path) -> None:
    from optimizer_server import libc_build

    libc_build.generate(tmp_path / "_libc.py")
    assert (tmp_path / "_libc.py").read_text() == libc_build.MODULE.read_text(), "run make ffi"
