"""Instructions the trace server executes per file, counted by valgrind (callgrind): a figure that does not move
with the machine's load, for the per-event path of each event mode.

    unshare -m --propagation private python -m benchmarks.cost.instructions --server CMD --mode fd --files 1000 3000

The server runs under callgrind, speaking its protocol with us: it traces a child of ours chrooted into a fresh
tmpfs (a mount of its own, in this private mount namespace; tmpfs takes both event modes), which opens each of N
files once, in directories of 100; then STOP, DONE, and the server exits. The same is done for each N; the
difference of two runs' totals over the difference of their files is the instructions of one file's events:
start-up, the trace's set-up and the exit cancel out. Only user space is counted: the system calls' kernel side
is not (strace -c counts those calls). Prints JSON: {"mode": ..., "files": [...], "instructions": [...],
"per_file": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from optimizer_server import protocol

FILES_PER_DIRECTORY = 100
_REPLY_TIMEOUT = 600.0  # a server under callgrind runs some 50 times slower
_MODES = {name: number for number, name in protocol.MODE_NAMES.items()}


def _recv(sock: socket.socket) -> protocol.Reply:
    ready, _, _ = select.select([sock], [], [], _REPLY_TIMEOUT)
    if not ready:
        raise TimeoutError(f"the server said nothing for {_REPLY_TIMEOUT} s")
    return protocol.decode_reply(sock.recv(protocol.MAX_DATAGRAM))


def _workload(root: Path, files: int, go: int) -> int:
    """A child chrooted into root (once this returns) that opens each file once when a byte arrives on go; its
    pid."""
    chrooted, said = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.chroot(root)
            os.chdir("/")
            os.write(said, b"c")
            os.read(go, 1)
            for index in range(files):
                os.close(os.open(f"/d{index // FILES_PER_DIRECTORY:03d}/f{index:05d}", os.O_RDONLY))
        finally:
            os._exit(0)
    os.close(said)
    os.read(chrooted, 1)  # the mark must go on the tmpfs: the child's root from now on
    os.close(chrooted)
    return pid


def count(server: Sequence[str], mode: str, files: int, work: Path, *, residency: bool = False) -> int:
    """Instructions of one server life that traces `files` opens (and with residency, reports each file's page-cache
    bytes at STOP)."""
    root = work / f"root{files}"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "bench", str(root)], check=True)
    try:
        for index in range(files):
            directory = root / f"d{index // FILES_PER_DIRECTORY:03d}"
            directory.mkdir(exist_ok=True)
            (directory / f"f{index:05d}").write_bytes(b"x\n")
        out = work / f"callgrind.{files}"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--trace-children=yes",
                f"--callgrind-out-file={out}.%p",
                f"--log-file={work}/valgrind.{files}.%p.log",
                *server,
                "--fd",
                str(theirs.fileno()),
            ],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict and set probes
        )
        theirs.close()
        go_read, go_write = os.pipe()
        child = _workload(root, files, go_read)
        try:
            if not isinstance(_recv(ours), protocol.Hello):
                raise RuntimeError("the server did not say HELLO first")
            options = protocol.RESIDENCY if residency else 0
            ours.send(protocol.encode(protocol.Trace(1, child, _MODES[mode], options)))
            ready = _recv(ours)
            if ready != protocol.Ready(1, _MODES[mode]):
                raise RuntimeError(f"TRACE in {mode} mode: {ready}")
            # The server sleeps through the workload, so that STOP reads every event in one go: batches, hence
            # the instructions per file, are then the same whatever the machine's load.
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                os.write(go_write, b"g")
                os.waitpid(child, 0)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            ours.send(protocol.encode(protocol.Stop(1)))
            sent = 0
            while not isinstance(reply := _recv(ours), protocol.Done):
                if isinstance(reply, protocol.Files):
                    sent += len(reply.files)
            if sent != files:
                raise RuntimeError(f"the server reported {sent} files of {files}")
        finally:
            ours.close()  # the server exits, and callgrind writes its counts
            proc.wait(_REPLY_TIMEOUT)
            os.close(go_read)
            os.close(go_write)
        return _total(out)
    finally:
        subprocess.run(["umount", str(root)], check=True)


def _total(out: Path) -> int:
    """The summary line of a callgrind output (the main process's; --trace-children writes one per pid)."""
    totals = []
    for path in out.parent.glob(out.name + "*"):
        for line in path.read_text().splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                totals.append(int(line.split()[1]))
                break
    if not totals:
        raise RuntimeError(f"no callgrind totals in {out}*")
    return max(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost.instructions", description=__doc__)
    parser.add_argument(
        "--server",
        default=f"{sys.executable} -m optimizer_server",
        help="the server command (default: this interpreter's optimizer_server)",
    )
    parser.add_argument("--mode", choices=["fd", "fid"], required=True)
    parser.add_argument("--files", type=int, nargs=2, default=[1000, 3000], metavar=("N1", "N2"))
    parser.add_argument("--residency", action="store_true", help="have the server report page-cache residency")
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep callgrind's outputs in this new directory (for callgrind_annotate: where the instructions go)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nriopt-instructions-") as temp:
        work = Path(temp) if args.keep is None else args.keep
        work.mkdir(parents=True, exist_ok=args.keep is None)
        totals = [
            count(shlex.split(args.server), args.mode, files, work, residency=args.residency) for files in args.files
        ]
    (n1, n2), (i1, i2) = args.files, totals
    per_file = (i2 - i1) / (n2 - n1)
    print(
        json.dumps(
            {
                "mode": args.mode,
                "residency": args.residency,
                "files": args.files,
                "instructions": totals,
                "per_file": per_file,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
