"""The plugin ⇄ optimizer-server protocol: a pure codec, no sockets.

Transport: one AF_UNIX SOCK_SEQPACKET socketpair; one message per datagram, so no framing is needed.
Every message starts with the same 5-byte little-endian header, then a body fixed by its kind:

    header   kind u8, session u32
    TRACE    pid i32, mode u8, options u8              plugin → server: watch this process's root mount
    STOP     (empty)                                   plugin → server: drain, send what is left, then DONE
    CANCEL   (empty)                                   plugin → server: drop the session, no reply
    HELLO    version u16 (session 0)                   server → plugin: first message, once, at start
    READY    mode u8                                   server → plugin: the mark is in place
    FAILED   message (UTF-8, the rest of the datagram) server → plugin: the session is gone
    FILES    count u16, count x (mask u64, pid i32, t_ns u64, dev u64, ino u64, size u64, path_len u16, path)
                                                       server → plugin: files seen for the first time
    RESIDENT first u32, count u16, count x bytes u64   server → plugin: page-cache residency at STOP
    RANGES   file u32, count u16, count x (offset u64, length u64)
                                                       server → plugin: which bytes of a file read in part, at STOP
    DONE     overflowed u8 (0/1), lost u32, events u32 server → plugin: last message of a session

The server resolves every event itself and sends each regular file once: the plugin makes no system call
per file and receives no fds. path is container-relative, raw bytes; size is st_size when the server looked.
t_ns is CLOCK_MONOTONIC (time.monotonic_ns()) when the server read the event from the kernel.
mask carries the kernel's fanotify bits, plus two of ours (never kernel bits): FOREIGN (bit 63) when the
accessing process is not a descendant of the traced pid: it entered the container from outside (runc exec:
exec probes, kubectl exec); DELETED (bit 62) when the file was already unlinked (a file the container made
and removed). A file is sent once as the workload's and at most once more as FOREIGN.

TRACE's mode is how the server is to receive the kernel's events (fanotify.py): FID (file handles, no fd per
event), FD (an fd per event), or AUTO (FID where the kernel and the file system allow it, else FD); READY
says which one the session uses. With the RESIDENCY option, STOP sends RESIDENT messages before DONE: for
the session's file records in the order they were sent (FOREIGN and DELETED ones included), counted from 0,
the bytes of each file in the page cache once the trace stopped, UNKNOWN_RESIDENT where the server did not
look: a file of 128 KiB or less (residency.MIN_SIZE), one it could not reach again, or one beyond the fds it
may hold open. Each RESIDENT is followed by a RANGES for each of its files resident in part (more than 0 bytes,
fewer than its size): where those bytes lie, as ascending, disjoint, non-empty ranges in page units (but that the
last may end at the file's end); at most residency.MAX_RANGES, which may then cover a little more than is resident.
A file resident whole or not at all has none (in nydus's prefetch file, no ranges means the whole file).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

# A datagram must fit the socket's send buffer (net.core.wmem_default, 208 KiB by default); 64 KiB holds
# over a thousand typical records and still any single one (a path is at most PATH_MAX, 4096 bytes).
MAX_DATAGRAM = 64 * 1024
# FAILED text is for logs; a bound keeps every datagram far below the socket buffer.
MAX_FAILED_MESSAGE = 4096

TRACE = 0x01
STOP = 0x02
CANCEL = 0x03
READY = 0x81
FAILED = 0x82
FILES = 0x83
DONE = 0x84
HELLO = 0x85
RESIDENT = 0x86
RANGES = 0x87

# What HELLO says; a plugin refuses a server that speaks another version (the two are separate executables,
# installed together, but server_path may name an older one, or upstream's). 2: FILES records, DONE with events.
# 3: TRACE's mode and options, READY's mode, RESIDENT. 4: RANGES.
PROTOCOL_VERSION = 4

# TRACE's and READY's mode.
MODE_AUTO = 0
MODE_FID = 1
MODE_FD = 2
MODE_NAMES = {MODE_AUTO: "auto", MODE_FID: "fid", MODE_FD: "fd"}
# TRACE's options.
RESIDENCY = 0x01
UNKNOWN_RESIDENT = 2**64 - 1

FOREIGN = 1 << 63
DELETED = 1 << 62

_HEADER = struct.Struct("<BI")
_TRACE = struct.Struct("<iBB")
_MODE = struct.Struct("<B")
_RESIDENT = struct.Struct("<IH")
_RANGES = struct.Struct("<IH")
_RANGE = struct.Struct("<QQ")
_COUNT = struct.Struct("<H")
_RECORD = struct.Struct("<QiQQQQH")  # mask, pid, t_ns, dev, ino, size, path length; then the path
RECORD_HEADER_LEN = _RECORD.size
FILES_HEADER_LEN = _HEADER.size + _COUNT.size
_DONE = struct.Struct("<BII")
_VERSION = struct.Struct("<H")
# RESIDENT values per datagram: as many as fit.
MAX_RESIDENT = (MAX_DATAGRAM - _HEADER.size - _RESIDENT.size) // 8
# RANGES of a file per datagram: as many as fit; a file's ranges come in one (the server sends residency.MAX_RANGES
# at most).
MAX_RANGES_PER_DATAGRAM = (MAX_DATAGRAM - _HEADER.size - _RANGES.size) // _RANGE.size


class ProtocolError(ValueError):
    """A datagram that is not a valid message of the expected direction."""


class FileRecord(NamedTuple):
    """A file's first access in a trace."""

    mask: int  # fanotify bits of the event, with FOREIGN and DELETED
    pid: int  # the accessing process, as seen from the host
    t_ns: int  # CLOCK_MONOTONIC when the server read the event
    dev: int  # st_dev and st_ino: the file's identity
    ino: int
    size: int  # st_size
    path: bytes  # container-relative, as the event fd reads back


@dataclass(frozen=True, slots=True)
class Trace:
    session: int
    pid: int
    mode: int = MODE_AUTO
    options: int = 0  # RESIDENCY


@dataclass(frozen=True, slots=True)
class Stop:
    session: int


@dataclass(frozen=True, slots=True)
class Cancel:
    session: int


@dataclass(frozen=True, slots=True)
class Hello:
    session: int  # always 0: it is about the connection
    version: int


@dataclass(frozen=True, slots=True)
class Ready:
    session: int
    mode: int  # MODE_FID or MODE_FD


@dataclass(frozen=True, slots=True)
class Failed:
    session: int
    message: str


@dataclass(frozen=True, slots=True)
class Files:
    session: int
    files: tuple[FileRecord, ...]


@dataclass(frozen=True, slots=True)
class Resident:
    session: int
    first: int  # the index of the record the first value is for
    sizes: tuple[int, ...]  # bytes in the page cache, or UNKNOWN_RESIDENT


@dataclass(frozen=True, slots=True)
class Ranges:
    session: int
    file: int  # the index of the record they are for, as RESIDENT counts
    ranges: tuple[tuple[int, int], ...]  # (offset, length) in bytes: ascending, disjoint, none empty


@dataclass(frozen=True, slots=True)
class Done:
    session: int
    overflowed: bool  # the kernel queue overflowed: events are missing
    lost: int  # events the kernel dropped because it could not open the file for us
    events: int = 0  # events the server read from the kernel for this session (repeats included)


Command = Trace | Stop | Cancel
Reply = Hello | Ready | Failed | Files | Resident | Ranges | Done
Message = Command | Reply


def encode(msg: Message) -> bytes:
    """One datagram. Raises ValueError for a field out of range."""
    try:
        match msg:
            case Trace(session, pid, mode, options):
                if mode not in MODE_NAMES:
                    raise ValueError(f"unknown mode {mode}")
                return _HEADER.pack(TRACE, session) + _TRACE.pack(pid, mode, options)
            case Stop(session):
                return _HEADER.pack(STOP, session)
            case Cancel(session):
                return _HEADER.pack(CANCEL, session)
            case Hello(session, version):
                return _HEADER.pack(HELLO, session) + _VERSION.pack(version)
            case Ready(session, mode):
                if mode not in (MODE_FID, MODE_FD):
                    raise ValueError(f"READY mode {mode}: fid or fd")
                return _HEADER.pack(READY, session) + _MODE.pack(mode)
            case Failed(session, message):
                text = message.encode("utf-8", "replace")[:MAX_FAILED_MESSAGE]
                # Cutting may split a character; decode with "ignore" drops the partial one.
                text = text.decode("utf-8", "ignore").encode("utf-8")
                return _HEADER.pack(FAILED, session) + text
            case Files(session, files):
                data = files_message(session, [encode_file(*file) for file in files])
                if not files or len(data) > MAX_DATAGRAM:
                    raise ValueError(f"FILES carries 1 or more files in at most {MAX_DATAGRAM} bytes")
                return data
            case Resident(session, first, sizes):
                if not sizes or len(sizes) > MAX_RESIDENT:
                    raise ValueError(f"RESIDENT carries 1 to {MAX_RESIDENT} values")
                return resident_message(session, first, sizes)
            case Ranges(session, file, ranges):
                if not ranges or len(ranges) > MAX_RANGES_PER_DATAGRAM:
                    raise ValueError(f"RANGES carries 1 to {MAX_RANGES_PER_DATAGRAM} ranges")
                if problem := _disorder(ranges):
                    raise ValueError(f"RANGES {problem}")
                return (
                    _HEADER.pack(RANGES, session)
                    + _RANGES.pack(file, len(ranges))
                    + b"".join(_RANGE.pack(offset, length) for offset, length in ranges)
                )
            case Done(session, overflowed, lost, events):
                return _HEADER.pack(DONE, session) + _DONE.pack(overflowed, lost, events)
    except struct.error as e:
        raise ValueError(f"cannot encode {msg!r}: {e}") from None
    raise TypeError(f"not a protocol message: {msg!r}")


def decode_command(data: bytes) -> Command:
    """A plugin → server datagram."""
    kind, session, body = _split(data)
    if kind == TRACE:
        _expect_len(body, _TRACE.size, "TRACE")
        pid, mode, options = _TRACE.unpack(body)
        if mode not in MODE_NAMES:
            raise ProtocolError(f"TRACE mode {mode}, expected one of {sorted(MODE_NAMES)}")
        return Trace(session, pid, mode, options)
    if kind == STOP:
        _expect_len(body, 0, "STOP")
        return Stop(session)
    if kind == CANCEL:
        _expect_len(body, 0, "CANCEL")
        return Cancel(session)
    raise ProtocolError(f"unknown command kind 0x{kind:02x}")


def decode_reply(data: bytes) -> Reply:
    """A server → plugin datagram."""
    kind, session, body = _split(data)
    if kind == HELLO:
        _expect_len(body, _VERSION.size, "HELLO")
        return Hello(session, _VERSION.unpack(body)[0])
    if kind == READY:
        _expect_len(body, _MODE.size, "READY")
        (mode,) = _MODE.unpack(body)
        if mode not in (MODE_FID, MODE_FD):
            raise ProtocolError(f"READY mode {mode}, expected {MODE_FID} (fid) or {MODE_FD} (fd)")
        return Ready(session, mode)
    if kind == FAILED:
        if len(body) > MAX_FAILED_MESSAGE:
            raise ProtocolError(f"FAILED message of {len(body)} bytes, limit {MAX_FAILED_MESSAGE}")
        try:
            return Failed(session, body.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ProtocolError(f"FAILED message is not UTF-8: {e}") from None
    if kind == FILES:
        return Files(session, _decode_files(body))
    if kind == RESIDENT:
        if len(body) < _RESIDENT.size:
            raise ProtocolError("RESIDENT without first and count")
        first, count = _RESIDENT.unpack_from(body)
        if count == 0:
            raise ProtocolError("RESIDENT with no value")
        _expect_len(body, _RESIDENT.size + 8 * count, "RESIDENT")
        return Resident(session, first, struct.unpack_from(f"<{count}Q", body, _RESIDENT.size))
    if kind == RANGES:
        if len(body) < _RANGES.size:
            raise ProtocolError("RANGES without file and count")
        file, count = _RANGES.unpack_from(body)
        if count == 0:
            raise ProtocolError("RANGES with no range")
        _expect_len(body, _RANGES.size + _RANGE.size * count, "RANGES")
        ranges = tuple(_RANGE.iter_unpack(body[_RANGES.size :]))
        if problem := _disorder(ranges):
            raise ProtocolError(f"RANGES {problem}")
        return Ranges(session, file, ranges)
    if kind == DONE:
        _expect_len(body, _DONE.size, "DONE")
        overflowed, lost, events = _DONE.unpack(body)
        if overflowed > 1:
            raise ProtocolError(f"DONE overflowed flag {overflowed}, expected 0 or 1")
        return Done(session, bool(overflowed), lost, events)
    raise ProtocolError(f"unknown reply kind 0x{kind:02x}")


def encode_file(mask: int, pid: int, t_ns: int, dev: int, ino: int, size: int, path: bytes) -> bytes:
    """One record of a FILES message (the server builds messages from these without making records)."""
    return _RECORD.pack(mask, pid, t_ns, dev, ino, size, len(path)) + path


def resident_message(session: int, first: int, sizes: Sequence[int]) -> bytes:
    """A RESIDENT datagram; the caller keeps sizes within 1..MAX_RESIDENT."""
    return _HEADER.pack(RESIDENT, session) + _RESIDENT.pack(first, len(sizes)) + struct.pack(f"<{len(sizes)}Q", *sizes)


def files_message(session: int, records: list[bytes]) -> bytes:
    """A FILES datagram of encoded records; the caller keeps it within MAX_DATAGRAM."""
    return _HEADER.pack(FILES, session) + _COUNT.pack(len(records)) + b"".join(records)


def _decode_files(body: bytes) -> tuple[FileRecord, ...]:
    if len(body) < _COUNT.size:
        raise ProtocolError("FILES without a count")
    (count,) = _COUNT.unpack_from(body)
    if count == 0:
        raise ProtocolError("FILES with no file")
    files: list[FileRecord] = []
    offset = _COUNT.size
    unpack = _RECORD.unpack_from
    new = tuple.__new__  # FileRecord(...) and ._make run Python code per record; this is one C call
    for _ in range(count):
        if len(body) - offset < _RECORD.size:
            raise ProtocolError(f"FILES record {len(files) + 1} of {count} is cut short")
        mask, pid, t_ns, dev, ino, size, length = unpack(body, offset)
        offset += _RECORD.size
        path = body[offset : offset + length]
        if len(path) != length:
            raise ProtocolError(f"FILES record {len(files) + 1} of {count} is cut short")
        offset += length
        files.append(new(FileRecord, (mask, pid, t_ns, dev, ino, size, path)))
    if offset != len(body):
        raise ProtocolError(f"FILES has {len(body) - offset} bytes after its {count} records")
    return tuple(files)


def _disorder(ranges: Sequence[tuple[int, int]]) -> str | None:
    """What is wrong with ranges that are not ascending, disjoint and non-empty; None if nothing."""
    end = 0
    for number, (offset, length) in enumerate(ranges, 1):
        if length == 0:
            return f"range {number} of {len(ranges)} is empty"
        if offset < end:
            return f"range {number} of {len(ranges)} starts at {offset}, before the end of the one before it ({end})"
        end = offset + length
    return None


def _split(data: bytes) -> tuple[int, int, bytes]:
    if len(data) < _HEADER.size:
        raise ProtocolError(f"{len(data)}-byte datagram, shorter than the {_HEADER.size}-byte header")
    kind, session = _HEADER.unpack_from(data)
    return kind, session, data[_HEADER.size :]


def _expect_len(body: bytes, size: int, name: str) -> None:
    if len(body) != size:
        raise ProtocolError(f"{name} body is {len(body)} bytes, expected {size}")
