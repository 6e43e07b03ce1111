"""bench-image's slow link on the real kernel (root): the registry's port shaped to a rate on lo through netlink
(HTB and u32, pyroute2), everything else on lo untouched, the round trip added by the delay line, and both gone
afterwards, also when the run is interrupted."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from benchmarks.prefetch.shaping import Link, RateLimit, ShapedLink, ShapingError
from tests.e2e.benchimage import interruptible_script

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="shaping lo needs root (CAP_NET_ADMIN)")

PAYLOAD = random.Random(7).randbytes(8 << 20)


def shaped_ports() -> set[int]:
    """The TCP source ports lo's u32 filters match (read with tc, to check our netlink work from the outside)."""
    out = subprocess.run(["tc", "filter", "show", "dev", "lo"], capture_output=True, text=True, check=True).stdout
    return {int(match[1], 16) >> 16 for match in re.finditer(r"match ([0-9a-f]{8})/ffff0000 at 20", out)}


def lo_root() -> str:
    out = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True, check=True).stdout
    return out.split(" refcnt")[0]


class Sender:
    """A server on loopback that sends `size` bytes for every line "size\\n" it reads (and answers an HTTP GET)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                if line.startswith(b"GET "):  # the link's round-trip probe (measure_rtt): answer as a registry
                    while lines.readline() not in (b"\r\n", b""):
                        pass
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                elif line.strip():
                    conn.sendall(PAYLOAD[: int(line)])

    def fetch_seconds(self, size: int, port: int | None = None) -> float:
        with socket.create_connection(("127.0.0.1", port or self.port)) as sock:
            started = time.perf_counter()
            sock.sendall(f"{size}\n".encode())
            got = 0
            while got < size:
                got += len(sock.recv(1 << 20))
            return time.perf_counter() - started


@pytest.fixture
def sender() -> Iterator[Sender]:
    server = Sender()
    yield server
    server.sock.close()


@pytest.mark.parametrize("rate", ["20mbit", "100mbit"])
def test_the_port_is_shaped_to_the_rate_and_nothing_else_is(sender: Sender, rate: str) -> None:
    other = Sender()
    try:
        link = Link.parse(rate)
        with RateLimit(link.rate, sender.port):
            assert lo_root() == "qdisc htb 1: root" and sender.port in shaped_ports()
            size = 4 << 20
            seconds = sender.fetch_seconds(size)
            unshaped = other.fetch_seconds(size)
        assert sender.port not in shaped_ports()
        measured = size * 8 / seconds
        # HTB counts headers too (payload a little below the rate); a 64 KiB packet may pass on credit (above it).
        assert 0.85 * link.rate <= measured <= 1.06 * link.rate, f"{measured / 1e6:.1f} Mbit/s at {rate}"
        assert size * 8 / unshaped > 10 * link.rate  # another port on lo: not shaped
    finally:
        other.sock.close()


def test_the_shaped_link_has_its_rate_and_round_trip(sender: Sender) -> None:
    link = Link.parse("40mbit/30ms")
    with ShapedLink(link, sender.port) as shaped:
        probes = shaped.down_bytes  # the round-trip probe's answers
        size = 4 << 20
        seconds = sender.fetch_seconds(size, port=int(shaped.address.rsplit(":", 1)[1]))
        received = shaped.down_bytes - probes
    # A new connection: the handshake's and the request's round trips, then the bytes at the rate.
    expected = 2 * link.rtt + size * 8 / link.rate
    assert 0.95 * expected <= seconds <= 1.15 * expected, (seconds, expected)
    assert received == size


def test_two_links_at_once_share_the_root_and_each_removes_only_its_own(sender: Sender) -> None:
    other = Sender()
    size = 2 << 20
    try:
        first = RateLimit(20_000_000, sender.port).__enter__()
        try:
            with RateLimit(80_000_000, other.port) as second:
                assert first.minor != second.minor
                both = (sender.fetch_seconds(size), other.fetch_seconds(size))
            assert shaped_ports() & {sender.port, other.port} == {sender.port}
            alone = sender.fetch_seconds(size)
            unshaped = other.fetch_seconds(size)
        finally:
            first.__exit__()
    finally:
        other.sock.close()
    assert shaped_ports() & {sender.port, other.port} == set()
    rates = [size * 8 / seconds / 1e6 for seconds in (*both, alone, unshaped)]
    assert 18 <= rates[0] <= 21.5 and 72 <= rates[1] <= 86 and 18 <= rates[2] <= 21.5, rates
    assert rates[3] > 800, rates  # its class went with it


@pytest.fixture
def own_device() -> Iterator[str]:
    """A network device of our own (an IFB: this kernel has no dummy driver), so that a test can put a root qdisc on
    it without touching lo."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    name = f"nriopt{os.getpid() % 100000}"
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="ifb")
        try:
            yield name
        finally:
            ipr.link("del", index=ipr.link_lookup(ifname=name)[0])


def test_a_root_qdisc_that_is_not_ours_is_left_alone(own_device: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=own_device)
        ipr.tc("add", "htb", index, 0x20000, default=0)  # someone else's: handle 2:
        with pytest.raises(
            ShapingError,
            match=rf"^{own_device} already has a root queueing discipline \(htb\) "
            "that is not ours; not replacing it",
        ):
            RateLimit(10_000_000, 5000, device=own_device).__enter__()
        assert [(q.get_attr("TCA_KIND"), q["handle"]) for q in ipr.get_qdiscs(index)] == [("htb", 0x20000)]
        assert ipr.get_classes(index) == ()


def test_an_exception_inside_removes_the_shaping(sender: Sender) -> None:
    with pytest.raises(KeyboardInterrupt), ShapedLink(Link.parse("10mbit/10ms"), sender.port):
        assert sender.port in shaped_ports()
        raise KeyboardInterrupt
    assert sender.port not in shaped_ports()


def test_the_last_one_out_removes_the_root(own_device: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=own_device)

        def state() -> tuple[list[tuple[str, int]], list[int]]:
            qdiscs = [(q.get_attr("TCA_KIND"), q["handle"]) for q in ipr.get_qdiscs(index) if q["parent"] == 0xFFFFFFFF]
            return qdiscs, sorted(c["handle"] for c in ipr.get_classes(index))

        before = state()
        with RateLimit(10_000_000, 5001, device=own_device), RateLimit(20_000_000, 5002, device=own_device):
            assert state() == ([("htb", 0x10000)], [0x10010, 0x10011])
        assert state() == before


def test_ctrl_c_in_a_process_removes_the_shaping(sender: Sender) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from benchmarks.prefetch.shaping import Link, ShapedLink
        with ShapedLink(Link.parse("10mbit/10ms"), {sender.port}):
            print("shaped", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen(
        interruptible_script(script),  # if it hangs, SIGABRT below puts every thread's stack on stderr
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "shaped\n"
        assert sender.port in shaped_ports()
        proc.send_signal(signal.SIGINT)
        # Python ends on an unhandled KeyboardInterrupt by SIGINT itself, after the with block's exit has run.
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            pytest.fail(f"still running 30 s after SIGINT; its threads:\n{proc.communicate(timeout=30)[1]}")
        assert status == -signal.SIGINT, proc.communicate()[1]
        assert sender.port not in shaped_ports()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
