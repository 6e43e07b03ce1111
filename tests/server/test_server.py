"""optimizer-server as a process, spoken to over the raw protocol, tracing fake containers."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from optimizer_server import protocol
from optimizer_server.fanotify import FAN_OPEN
from optimizer_server.protocol import Cancel, Done, Failed, Files, Hello, Ready, Stop, Trace
from tests.server.helpers import SERVER_CMD, MakeContainer, read_each

MODES = {name: number for number, name in protocol.MODE_NAMES.items()}


class RawServer:
    def __init__(self, stderr_path: Path, python_options: Sequence[str] = ()) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.stderr_path = stderr_path
        cmd = [SERVER_CMD[0], *python_options, *SERVER_CMD[1:], "--fd", str(theirs.fileno())]
        with open(stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stderr=stderr)
        theirs.close()
        # Before anything else, the server says which protocol it speaks.
        assert self.recv() == Hello(0, protocol.PROTOCOL_VERSION)

    def send(self, msg: protocol.Command) -> None:
        self.sock.send(protocol.encode(msg))

    def recv(self, timeout: float = 10.0) -> protocol.Reply:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        assert ready, f"no reply within {timeout} s"
        data, ancdata, flags, _ = self.sock.recvmsg(protocol.MAX_DATAGRAM, socket.CMSG_SPACE(4))
        assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
        assert ancdata == [], "the server sends no fds"
        return protocol.decode_reply(data)

    def recv_until_done(self) -> tuple[list[Files], list[str], Done]:
        """FILES messages and their paths, up to DONE."""
        messages: list[Files] = []
        paths: list[str] = []
        while True:
            reply = self.recv()
            if isinstance(reply, Done):
                return messages, paths, reply
            assert isinstance(reply, Files), reply
            messages.append(reply)
            paths.extend(os.fsdecode(file.path) for file in reply.files)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RawServer]:
    server = RawServer(tmp_path / "server.stderr")
    yield server
    server.sock.close()
    try:
        server.proc.wait(10)
    finally:
        server.proc.kill()


def test_ready_comes_after_the_mark_so_the_first_read_is_seen(
    server: RawServer, make_container: MakeContainer, event_mode: str
) -> None:
    container = make_container(["/f1", "/f2"], read_each(["/f1", "/f2"]))
    server.send(Trace(1, container.pid, MODES[event_mode]))
    assert server.recv() == Ready(1, MODES[event_mode])
    before = time.monotonic_ns()
    container.go()
    container.expect("done")
    server.send(Stop(1))
    messages, paths, done = server.recv_until_done()
    assert paths == ["/f1", "/f2"]
    assert done == Done(1, overflowed=False, lost=0, events=2)
    for record in (record for message in messages for record in message.files):
        assert record.mask & FAN_OPEN
        assert record.pid == container.pid
        assert before < record.t_ns < time.monotonic_ns()


def test_nonexistent_pid_fails_with_exact_message(server: RawServer) -> None:
    # pids are always below pid_max, so this one cannot exist.
    pid = int(Path("/proc/sys/kernel/pid_max").read_text())
    server.send(Trace(5, pid))
    assert server.recv() == Failed(5, f"pid {pid}: no such process")
    assert server.proc.poll() is None


def test_big_reads_are_split_into_datagrams_that_fit(
    server: RawServer, make_container: MakeContainer, event_mode: str
) -> None:
    # 200-byte paths make 246-byte records: 266 fit in a 64 KiB datagram after its 7-byte header.
    files = [f"/{i:03d}{'x' * 196}" for i in range(600)]
    container = make_container(files, read_each(files))
    server.send(Trace(1, container.pid, MODES[event_mode]))
    assert server.recv() == Ready(1, MODES[event_mode])
    # A stopped server lets all 600 events queue up, so that one read returns them all.
    server.proc.send_signal(signal.SIGSTOP)
    try:
        container.go()
        container.expect("done")
    finally:
        server.proc.send_signal(signal.SIGCONT)
    server.send(Stop(1))
    messages, paths, done = server.recv_until_done()
    assert paths == files
    assert [len(message.files) for message in messages] == [266, 266, 68]
    assert done == Done(1, overflowed=False, lost=0, events=600)


def test_garbled_control_message_is_logged_and_ignored(server: RawServer) -> None:
    server.sock.send(b"\x99garbage")
    server.send(Stop(3))
    assert server.recv() == Failed(3, "session 3 is not tracing")
    assert "ignoring a 8-byte control message 9967617262616765: unknown command kind 0x99" in server.stderr()


def test_a_session_id_cannot_trace_twice(server: RawServer, make_container: MakeContainer, event_mode: str) -> None:
    container = make_container([], ":")
    server.send(Trace(1, container.pid, MODES[event_mode]))
    server.send(Trace(1, container.pid, MODES[event_mode]))
    assert server.recv() == Ready(1, MODES[event_mode])
    assert server.recv() == Failed(1, "session 1 is already tracing")


def test_cancel_drops_the_session_without_a_reply(
    server: RawServer, make_container: MakeContainer, event_mode: str
) -> None:
    container = make_container(["/f1"], read_each(["/f1"]))
    server.send(Trace(1, container.pid, MODES[event_mode]))
    assert server.recv() == Ready(1, MODES[event_mode])
    server.send(Cancel(1))
    container.go()
    container.expect("done")
    server.send(Stop(1))
    assert server.recv() == Failed(1, "session 1 is not tracing")


def test_server_exits_0_when_the_plugin_closes_its_end(
    server: RawServer, make_container: MakeContainer, event_mode: str
) -> None:
    container = make_container([], ":")
    server.send(Trace(1, container.pid, MODES[event_mode]))
    assert server.recv() == Ready(1, MODES[event_mode])
    server.sock.close()
    assert server.proc.wait(10) == 0


def test_server_refuses_an_fd_that_is_not_a_seqpacket_socket() -> None:
    r, w = os.pipe()
    try:
        result = subprocess.run([*SERVER_CMD, "--fd", str(r)], pass_fds=[r], capture_output=True, text=True)
    finally:
        os.close(r)
        os.close(w)
    assert result.returncode == 2
    assert f"--fd {r}: " in result.stderr


def test_server_imports_nothing_after_start_up(tmp_path: Path, make_container: MakeContainer, event_mode: str) -> None:
    """Every module is loaded before the first request; -X importtime reports each import on stderr."""
    server = RawServer(tmp_path / "stderr", ["-X", "importtime"])
    container = make_container(["/f1"], read_each(["/f1"]))
    idle = make_container([], ":")
    # Every path through the server: garbage, FAILED, TRACE, events, STOP, CANCEL, end of file.
    server.sock.send(b"\xff")
    server.send(Trace(1, int(Path("/proc/sys/kernel/pid_max").read_text())))
    assert isinstance(server.recv(), Failed)
    server.send(Trace(2, container.pid, MODES[event_mode]))
    assert server.recv() == Ready(2, MODES[event_mode])
    container.go()
    container.expect("done")
    server.send(Stop(2))
    assert server.recv_until_done()[1] == ["/f1"]
    server.send(Trace(3, idle.pid, MODES[event_mode]))
    assert server.recv() == Ready(3, MODES[event_mode])
    server.send(Cancel(3))
    server.sock.close()
    assert server.proc.wait(10) == 0
    lines = server.stderr().splitlines()
    first_request = next(i for i, line in enumerate(lines) if line.startswith("optimizer-server:"))
    assert [line for line in lines[first_request:] if "import time:" in line] == []
    assert "control socket closed: exiting" in lines[-1]


def test_a_file_over_4_gib_is_recorded(server: RawServer, make_container: MakeContainer, event_mode: str) -> None:
    """The kernel opens its event fd only with O_LARGEFILE; a sparse file costs no memory."""
    container = make_container(["/f1"], read_each(["/big", "/f1"]), setup="echo x > big && truncate -s 5G big")
    server.send(Trace(1, container.pid, MODES[event_mode]))
    assert server.recv() == Ready(1, MODES[event_mode])
    container.go()
    container.expect("done")
    server.send(Stop(1))
    _, paths, done = server.recv_until_done()
    assert paths == ["/big", "/f1"]
    assert done == Done(1, overflowed=False, lost=0, events=2)
