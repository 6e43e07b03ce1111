"""fanotify: constants, the two system calls (through cffi, optimizer_server.libc), and event parsing.

Parsing the event stream is a pure function over bytes.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from collections.abc import Iterator

from optimizer_server.libc import NULL, check, lib

# <linux/fanotify.h>
FAN_ACCESS = 0x0000_0001
FAN_OPEN = 0x0000_0020
FAN_OPEN_EXEC = 0x0000_1000
FAN_Q_OVERFLOW = 0x0000_4000

FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_CLASS_NOTIF = 0x00
FAN_UNLIMITED_QUEUE = 0x10

FAN_MARK_ADD = 0x01
FAN_MARK_MOUNT = 0x10
FAN_MARK_IGNORED_MASK = 0x20
FAN_MARK_IGNORED_SURV_MODIFY = 0x40

FAN_NOFD = -1
FANOTIFY_METADATA_VERSION = 3

# What a trace watches: opens, execs included (the kernel's own opens of an ELF interpreter or a script's
# interpreter count too). Every file the workload reads it opens first, after the mark, so a file's first
# event is its open: FAN_ACCESS would add nothing to the list, but would put fanotify on the path of every
# read() in the container, and queue an event per read until the ignore mark is in place. No FAN_ONDIR,
# so listing a directory never produces an event.
TRACE_MASK = FAN_OPEN | FAN_OPEN_EXEC

# Without O_LARGEFILE the kernel cannot open the event fd of a file > 2 GiB (EOVERFLOW) and drops the
# event. 64-bit kernels since 5.1 add it themselves; older ones and 32-bit ones need it from us, with
# the kernel's value, which differs per architecture (Python's os.O_LARGEFILE is 0 on 64-bit: glibc
# folds it away). Values from arch/*/include/uapi/asm/fcntl.h.
_O_LARGEFILE_BY_ARCH = {
    "aarch64": 0o400000,
    "armv7l": 0o400000,
    "ppc64le": 0o200000,
    "ppc64": 0o200000,
}
O_LARGEFILE = _O_LARGEFILE_BY_ARCH.get(os.uname().machine, 0o100000)  # asm-generic (x86, riscv, s390)

# struct fanotify_event_metadata: event_len u32, vers u8, reserved u8, metadata_len u16,
# mask u64 (aligned), fd s32, pid s32 — native byte order, no padding.
_METADATA = struct.Struct("=IBBHQii")
METADATA_LEN = _METADATA.size


class EventFormatError(ValueError):
    """The kernel's event stream is not what this code understands (never expected in practice)."""


def init_group(*, unlimited_queue: bool) -> int:
    """A new notification group: non-blocking for the epoll loop, event fds read-only and close-on-exec.

    A bounded queue holds fs.fanotify.max_queued_events (16384 by default) and then drops events
    (FAN_Q_OVERFLOW); a workload reading 20,000 files at full speed overruns it. Unlimited costs kernel
    memory only while the server lags, and ignore marks keep it near one event per distinct file.
    """
    flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | (FAN_UNLIMITED_QUEUE if unlimited_queue else 0)
    return check(lib.fanotify_init(flags, os.O_RDONLY | O_LARGEFILE | os.O_CLOEXEC), "fanotify_init")


def mark_mount(group: int, dirfd: int, mask: int = TRACE_MASK) -> None:
    """Watch the whole mount that the directory dirfd lies on.

    The pathname is "." rather than NULL: with NULL the kernel takes dirfd through fdget(), which
    refuses O_PATH fds (EBADF); "." resolves to dirfd itself without looking up any name.
    """
    check(lib.fanotify_mark(group, FAN_MARK_ADD | FAN_MARK_MOUNT, mask, dirfd, b"."), "fanotify_mark")


def ignore_inode(group: int, fd: int, mask: int = TRACE_MASK) -> None:
    """Stop reporting events on fd's inode; SURV_MODIFY keeps the ignore mark when the file is written."""
    check(
        lib.fanotify_mark(group, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, mask, fd, NULL),
        "fanotify_mark(ignore)",
    )


def queued_bytes(group: int) -> int:
    """How many bytes of events wait in the group's queue (FIONREAD: metadata and info records)."""
    (count,) = struct.unpack("i", fcntl.ioctl(group, termios.FIONREAD, b"\0" * 4))
    return int(count)


def iter_events(buf: bytes) -> Iterator[tuple[int, int, int]]:
    """The events in one read() of a group fd, as (fd, mask, pid); fd is FAN_NOFD for a queue overflow.

    Walks event_len, so that info records are skipped. read() returns whole events only, so anything that
    does not fit is a format error. Events yielded before the error carry open fds: the caller has them and
    must close them.
    """
    offset = 0
    if len(buf) % METADATA_LEN == 0:
        # The common case, events without info records, unpacked in one go; the walk below takes over at the
        # first event that is not of that kind.
        for event_len, vers, _, _, mask, fd, pid in _METADATA.iter_unpack(buf):
            if event_len != METADATA_LEN or vers != FANOTIFY_METADATA_VERSION:
                break
            yield fd, mask, pid
            offset += METADATA_LEN
    while offset < len(buf):
        if len(buf) - offset < METADATA_LEN:
            raise EventFormatError(f"{len(buf) - offset} trailing bytes, shorter than an event")
        event_len, vers, _, _, mask, fd, pid = _METADATA.unpack_from(buf, offset)
        if vers != FANOTIFY_METADATA_VERSION:
            raise EventFormatError(f"metadata version {vers}, expected {FANOTIFY_METADATA_VERSION}")
        if event_len < METADATA_LEN or event_len > len(buf) - offset:
            raise EventFormatError(f"event_len {event_len} at offset {offset} of {len(buf)}")
        yield fd, mask, pid
        offset += event_len
