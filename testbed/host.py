"""What a containerd run leaves on the host (processes, mounts, cgroups) and how to remove it.

Everything here works from identities the caller already owns (a pid it started, a directory it
created, a cgroup name it chose), never from process names, so other containerds are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Proc:
    """A process pinned by its start time, so a recycled pid is never mistaken for it."""

    pid: int
    start_time: int
    ppid: int
    cmdline: tuple[str, ...]
    state: str  # /proc/PID/stat's: "Z" a zombie, exited and not yet reaped by its parent (maybe init)

    @classmethod
    def read(cls, pid: int) -> Proc | None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return None
        # The command name (field 2) may hold spaces and parentheses: split after its closing one.
        fields = stat[stat.rindex(")") + 2 :].split()
        argv = tuple(arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1])
        return cls(pid, int(fields[19]), int(fields[1]), argv, fields[0])

    def alive(self) -> bool:
        # One read of /proc/PID/stat: a process that exits between two reads makes the second fail with ESRCH.
        current = Proc.read(self.pid)
        return current is not None and current.start_time == self.start_time and current.state != "Z"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):  # it exited since alive() looked
                os.kill(self.pid, sig)


def processes() -> Iterator[Proc]:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := Proc.read(int(entry))) is not None:
            yield proc


def wait_gone(procs: Iterable[Proc], timeout: float) -> list[Proc]:
    """Wait until every process has exited; return the ones still alive at `timeout`."""
    deadline = time.monotonic() + timeout
    remaining = [p for p in procs if p.alive()]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.02)
        remaining = [p for p in remaining if p.alive()]
    return remaining


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM a process we started, if it still runs; SIGKILL it after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- mounts ------------------------------------------------------------------------------------------


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below `root` in this mount namespace, in mount order."""
    prefix = str(root).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if point == prefix.rstrip("/") or point.startswith(prefix):
            found.append(Path(point))
    return found


def unmount_under(root: Path) -> list[Path]:
    """Unmount everything below `root`, newest first; return what could not be unmounted."""
    failed = []
    for point in reversed(mounts_under(root)):
        if _libc.umount2(str(point).encode(), 0) != 0:
            # Busy (an fd or cwd still inside): detach it, the kernel frees it when the last user goes.
            if ctypes.get_errno() == errno.EBUSY and _libc.umount2(str(point).encode(), _MNT_DETACH) == 0:
                continue
            failed.append(point)
    return failed


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


# --- cgroups -----------------------------------------------------------------------------------------


def cgroup_mounts() -> list[Path]:
    """Every cgroup hierarchy mounted here (v1 controllers, named hierarchies, the v2 unified one)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] in ("cgroup", "cgroup2"):
            points.append(Path(_unescape(left.split()[4])))
    return points


def cgroup_dirs(name: str) -> list[Path]:
    """The directories of cgroup `name` (relative to each hierarchy's root) that exist."""
    return [mount / name.strip("/") for mount in cgroup_mounts() if (mount / name.strip("/")).is_dir()]


def cgroup_pids(name: str) -> set[int]:
    """Pids in cgroup `name` or any cgroup below it, in any hierarchy."""
    pids: set[int] = set()
    for top in cgroup_dirs(name):
        for procs in top.rglob("cgroup.procs"):
            try:
                pids.update(int(line) for line in procs.read_text().split())
            except OSError:  # the cgroup went away while we walked
                continue
    return pids


def remove_cgroup(name: str, timeout: float = 5.0) -> list[Path]:
    """rmdir cgroup `name` and its descendants, deepest first; return what is left at `timeout`.

    A cgroup whose last task just died can report EBUSY for a moment while the kernel finishes
    with it, hence the retries.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for top in cgroup_dirs(name):
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for directory in [*dirs, top]:
                try:
                    directory.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(directory)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)
