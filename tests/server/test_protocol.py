"""The plugin ⇄ server codec: exact byte layout, round trips, and garbage refused with a clear error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from optimizer_server import protocol
from optimizer_server.protocol import (
    MAX_RANGES_PER_DATAGRAM,
    MAX_RESIDENT,
    MODE_AUTO,
    MODE_FD,
    MODE_FID,
    RESIDENCY,
    Cancel,
    Done,
    Failed,
    FileRecord,
    Files,
    Hello,
    ProtocolError,
    Ranges,
    Ready,
    Resident,
    Stop,
    Trace,
)

u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
u64 = st.integers(0, 2**64 - 1)
records = st.builds(FileRecord, u64, i32, u64, u64, u64, u64, st.binary(max_size=300))


def ascending(gaps_and_lengths: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """(offset, length) ranges, each after the one before by its gap."""
    ranges, end = [], 0
    for gap, length in gaps_and_lengths:
        ranges.append((end + gap, length))
        end += gap + length
    return tuple(ranges)


byte_ranges = st.lists(st.tuples(st.integers(0, 2**40), st.integers(1, 2**40)), min_size=1, max_size=80).map(ascending)
commands = st.one_of(
    st.builds(Trace, u32, i32, st.sampled_from([MODE_AUTO, MODE_FID, MODE_FD]), st.integers(0, 255)),
    st.builds(Stop, u32),
    st.builds(Cancel, u32),
)
replies = st.one_of(
    st.builds(Hello, u32, st.integers(0, 2**16 - 1)),
    st.builds(Ready, u32, st.sampled_from([MODE_FID, MODE_FD])),
    st.builds(Resident, u32, u32, st.lists(u64, min_size=1, max_size=300).map(tuple)),
    st.builds(Ranges, u32, u32, byte_ranges),
    st.builds(Failed, u32, st.text(max_size=1000)),
    st.builds(Files, u32, st.lists(records, min_size=1, max_size=200).map(tuple)),
    st.builds(Done, u32, st.booleans(), u32, u32),
)


def test_layout_is_little_endian_kind_session_then_body() -> None:
    assert protocol.encode(Trace(7, 1234)) == bytes([0x01]) + struct.pack("<I", 7) + struct.pack("<i", 1234) + b"\0\0"
    assert protocol.encode(Trace(7, 1234, MODE_FD, RESIDENCY)) == b"\x01\x07\x00\x00\x00" + struct.pack(
        "<iBB", 1234, 2, 1
    )
    assert protocol.encode(Stop(7)) == b"\x02\x07\x00\x00\x00"
    assert protocol.encode(Cancel(7)) == b"\x03\x07\x00\x00\x00"
    assert protocol.encode(Hello(0, 3)) == b"\x85\x00\x00\x00\x00\x03\x00"
    assert protocol.encode(Ready(7, MODE_FID)) == b"\x81\x07\x00\x00\x00\x01"
    assert protocol.encode(Resident(7, 5, (4096, 2**64 - 1))) == (
        b"\x86\x07\x00\x00\x00" + struct.pack("<IH", 5, 2) + struct.pack("<QQ", 4096, 2**64 - 1)
    )
    assert protocol.encode(Ranges(7, 5, ((0, 4096), (524288, 3393)))) == (
        b"\x87\x07\x00\x00\x00" + struct.pack("<IH", 5, 2) + struct.pack("<QQQQ", 0, 4096, 524288, 3393)
    )
    assert protocol.encode(Failed(7, "pid 1: é")) == b"\x82\x07\x00\x00\x00" + "pid 1: é".encode()
    assert protocol.encode(Files(7, (FileRecord(0x20, 42, 99, 5, 6, 7, b"/etc/x"),))) == (
        b"\x83\x07\x00\x00\x00" + struct.pack("<H", 1) + struct.pack("<QiQQQQH", 0x20, 42, 99, 5, 6, 7, 6) + b"/etc/x"
    )
    assert protocol.encode(Done(7, True, 3, 9)) == b"\x84\x07\x00\x00\x00\x01" + struct.pack("<II", 3, 9)


@given(commands)
def test_commands_round_trip(msg: protocol.Command) -> None:
    assert protocol.decode_command(protocol.encode(msg)) == msg


@given(replies)
def test_replies_round_trip(msg: protocol.Reply) -> None:
    assert protocol.decode_reply(protocol.encode(msg)) == msg


@given(
    st.binary(max_size=64)
    | st.binary(min_size=5, max_size=5200).map(lambda b: b"\x83" + b[1:])
    | st.binary(min_size=5, max_size=200).map(lambda b: b"\x87" + b[1:])
    | st.builds(
        lambda n, body: b"\x83\x01\x00\x00\x00" + struct.pack("<H", n) + body,
        st.integers(0, 3),
        st.binary(max_size=200),
    )
)
def test_any_datagram_decodes_canonically_or_raises_protocol_error(data: bytes) -> None:
    for decode in (protocol.decode_command, protocol.decode_reply):
        try:
            msg = decode(data)
        except ProtocolError:
            continue
        assert protocol.encode(msg) == data


def test_a_file_of_the_longest_path_fits_a_datagram() -> None:
    msg = Files(1, (FileRecord(2**64 - 1, -1, 2**64 - 1, 2**64 - 1, 2**64 - 1, 2**64 - 1, b"/" * 4096),))
    assert protocol.decode_reply(protocol.encode(msg)) == msg


def test_the_most_resident_values_fit_a_datagram() -> None:
    msg = Resident(1, 2**32 - 1, (2**64 - 1,) * MAX_RESIDENT)
    assert len(protocol.encode(msg)) <= protocol.MAX_DATAGRAM
    assert protocol.decode_reply(protocol.encode(msg)) == msg


def test_the_most_ranges_fit_a_datagram() -> None:
    msg = Ranges(1, 2**32 - 1, tuple((i << 48, 1 << 48) for i in range(MAX_RANGES_PER_DATAGRAM)))
    assert len(protocol.encode(msg)) <= protocol.MAX_DATAGRAM
    assert protocol.decode_reply(protocol.encode(msg)) == msg


def test_long_failed_message_is_cut_at_a_character_boundary() -> None:
    data = protocol.encode(Failed(1, "é" * protocol.MAX_FAILED_MESSAGE))
    decoded = protocol.decode_reply(data)
    assert isinstance(decoded, Failed)
    assert decoded.message == "é" * (protocol.MAX_FAILED_MESSAGE // 2)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "0-byte datagram, shorter than the 5-byte header"),
        (b"\x01\x00\x00", "3-byte datagram, shorter than the 5-byte header"),
        (b"\x07\x01\x00\x00\x00", "unknown command kind 0x07"),
        (b"\x81\x01\x00\x00\x00", "unknown command kind 0x81"),  # a reply sent the wrong way
        (b"\x01\x01\x00\x00\x00\x05\x00", "TRACE body is 2 bytes, expected 6"),
        (b"\x01\x01\x00\x00\x00\x05\x00\x00\x00\x03\x00", "TRACE mode 3, expected one of [0, 1, 2]"),
        (b"\x02\x01\x00\x00\x00\x00", "STOP body is 1 bytes, expected 0"),
        (b"\x03\x01\x00\x00\x00\x00", "CANCEL body is 1 bytes, expected 0"),
    ],
)
def test_garbled_command_is_refused(data: bytes, error: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode_command(data)
    assert str(info.value) == error


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x01\x01\x00\x00\x00\x05\x00\x00\x00", "unknown reply kind 0x01"),
        (b"\x81\x01\x00\x00\x00", "READY body is 0 bytes, expected 1"),
        (b"\x81\x01\x00\x00\x00\x00", "READY mode 0, expected 1 (fid) or 2 (fd)"),
        (b"\x86\x01\x00\x00\x00\x00\x00", "RESIDENT without first and count"),
        (b"\x86\x01\x00\x00\x00" + bytes(6), "RESIDENT with no value"),
        (b"\x86\x01\x00\x00\x00" + bytes(4) + b"\x02\x00" + bytes(8), "RESIDENT body is 14 bytes, expected 22"),
        (b"\x87\x01\x00\x00\x00\x00\x00", "RANGES without file and count"),
        (b"\x87\x01\x00\x00\x00" + bytes(6), "RANGES with no range"),
        (b"\x87\x01\x00\x00\x00" + bytes(4) + b"\x02\x00" + bytes(16), "RANGES body is 22 bytes, expected 38"),
        (b"\x87\x01\x00\x00\x00" + bytes(4) + b"\x01\x00" + bytes(32), "RANGES body is 38 bytes, expected 22"),
        (b"\x87\x01\x00\x00\x00" + bytes(4) + b"\x01\x00" + bytes(16), "RANGES range 1 of 1 is empty"),
        (
            b"\x87\x01\x00\x00\x00" + bytes(4) + b"\x02\x00" + struct.pack("<QQQQ", 0, 8192, 4096, 4096),
            "RANGES range 2 of 2 starts at 4096, before the end of the one before it (8192)",
        ),
        (b"\x82\x01\x00\x00\x00\xff", "FAILED message is not UTF-8: "),
        (b"\x82\x01\x00\x00\x00" + b"x" * 4097, "FAILED message of 4097 bytes, limit 4096"),
        (b"\x83\x01\x00\x00\x00\x01", "FILES without a count"),
        (b"\x83\x01\x00\x00\x00\x00\x00", "FILES with no file"),
        (b"\x83\x01\x00\x00\x00\x02\x00" + bytes(46), "FILES record 2 of 2 is cut short"),
        (b"\x83\x01\x00\x00\x00\x01\x00" + bytes(44) + b"\x05\x00/etc", "FILES record 1 of 1 is cut short"),
        (b"\x83\x01\x00\x00\x00\x01\x00" + bytes(44) + b"\x01\x00/xy", "FILES has 2 bytes after its 1 records"),
        (b"\x84\x01\x00\x00\x00\x01", "DONE body is 1 bytes, expected 9"),
        (b"\x85\x00\x00\x00\x00\x02", "HELLO body is 1 bytes, expected 2"),
        (b"\x84\x01\x00\x00\x00\x02" + bytes(8), "DONE overflowed flag 2, expected 0 or 1"),
    ],
)
def test_garbled_reply_is_refused(data: bytes, error: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode_reply(data)
    assert str(info.value).startswith(error)


@pytest.mark.parametrize(
    "msg",
    [
        Trace(2**32, 1),
        Trace(1, 2**31),
        Trace(1, 1, 3),
        Trace(1, 1, MODE_FID, 256),
        Ready(1, MODE_AUTO),
        Resident(1, 0, ()),
        Resident(1, 0, (1,) * (MAX_RESIDENT + 1)),
        Resident(1, 0, (-1,)),
        Resident(1, 2**32, (1,)),
        Ranges(1, 0, ()),
        Ranges(1, 0, tuple((i, 1) for i in range(MAX_RANGES_PER_DATAGRAM + 1))),
        Ranges(1, 2**32, ((0, 1),)),
        Ranges(1, 0, ((-1, 1),)),
        Ranges(1, 0, ((0, 2**64),)),
        Ranges(1, 0, ((0, 0),)),
        Ranges(1, 0, ((4096, 1), (0, 1))),
        Stop(-1),
        Files(1, ()),
        Files(1, (FileRecord(0, 0, 0, 0, 0, 0, b"/" * 4096),) * 16),
        Files(1, (FileRecord(-1, 0, 0, 0, 0, 0, b"/x"),)),
        Files(1, (FileRecord(0, 0, 0, 0, 0, 0, b"/" * 65536),)),
        Done(1, False, -1),
    ],
)
def test_out_of_range_fields_are_not_encoded(msg: protocol.Message) -> None:
    with pytest.raises(ValueError):
        protocol.encode(msg)
