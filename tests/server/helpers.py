"""Fake containers on the real kernel, and a sink that keeps every file record the server sends."""

from __future__ import annotations

import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from optimizer_server.protocol import FileRecord

SERVER_CMD = [sys.executable, "-m", "optimizer_server", "--log-level", "DEBUG"]


class FakeContainer:
    """A shell in private mount and pid namespaces whose root is a tmpfs holding `files` ("x\n" each).

    Like runc before it execs the entrypoint, it pivots into its root and then waits at a gate
    (a line on stdin) so that the test can start tracing before the workload runs. After the pivot
    no binaries exist: the workload is shell builtins only (`read x < /f` opens and reads /f). The
    script is read by the shell through an fd opened before the pivot, on a mount nobody watches.
    The tmpfs lives only in the container's namespace: it leaves nothing behind on the host.

    With overlay, the root is an overlayfs as containerd mounts one (the files in its lower layer, an empty
    upper layer, on the tmpfs), whose file handles do not decode: the kernel refuses fid mode there.
    """

    def __init__(
        self, workdir: Path, files: Sequence[str], workload: str, setup: str = ":", *, overlay: bool = False
    ) -> None:
        """setup: shell run in the root before the pivot, while host binaries are still reachable."""
        self.workdir = workdir
        root = workdir / "root"
        root.mkdir()
        dirs = sorted({str(Path(name).parent).lstrip("/") for name in files} - {""})
        script = workdir / "container.sh"
        layers = (
            "mkdir -p .layers/lower .layers/upper .layers/work .layers/root && cd .layers/lower || exit 1\n"
            if overlay
            else ""
        )
        into_overlay = (
            "cd .. && mount -t overlay overlay -o lowerdir=lower,upperdir=upper,workdir=work,index=off root "
            "&& cd root || exit 1\n"
            if overlay
            else ""
        )
        script.write_text(
            f"mount -t tmpfs rootfs {shlex.quote(str(root))} && cd {shlex.quote(str(root))} || exit 1\n"
            f"{layers}"
            f"mkdir -p old {' '.join(dirs)} || exit 1\n"
            f"for f in {' '.join(files)}; do echo x > .$f || exit 1; done\n"
            f"{setup} || exit 1\n"
            f"{into_overlay}"
            "pivot_root . old && cd / || exit 1\n"
            "echo ready\n"
            "read go\n"
            f"{workload}\n"
            "echo done\n"
        )
        self._stderr = open(workdir / "container.stderr", "wb")  # noqa: SIM115 (closed in kill())
        self._proc = subprocess.Popen(
            # --kill-child: the namespace's init dies with unshare, and its mounts with it.
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "sh", str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        self.expect("ready")
        self.pid = self._shell_pid()

    def _shell_pid(self) -> int:
        """The host pid of the shell (pid 1 of its namespace): the only child of unshare."""
        children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def go(self) -> None:
        """Open the gate: the workload starts."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(b"go\n")
        self._proc.stdin.flush()

    def expect(self, word: str, timeout: float = 30.0) -> None:
        """Wait for the next line the container says, which must be `word`."""
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"container did not say {word!r} within {timeout} s; said {line!r}")
            chunk = os.read(fd, 1)
            if not chunk:
                raise AssertionError(f"container exited before saying {word!r}: {self.stderr()}")
            line += chunk
        assert line.decode().strip() == word, (line, self.stderr())

    def wait(self, timeout: float = 30.0) -> int:
        return self._proc.wait(timeout)

    def stderr(self) -> str:
        return (self.workdir / "container.stderr").read_text()

    def kill(self) -> None:
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()
        self._stderr.close()


MakeContainer = Callable[..., FakeContainer]


def read_each(paths: Sequence[str], times: int = 1) -> str:
    """Shell that reads every path `times` times in a row, in order."""
    repeat = " ".join(["_"] * times)
    return f'for f in {" ".join(paths)}; do for _ in {repeat}; do read -r x < "$f"; done; done'


@dataclass
class Access:
    path: str
    dev: int
    ino: int
    mask: int
    pid: int
    t_ns: int


@dataclass
class CollectingSink:
    """Every record, in the order received."""

    accesses: list[Access] = field(default_factory=list)
    batches: int = 0

    def __call__(self, files: Sequence[FileRecord], /) -> None:
        self.batches += 1
        for file in files:
            self.accesses.append(Access(os.fsdecode(file.path), file.dev, file.ino, file.mask, file.pid, file.t_ns))

    def paths(self) -> list[str]:
        """Paths in first-access order, each once (dedup by inode, like the recorder)."""
        seen: set[tuple[int, int]] = set()
        ordered = []
        for access in self.accesses:
            if (access.dev, access.ino) not in seen:
                seen.add((access.dev, access.ino))
                ordered.append(access.path)
        return ordered
