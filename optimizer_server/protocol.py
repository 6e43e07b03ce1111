"""The plugin ⇄ optimizer-server protocol: a pure codec, no sockets.

Transport: one AF_UNIX SOCK_SEQPACKET socketpair; one message per datagram, so no framing is needed.
Every message starts with the same 5-byte little-endian header, then a body fixed by its kind:

    header   kind u8, session u32
    TRACE    pid i32                                   plugin → server: watch this process's root mount
    STOP     (empty)                                   plugin → server: drain, send what is left, then DONE
    CANCEL   (empty)                                   plugin → server: drop the session, no reply
    READY    (empty)                                   server → plugin: the mark is in place
    FAILED   message (UTF-8, the rest of the datagram) server → plugin: the session is gone
    EVENTS   count u16, count x (mask u64, pid i32, t_ns u64)
                                                       server → plugin: exactly `count` fds in SCM_RIGHTS
    DONE     overflowed u8 (0/1), lost u32             server → plugin: last message of a session

t_ns is CLOCK_MONOTONIC (time.monotonic_ns()) when the server read the event from the kernel.
mask carries the kernel's fanotify bits, plus FOREIGN (bit 63, never a kernel bit) when the accessing
process is not a descendant of the traced pid: it entered the container from outside (runc exec: exec
probes, kubectl exec).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

# include/net/scm.h: the kernel refuses (ETOOMANYREFS) an SCM_RIGHTS message with more fds.
SCM_MAX_FD = 253
MAX_EVENTS_PER_MESSAGE = SCM_MAX_FD
# FAILED text is for logs; a bound keeps every datagram far below the socket buffer.
MAX_FAILED_MESSAGE = 4096
# Large enough for any message this codec produces (an EVENTS message is 7 + 253 x 20 = 5067 bytes).
MAX_DATAGRAM = 8192

TRACE = 0x01
STOP = 0x02
CANCEL = 0x03
READY = 0x81
FAILED = 0x82
EVENTS = 0x83
FOREIGN = 1 << 63
DONE = 0x84

_HEADER = struct.Struct("<BI")
_PID = struct.Struct("<i")
_COUNT = struct.Struct("<H")
_EVENT = struct.Struct("<QiQ")
_DONE = struct.Struct("<BI")


class ProtocolError(ValueError):
    """A datagram that is not a valid message of the expected direction."""


class EventRecord(NamedTuple):
    mask: int
    pid: int
    t_ns: int


@dataclass(frozen=True, slots=True)
class Trace:
    session: int
    pid: int


@dataclass(frozen=True, slots=True)
class Stop:
    session: int


@dataclass(frozen=True, slots=True)
class Cancel:
    session: int


@dataclass(frozen=True, slots=True)
class Ready:
    session: int


@dataclass(frozen=True, slots=True)
class Failed:
    session: int
    message: str


@dataclass(frozen=True, slots=True)
class Events:
    """The fds travel beside the datagram (SCM_RIGHTS), in the order of `events`."""

    session: int
    events: tuple[EventRecord, ...]


@dataclass(frozen=True, slots=True)
class Done:
    session: int
    overflowed: bool  # the kernel queue overflowed: events are missing
    lost: int  # events the kernel dropped because it could not open the file for us


Command = Trace | Stop | Cancel
Reply = Ready | Failed | Events | Done
Message = Command | Reply


def encode(msg: Message) -> bytes:
    """One datagram. Raises ValueError for a field out of range."""
    try:
        match msg:
            case Trace(session, pid):
                return _HEADER.pack(TRACE, session) + _PID.pack(pid)
            case Stop(session):
                return _HEADER.pack(STOP, session)
            case Cancel(session):
                return _HEADER.pack(CANCEL, session)
            case Ready(session):
                return _HEADER.pack(READY, session)
            case Failed(session, message):
                text = message.encode("utf-8", "replace")[:MAX_FAILED_MESSAGE]
                # Cutting may split a character; decode with "ignore" drops the partial one.
                text = text.decode("utf-8", "ignore").encode("utf-8")
                return _HEADER.pack(FAILED, session) + text
            case Events(session, events):
                if not 1 <= len(events) <= MAX_EVENTS_PER_MESSAGE:
                    raise ValueError(f"EVENTS carries 1..{MAX_EVENTS_PER_MESSAGE} events, not {len(events)}")
                return (
                    _HEADER.pack(EVENTS, session)
                    + _COUNT.pack(len(events))
                    + b"".join(_EVENT.pack(*event) for event in events)
                )
            case Done(session, overflowed, lost):
                return _HEADER.pack(DONE, session) + _DONE.pack(overflowed, lost)
    except struct.error as e:
        raise ValueError(f"cannot encode {msg!r}: {e}") from None
    raise TypeError(f"not a protocol message: {msg!r}")


def decode_command(data: bytes) -> Command:
    """A plugin → server datagram."""
    kind, session, body = _split(data)
    if kind == TRACE:
        _expect_len(body, _PID.size, "TRACE")
        return Trace(session, _PID.unpack(body)[0])
    if kind == STOP:
        _expect_len(body, 0, "STOP")
        return Stop(session)
    if kind == CANCEL:
        _expect_len(body, 0, "CANCEL")
        return Cancel(session)
    raise ProtocolError(f"unknown command kind 0x{kind:02x}")


def decode_reply(data: bytes) -> Reply:
    """A server → plugin datagram (the fds of EVENTS are the caller's business)."""
    kind, session, body = _split(data)
    if kind == READY:
        _expect_len(body, 0, "READY")
        return Ready(session)
    if kind == FAILED:
        if len(body) > MAX_FAILED_MESSAGE:
            raise ProtocolError(f"FAILED message of {len(body)} bytes, limit {MAX_FAILED_MESSAGE}")
        try:
            return Failed(session, body.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ProtocolError(f"FAILED message is not UTF-8: {e}") from None
    if kind == EVENTS:
        if len(body) < _COUNT.size:
            raise ProtocolError("EVENTS without a count")
        (count,) = _COUNT.unpack_from(body)
        if not 1 <= count <= MAX_EVENTS_PER_MESSAGE:
            raise ProtocolError(f"EVENTS count {count} outside 1..{MAX_EVENTS_PER_MESSAGE}")
        _expect_len(body, _COUNT.size + count * _EVENT.size, "EVENTS")
        records = tuple(EventRecord(*fields) for fields in _EVENT.iter_unpack(body[_COUNT.size :]))
        return Events(session, records)
    if kind == DONE:
        _expect_len(body, _DONE.size, "DONE")
        overflowed, lost = _DONE.unpack(body)
        if overflowed > 1:
            raise ProtocolError(f"DONE overflowed flag {overflowed}, expected 0 or 1")
        return Done(session, bool(overflowed), lost)
    raise ProtocolError(f"unknown reply kind 0x{kind:02x}")


def _split(data: bytes) -> tuple[int, int, bytes]:
    if len(data) < _HEADER.size:
        raise ProtocolError(f"{len(data)}-byte datagram, shorter than the {_HEADER.size}-byte header")
    kind, session = _HEADER.unpack_from(data)
    return kind, session, data[_HEADER.size :]


def _expect_len(body: bytes, size: int, name: str) -> None:
    if len(body) != size:
        raise ProtocolError(f"{name} body is {len(body)} bytes, expected {size}")
