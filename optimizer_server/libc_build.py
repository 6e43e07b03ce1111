"""Generates optimizer_server/_libc.py, cffi's out-of-line ABI module for the C calls Python lacks (make ffi).

Run at development time only: the generated module needs cffi's small C backend and not its C parser
(pycparser, several MB of a resident process's memory), and no compiler at any time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cffi  # type: ignore[import-untyped, unused-ignore]  # no stubs in the venv

DECLARATIONS = """
int fanotify_init(unsigned int flags, unsigned int event_f_flags);
int fanotify_mark(int fanotify_fd, unsigned int flags, uint64_t mask, int dirfd, const char *pathname);
int name_to_handle_at(int dirfd, const char *pathname, void *handle, int *mount_id, int flags);
int open_by_handle_at(int mount_fd, void *handle, int flags);
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
int mincore(void *addr, size_t length, unsigned char *vec);
int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
int capset(void *header, void *data);
"""
MODULE = Path(__file__).with_name("_libc.py")


def generate(path: Path = MODULE) -> None:
    ffi = cffi.FFI()
    ffi.cdef(DECLARATIONS)
    ffi.set_source("optimizer_server._libc", None)
    ffi.emit_python_code(str(path))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else MODULE)
