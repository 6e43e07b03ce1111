"""asyncio client of optimizer-server: owns the server process and hands what it reports to sinks.

One server serves every container. `TraceClient.trace(pid, sink)` returns once the server watches the
container's root mount (READY), and says how it receives the kernel's events (`Session.mode`: fid or fd);
from then on the files the server reports go to `sink`, in batches. `Session.stop()` drains what is left and
says whether the trace is complete (and, if asked, how much of each file is in the page cache, and where). Every
wait is bounded, the event loop never blocks, and a dead server fails its sessions and is restarted by the next
`trace()`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from nri_optimizer.errors import TraceError
from optimizer_server import protocol
from optimizer_server.protocol import FileRecord

log = logging.getLogger(__name__)

# How the server is to receive the kernel's events (optimizer_server/fanotify.py): "fid" (file handles, no fd
# per event), "fd" (an fd per event), or "auto" (fid where the kernel and the file system allow it, else fd).
EVENT_MODES = tuple(protocol.MODE_NAMES.values())
_MODE_NUMBERS = {name: number for number, name in protocol.MODE_NAMES.items()}
_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: the enum's & runs in Python
# Messages handled per wake-up, so that a flood from the server cannot starve the rest of the daemon.
_MESSAGES_PER_WAKEUP = 64
# How long close() waits for the server to exit after its socket is closed, before killing it.
_EXIT_GRACE = 5.0


class EventSink(Protocol):
    def __call__(self, files: Sequence[FileRecord], /) -> None:
        """Take a batch in access order; must not block or raise."""


@dataclass(frozen=True, slots=True)
class StopResult:
    files: int  # file records handed to the sink
    events: int  # events the server read from the kernel (repeats of a file included)
    overflowed: bool  # the kernel queue overflowed
    lost: int  # events the kernel dropped (it could not open the file)
    incomplete: str | None  # why events may be missing beyond the above, e.g. "server died"
    # With residency: per file record handed to the sink, in order, its bytes in the page cache at the end
    # (protocol.UNKNOWN_RESIDENT where the server could not tell); else empty.
    resident: Sequence[int] = ()
    # With residency: for a file record in the page cache in part, by its number among those handed to the sink,
    # where: ascending (offset, length) ranges in bytes, page aligned. A record without any is cached whole, not at
    # all or not known.
    ranges: Mapping[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.incomplete is None and not self.overflowed and self.lost == 0


class Session:
    """One traced container. Created by TraceClient.trace(); finish it with stop().

    The client feeds it what the server says of it through the *_received methods and ended(), as an
    asyncio protocol is fed by its transport; the session asks the client back only through the two callables
    it was given."""

    def __init__(
        self,
        session_id: int,
        pid: int,
        sink: EventSink,
        *,
        send: Callable[[protocol.Command], Awaitable[None]],
        abandon: Callable[[Session, str], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        self.id = session_id
        self.pid = pid
        self.files = 0
        self.mode = "auto"  # READY says which the server uses: "fid" or "fd"
        self._resident: list[int] = []
        self._ranges: dict[int, tuple[tuple[int, int], ...]] = {}
        self._send = send
        self._abandon = abandon
        self._sink = sink
        self._problems: list[str] = []
        # READY → None, FAILED → the reason. Results, not exceptions: nobody may be left to retrieve them.
        self._ready: asyncio.Future[str | None] = loop.create_future()
        self._result: asyncio.Future[StopResult] = loop.create_future()
        self._stopping = False

    @property
    def owes_answer(self) -> bool:
        """The server has yet to answer this session's TRACE (READY) or STOP (DONE)."""
        return not self._ready.done() or (self._stopping and not self._result.done())

    async def ready(self) -> str | None:
        """None once the server placed the mark (READY), else why it could not."""
        return await asyncio.shield(self._ready)

    async def stop(self, *, timeout: float) -> StopResult:
        """Have the server drain this session and wait for DONE; the result says what may be missing."""
        try:
            async with asyncio.timeout(timeout):
                if not self._stopping and not self._result.done():
                    self._stopping = True
                    await self._send(protocol.Stop(self.id))
                return await asyncio.shield(self._result)
        except TimeoutError:
            self._abandon(self, f"no DONE within {timeout} s")
        except TraceError as e:
            self.ended(str(e))
        return self._result.result()

    def files_received(self, files: Sequence[FileRecord]) -> None:
        self.files += len(files)
        try:
            self._sink(files)
        except Exception:
            log.exception("session %d: event sink failed", self.id)
            self._problems.append("event sink failed")

    def ready_received(self, mode: str) -> None:
        if not self._ready.done():
            self.mode = mode
            self._ready.set_result(None)

    def resident_received(self, first: int, sizes: Sequence[int]) -> None:
        if first != len(self._resident):
            self._problems.append(f"residency out of order (values for file {first}, expected {len(self._resident)})")
            return
        self._resident.extend(sizes)

    def ranges_received(self, file: int, ranges: tuple[tuple[int, int], ...]) -> None:
        if file >= self.files or file in self._ranges:
            why = " twice" if file in self._ranges else f", beyond the {self.files} files received"
            self._problems.append(f"page-cache ranges for file {file}{why}")
            return
        self._ranges[file] = ranges

    def ended(self, problem: str | None = None, *, overflowed: bool = False, lost: int = 0, events: int = 0) -> None:
        """The session is over: DONE (its counts), FAILED or lost (problem). Only the first call counts."""
        if problem:
            self._problems.append(problem)
        if not self._ready.done():
            self._ready.set_result(problem or "session ended")
        if not self._result.done():
            incomplete = "; ".join(self._problems) or None
            self._result.set_result(
                StopResult(self.files, events, overflowed, lost, incomplete, self._resident, self._ranges)
            )


class TraceClient:
    """The optimizer-server process and the socketpair to it."""

    def __init__(
        self,
        server_cmd: list[str],
        *,
        on_exit: Callable[[int], None] | None = None,
        stall_timeout: float | None = None,
        on_stall: Callable[[], None] | None = None,
    ) -> None:
        """server_cmd is run with `--fd N` appended. on_exit(status) is called when the server exits
        without close() having asked it to (for logs and metrics).

        A server that leaves a request (TRACE, STOP) unanswered and says nothing at all for stall_timeout
        seconds is stalled (stopped, hung, starved): it is killed, its sessions end as incomplete, and
        on_stall() is called; the next trace() starts a fresh one."""
        self._cmd = list(server_cmd)
        self._on_exit = on_exit
        self._stall_timeout = stall_timeout
        self._on_stall = on_stall
        # When the server was last asked something and has said nothing since (None: it owes no answer).
        self._silent_since: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._start_lock = asyncio.Lock()
        self._relay: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        # The running server's HELLO: None once it said the right version, else why it cannot be used.
        self._hello: asyncio.Future[str | None] | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Spawn the server unless it runs already; returns once it has said HELLO in our protocol's version.

        Raises TraceError if it says another version or ends before it says anything.
        """
        async with self._start_lock:
            if self._sock is None:
                await self._spawn()
            assert self._hello is not None
            hello = self._hello
        problem = await asyncio.shield(hello)
        if problem is not None:
            raise TraceError(problem)

    async def _spawn(self) -> None:
        if self._reaper is not None:
            await self._reaper
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._cmd,
                "--fd",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                # Its log joins ours: a pre-launched plugin's own stderr is /dev/null.
                stderr=asyncio.subprocess.PIPE,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            # The server's copy must be its only one, so that its death reads as EOF here.
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._hello = asyncio.get_running_loop().create_future()
        assert self._proc.stderr is not None
        self._relay = asyncio.get_running_loop().create_task(_relay_log(self._proc.stderr))
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_readable)
        log.info("trace server started (pid %d)", self._proc.pid)

    async def trace(
        self, pid: int, sink: EventSink, *, timeout: float, mode: str = "auto", residency: bool = False
    ) -> Session:
        """Start watching pid's root mount; returns once the server has placed the mark.

        mode: one of EVENT_MODES; residency: have stop() report each file's bytes in the page cache. Raises
        TraceError on FAILED ("fid" where fid mode is refused, too), on timeout, or if the server dies meanwhile.
        """
        session: Session | None = None
        try:
            async with asyncio.timeout(timeout):
                await self.start()
                session = Session(self._next_id(), pid, sink, send=self._send, abandon=self._abandon)
                self._sessions[session.id] = session
                options = protocol.RESIDENCY if residency else 0
                await self._send(protocol.Trace(session.id, pid, _MODE_NUMBERS[mode], options))
                failure = await session.ready()
        except TimeoutError:
            if session is not None:
                self._abandon(session, "no READY in time")
            raise TraceError(f"pid {pid}: the trace server did not answer within {timeout} s") from None
        except TraceError:
            if session is not None:
                self._sessions.pop(session.id, None)
            raise
        except OSError as e:
            raise TraceError(f"cannot start the trace server {self._cmd}: {e}") from None
        if failure is not None:
            raise TraceError(failure)
        return session

    async def close(self) -> None:
        """Stop the server (it exits when its socket closes) and end every session as incomplete."""
        proc = self._proc
        self._disconnect("trace server closed")
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), _EXIT_GRACE)
            except TimeoutError:
                log.error("trace server (pid %d) did not exit: killing it", proc.pid)
                proc.kill()
                await proc.wait()
        if self._reaper is not None:
            await self._reaper
        if self._relay is not None:
            await self._relay  # EOF once the server is gone: its pipe is closed after this

    def _next_id(self) -> int:
        while True:
            session_id = next(self._ids) % 2**32
            if session_id and session_id not in self._sessions:
                return session_id

    async def _send(self, msg: protocol.Command) -> None:
        # One sender at a time: asyncio keeps a single writer callback per fd.
        async with self._send_lock:
            if self._sock is None:
                raise TraceError("the trace server is not running")
            try:
                await asyncio.get_running_loop().sock_sendall(self._sock, protocol.encode(msg))
            except OSError as e:
                raise TraceError(f"the trace server is gone: {e}") from None
        if isinstance(msg, protocol.Trace | protocol.Stop):
            self._expect_answer()

    def _expect_answer(self) -> None:
        """A request the server must answer is sent: its silence counts from now, unless it already does."""
        if self._stall_timeout is None:
            return
        loop = asyncio.get_running_loop()
        if self._silent_since is None:
            self._silent_since = loop.time()
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._stall_timeout, self._check_stall)

    def _heard(self) -> None:
        """The server said something: it is alive. Its silence counts again from now if it still owes answers."""
        if self._silent_since is not None:
            awaiting = any(s.owes_answer for s in self._sessions.values())
            self._silent_since = asyncio.get_running_loop().time() if awaiting else None

    def _check_stall(self) -> None:
        self._watchdog = None
        if self._silent_since is None or self._stall_timeout is None or self._sock is None:
            return
        loop = asyncio.get_running_loop()
        silent = loop.time() - self._silent_since
        if silent < self._stall_timeout:
            self._watchdog = loop.call_later(self._stall_timeout - silent, self._check_stall)
            return
        proc = self._proc
        log.error(
            "trace server (pid %s) stalled: a request unanswered and not a word for %.0f s; killing it (%d traces "
            "lost); the next container gets a fresh one",
            proc.pid if proc is not None else "?",
            silent,
            len(self._sessions),
        )
        if proc is not None:
            proc.kill()  # SIGKILL ends a stopped process too
        self._server_gone(f"trace server stalled: no answer for {silent:.0f} s")
        if self._on_stall is not None:
            self._on_stall()

    def _abandon(self, session: Session, problem: str) -> None:
        """Give up on a session: finish it and tell the server to drop it (best effort, never waits)."""
        self._sessions.pop(session.id, None)
        session.ended(problem)
        if self._sock is not None:
            try:
                self._sock.send(protocol.encode(protocol.Cancel(session.id)))
            except OSError as e:
                log.warning("session %d: could not cancel: %s", session.id, e)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_MESSAGES_PER_WAKEUP):
            try:
                # No room for ancillary data: fds the server should never send are closed by the kernel.
                data, _, flags, _ = sock.recvmsg(protocol.MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as e:
                self._server_gone(f"server socket failed: {e}")
                return
            if not data:  # the server never sends an empty datagram: this is EOF
                self._server_gone("server died")
                return
            self._dispatch(data, flags)
            self._heard()

    def _dispatch(self, data: bytes, flags: int) -> None:
        try:
            if flags & _MSG_TRUNC:
                raise protocol.ProtocolError(f"datagram longer than {protocol.MAX_DATAGRAM} bytes")
            reply = protocol.decode_reply(data)
        except protocol.ProtocolError as e:
            log.error("ignoring a message from the trace server: %s", e)
            return
        if isinstance(reply, protocol.Hello):
            self._on_hello(reply.version)
            return
        session = self._sessions.get(reply.session)
        match session, reply:
            case None, _:
                pass  # late messages of an abandoned session
            case _, protocol.Files(_, files):
                session.files_received(files)
            case _, protocol.Ready(_, mode):
                session.ready_received(protocol.MODE_NAMES[mode])
            case _, protocol.Resident(_, first, sizes):
                session.resident_received(first, sizes)
            case _, protocol.Ranges(_, file, ranges):
                session.ranges_received(file, ranges)
            case _, protocol.Failed(_, message):
                del self._sessions[session.id]
                session.ended(message)
            case _, protocol.Done(_, overflowed, lost, events):
                del self._sessions[session.id]
                session.ended(overflowed=overflowed, lost=lost, events=events)

    def _on_hello(self, version: int) -> None:
        if self._hello is None or self._hello.done():
            log.error("ignoring a second HELLO from the trace server")
            return
        if version == protocol.PROTOCOL_VERSION:
            self._hello.set_result(None)
            return
        self._hello.set_result(
            f"the trace server {self._cmd[0]} speaks protocol version {version}, this plugin "
            f"{protocol.PROTOCOL_VERSION}: install the two together (make install-optimizer)"
        )
        self._server_gone("wrong protocol version")

    def _server_gone(self, reason: str) -> None:
        proc = self._proc
        self._disconnect(reason)
        if proc is not None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap(proc))

    def _disconnect(self, reason: str) -> None:
        """Forget the server: close our end and finish every session with reason."""
        if self._sock is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._sock.fileno())
            loop.remove_writer(self._sock.fileno())  # a send blocked on a full socket ends by its timeout
            self._sock.close()
            self._sock = None
        self._proc = None
        self._silent_since = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._hello is not None and not self._hello.done():
            self._hello.set_result(
                f"the trace server {self._cmd[0]} ended ({reason}) before it said HELLO: is "
                "server_path nri-optimizer's optimizer-server?"
            )
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            session.ended(reason)

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        try:
            status = await asyncio.wait_for(proc.wait(), _EXIT_GRACE)
        except TimeoutError:
            proc.kill()
            status = await proc.wait()
        log.error("trace server (pid %d) exited with status %d", proc.pid, status)
        if self._on_exit is not None:
            try:
                self._on_exit(status)
            except Exception:
                log.exception("on_exit callback failed")


async def _relay_log(stream: asyncio.StreamReader) -> None:
    """The server's stderr lines ("optimizer-server: LEVEL message") into our log, at their level."""
    while line := await stream.readline():
        text = line.decode("utf-8", "replace").rstrip()
        _, _, rest = text.partition("optimizer-server: ")
        level, _, message = rest.partition(" ")
        log.log(
            logging.getLevelName(level) if level in _LEVELS else logging.WARNING,
            "optimizer-server: %s",
            message if level in _LEVELS else text,
        )


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
