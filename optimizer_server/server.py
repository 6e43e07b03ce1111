"""The trace server: one single-threaded epoll loop over the control socket and every session's group.

A session is one fanotify group marking one container's root mount. The mark is placed through the
magic link /proc/PID/root, so the server never enters the container's mount namespace and never
resolves a path inside it; event fds still read back container-relative, because the container's root
is not reachable from ours.

The server resolves each event itself: fstat (identity, size, type) and readlink of the fd the kernel
opened for it, then closes it. Each regular file goes to the plugin once, as a record (protocol.FILES):
the plugin makes no system call per file. A file reported again gets an ignore mark, so the kernel stops
reporting it; a file read once never needs one, which spares the kernel a mark per file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import stat
import time
from dataclasses import dataclass, field

from optimizer_server import fanotify, protocol
from optimizer_server.proctree import ProcessTree

log = logging.getLogger("optimizer_server")

# One read() takes as many events as 64 KiB holds (2730), as long as the fd budget allows: the kernel
# opens an fd per event while copying, and an event whose fd cannot be opened (EMFILE) is dropped.
READ_SIZE = 64 * 1024
# fds the server needs besides one read's event fds: stdio, the control socket, the epoll fd, and one
# group per session (fs.fanotify.max_user_groups is 128 by default), with headroom.
FD_RESERVE = 512
# What readlink of a deleted file's fd ends with.
_DELETED = b" (deleted)"
# After reading a group's queue, the server leaves it for this long before it listens again (and likewise the
# process events connector). Meanwhile events queue up without waking anyone: a workload opening files at
# full speed pays for an event, not also for a wake-up of the server (an IPI, and on a VM an exit) per open.
# Events reach the plugin that much later, which no one waits for: STOP reads the queue at once.
COALESCE = 0.010
_ONESHOT = select.EPOLLIN | select.EPOLLONESHOT


@dataclass
class _Session:
    id: int
    pid: int
    group: int
    overflowed: bool = False
    lost: int = 0
    ignore_failed: bool = False
    seen: set[int] = field(default_factory=set)  # (st_dev << 64) | st_ino of every workload file sent
    foreign_seen: set[int] = field(default_factory=set)  # the same, for files sent as FOREIGN
    ignored: set[int] = field(default_factory=set)  # files with an ignore mark
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
        self._epoll = select.epoll()
        # Event fds are resolved relative to our fd directory: readlinkat skips looking up /proc/self/fd.
        self._fd_dir = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._sessions: dict[int, _Session] = {}
        self._by_group: dict[int, _Session] = {}
        self._tree = ProcessTree()
        self._tree_fd: int | None = None  # the connector socket registered with epoll
        self._resting: dict[int, float] = {}  # fd -> when to listen to it again (monotonic)

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
            case protocol.Trace(session_id, pid):
                self._trace(session_id, pid)
            case protocol.Stop(session_id):
                self._stop(session_id)
            case protocol.Cancel(session_id):
                if session := self._sessions.get(session_id):
                    self._close(session)
                    log.info("session %d: cancelled", session_id)
        return True

    def _trace(self, session_id: int, pid: int) -> None:
        if session_id in self._sessions:
            self._send(protocol.Failed(session_id, f"session {session_id} is already tracing"))
            return
        try:
            group = _watch_root_mount(pid, unlimited_queue=self._unlimited_queue)
        except _Refused as e:
            log.warning("session %d: %s", session_id, e)
            self._send(protocol.Failed(session_id, str(e)))
            return
        session = _Session(session_id, pid, group)
        self._tree.watch(pid)
        self._follow_tree()
        self._sessions[session_id] = session
        self._by_group[group] = session
        self._epoll.register(group, _ONESHOT)
        log.info("session %d: watching the root mount of pid %d", session_id, pid)
        self._send(protocol.Ready(session_id))

    def _stop(self, session_id: int) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            self._send(protocol.Failed(session_id, f"session {session_id} is not tracing"))
            return
        # Events are queued during the workload's own syscalls, so everything it did before STOP is in
        # the queue by now.
        self._read_queued(session)
        self._close(session)
        log.info(
            "session %d: done with pid %d (overflowed=%s, lost=%d, events=%d, repeats not sent=%d, ignore marks=%d)",
            session_id,
            session.pid,
            session.overflowed,
            session.lost,
            session.events,
            session.repeats,
            len(session.ignored),
        )
        self._send(protocol.Done(session_id, session.overflowed, session.lost, session.events))

    def _read_queued(self, session: _Session) -> None:
        """Read and forward what is queued now, no more: a workload still opening new files behind it must not
        hold the loop forever."""
        pending = fanotify.queued_bytes(session.group)
        while pending > 0 and (done := self._read_once(session)) is not None:
            pending -= done

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

    def _read_once(self, session: _Session) -> int | None:
        """Read and forward one buffer of events; how many queued bytes it took, None if none were queued.

        EINTR needs no care: Python retries the read (PEP 475).
        """
        try:
            buf = os.read(session.group, self._read_size)
        except BlockingIOError:
            return None
        except OSError as e:
            # The kernel could not open the file of the event at the head of the queue (e.g. ENXIO,
            # EMFILE) and dropped that event, which was at least one metadata long.
            session.lost += 1
            log.warning("session %d: event dropped by the kernel: %s", session.id, e.strerror)
            return fanotify.METADATA_LEN
        self._forward(session, buf, time.monotonic_ns())
        return len(buf)

    def _forward(self, session: _Session, buf: bytes, t_ns: int) -> None:
        records: list[bytes] = []
        # Every fork behind these events was reported before the events themselves were queued.
        self._tree.drain()
        own: dict[int, bool] = {}  # pid -> descends from the traced one; a read's events share few pids
        try:
            for fd, mask, pid in fanotify.iter_events(buf):
                if fd == fanotify.FAN_NOFD:
                    session.overflowed |= bool(mask & fanotify.FAN_Q_OVERFLOW)
                    continue
                session.events += 1
                if (ours := own.get(pid)) is None:
                    ours = own[pid] = self._tree.descends(session.pid, pid)
                try:
                    record = self._resolve(session, fd, mask, pid, ours, t_ns)
                finally:
                    os.close(fd)
                if record is not None:
                    records.append(record)
        except fanotify.EventFormatError as e:
            session.lost += 1
            log.error("session %d: unreadable event stream, rest of this read dropped: %s", session.id, e)
        self._send_files(session, records)

    def _resolve(self, session: _Session, fd: int, mask: int, pid: int, own: bool, t_ns: int) -> bytes | None:
        """The record of a file seen for the first time (as the workload's, or as FOREIGN), else None."""
        try:
            info = os.fstat(fd)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        key = (info.st_dev << 64) | info.st_ino
        seen = session.seen if own else session.foreign_seen
        if key in seen:
            session.repeats += 1
            # Reported again: the workload rereads it, so have the kernel stop reporting it. Not for an exec'd
            # process: the workload's own first read of the file must still be reported.
            if own and key not in session.ignored:
                session.ignored.add(key)
                self._ignore_repeats(session, fd)
            return None
        try:
            path = os.readlink(b"%d" % fd, dir_fd=self._fd_dir)
        except OSError as e:
            log.warning("session %d: cannot resolve an event fd: %s", session.id, e.strerror)
            return None
        seen.add(key)
        if not own:
            mask |= protocol.FOREIGN
        if info.st_nlink == 0 and path.endswith(_DELETED):
            mask |= protocol.DELETED
        return protocol.encode_file(mask, pid, t_ns, info.st_dev, info.st_ino, info.st_size, path)

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
        try:
            self._control.send(protocol.files_message(session.id, batch))
        except (BrokenPipeError, ConnectionResetError):
            raise
        except OSError as e:  # e.g. ENOBUFS: this batch is lost, the session goes on
            session.lost += len(batch)
            log.error("session %d: %d files not sent: %s", session.id, len(batch), e.strerror)

    def _ignore_repeats(self, session: _Session, fd: int) -> None:
        try:
            fanotify.ignore_inode(session.group, fd)
        except OSError as e:
            # Still correct (repeats are not sent), only slower: say so once per session.
            if not session.ignore_failed:
                session.ignore_failed = True
                log.warning("session %d: repeats will not be suppressed: %s", session.id, e.strerror)

    def _close(self, session: _Session) -> None:
        del self._sessions[session.id]
        del self._by_group[session.group]
        self._resting.pop(session.group, None)
        self._epoll.unregister(session.group)
        os.close(session.group)
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


class _Refused(Exception):
    """TRACE cannot be served; the message goes to the plugin in FAILED."""


def _watch_root_mount(pid: int, *, unlimited_queue: bool) -> int:
    """A new fanotify group marking the root mount of pid."""
    try:
        root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Refused(f"pid {pid}: no such process") from None
    except OSError as e:
        raise _Refused(f"pid {pid}: cannot open /proc/{pid}/root: {e.strerror}") from None
    try:
        group = fanotify.init_group(unlimited_queue=unlimited_queue)
        try:
            fanotify.mark_mount(group, root)
        except OSError:
            os.close(group)
            raise
        return group
    except OSError as e:
        raise _Refused(f"pid {pid}: {e.strerror}") from None
    finally:
        os.close(root)
