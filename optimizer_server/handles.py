"""File handles, for fid mode: how its events name files, and how the server reaches a directory or a file it
holds no fd for without a path: open_by_handle_at on the container's root directory, which a fid session
holds. Decoding takes CAP_DAC_READ_SEARCH (privileges.py keeps it).

A handle here is a struct file_handle as bytes (handle_bytes u32, handle_type s32, f_handle), exactly as
fanotify reports it (fanotify.iter_fid_events).
"""

from __future__ import annotations

import os
import struct

from optimizer_server.libc import check, ffi, lib

MAX_HANDLE_SZ = 128  # <linux/exportfs.h>: the largest f_handle any file system encodes
AT_EMPTY_PATH = 0x1000
_HANDLE_BYTES = struct.Struct("=I")
_HANDLE_HEADER = 8  # handle_bytes, handle_type
# What readlink of a deleted object's fd ends with.
DELETED = b" (deleted)"
# Directory fds a session keeps open (O_PATH, for fstatat): events come mostly a directory at a time, so a few
# spare a directory's reopening; its path is kept for as long as the session lives, whatever this says.
DIRECTORY_FDS = 8


def encode(fd: int) -> bytes:
    """The handle of the object fd refers to, as fanotify reports it (name_to_handle_at, AT_EMPTY_PATH)."""
    buf = ffi.new("unsigned char[]", _HANDLE_HEADER + MAX_HANDLE_SZ)
    view = ffi.buffer(buf)
    _HANDLE_BYTES.pack_into(view, 0, MAX_HANDLE_SZ)
    check(lib.name_to_handle_at(fd, b"", buf, ffi.new("int *"), AT_EMPTY_PATH), "name_to_handle_at")
    return bytes(view[: _HANDLE_HEADER + _HANDLE_BYTES.unpack_from(view)[0]])


def open_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """An fd of the object handle names, on mount_fd's file system (ESTALE: it no longer exists)."""
    return check(lib.open_by_handle_at(mount_fd, ffi.from_buffer(handle), flags | os.O_CLOEXEC), "open_by_handle_at")


class Directories:
    """The directories of one fid session's events, each resolved once: a handle's path, and an O_PATH fd for a
    few of them. Paths read back relative to the container's root, as event fds do."""

    def __init__(self, root: int, root_handle: bytes, fd_dir: int) -> None:
        """root: the container's root directory (kept by the caller); fd_dir: /proc/self/fd, for readlinkat."""
        self._root = root
        self._root_handle = root_handle
        self._fd_dir = fd_dir
        # The root: decoding a file system root's own handle is not always possible (tmpfs says ESTALE).
        self._paths: dict[bytes, bytes] = {root_handle: b"/"}
        self._fds: dict[bytes, int] = {}  # oldest first

    def open(self, handle: bytes) -> tuple[int, bytes]:
        """(an O_PATH fd, the path) of the directory; the fd stays ours. Raises OSError (ESTALE: the directory is
        gone). A path that ends with DELETED is a directory removed since."""
        if handle == self._root_handle:
            return self._root, b"/"
        fd = self._fds.get(handle)
        if fd is None:
            fd = open_handle(self._root, handle, os.O_PATH | os.O_DIRECTORY)
            if len(self._fds) >= DIRECTORY_FDS:
                oldest = next(iter(self._fds))
                os.close(self._fds.pop(oldest))
            self._fds[handle] = fd
        path = self._paths.get(handle)
        if path is None:
            path = self._paths[handle] = os.readlink(b"%d" % fd, dir_fd=self._fd_dir)
        return fd, path

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
