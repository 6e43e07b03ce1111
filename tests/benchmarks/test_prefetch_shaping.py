"""bench-image's link settings, and the delay line on real loopback sockets (no root needed: the rate is shaped in
the kernel and tested in tests/e2e/test_bench_image_shaping.py)."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from benchmarks.prefetch.shaping import DelayLine, Link, ShapingError, measure_rtt


@pytest.mark.parametrize(
    ("text", "rate", "rtt", "shown"),
    [
        ("100mbit/10ms", 100_000_000, 0.010, "100mbit/10ms"),
        ("20mbit/40ms", 20_000_000, 0.040, "20mbit/40ms"),
        ("1.5gbit/0.1s", 1_500_000_000, 0.1, "1.5gbit/100ms"),
        ("500kbit/250us", 500_000, 0.00025, "500kbit/0.25ms"),
        ("25MBit", 25_000_000, 0.0, "25mbit/0ms"),
        ("2500bit/2s", 2500, 2.0, "2.5kbit/2s"),
    ],
)
def test_a_link_is_rate_slash_rtt(text: str, rate: int, rtt: float, shown: str) -> None:
    link = Link.parse(text)
    assert (link.rate, str(link)) == (rate, shown)
    assert link.rtt == pytest.approx(rtt)
    assert Link.parse(str(link)) == link


@pytest.mark.parametrize(
    "text", ["fast", "100mbit/10", "0mbit/10ms", "100mb/10ms", "100mbit/-1ms", "/10ms", "100mbit/10ms/1", ""]
)
def test_a_wrong_link_says_what_is_expected(text: str) -> None:
    with pytest.raises(ShapingError, match=r"expected RATE/RTT, e\.g\. 100mbit/10ms"):
        Link.parse(text)


class Upstream:
    """A server on loopback: a line "N\\n" asks for N bytes of a fixed random stream; "echo\\n" + data echoes."""

    PAYLOAD = random.Random(19).randbytes(4 << 20)

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                conn.sendall(self.PAYLOAD[: int(line)])


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.sock.close()


def ask(sock: socket.socket, size: int) -> bytes:
    sock.sendall(f"{size}\n".encode())
    got = bytearray()
    while len(got) < size:
        got += sock.recv(1 << 20)
    return bytes(got)


def test_each_way_waits_half_the_round_trip_and_a_new_connection_one_more(upstream: Upstream) -> None:
    with DelayLine(upstream.port, 0.080) as line, socket.create_connection(("127.0.0.1", line.port)) as client:
        started = time.monotonic()
        assert ask(client, 10) == Upstream.PAYLOAD[:10]
        first = time.monotonic() - started
        started = time.monotonic()
        assert ask(client, 10) == Upstream.PAYLOAD[:10]
        second = time.monotonic() - started
    # The handshake's round trip, then the request's; the timer's grain and a busy machine add a little.
    assert 0.160 <= first < 0.160 + 0.060, first
    assert 0.080 <= second < 0.080 + 0.060, second


def test_bytes_arrive_whole_and_in_order_and_are_counted(upstream: Upstream) -> None:
    with DelayLine(upstream.port, 0.010) as line:
        clients = [socket.create_connection(("127.0.0.1", line.port)) for _ in range(3)]
        try:
            for client in clients:
                assert (
                    hashlib.sha256(ask(client, len(Upstream.PAYLOAD))).digest()
                    == hashlib.sha256(Upstream.PAYLOAD).digest()
                )
        finally:
            for client in clients:
                client.close()
        assert line.down_bytes == 3 * len(Upstream.PAYLOAD)
        assert line.up_bytes == 3 * len(f"{len(Upstream.PAYLOAD)}\n")
        assert (line.connections, upstream.accepted) == (3, 3)


def test_closing_the_line_ends_open_connections(upstream: Upstream) -> None:
    line = DelayLine(upstream.port, 0.010)
    with line:
        client = socket.create_connection(("127.0.0.1", line.port))
        ask(client, 100)
    with client:
        client.settimeout(5)
        assert client.recv(1) == b""  # the line closed its end
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", line.port), timeout=5).close()


def test_an_upstream_that_is_gone_closes_the_client() -> None:
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with DelayLine(port, 0.0) as line, socket.create_connection(("127.0.0.1", line.port)) as client:
        client.settimeout(5)
        assert client.recv(1) == b""


def test_measure_rtt_times_an_http_request_through_the_line() -> None:
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with DelayLine(server.server_address[1], 0.050) as line:
            assert 0.050 <= measure_rtt(line.address) < 0.050 + 0.030
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ShapingError, match=r"no answer through the shaped link at 127\.0\.0\.1:"):
        measure_rtt(line.address)
