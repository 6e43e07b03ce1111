"""The trace server: one single-threaded epoll loop over the control socket and every session's group.

A session is one fanotify group marking one container's root mount. The mark is placed through the
magic link /proc/PID/root, so the server never enters the container's mount namespace and never
resolves a path inside it; event fds still read back container-relative, because the container's root
is not reachable from ours.

The server resolves each event itself, in one of two ways (fanotify.py). In fd mode: fstat (identity,
size, type) and readlink of the fd the kernel opened for the event, then close. In fid mode, where the
kernel and the file system allow it, the event names the file's directory by handle and the file by its
name there and its own handle: each directory is resolved once (open_by_handle_at on the container's root
directory, which the session holds, then readlink), and a new file costs one fstatat of its name in it;
nothing is opened per event. Each regular file goes to the plugin once, as a record (protocol.FILES): the
plugin makes no system call per file. A file reported again gets an ignore mark, so the kernel stops
reporting it; a file read once never needs one, which spares the kernel a mark per file.

With RESIDENCY, STOP also reports how much of each file larger than residency.MIN_SIZE is in the page cache
(residency.py), and for one there in part which ranges, from what the session kept of it: the event fd in fd mode
(as many as the fd limit allows), the file's handle in fid mode.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from optimizer_server import fanotify, handles, protocol, residency
from optimizer_server.proctree import ProcessTree
from optimizer_server.residency import Cached, Residency

log = logging.getLogger("optimizer_server")

# One read() takes as many events as 64 KiB holds (2730), as long as the fd budget allows: the kernel
# opens an fd per event while copying, and an event whose fd cannot be opened (EMFILE) is dropped.
READ_SIZE = 64 * 1024
# fds the server needs besides one read's event fds and the event fds kept for RESIDENCY: stdio, the control
# socket, the epoll fd, and per session (fs.fanotify.max_user_groups is 128 by default) a group, and in fid
# mode the container's root and a few directories (handles.DIRECTORY_FDS), with headroom.
FD_RESERVE = 512 + 128 * (2 + handles.DIRECTORY_FDS)
# Why a kernel or a file system refuses fid mode: fanotify_init without FAN_REPORT_DFID_NAME (Linux < 5.9:
# EINVAL), a mount mark on a file system whose handles cannot be decoded (overlayfs without nfs_export:
# EOPNOTSUPP), one with no fsid or a btrfs subvolume's (ENODEV, EXDEV), no handles at all (EOPNOTSUPP).
_FID_REFUSALS = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENODEV, errno.EXDEV)
# After reading a group's queue, the server leaves it for this long before it listens again (and likewise the
# process events connector). Meanwhile events queue up without waking anyone: a workload opening files at
# full speed pays for an event, not also for a wake-up of the server (an IPI, and on a VM an exit) per open.
# Events reach the plugin that much later, which no one waits for: STOP reads the queue at once.
COALESCE = 0.010
_ONESHOT = select.EPOLLIN | select.EPOLLONESHOT
_UNKNOWN = Cached(protocol.UNKNOWN_RESIDENT, ())


@dataclass
class _Session:
    id: int
    pid: int
    group: int
    mode: int  # protocol.MODE_FID or MODE_FD
    root: int = -1  # fid mode: the container's root directory, on which handles are decoded
    directories: handles.Directories | None = None  # fid mode
    # With RESIDENCY, per record sent: how to reach its file at STOP. fd mode: the event fd, fid mode: the file's
    # handle; None for a file not looked at (see Server._keep).
    kept: list[int | bytes | None] | None = None
    overflowed: bool = False
    lost: int = 0
    ignore_failed: bool = False
    # Every file sent as the workload's: fd mode (st_dev << 64) | st_ino, fid mode the handle (files that are
    # not regular too); foreign_seen the same for files sent as FOREIGN.
    seen: set[int | bytes] = field(default_factory=set)
    foreign_seen: set[int | bytes] = field(default_factory=set)
    ignored: set[int | bytes] = field(default_factory=set)  # files with an ignore mark
    events: int = 0  # events read from the kernel, but for overflow notices
    repeats: int = 0  # events of files sent already: not sent again


class Server:
    def __init__(self, control: socket.socket, *, nofile: int, unlimited_queue: bool = True) -> None:
        """control: our end of the SEQPACKET socketpair; nofile: the RLIMIT_NOFILE soft limit."""
        self._control = control
        # Room for a few of the largest FILES datagrams, whatever net.core.wmem_default says (a datagram larger
        # than the send buffer could never be sent: EMSGSIZE).
        with contextlib.suppress(OSError):
            control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * protocol.MAX_DATAGRAM)
        self._unlimited_queue = unlimited_queue
        events_per_read = max(1, min(READ_SIZE // fanotify.METADATA_LEN, nofile - FD_RESERVE))
        self._read_size = events_per_read * fanotify.METADATA_LEN
        # Event fds all fd sessions together may keep for RESIDENCY: what a read's and the reserve leave.
        self._keep_limit = max(0, nofile - FD_RESERVE - events_per_read)
        self._kept_fds = 0
        self._residency = Residency()
        self._epoll = select.epoll()
        # Event fds are resolved relative to our fd directory: readlinkat skips looking up /proc/self/fd.
        self._fd_dir = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._sessions: dict[int, _Session] = {}
        self._by_group: dict[int, _Session] = {}
        self._tree = ProcessTree()
        self._tree_fd: int | None = None  # the connector socket registered with epoll
        self._resting: dict[int, float] = {}  # fd -> when to listen to it again (monotonic)
        self._closer = _GroupCloser()

    def run(self) -> int:
        """Serve until the plugin closes its end; returns the exit status."""
        self._epoll.register(self._control, select.EPOLLIN | select.EPOLLRDHUP)
        try:
            self._send(protocol.Hello(0, protocol.PROTOCOL_VERSION))
            while True:
                for fd, flags in self._epoll.poll(self._poll_timeout()):
                    if fd == self._control.fileno():
                        if not self._on_control(flags):
                            log.info("control socket closed: exiting")
                            return 0
                    elif session := self._by_group.get(fd):
                        self._read_queued(session)
                        self._rest(fd)
                    elif fd == self._tree_fd:
                        self._tree.drain()
                        self._rest(fd)
                self._wake_rested()
        except (BrokenPipeError, ConnectionResetError):
            log.info("plugin went away: exiting")
            return 0
        finally:
            for session in list(self._sessions.values()):
                self._close(session)
            self._tree.close()
            self._epoll.close()
            os.close(self._fd_dir)

    def _on_control(self, flags: int) -> bool:
        """Handle one command; False once the plugin has closed its end."""
        data = self._control.recv(protocol.MAX_DATAGRAM)
        # On SEQPACKET an empty datagram also reads as b"": only the hang-up flags mean end of file.
        if not data and flags & (select.EPOLLHUP | select.EPOLLRDHUP):
            return False
        try:
            command = protocol.decode_command(data)
        except protocol.ProtocolError as e:
            log.error("ignoring a %d-byte control message %s: %s", len(data), data[:32].hex(), e)
            return True
        match command:
            case protocol.Trace(session_id, pid, mode, options):
                self._trace(session_id, pid, mode, options)
            case protocol.Stop(session_id):
                self._stop(session_id)
            case protocol.Cancel(session_id):
                if session := self._sessions.get(session_id):
                    self._close(session)
                    log.info("session %d: cancelled", session_id)
        return True

    def _trace(self, session_id: int, pid: int, mode: int, options: int) -> None:
        if session_id in self._sessions:
            self._send(protocol.Failed(session_id, f"session {session_id} is already tracing"))
            return
        try:
            session, fid_refused = self._watch_root_mount(session_id, pid, mode)
        except _Refused as e:
            log.warning("session %d: %s", session_id, e)
            self._send(protocol.Failed(session_id, str(e)))
            return
        if options & protocol.RESIDENCY:
            session.kept = []
        self._tree.watch(pid)
        self._follow_tree()
        self._sessions[session_id] = session
        self._by_group[session.group] = session
        self._epoll.register(session.group, _ONESHOT)
        log.info(
            "session %d: watching the root mount of pid %d (%s events%s)",
            session_id,
            pid,
            protocol.MODE_NAMES[session.mode],
            f"; fid refused: {fid_refused}" if fid_refused else "",
        )
        self._send(protocol.Ready(session_id, session.mode))

    def _watch_root_mount(self, session_id: int, pid: int, mode: int) -> tuple[_Session, str | None]:
        """A session whose new fanotify group marks the root mount of pid, in fid mode where asked and possible
        (else why fid was refused), or fd mode. Raises _Refused."""
        try:
            # Read-only, not O_PATH: open_by_handle_at takes its mount fd as a real one.
            root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _Refused(f"pid {pid}: no such process") from None
        except OSError as e:
            raise _Refused(f"pid {pid}: cannot open /proc/{pid}/root: {e.strerror}") from None
        refused = None
        try:
            if mode != protocol.MODE_FD:
                try:
                    group = self._mark(root, fid=True)
                except OSError as e:
                    if e.errno not in _FID_REFUSALS:
                        raise
                    refused = e.strerror
                    if mode == protocol.MODE_FID:
                        raise _Refused(f"pid {pid}: fid events refused: {refused}") from None
                else:
                    try:
                        directories = handles.Directories(root, handles.encode(root), self._fd_dir)
                    except OSError:
                        self._closer.close(group)
                        raise
                    return _Session(session_id, pid, group, protocol.MODE_FID, root, directories), None
            group = self._mark(root, fid=False)
        except OSError as e:
            os.close(root)
            raise _Refused(f"pid {pid}: {e.strerror}") from None
        except _Refused:
            os.close(root)
            raise
        os.close(root)
        return _Session(session_id, pid, group, protocol.MODE_FD), refused

    def _mark(self, root: int, *, fid: bool) -> int:
        """A new group marking the mount root lies on."""
        group = fanotify.init_group(unlimited_queue=self._unlimited_queue, fid=fid)
        try:
            fanotify.mark_mount(group, root)
        except OSError:
            self._closer.close(group)
            raise
        return group

    def _stop(self, session_id: int) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            self._send(protocol.Failed(session_id, f"session {session_id} is not tracing"))
            return
        # Events are queued during the workload's own syscalls, so everything it did before STOP is in
        # the queue by now.
        self._read_queued(session)
        if session.kept is not None:
            self._send_residency(session)
        self._close(session)
        log.info(
            "session %d: done with pid %d (%s events, overflowed=%s, lost=%d, events=%d, repeats not sent=%d, "
            "ignore marks=%d)",
            session_id,
            session.pid,
            protocol.MODE_NAMES[session.mode],
            session.overflowed,
            session.lost,
            session.events,
            session.repeats,
            len(session.ignored),
        )
        self._send(protocol.Done(session_id, session.overflowed, session.lost, session.events))

    def _read_queued(self, session: _Session) -> None:
        """Read what is queued now, no more (a workload still opening new files behind it must not hold the loop
        forever), and send its records in as few datagrams as fit."""
        pending = fanotify.queued_events(session.group)
        records: list[bytes] = []
        t_ns = time.monotonic_ns()
        while pending > 0 and (done := self._read_once(session, records, t_ns)) is not None:
            pending -= done
        self._send_files(session, records)

    def _rest(self, fd: int) -> None:
        """Leave a one-shot source disarmed for COALESCE seconds."""
        self._resting[fd] = time.monotonic() + COALESCE

    def _poll_timeout(self) -> float | None:
        """Until the first rested source is due, or forever."""
        return max(0.0, min(self._resting.values()) - time.monotonic()) if self._resting else None

    def _wake_rested(self) -> None:
        now = time.monotonic()
        for fd in [fd for fd, due in self._resting.items() if due <= now]:
            del self._resting[fd]
            # Armed again; epoll reports at once what queued up meanwhile.
            self._epoll.modify(fd, _ONESHOT)

    def _read_once(self, session: _Session, records: list[bytes], t_ns: int) -> int | None:
        """Read one buffer of events and add their records; how many events it took, None if none were queued.

        EINTR needs no care: Python retries the read (PEP 475).
        """
        try:
            buf = os.read(session.group, READ_SIZE if session.mode == protocol.MODE_FID else self._read_size)
        except BlockingIOError:
            return None
        except OSError as e:
            # The kernel could not open the file of the event at the head of the queue (e.g. ENXIO,
            # EMFILE) and dropped that event, which was at least one metadata long.
            session.lost += 1
            log.warning("session %d: event dropped by the kernel: %s", session.id, e.strerror)
            return 1
        # Every fork behind these events was reported before the events themselves were queued: taken in now,
        # after the read, each of their processes is known to descend from the traced one or not.
        self._tree.drain()
        try:
            if session.mode == protocol.MODE_FID:
                return self._resolve_fid_events(session, buf, records, t_ns)
            return self._resolve_fd_events(session, buf, records, t_ns)
        except _Unreadable as e:
            session.lost += 1
            log.error("session %d: unreadable event stream, rest of this read dropped: %s", session.id, e.error)
            return e.events + 1

    def _resolve_fd_events(self, session: _Session, buf: bytes, records: list[bytes], t_ns: int) -> int:
        """Add the records of one read's fd-mode events: each file's first as the workload's, and at most one more
        as FOREIGN; how many events there were. Every event fd is closed, or kept for RESIDENCY.

        This runs for every event: one loop, its names local (a method call and an attribute load per event are
        most of what Python adds to the system calls; benchmarks/cost/instructions.py counts them).
        """
        own: dict[int, bool] = {}  # pid -> descends from the traced one; a read's events share few pids
        descends, traced = self._tree.descends, session.pid
        fstat, readlink, close, fd_dir = os.fstat, os.readlink, os.close, self._fd_dir
        is_regular, encode = stat.S_ISREG, protocol.encode_file
        seen_own, seen_foreign = session.seen, session.foreign_seen
        keeping = session.kept is not None
        events = counted = 0
        try:
            for fd, mask, pid in fanotify.iter_events(buf):
                events += 1
                if fd == fanotify.FAN_NOFD:
                    session.overflowed |= bool(mask & fanotify.FAN_Q_OVERFLOW)
                    continue
                counted += 1
                if (ours := own.get(pid)) is None:
                    ours = own[pid] = descends(traced, pid)
                kept = False
                try:
                    try:
                        info = fstat(fd)
                    except OSError:
                        continue
                    mode, nlink, dev, ino, size = info.st_mode, info.st_nlink, info.st_dev, info.st_ino, info.st_size
                    if not is_regular(mode):
                        continue
                    key = (dev << 64) | ino
                    seen = seen_own if ours else seen_foreign
                    if key in seen:
                        self._repeated(session, key, ours, fanotify.ignore_inode, session.group, fd)
                        continue
                    try:
                        path = readlink(b"%d" % fd, dir_fd=fd_dir)
                    except OSError as e:
                        log.warning("session %d: cannot resolve an event fd: %s", session.id, e.strerror)
                        continue
                    seen.add(key)
                    if not ours:
                        mask |= protocol.FOREIGN
                    if nlink == 0 and path.endswith(handles.DELETED):
                        mask |= protocol.DELETED
                    if keeping:
                        kept = self._keep(session, fd, size)
                    records.append(encode(mask, pid, t_ns, dev, ino, size, path))
                finally:
                    if not kept:
                        close(fd)
        except fanotify.EventFormatError as e:
            raise _Unreadable(e, events) from None
        finally:
            session.events += counted
        return events

    def _repeated(
        self, session: _Session, key: int | bytes, own: bool, ignore: Callable[..., None], *args: object
    ) -> None:
        """A file sent already: not sent again. If the workload rereads it, have the kernel stop reporting it (an
        ignore mark); not for an exec'd process, whose files the workload's own first read must still report."""
        session.repeats += 1
        if own and key not in session.ignored:
            session.ignored.add(key)
            try:
                ignore(*args)
            except OSError as e:
                # Still correct (repeats are not sent), only slower: say so once per session.
                if not session.ignore_failed:
                    session.ignore_failed = True
                    log.warning("session %d: repeats will not be suppressed: %s", session.id, e.strerror)

    def _keep(self, session: _Session, item: int | bytes, size: int) -> bool:
        """With RESIDENCY, for a record sent: how to reach its file again at STOP (an fd within the fd limit, or a
        handle), for a file larger than residency.MIN_SIZE; whether item was kept."""
        assert session.kept is not None
        if size <= residency.MIN_SIZE or (isinstance(item, int) and self._kept_fds >= self._keep_limit):
            session.kept.append(None)
            return False
        session.kept.append(item)
        if isinstance(item, int):
            self._kept_fds += 1
        return True

    def _resolve_fid_events(self, session: _Session, buf: bytes, records: list[bytes], t_ns: int) -> int:
        """Add the records of one read's fid-mode events, as _resolve_fd_events does; how many events there were.

        A new file is looked at with one fstatat of its name in its directory (by an fd the session keeps for a few
        directories, opened by handle), without following a symlink and without opening anything; a file gone by
        then was made and removed by the container (DELETED). Events come mostly a directory at a time: the last
        directory is at hand without a lookup.
        """
        assert session.directories is not None
        own: dict[int, bool] = {}
        descends, traced = self._tree.descends, session.pid
        stat_, directories, encode = os.stat, session.directories, protocol.encode_file
        seen_own, seen_foreign = session.seen, session.foreign_seen
        kept = session.kept
        last_directory, dir_fd, dir_path = None, -1, b""
        events = counted = 0
        try:
            for mask, pid, directory, name, handle in fanotify.iter_fid_events(buf):
                events += 1
                if mask & fanotify.FAN_Q_OVERFLOW:
                    session.overflowed = True
                    continue
                counted += 1
                if handle is None or directory is None or name is None:
                    # The file system could not encode a handle for this file: it cannot be named.
                    session.lost += 1
                    continue
                if (ours := own.get(pid)) is None:
                    ours = own[pid] = descends(traced, pid)
                seen = seen_own if ours else seen_foreign
                if handle in seen:
                    self._repeated(session, handle, ours, self._ignore_handle, session, handle)
                    continue
                seen.add(handle)
                if directory != last_directory:
                    try:
                        dir_fd, dir_path = directories.open(directory)
                    except OSError as e:
                        last_directory = None
                        if e.errno != errno.ESTALE:  # ESTALE: the directory is gone, and the file with it
                            log.warning("session %d: cannot open a directory by its handle: %s", session.id, e.strerror)
                        continue
                    last_directory = directory
                path = b"/" + name if dir_path == b"/" else dir_path + b"/" + name
                if not ours:
                    mask |= protocol.FOREIGN
                try:
                    info = stat_(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    if kept is not None:
                        kept.append(None)
                    records.append(encode(mask | protocol.DELETED, pid, t_ns, 0, 0, 0, path))
                    continue
                except OSError as e:
                    log.warning("session %d: cannot look at a file: %s", session.id, e.strerror)
                    continue
                mode, dev, ino, size = info.st_mode, info.st_dev, info.st_ino, info.st_size
                if not stat.S_ISREG(mode):
                    continue
                if dir_path.endswith(handles.DELETED):
                    mask |= protocol.DELETED
                if kept is not None:
                    self._keep(session, handle, size)
                records.append(encode(mask, pid, t_ns, dev, ino, size, path))
        except fanotify.EventFormatError as e:
            raise _Unreadable(e, events) from None
        finally:
            session.events += counted
        return events

    def _ignore_handle(self, session: _Session, handle: bytes) -> None:
        """An ignore mark for the file of handle: the kernel takes an O_PATH fd only by a name, so it is named as an
        entry of /proc/self/fd, which leads to exactly that file. Raises OSError."""
        fd = handles.open_handle(session.root, handle, os.O_PATH)
        try:
            fanotify.ignore_inode_at(session.group, self._fd_dir, b"%d" % fd)
        finally:
            os.close(fd)

    def _send_files(self, session: _Session, records: list[bytes]) -> None:
        """Records in as few datagrams as fit."""
        batch: list[bytes] = []
        size = protocol.FILES_HEADER_LEN
        for record in records:
            if batch and size + len(record) > protocol.MAX_DATAGRAM:
                self._send_batch(session, batch)
                batch, size = [], protocol.FILES_HEADER_LEN
            batch.append(record)
            size += len(record)
        if batch:
            self._send_batch(session, batch)

    def _send_batch(self, session: _Session, batch: list[bytes]) -> None:
        self._send_raw(session, protocol.files_message(session.id, batch), len(batch))

    def _send_raw(self, session: _Session, datagram: bytes, files: int) -> None:
        """A FILES, RESIDENT or RANGES datagram about that many files."""
        try:
            self._control.send(datagram)
        except (BrokenPipeError, ConnectionResetError):
            raise
        except OSError as e:  # e.g. ENOBUFS: this batch is lost, the session goes on
            session.lost += files
            log.error("session %d: a message about %d files not sent: %s", session.id, files, e.strerror)

    def _send_residency(self, session: _Session) -> None:
        """RESIDENT for every record sent, in order, as few datagrams as fit, each followed by the RANGES of its files
        resident in part; kept fds are closed."""
        assert session.kept is not None
        kept, session.kept = session.kept, None
        sizes: list[int] = []
        ranges: list[bytes] = []  # the RANGES of the files in sizes
        first = 0
        for number, item in enumerate(kept):
            resident, where = self._cached(session, item)
            sizes.append(resident)
            if where:
                ranges.append(protocol.encode(protocol.Ranges(session.id, number, where)))
            if len(sizes) == protocol.MAX_RESIDENT:
                self._send_resident(session, first, sizes, ranges)
                first, sizes, ranges = first + len(sizes), [], []
        if sizes:
            self._send_resident(session, first, sizes, ranges)

    def _send_resident(self, session: _Session, first: int, sizes: list[int], ranges: list[bytes]) -> None:
        self._send_raw(session, protocol.resident_message(session.id, first, sizes), len(sizes))
        for datagram in ranges:
            self._send_raw(session, datagram, 1)

    def _cached(self, session: _Session, item: int | bytes | None) -> Cached:
        """A kept file's bytes in the page cache now (UNKNOWN_RESIDENT if not looked at), and their ranges if it is
        there in part (else none)."""
        if item is None:
            return _UNKNOWN
        if isinstance(item, bytes):
            return self._cached_by_handle(session, item)
        self._kept_fds -= 1
        try:
            size = os.fstat(item).st_size
            return _in_part(self._residency.cached(item, size), size)
        except OSError:
            return _UNKNOWN
        finally:
            os.close(item)

    def _cached_by_handle(self, session: _Session, handle: bytes) -> Cached:
        """Reached again by its handle (O_PATH: opening nothing), read-only only once fstat says it is a regular
        file, through /proc/self/fd, which leads to exactly that file."""
        try:
            path_fd = handles.open_handle(session.root, handle, os.O_PATH)
        except OSError:
            return _UNKNOWN
        try:
            info = os.fstat(path_fd)
            if not stat.S_ISREG(info.st_mode):
                return _UNKNOWN
            fd = os.open(b"%d" % path_fd, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._fd_dir)
            try:
                return _in_part(self._residency.cached(fd, info.st_size), info.st_size)
            finally:
                os.close(fd)
        except OSError:
            return _UNKNOWN
        finally:
            os.close(path_fd)

    def _close(self, session: _Session) -> None:
        del self._sessions[session.id]
        del self._by_group[session.group]
        self._resting.pop(session.group, None)
        self._epoll.unregister(session.group)
        self._closer.close(session.group)
        if session.kept is not None and session.mode == protocol.MODE_FD:
            for fd in session.kept:
                if isinstance(fd, int):
                    os.close(fd)
                    self._kept_fds -= 1
            session.kept = None
        if session.directories is not None:
            session.directories.close()
        if session.root >= 0:
            os.close(session.root)
        if not any(other.pid == session.pid for other in self._sessions.values()):
            self._tree.forget(session.pid)
        if self._tree.idle:
            # Out of the poll set before the socket is closed, while its fd number still means it.
            if self._tree_fd is not None:
                self._resting.pop(self._tree_fd, None)
                self._epoll.unregister(self._tree_fd)
                self._tree_fd = None
            self._tree.close()

    def _follow_tree(self) -> None:
        """Poll the connector socket the tree opened, if it did."""
        fd = self._tree.fileno()
        if fd is not None and self._tree_fd is None:
            self._epoll.register(fd, _ONESHOT)
            self._tree_fd = fd

    def _send(self, msg: protocol.Reply) -> None:
        # Blocking send: a slow plugin slows us down (backpressure) instead of reordering or dropping.
        self._control.send(protocol.encode(msg))


def _in_part(cached: Cached, size: int) -> Cached:
    """cached, without its ranges unless the file is in the page cache in part (no ranges: the whole file)."""
    return cached if 0 < cached.resident < size else Cached(cached.resident, ())


class _GroupCloser:
    """Closes fanotify groups on a thread of its own. The kernel's close of a group that placed marks returns only
    once they are destroyed, after an SRCU grace period: 14 ms at the median and 46 ms at p90 on a 2-core VM
    (measured), during which the loop would answer no other container's TRACE."""

    def __init__(self) -> None:
        self._groups: queue.SimpleQueue[int] = queue.SimpleQueue()
        # Started after the server gave up its capabilities, which a thread inherits from its creator.
        threading.Thread(target=self._run, name="group-closer", daemon=True).start()

    def close(self, group: int) -> None:
        """The caller no longer uses group (nor has it in the epoll set); its number stays taken until closed."""
        self._groups.put(group)

    def _run(self) -> None:
        while True:
            group = self._groups.get()
            try:
                os.close(group)
            except OSError as e:  # never expected: the loop must go on for the groups after it
                log.error("cannot close fanotify group fd %d: %s", group, e.strerror)


class _Refused(Exception):
    """TRACE cannot be served; the message goes to the plugin in FAILED."""


class _Unreadable(Exception):
    """The kernel's event stream could not be parsed; events: how many came before (their records are added)."""

    def __init__(self, error: fanotify.EventFormatError, events: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.events = events
