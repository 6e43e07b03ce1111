"""A slow link between the local registry and its clients, on loopback: a rate and a round-trip delay.

::

    containerd, nydusd ──▶ 127.0.0.1:P  delay line (this process) ──▶ 127.0.0.1:R  docker-registry
                          ◀── each chunk held RTT/2 ──                ◀── HTB class at RATE (source port R) ──

- **Rate**: an HTB qdisc at lo's root, one class at the link's rate, and a u32 filter that sends it every IPv4
  packet whose TCP source port is the registry's (its replies; the match is the 16 bits at offset 20 of an IP
  header without options, as ``tc ... match ip sport R 0xffff``). Set through netlink with pyroute2: no ``tc``
  process. Unclassified packets (every other flow on lo) leave through HTB's direct queue, unshaped. A lo that
  already has a root qdisc of another kind (someone else's) is left alone: we refuse. Several links shaped at
  once (two runs, tests side by side) share the root HTB, each with its own class and filter (`RateLimit`).
- **Delay**: this kernel has no netem, so the round trip is made by a delay line in front of the registry: a TCP
  proxy that holds every chunk it reads for half the round trip before it writes it on, in both directions, in
  order. A new connection's first request waits one round trip more, which the TCP handshake would have cost on a
  real link (here the kernel completes it at once). The round trip is measured after setup (`measure_rtt`).
- Both are removed when the `ShapedLink` context exits, on an exception and on Ctrl-C too.

The delay line counts the bytes it passes each way, so that what every client fetched from the registry (an OCI
pull's layers, nydusd's reads) is known without asking the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http.client
import re
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nri_optimizer.errors import OptimizerError

LOOPBACK = "127.0.0.1"
ETH_P_IP = 0x0800  # if_ether.h: the filter matches IPv4
HTB_ROOT = 0x10000  # handle 1:
HTB_FIRST_CLASS = 0x10  # classes 1:10 (hex) and up: one per link shaped at once
# The bucket: what may pass above the rate after an idle spell. Small, as on a real link: lo hands HTB packets of up to
# 64 KiB (its MTU, and segmentation offload), which HTB lets through on credit, so the bucket need not hold one.
# Measured here: with 16 KiB a 4 MiB reply runs at 97.7 (100mbit) and 20.5 Mbit/s (20mbit); with 256 KiB a 1 MiB reply
# after an idle spell came 30 % faster than the rate allows.
HTB_BURST = 16 * 1024
TCP_PORTS_OFFSET = 20  # bytes into an IPv4 header without options: source port, destination port
CHUNK = 64 * 1024  # what the delay line reads at once
# Chunks the delay line holds per direction before it stops reading (TCP then pushes back on the sender). It must
# hold a round trip's worth at the link's rate (1 Gbit/s x 100 ms = 12.5 MB) so that it never slows a link down.
QUEUE_CHUNKS = 256

_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([kmg]?)bit", re.IGNORECASE)
_TIME = re.compile(r"([0-9]+(?:\.[0-9]+)?)(us|ms|s)", re.IGNORECASE)
_RATE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


class ShapingError(OptimizerError):
    """The link cannot be shaped (a setting is wrong, lo is taken, netlink refused)."""


@dataclass(frozen=True)
class Link:
    """A link setting: `rate` bits per second, round trip `rtt` seconds; written ``RATE/RTT`` (``100mbit/10ms``)."""

    rate: int
    rtt: float

    @classmethod
    def parse(cls, text: str) -> Link:
        rate_text, _, rtt_text = text.strip().partition("/")
        rate = _RATE.fullmatch(rate_text)
        rtt = _TIME.fullmatch(rtt_text or "0ms")
        if rate is None or rtt is None or float(rate[1]) <= 0:
            raise ShapingError(
                f"link {text!r}: expected RATE/RTT, e.g. 100mbit/10ms or 20mbit/40ms (RATE in "
                "kbit, mbit or gbit; RTT in us, ms or s)"
            )
        return cls(round(float(rate[1]) * _RATE_UNITS[rate[2].lower()]), float(rtt[1]) * _TIME_UNITS[rtt[2].lower()])

    def __str__(self) -> str:
        return f"{_rate_text(self.rate)}/{_time_text(self.rtt)}"

    @property
    def bytes_per_second(self) -> float:
        return self.rate / 8


def _rate_text(bits: int) -> str:
    for unit, size in (("g", 10**9), ("m", 10**6), ("k", 10**3)):
        if bits >= size and bits % (size // 1000 or 1) == 0:
            return f"{bits / size:g}{unit}bit"
    return f"{bits}bit"


def _time_text(seconds: float) -> str:
    return f"{seconds * 1e3:g}ms" if seconds < 1 else f"{seconds:g}s"


class RateLimit:
    """HTB on lo shaping the replies from TCP port `port` to `rate` bits per second (pyroute2, netlink).

    Several at once (two benchmarks, or tests running side by side) share lo's root HTB: each adds its own class and
    filter (class 1:N, filter priority N, N free at the time) and takes away only those; the first one in adds the
    root, the last one out removes it. A file lock orders them. A root qdisc of any other kind is someone else's:
    we refuse to touch it.
    """

    def __init__(self, rate: int, port: int, device: str = "lo") -> None:
        self.rate = rate
        self.port = port
        self.device = device
        self.minor = 0  # our class 1:minor and filter priority, once entered
        self._ipr: Any = None  # pyroute2.IPRoute, untyped
        self._index = 0

    def __enter__(self) -> RateLimit:
        try:
            from pyroute2 import IPRoute  # type: ignore[import-untyped]
            from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
        except ImportError:
            raise ShapingError("pyroute2 is not installed: pip install 'nri-optimizer[bench]'") from None
        self._ipr = IPRoute()
        try:
            with _shaping_lock():
                (self._index,) = self._ipr.link_lookup(ifname=self.device)
                if self._root_kind() is None:
                    self._ipr.tc("add", "htb", self._index, HTB_ROOT, default=0)  # unclassified: HTB's direct queue
                self.minor = self._free_minor()
                per_second = self.rate // 8
                self._ipr.tc(
                    "add-class",
                    "htb",
                    self._index,
                    HTB_ROOT | self.minor,
                    parent=HTB_ROOT,
                    rate=per_second,
                    ceil=per_second,
                    burst=HTB_BURST,
                    cburst=HTB_BURST,
                )
                self._ipr.tc(
                    "add-filter",
                    "u32",
                    self._index,
                    parent=HTB_ROOT,
                    prio=self.minor,
                    protocol=ETH_P_IP,
                    target=HTB_ROOT | self.minor,
                    keys=[f"0x{self.port << 16:08x}/0xffff0000+{TCP_PORTS_OFFSET}"],
                )
        except NetlinkError as exc:
            self.__exit__()
            raise ShapingError(f"netlink refused shaping {self.device}: {exc}") from None
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        ipr, self._ipr = self._ipr, None
        if ipr is None:
            return
        try:
            with _shaping_lock():
                ours = HTB_ROOT | self.minor
                if self.minor:
                    if any(f["info"] >> 16 == self.minor for f in ipr.get_filters(self._index, parent=HTB_ROOT)):
                        # By priority and protocol (the message's info), which are ours alone: without them the
                        # kernel would delete every filter of the root.
                        ipr.tc(
                            "del-filter",
                            index=self._index,
                            parent=HTB_ROOT,
                            info=self.minor << 16 | socket.htons(ETH_P_IP),
                        )
                    if ours in self._class_handles(ipr):
                        ipr.tc("del-class", index=self._index, handle=ours, parent=HTB_ROOT)
                    self.minor = 0
                if self._root_kind(ipr) == "htb" and not self._class_handles(ipr):
                    ipr.tc("del", "htb", self._index, HTB_ROOT)
        finally:
            ipr.close()

    def _root_kind(self, ipr: Any = None) -> str | None:
        """None for lo's default (noqueue), "htb" for a root HTB 1: (ours, or another instance's); else refuse."""
        ipr = ipr or self._ipr
        roots = [q for q in ipr.get_qdiscs(self._index) if q["parent"] == 0xFFFFFFFF]
        kinds = [q.get_attr("TCA_KIND") for q in roots]
        if kinds in ([], ["noqueue"]):
            return None
        if kinds == ["htb"] and roots[0]["handle"] == HTB_ROOT:
            return "htb"
        raise ShapingError(
            f"{self.device} already has a root queueing discipline ({', '.join(kinds)}) that is not "
            f"ours; not replacing it (remove it with `tc qdisc del dev {self.device} root` if it is a "
            "leftover)"
        )

    def _class_handles(self, ipr: Any) -> set[int]:
        """The classes of the root HTB (1:N; the kernel shows their parent as the root itself)."""
        return {
            c["handle"]
            for c in ipr.get_classes(self._index)
            if c["index"] == self._index and c["handle"] >> 16 == HTB_ROOT >> 16
        }

    def _free_minor(self) -> int:
        taken = {handle & 0xFFFF for handle in self._class_handles(self._ipr)}
        return next(minor for minor in range(HTB_FIRST_CLASS, 0xFFFF) if minor not in taken)


@contextlib.contextmanager
def _shaping_lock() -> Iterator[None]:
    """Held while lo's root HTB is changed, so that two instances never both add it, nor one remove it while the
    other adds a class under it."""
    directory = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
    with open(directory / "nri-optimizer-shaping.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class DelayLine:
    """A TCP proxy on 127.0.0.1 (port chosen by the kernel) to `upstream_port`, holding every chunk `rtt / 2`
    seconds in each direction; the first request of a connection waits `rtt` more (the handshake). It runs an
    asyncio loop in a thread of its own."""

    def __init__(self, upstream_port: int, rtt: float) -> None:
        self.upstream_port = upstream_port
        self.rtt = rtt
        self.port = 0
        self.down_bytes = 0  # upstream -> clients
        self.up_bytes = 0  # clients -> upstream
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def __enter__(self) -> DelayLine:
        self._thread = threading.Thread(target=self._run, name="delay-line", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            self.__exit__()
            raise ShapingError(f"the delay line cannot listen on {LOOPBACK}: {self._failure}")
        return self

    def __exit__(self, *exc: object) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended already
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join()
        self._thread = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to the thread that waits for us
            self._failure = exc
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, LOOPBACK, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        writers = [client_writer]
        try:
            await self._relay(client_reader, writers)
        except asyncio.CancelledError:
            pass  # the line is closing: end quietly (asyncio reports a cancelled connection task as an error)
        finally:
            self._tasks.discard(task)
            for writer in writers:
                writer.close()

    async def _relay(self, client_reader: asyncio.StreamReader, writers: list[asyncio.StreamWriter]) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port)
            writers.append(upstream_writer)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(client_reader, upstream_writer, up=True))
                group.create_task(self._pipe(upstream_reader, writers[0], up=False))
        except* OSError:
            pass  # either end went away: close both, as a broken link would

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        """Copy `reader` to `writer`, each chunk (and the end) delivered half a round trip after it was read."""
        loop = asyncio.get_running_loop()
        one_way = self.rtt / 2
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def receive() -> None:
            extra = self.rtt if up else 0.0  # the handshake a real link would have cost the first request
            while data := await reader.read(CHUNK):
                await queue.put((loop.time() + one_way + extra, data))
                extra = 0.0
            await queue.put((loop.time() + one_way, b""))

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if up:  # counted first: a reader in another thread may see the bytes arrive before write returns
                    self.up_bytes += len(data)
                else:
                    self.down_bytes += len(data)
                writer.write(data)
                await writer.drain()

        async with asyncio.TaskGroup() as group:  # a failure on either side ends both
            group.create_task(receive())
            group.create_task(send())


class ShapedLink:
    """The registry on 127.0.0.1:`registry_port` behind `link`: clients use `address` (the delay line's). Without a
    link, the delay line holds nothing and nothing is shaped: it only counts the bytes.

    `rtt_measured` (seconds) is the median round trip of small requests through the link, measured on entry.
    """

    def __init__(self, link: Link | None, registry_port: int) -> None:
        self.link = link
        self.registry_port = registry_port
        self.delay = DelayLine(registry_port, link.rtt if link is not None else 0.0)
        self.rtt_measured = 0.0
        self._stack = contextlib.ExitStack()

    @property
    def address(self) -> str:
        return self.delay.address

    @property
    def down_bytes(self) -> int:
        """Bytes the registry sent its clients through the link so far."""
        return self.delay.down_bytes

    def __enter__(self) -> ShapedLink:
        with self._stack as stack:
            if self.link is not None:
                stack.enter_context(RateLimit(self.link.rate, self.registry_port))
            stack.enter_context(self.delay)
            self.rtt_measured = measure_rtt(self.address)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def measure_rtt(address: str, samples: int = 5) -> float:
    """The median time, in seconds, of a small HTTP request (``GET /v2/``, the registry's API check) answered
    through `address`, on a connection opened (and its handshake paid) before the first timed request."""
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        times = []
        for n in range(samples + 1):
            started = time.perf_counter()
            connection.request("GET", "/v2/")
            connection.getresponse().read()
            if n:
                times.append(time.perf_counter() - started)
        return statistics.median(times)
    except (OSError, http.client.HTTPException) as exc:
        raise ShapingError(f"no answer through the shaped link at {address}: {exc}") from None
    finally:
        connection.close()
