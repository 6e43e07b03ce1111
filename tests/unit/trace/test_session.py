"""A trace session as the client feeds it what the server says: page-cache ranges into the stop result."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nri_optimizer.trace.client import Session, StopResult
from optimizer_server import protocol
from optimizer_server.fanotify import FAN_OPEN
from optimizer_server.protocol import FileRecord

RECORDS = [FileRecord(FAN_OPEN, 42, 0, 2049, ino, 1 << 20, b"/f%d" % ino) for ino in range(3)]


def stopped(feed: Callable[[Session], None]) -> StopResult:
    """The result of a session that received READY and three files, then what feed gives it, then DONE."""

    async def body() -> StopResult:
        async def send(msg: protocol.Command) -> None:
            pass

        session = Session(1, 42, lambda files: None, send=send, abandon=lambda session, problem: None)
        session.ready_received("fid")
        session.files_received(RECORDS)
        feed(session)
        session.ended(events=3)
        return await session.stop(timeout=1)

    return asyncio.run(body())


def test_ranges_are_kept_by_the_number_of_the_file_they_are_for() -> None:
    def feed(session: Session) -> None:
        session.resident_received(0, [4096, 1 << 20, 8192])
        session.ranges_received(0, ((0, 4096),))
        session.ranges_received(2, ((0, 4096), (65536, 4096)))

    result = stopped(feed)
    assert result.complete
    assert list(result.resident) == [4096, 1 << 20, 8192]
    assert result.ranges == {0: ((0, 4096),), 2: ((0, 4096), (65536, 4096))}


def test_ranges_for_a_file_never_received_or_twice_make_the_trace_incomplete() -> None:
    def feed(session: Session) -> None:
        session.ranges_received(1, ((0, 4096),))
        session.ranges_received(1, ((0, 8192),))
        session.ranges_received(3, ((0, 4096),))

    result = stopped(feed)
    assert result.ranges == {1: ((0, 4096),)}
    assert result.incomplete == (
        "page-cache ranges for file 1 twice; page-cache ranges for file 3, beyond the 3 files received"
    )


def test_without_residency_there_are_no_ranges() -> None:
    result = stopped(lambda session: None)
    assert (list(result.resident), dict(result.ranges)) == ([], {})
