"""Which processes descend from a traced pid, known at fork time (the kernel's process events connector).

An exec probe's `cat` may exit before its fanotify event is read; by then /proc cannot say whose child it
was. The proc connector reports every fork as it happens, so a descendant is recorded before it can open
anything, and its membership outlives it. Where the connector is unavailable, or its socket overflowed,
membership falls back to walking the parent chain in /proc, for processes still alive.
"""

from __future__ import annotations

import logging
import os
import socket
import struct

log = logging.getLogger("optimizer_server")

_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = 1
_CN_VAL_PROC = 1
_PROC_CN_MCAST_LISTEN = 1
_NLMSG_DONE = 3
_PROC_EVENT_FORK = 0x1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT_HEADER = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FORK = struct.Struct("=iiii")  # parent pid, parent tgid, child pid, child tgid
_RECV_BUFFER = 16 << 20  # forks of a busy node while we lag (~200k); memory is used only when full
_SO_RCVBUFFORCE = 33  # asm-generic/socket.h; Python's socket module lacks it
_FILTERING_SINCE = (6, 6)  # the connector filters events per listener (struct proc_input) since Linux 6.6


def _kernel_release() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


class ProcessTree:
    """Listens to the connector from the first watch() until close(): the server closes it when idle, so
    that it is not woken by every fork on the node while it traces nothing."""

    def __init__(self) -> None:
        self._members: dict[int, set[int]] = {}  # root pid -> tgids descending from it (root included)
        self._sock: socket.socket | None = None
        self.lossy = False  # the connector dropped messages: fork records may be missing

    def fileno(self) -> int | None:
        """The connector socket to poll for readability, while one is open."""
        return self._sock.fileno() if self._sock is not None else None

    def watch(self, root: int) -> None:
        if not self._members and self._sock is None:
            try:
                self._sock = _subscribe()
                self.lossy = False
            except OSError as e:
                log.warning("process events connector unavailable (%s): telling exec'd processes apart by /proc", e)
        self._members.setdefault(root, set()).add(root)

    def forget(self, root: int) -> None:
        self._members.pop(root, None)

    @property
    def idle(self) -> bool:
        """Nothing is watched: the owner may close() (after taking the socket out of its poll set)."""
        return not self._members

    def drain(self) -> None:
        """Take in every fork reported so far. Call before classifying the events of a read."""
        if self._sock is None:
            return
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:  # ENOBUFS: the kernel dropped messages for us
                if not self.lossy:
                    log.warning("process events connector overflowed (%s): falling back to /proc", e)
                self.lossy = True
                continue
            self._take(data)

    def _take(self, data: bytes) -> None:
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length = _NLMSGHDR.unpack_from(data, offset)[0]
            if length < _NLMSGHDR.size:
                return
            event = offset + _NLMSGHDR.size + _CN_MSG.size
            if event + _EVENT_HEADER.size + _FORK.size <= offset + length:
                what = _EVENT_HEADER.unpack_from(data, event)[0]
                if what == _PROC_EVENT_FORK:
                    _, parent, _, child = _FORK.unpack_from(data, event + _EVENT_HEADER.size)
                    for members in self._members.values():
                        if parent in members:
                            members.add(child)
            offset += (length + 3) & ~3

    def descends(self, root: int, pid: int) -> bool:
        members = self._members.get(root, set())
        if pid in members:
            return True
        if self._sock is not None and not self.lossy:
            return False
        return _descends_by_proc(root, pid)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _subscribe() -> socket.socket:
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, _NETLINK_CONNECTOR
    )
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RECV_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
        sock.bind((0, _CN_IDX_PROC))
        operation = struct.pack("=I", _PROC_CN_MCAST_LISTEN)
        if _kernel_release() >= _FILTERING_SINCE:
            # struct proc_input: forks only, so that the kernel does not send us (nor wake us for) every exec and
            # exit on the node. Older kernels take only the bare operation and ignore a longer message unsaid.
            operation += struct.pack("=I", _PROC_EVENT_FORK)
        message = _CN_MSG.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(operation), 0) + operation
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(message), _NLMSG_DONE, 0, 0, os.getpid()) + message)
    except OSError:
        sock.close()
        raise
    return sock


def _descends_by_proc(root: int, pid: int) -> bool:
    """Walk pid's parent chain in /proc. A process already gone counts as the root's: that keeps a
    short-lived child of the workload listed, at the price of an exec'd one's slipping in."""
    current = pid
    while current != root:
        try:
            with open(f"/proc/{current}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            return True
        # The command name may hold spaces and parentheses: the fields start after its last ")".
        current = int(data[data.rindex(b")") + 2 :].split(b" ", 2)[1])
        if current <= 1:
            return False
    return True
