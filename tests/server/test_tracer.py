"""The plugin's client (nri_optimizer.trace.client) with the real server, tracing fake containers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import resource
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from nri_optimizer.trace.client import TraceClient, TraceError
from optimizer_server import privileges
from optimizer_server.protocol import DELETED, FOREIGN, PROTOCOL_VERSION, UNKNOWN_RESIDENT
from testbed import debs
from tests.server.helpers import SERVER_CMD, CollectingSink, MakeContainer, read_each

TIMEOUT = 10.0


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


async def until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.01)


def limit_leaving_free(count: int) -> int:
    """The RLIMIT_NOFILE below which exactly `count` fd numbers are free."""
    used = {int(fd) for fd in os.listdir("/proc/self/fd")}
    limit = 0
    while count:
        count -= limit not in used
        limit += 1
    return limit


def paused(server: TraceClient) -> _Paused:
    """SIGSTOP the server for a block, so that events queue up in the kernel meanwhile."""
    assert server.pid is not None
    return _Paused(server.pid)


class _Paused:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


def test_trace_records_every_file_once_in_first_access_order(make_container: MakeContainer, event_mode: str) -> None:
    files = [f"/f{i}" for i in range(1, 201)]
    order = random.Random(7).sample(files, len(files))
    container = make_container(files, read_each(order, times=100))

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode)
        assert session.mode == event_mode
        container.go()
        container.expect("done")
        result = await session.stop(timeout=TIMEOUT)
        await server.close()
        assert sink.paths() == order
        # Each file is sent once, however the rereads raced the ignore marks.
        assert [a.path for a in sink.accesses] == order
        assert result.complete and result.files == len(sink.accesses)
        assert {a.pid for a in sink.accesses} == {container.pid}

    run(body)


def test_listing_a_directory_records_nothing(make_container: MakeContainer, event_mode: str) -> None:
    container = make_container(["/d/a", "/d/b", "/f1"], ": /d/*; for n in /d/*; do :; done; read -r x < /f1")

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode)
        container.go()
        container.expect("done")
        assert (await session.stop(timeout=TIMEOUT)).complete
        await server.close()
        assert [a.path for a in sink.accesses] == ["/f1"]

    run(body)


def ignore_marked_inodes(server: TraceClient) -> list[int]:
    """Inode numbers the server's one fanotify group holds ignore marks for (its fdinfo lists each mark)."""
    groups = []
    for fd in Path(f"/proc/{server.pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # an event fd, closed meanwhile
            if os.readlink(fd) == "anon_inode:[fanotify]":
                groups.append(fd.name)
    (group,) = groups
    lines = Path(f"/proc/{server.pid}/fdinfo/{group}").read_text().splitlines()
    return [int(line.split("ino:")[1].split()[0], 16) for line in lines if line.startswith("fanotify ino:")]


def test_a_file_read_again_gets_an_ignore_mark_and_a_file_read_once_none(
    make_container: MakeContainer, event_mode: str
) -> None:
    # Phase 1 reads /f1 and /f3 once: no mark. Phase 2 reads /f1 again: its one repeat event makes the server
    # mark it. Phase 3 reads /f1 fifty times and /f2 once: the kernel reports /f2 only.
    container = make_container(
        ["/f1", "/f2", "/f3"],
        f"{read_each(['/f1', '/f3'])}; echo phase1; read go; {read_each(['/f1'])}; echo phase2; read go; "
        f"{read_each(['/f1'], times=50)}; {read_each(['/f2'])}",
    )

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode)
        container.go()
        container.expect("phase1")
        await until(lambda: "/f3" in sink.paths(), "the event of /f3")
        assert ignore_marked_inodes(server) == []
        container.go()
        container.expect("phase2")
        f1 = sink.accesses[0]
        await until(lambda: ignore_marked_inodes(server) == [f1.ino], "the ignore mark of /f1")
        container.go()
        container.expect("done")
        result = await session.stop(timeout=TIMEOUT)
        await server.close()
        assert [a.path for a in sink.accesses] == ["/f1", "/f3", "/f2"]
        # /f1, /f3; /f1 again; /f2: none of the fifty.
        assert result.complete and (result.files, result.events) == (3, 4)

    run(body)


def test_stop_after_the_workload_exited_still_delivers_everything(
    make_container: MakeContainer, event_mode: str
) -> None:
    files = [f"/f{i}" for i in range(50)]
    container = make_container(files, read_each(files))

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode)
        # Nothing is read before STOP: the container is gone, its mount namespace too, yet all 50
        # events wait in the group's queue.
        with paused(server):
            container.go()
            assert container.wait() == 0
        result = await session.stop(timeout=TIMEOUT)
        await server.close()
        assert sink.paths() == files
        assert result.complete

    run(body)


def test_two_sessions_at_once_keep_their_events_apart(make_container: MakeContainer, event_mode: str) -> None:
    a_files = [f"/a{i}" for i in range(20)]
    b_files = [f"/b{i}" for i in range(20)]
    a = make_container(a_files + b_files, read_each(a_files, times=2))
    b = make_container(a_files + b_files, read_each(b_files, times=2))

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        a_sink, b_sink = CollectingSink(), CollectingSink()
        a_session = await server.trace(a.pid, a_sink, timeout=TIMEOUT, mode=event_mode)
        b_session = await server.trace(b.pid, b_sink, timeout=TIMEOUT, mode=event_mode)
        assert a_session.id != b_session.id
        a.go()
        b.go()
        a.expect("done")
        b.expect("done")
        a_result, b_result = await asyncio.gather(a_session.stop(timeout=TIMEOUT), b_session.stop(timeout=TIMEOUT))
        await server.close()
        assert a_sink.paths() == a_files
        assert b_sink.paths() == b_files
        assert a_result.complete and b_result.complete

    run(body)


def test_trace_of_a_missing_pid_raises_the_servers_message_and_the_server_lives_on(
    make_container: MakeContainer,
) -> None:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text())
    container = make_container(["/f1"], read_each(["/f1"]))

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        with pytest.raises(TraceError, match=f"^pid {pid}: no such process$"):
            await server.trace(pid, CollectingSink(), timeout=TIMEOUT)
        server_pid = server.pid
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT)
        container.go()
        container.expect("done")
        assert (await session.stop(timeout=TIMEOUT)).complete
        assert server.pid == server_pid
        await server.close()
        assert sink.paths() == ["/f1"]

    run(body)


def test_killed_server_ends_its_sessions_incomplete_and_the_next_trace_restarts_it(
    make_container: MakeContainer,
) -> None:
    first = make_container(["/f1"], read_each(["/f1"]))
    second = make_container(["/f2"], read_each(["/f2"]))

    async def body() -> None:
        exits: list[int] = []
        server = TraceClient(SERVER_CMD, on_exit=exits.append)
        session = await server.trace(first.pid, CollectingSink(), timeout=TIMEOUT)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        await until(lambda: exits != [], "on_exit")
        result = await session.stop(timeout=TIMEOUT)
        assert (result.complete, result.incomplete) == (False, "server died")
        assert exits == [-signal.SIGKILL]
        sink = CollectingSink()
        session = await server.trace(second.pid, sink, timeout=TIMEOUT)
        second.go()
        second.expect("done")
        assert (await session.stop(timeout=TIMEOUT)).complete
        await server.close()
        assert sink.paths() == ["/f2"]
        assert exits == [-signal.SIGKILL]  # close() is no unexpected exit

    run(body)


# Says HELLO (in the version given), then answers nothing; notes the kind of every datagram it gets, until EOF.
MUTE_SERVER = """
import socket, struct, sys
sock = socket.socket(fileno=int(sys.argv[sys.argv.index("--fd") + 1]))
sock.send(bytes([0x85]) + struct.pack("<IH", 0, int(sys.argv[2])))
with open(sys.argv[1], "w") as log:
    while data := sock.recv(100):
        print(data[0], file=log, flush=True)
"""


def test_trace_gives_up_on_a_silent_server_and_cancels(tmp_path: Path) -> None:
    seen = tmp_path / "seen"

    async def body() -> None:
        server = TraceClient([sys.executable, "-c", MUTE_SERVER, str(seen), str(PROTOCOL_VERSION)])
        with pytest.raises(TraceError, match=r"^pid 1: the trace server did not answer within 0.5 s$"):
            await server.trace(1, CollectingSink(), timeout=0.5)
        await server.close()
        assert seen.read_text().split() == ["1", "3"]  # TRACE, CANCEL

    run(body)


def test_a_server_of_another_protocol_version_is_refused_and_nothing_is_sent_to_it(tmp_path: Path) -> None:
    seen = tmp_path / "seen"

    async def body() -> None:
        server = TraceClient([sys.executable, "-c", MUTE_SERVER, str(seen), "1"])
        with pytest.raises(TraceError) as info:
            await server.trace(1, CollectingSink(), timeout=TIMEOUT)
        assert str(info.value) == (
            f"the trace server {sys.executable} speaks protocol version 1, this plugin "
            f"{PROTOCOL_VERSION}: install the two together (make install-optimizer)"
        )
        await until(lambda: server.pid is None, "the server to be let go")
        await server.close()
        assert seen.read_text() == ""

    run(body)


def test_a_program_that_never_says_hello_is_refused_with_what_to_check(tmp_path: Path) -> None:
    async def body() -> None:
        server = TraceClient([sys.executable, "-c", "import sys; sys.exit(3)"])
        with pytest.raises(TraceError) as info:
            await server.trace(1, CollectingSink(), timeout=TIMEOUT)
        assert str(info.value) == (
            f"the trace server {sys.executable} ended (server died) before it said HELLO: "
            "is server_path nri-optimizer's optimizer-server?"
        )
        await server.close()

    run(body)


def test_closing_ends_open_sessions_as_incomplete(make_container: MakeContainer) -> None:
    container = make_container([], ":")

    async def body() -> None:
        exits: list[int] = []
        server = TraceClient(SERVER_CMD, on_exit=exits.append)
        session = await server.trace(container.pid, CollectingSink(), timeout=TIMEOUT)
        await server.close()
        result = await session.stop(timeout=TIMEOUT)
        assert (result.complete, result.incomplete) == (False, "trace server closed")
        assert server.pid is None and exits == []

    run(body)


@pytest.mark.parametrize("bounded", [True, False], ids=["bounded-queue", "unlimited-queue"])
def test_a_bounded_queue_overflows_visibly_and_the_default_one_does_not(
    make_container: MakeContainer, event_mode: str, bounded: bool
) -> None:
    queue = int(Path("/proc/sys/fs/fanotify/max_queued_events").read_text())
    files = [f"/f{i}" for i in range(queue + 100)]
    container = make_container(files, read_each(files))

    async def body() -> None:
        server = TraceClient([*SERVER_CMD, "--bounded-queue"] if bounded else SERVER_CMD)
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode)
        with paused(server):
            container.go()
            container.expect("done")
        result = await session.stop(timeout=TIMEOUT)
        await server.close()
        if bounded:
            assert result.overflowed and not result.complete
            assert sink.paths() == files[:queue]
        else:
            assert result.complete
            assert sink.paths() == files

    run(body)


def test_the_plugin_side_needs_no_fd_per_file(make_container: MakeContainer, event_mode: str) -> None:
    # The server resolves events itself: a plugin with only a few fds to spare receives a 100-file batch whole.
    files = [f"/f{i}" for i in range(100)]
    container = make_container(files, read_each(files))

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode)
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit_leaving_free(3), limits[1]))
        try:
            with paused(server):
                container.go()
                container.expect("done")
            result = await session.stop(timeout=TIMEOUT)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        await server.close()
        assert result.complete and (result.files, result.events) == (100, 100)
        assert sink.paths() == files and sink.batches == 1

    run(body)


def test_a_missing_server_binary_is_a_trace_error(tmp_path: Path) -> None:
    async def body() -> None:
        server = TraceClient([str(tmp_path / "optimizer-server")])
        with pytest.raises(TraceError, match=r"^cannot start the trace server \[.*\]: .*No such file"):
            await server.trace(1, CollectingSink(), timeout=TIMEOUT)
        assert server.pid is None
        await server.close()

    run(body)


def test_reads_by_processes_outside_the_traced_tree_are_tagged_foreign(
    make_container: MakeContainer, event_mode: str
) -> None:
    # f2 is read by a short-lived child (gone before its event is read: only fork-time tracking knows it
    # was the workload's); f3 by a process from outside, through /proc/PID/root, as runc exec's would.
    container = make_container(["/f1", "/f2", "/f3"], "read -r x < /f1; (read -r y < /f2); echo read; read wait")

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode)
        container.go()
        container.expect("read")
        outsider = await asyncio.create_subprocess_exec(
            "cat", f"/proc/{container.pid}/root/f3", stdout=asyncio.subprocess.DEVNULL
        )
        assert await outsider.wait() == 0
        await asyncio.sleep(0.2)
        container.go()
        container.expect("done")
        await session.stop(timeout=TIMEOUT)
        await server.close()
        tagged = [(access.path, bool(access.mask & FOREIGN)) for access in sink.accesses]
        assert tagged == [("/f1", False), ("/f2", False), ("/f3", True)]

    run(body)


@pytest.mark.parametrize("extra", [0, 1 << 0], ids=["its-four", "and-chown"])
def test_bounded_without_cap_setpcap_it_drops_what_it_can_and_says_nothing(
    extra: int, caplog: pytest.LogCaptureFixture
) -> None:
    """As the unit and the DaemonSet run it: a bounding set of its four capabilities (or more), no CAP_SETPCAP to
    drop anything from it. It keeps what it uses, the rest out of reach (not permitted; no_new_privs), and no
    warning: the bounding set is what it is given."""
    bounding = privileges.kept_mask() | extra
    names = ",".join(f"+{n}" for n, bit in CAP_NAMES.items() if bounding >> bit & 1)
    server = TraceClient(["setpriv", f"--bounding-set=-all,{names}", "--", *SERVER_CMD])

    async def body() -> None:
        await server.start()
        status = Path(f"/proc/{server.pid}/status").read_text()
        await server.close()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert {name: int(fields[name], 16) for name in ("CapEff", "CapPrm", "CapBnd")} == {
            "CapEff": privileges.kept_mask(),
            "CapPrm": privileges.kept_mask(),
            "CapBnd": bounding,
        }
        assert fields["NoNewPrivs"].strip() == "1"

    with caplog.at_level(logging.WARNING):
        run(body)
    assert [r.getMessage() for r in caplog.records if "optimizer-server" in r.getMessage()] == []


CAP_NAMES = {"chown": 0, "dac_read_search": 2, "net_admin": 12, "sys_ptrace": 19, "sys_admin": 21}


def test_the_server_keeps_only_the_capabilities_it_uses_and_still_reads_root_only_files(
    make_container: MakeContainer,
    event_mode: str,
) -> None:
    # A file only its owner (another user) may read: the kernel opens event fds for the server, which has
    # no CAP_DAC_OVERRIDE any more.
    container = make_container(
        ["/secret", "/f1"], read_each(["/secret", "/f1"]), setup="chown 4321:4321 secret && chmod 000 secret"
    )

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode)
        status = Path(f"/proc/{server.pid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        kept = privileges.kept_mask()
        assert {name: int(fields[name], 16) for name in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")} == {
            "CapEff": kept,
            "CapPrm": kept,
            "CapInh": 0,
            "CapBnd": kept,
            "CapAmb": 0,
        }
        assert fields["NoNewPrivs"].strip() == "1"
        container.go()
        container.expect("done")
        result = await session.stop(timeout=TIMEOUT)
        await server.close()
        assert sink.paths() == ["/secret", "/f1"] and result.complete

    run(body)


def test_auto_takes_fd_mode_where_the_kernel_refuses_fid_and_says_why(
    make_container: MakeContainer, caplog: pytest.LogCaptureFixture
) -> None:
    # An overlay as containerd mounts one: its file handles do not decode, so a fid-mode mount mark is refused.
    files = ["/a", "/d/b", "/d/e/c"]
    container = make_container(files, read_each(files, times=3), overlay=True)

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        sink = CollectingSink()
        with caplog.at_level(logging.INFO, logger="nri_optimizer.trace.client"):
            session = await server.trace(container.pid, sink, timeout=TIMEOUT)
            assert session.mode == "fd"
            container.go()
            container.expect("done")
            result = await session.stop(timeout=TIMEOUT)
            await server.close()
        assert sink.paths() == files and result.complete and result.files == 3
        assert (
            f"optimizer-server: session {session.id}: watching the root mount of pid {container.pid} (fd events; "
            "fid refused: fanotify_mark: Operation not supported)"
        ) in caplog.messages

    run(body)


def test_fid_mode_where_the_kernel_refuses_it_is_a_trace_error_saying_why(make_container: MakeContainer) -> None:
    container = make_container(["/a"], read_each(["/a"]), overlay=True)

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        with pytest.raises(TraceError) as info:
            await server.trace(container.pid, CollectingSink(), timeout=TIMEOUT, mode="fid")
        await server.close()
        assert str(info.value) == f"pid {container.pid}: fid events refused: fanotify_mark: Operation not supported"

    run(body)


def test_files_in_many_directories_come_in_order_whatever_the_directories_kept_open(
    make_container: MakeContainer, event_mode: str
) -> None:
    # 20 directories, visited round-robin twice: more than the server keeps open (handles.DIRECTORY_FDS).
    files = [f"/d{i:02d}/sub/f{j}" for j in range(2) for i in range(20)]
    container = make_container(files, read_each(files))

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode)
        container.go()
        container.expect("done")
        result = await session.stop(timeout=TIMEOUT)
        await server.close()
        assert [a.path for a in sink.accesses] == files and result.complete

    run(body)


def test_a_file_removed_before_the_server_looks_is_sent_as_deleted(
    make_container: MakeContainer, event_mode: str
) -> None:
    # The workload makes /tmp/made, reads it and removes it (with a static busybox: no binaries exist after the
    # pivot); the paused server sees its events only after.
    busybox = debs.busybox_path()
    container = make_container(
        ["/f1", "/tmp/keep"],
        "echo x > /tmp/made; read -r x < /tmp/made; /rm /tmp/made; read -r x < /f1",
        setup=f"cp {busybox} rm",
    )

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode)
        with paused(server):
            container.go()
            container.expect("done")
        result = await session.stop(timeout=TIMEOUT)
        await server.close()
        assert [(a.path.removesuffix(" (deleted)"), bool(a.mask & DELETED)) for a in sink.accesses] == [
            ("/tmp/made", True),
            ("/rm", False),
            ("/f1", False),
        ]
        assert result.complete

    run(body)


def test_residency_says_each_files_bytes_in_the_page_cache_and_leaves_no_fd(
    make_container: MakeContainer, event_mode: str
) -> None:
    # A tmpfs keeps every page written to it in memory: a file's resident bytes are the bytes written to it, and
    # a sparse file's hole is not resident (nor mapped in by asking). Files of 128 KiB or less are not looked at.
    container = make_container(
        ["/f1"],
        read_each(["/f1", "/mid", "/empty", "/big"]),
        setup="head -c 300000 /dev/zero > mid && : > empty && echo x > big && truncate -s 5G big",
    )

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        await server.start()
        assert server.pid is not None
        idle_fds = len(os.listdir(f"/proc/{server.pid}/fd"))
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode, residency=True)
        container.go()
        container.expect("done")
        result = await session.stop(timeout=TIMEOUT)
        # The group is closed on a thread of its own, which may still be at it.
        await until(lambda: len(os.listdir(f"/proc/{server.pid}/fd")) == idle_fds, "every fd of the trace closed")
        await server.close()
        assert sink.paths() == ["/f1", "/mid", "/empty", "/big"] and result.complete
        assert list(result.resident) == [UNKNOWN_RESIDENT, 300000, UNKNOWN_RESIDENT, 4096]

    run(body)


def test_residency_says_where_a_file_cached_in_part_lies(make_container: MakeContainer, event_mode: str) -> None:
    # On the tmpfs, a file's resident pages are where it was written: /part at 0 and at 512 KiB of 5 GiB, /tail in its
    # last page only (200001 bytes: the page holds 3393 of them). /whole is resident whole and /hole not at all:
    # neither has ranges (no ranges: the whole file).
    container = make_container(
        ["/f1"],
        read_each(["/f1", "/part", "/whole", "/hole", "/tail"]),
        setup="echo x > part && printf y | dd of=part bs=1 seek=524288 conv=notrunc status=none && truncate -s 5G part"
        " && head -c 300000 /dev/zero > whole && truncate -s 1M hole && truncate -s 200000 tail && echo >> tail",
    )

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode, residency=True)
        container.go()
        container.expect("done")
        result = await session.stop(timeout=TIMEOUT)
        await server.close()
        assert sink.paths() == ["/f1", "/part", "/whole", "/hole", "/tail"] and result.complete
        assert list(result.resident) == [UNKNOWN_RESIDENT, 8192, 300000, 0, 3393]
        assert result.ranges == {1: ((0, 4096), (524288, 4096)), 4: ((196608, 3393),)}

    run(body)


def test_files_read_by_short_lived_children_as_they_come_are_the_workloads(
    make_container: MakeContainer, event_mode: str
) -> None:
    # Each file read by a child of its own, while the server reads events as they queue: a child's fork must be
    # taken in before its events are classified, or its files would go as FOREIGN.
    files = [f"/f{i}" for i in range(300)]
    container = make_container(files, "; ".join(f"(read -r x < {path})" for path in files))

    async def body() -> None:
        server = TraceClient(SERVER_CMD)
        sink = CollectingSink()
        session = await server.trace(container.pid, sink, timeout=TIMEOUT, mode=event_mode)
        container.go()
        container.expect("done")
        result = await session.stop(timeout=TIMEOUT)
        await server.close()
        assert [(a.path, bool(a.mask & FOREIGN)) for a in sink.accesses] == [(path, False) for path in files]
        assert result.complete

    run(body)
