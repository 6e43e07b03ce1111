"""fanotify: constants, the two system calls (through cffi, optimizer_server.libc), and event parsing.

A group reports events in one of two ways. In fd mode (the classic one) the kernel opens the file of every
event for the reader as it copies the event out: an fd per event, which the reader must close. In fid mode
(FAN_REPORT_DFID_NAME | FAN_REPORT_FID, Linux >= 5.9) an event names its file by file handles instead: the
handle of the directory it was opened in plus its name there, and the file's own handle; nothing is opened.
Only file systems whose handles can be decoded take a mount mark in fid mode (overlayfs only with
nfs_export=on); the others refuse it, and fd mode works everywhere.

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
FAN_REPORT_FID = 0x0000_0200
FAN_REPORT_DIR_FID = 0x0000_0400
FAN_REPORT_NAME = 0x0000_0800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME

FAN_MARK_ADD = 0x01
FAN_MARK_MOUNT = 0x10
FAN_MARK_IGNORED_MASK = 0x20
FAN_MARK_IGNORED_SURV_MODIFY = 0x40

FAN_NOFD = -1
FANOTIFY_METADATA_VERSION = 3

FAN_EVENT_INFO_TYPE_FID = 1
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
FAN_EVENT_INFO_TYPE_DFID = 3

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
# struct fanotify_event_info_header: info_type u8, pad u8, len u16; for the fid kinds then __kernel_fsid_t (8
# bytes, the same for every event of a mount mark) and a struct file_handle: handle_bytes u32, handle_type s32,
# f_handle[handle_bytes]; a DFID_NAME record ends with the name, NUL-terminated, and padding.
_INFO_HEADER = struct.Struct("=BBH")
_FID_HEAD = struct.Struct("=BxH8xI")  # a fid record's info_type, len and handle_bytes
_FSID_END = _INFO_HEADER.size + 8  # where the struct file_handle starts in a fid record
_HANDLE_HEADER = 8  # handle_bytes and handle_type


class EventFormatError(ValueError):
    """The kernel's event stream is not what this code understands (never expected in practice)."""


def init_group(*, unlimited_queue: bool, fid: bool = False) -> int:
    """A new notification group: non-blocking for the epoll loop, event fds read-only and close-on-exec, or
    with fid, no event fds but handles (EINVAL from a kernel older than 5.9).

    A bounded queue holds fs.fanotify.max_queued_events (16384 by default) and then drops events
    (FAN_Q_OVERFLOW); a workload reading 20,000 files at full speed overruns it. Unlimited costs kernel
    memory only while the server lags, and ignore marks keep it near one event per distinct file.
    """
    flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | (FAN_UNLIMITED_QUEUE if unlimited_queue else 0)
    if fid:
        flags |= FAN_REPORT_DFID_NAME | FAN_REPORT_FID
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


def ignore_inode_at(group: int, dirfd: int, name: bytes, mask: int = TRACE_MASK) -> None:
    """ignore_inode for the file name in dirfd names, link followed (for an O_PATH fd, which the kernel does
    not take as an fd of its own: name it as an entry of /proc/self/fd instead)."""
    check(
        lib.fanotify_mark(
            group, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, mask, dirfd, name
        ),
        "fanotify_mark(ignore)",
    )


def queued_events(group: int) -> int:
    """How many events wait in the group's queue: FIONREAD counts one metadata length per event, whatever
    info records a fid-mode event carries."""
    (count,) = struct.unpack("i", fcntl.ioctl(group, termios.FIONREAD, b"\0" * 4))
    return int(count) // METADATA_LEN


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


def iter_fid_events(buf: bytes) -> Iterator[tuple[int, int, bytes | None, bytes | None, bytes | None]]:
    """The events in one read() of a fid-mode group, as (mask, pid, directory handle, name, file handle).

    A handle is the struct file_handle as the kernel gave it (handle_bytes, handle_type, f_handle): what
    open_by_handle_at takes, and a key for the object (one mount mark sees one file system, so the fsid is
    left out). A queue overflow carries no info records: its handles and name are None, as are those a file
    system could not encode. Events yielded before a format error are whole; none carries an fd.
    """
    offset, end = 0, len(buf)
    unpack_metadata, unpack_info, unpack_fid = _METADATA.unpack_from, _INFO_HEADER.unpack_from, _FID_HEAD.unpack_from
    fid_head = _FID_HEAD.size
    while offset < end:
        if end - offset < METADATA_LEN:
            raise EventFormatError(f"{end - offset} trailing bytes, shorter than an event")
        event_len, vers, _, metadata_len, mask, _, pid = unpack_metadata(buf, offset)
        if vers != FANOTIFY_METADATA_VERSION:
            raise EventFormatError(f"metadata version {vers}, expected {FANOTIFY_METADATA_VERSION}")
        if metadata_len < METADATA_LEN or event_len < metadata_len or event_len > end - offset:
            raise EventFormatError(f"event_len {event_len}, metadata_len {metadata_len} at offset {offset} of {end}")
        directory = name = handle = None
        info, event_end = offset + metadata_len, offset + event_len
        while info < event_end:
            # Every record the group asks for is a fid record: one unpack reads its head and its handle's length.
            if event_end - info >= fid_head:
                info_type, info_len, handle_bytes = unpack_fid(buf, info)
            elif event_end - info >= _INFO_HEADER.size:
                info_type, _, info_len = unpack_info(buf, info)
                handle_bytes = -1
            else:
                raise EventFormatError(f"{event_end - info} bytes of an info record at offset {info}")
            info_end = info + info_len
            if info_len < _INFO_HEADER.size or info_end > event_end:
                raise EventFormatError(
                    f"info record of {info_len} bytes at offset {info} of an event ending at {event_end}"
                )
            if info_type in (FAN_EVENT_INFO_TYPE_FID, FAN_EVENT_INFO_TYPE_DFID_NAME, FAN_EVENT_INFO_TYPE_DFID):
                start = info + _FSID_END
                handle_end = start + _HANDLE_HEADER + handle_bytes
                if handle_bytes < 0 or handle_end > info_end:
                    raise EventFormatError(f"file handle beyond its record at offset {info}")
                if info_type == FAN_EVENT_INFO_TYPE_FID:
                    handle = buf[start:handle_end]
                else:
                    directory = buf[start:handle_end]
                    if info_type == FAN_EVENT_INFO_TYPE_DFID_NAME:
                        nul = buf.find(b"\0", handle_end, info_end)
                        name = buf[handle_end : nul if nul >= 0 else info_end]
            info = info_end
        yield mask, pid, directory, name, handle
        offset = event_end
