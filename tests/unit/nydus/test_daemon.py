"""nri_optimizer.nydus.daemon: reading nydusd's access pattern into a list, and asking nydusd over its API socket
(a stand-in HTTP server on a real unix socket; the real nydusd is in tests/e2e/test_import_pattern.py)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from nri_optimizer.errors import DaemonError
from nri_optimizer.nydus import daemon
from nri_optimizer.nydus.daemon import Access


def record(ino: int, secs: int, nanos: int, reads: int = 1) -> dict[str, int]:
    return {"ino": ino, "nr_read": reads, "first_access_time_secs": secs, "first_access_time_nanos": nanos}


def test_the_pattern_is_ordered_by_first_read_then_inode() -> None:
    records = [record(9, 100, 5), record(3, 99, 999_999_999), record(7, 100, 5, reads=4), record(1, 100, 0)]
    assert daemon.parse_pattern(records) == [
        Access(99_999_999_999, 3, 1),
        Access(100_000_000_000, 1, 1),
        Access(100_000_000_005, 7, 4),
        Access(100_000_000_005, 9, 1),
    ]


@pytest.mark.parametrize("records", [{"ino": 1}, [{"ino": 1}], [record(1, 2, 3) | {"nr_read": "x"}], None])
def test_a_pattern_of_another_shape_is_an_error(records: Any) -> None:
    with pytest.raises(DaemonError, match=r"^nydusd's access pattern is not what 2\.2\.0 answers"):
        daemon.parse_pattern(records)


def test_inodes_become_paths_and_unknown_ones_are_reported() -> None:
    paths = daemon.paths_by_inode([("/a", 5), ("/b/link", 6), ("/b/file", 6), ("/c", 7)])
    assert paths == {5: "/a", 6: "/b/link", 7: "/c"}  # a hard link: its first name, as nydus-image's inspect
    pattern = [Access(1, 7, 1), Access(2, 40, 1), Access(3, 6, 2), Access(4, 5, 1)]
    assert daemon.pattern_list(pattern, paths) == (["/c", "/b/link", "/a"], [40])


class _Handler(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def do_GET(self) -> None:
        status, body = self.answers.get(self.path, (404, b'{"code":"NotFound"}'))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass

    def address_string(self) -> str:  # a unix socket has no (host, port)
        return "local"


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Path, dict[str, tuple[int, bytes]]]]:
    """A stand-in nydusd API on a unix socket: path -> (status, body)."""
    answers: ClassVar[dict[str, tuple[int, bytes]]] = {}
    handler = type("Handler", (_Handler,), {"answers": answers})
    path = tmp_path / "api.sock"
    server = _UnixServer(str(path), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path, answers
    server.shutdown()
    server.server_close()


def test_the_access_pattern_is_read_from_the_api(api: tuple[Path, dict[str, tuple[int, bytes]]]) -> None:
    path, answers = api
    answers["/api/v1/metrics"] = (200, json.dumps({"access_pattern_enabled": True}).encode())
    answers["/api/v1/metrics/pattern"] = (200, json.dumps([record(4, 10, 2), record(2, 10, 1)]).encode())
    assert daemon.access_pattern(path) == [Access(10_000_000_001, 2, 1), Access(10_000_000_002, 4, 1)]


def test_a_daemon_that_records_no_pattern_says_what_to_set(api: tuple[Path, dict[str, tuple[int, bytes]]]) -> None:
    path, answers = api
    answers["/api/v1/metrics"] = (200, json.dumps({"access_pattern_enabled": False}).encode())
    answers["/api/v1/metrics/pattern"] = (200, b"[]")
    with pytest.raises(
        DaemonError,
        match=rf"^nydusd at {path} records no access pattern: its RAFS config needs "
        '"access_pattern": true$',
    ):
        daemon.access_pattern(path)


def test_api_errors_are_one_line(api: tuple[Path, dict[str, tuple[int, bytes]]], tmp_path: Path) -> None:
    path, answers = api
    answers["/api/v1/metrics/backend"] = (200, b"not json")
    with pytest.raises(DaemonError, match=rf"^nydusd at {path}: GET /api/v1/metrics/backend: not JSON: b'not json'$"):
        daemon.get(path, "/api/v1/metrics/backend")
    with pytest.raises(DaemonError, match=rf'^nydusd at {path}: GET /api/v1/x: HTTP 404 {{"code":"NotFound"}}$'):
        daemon.get(path, "/api/v1/x")
    with pytest.raises(DaemonError, match=rf"^nydusd at {tmp_path}/gone.sock: GET /api/v1/daemon: .*No such file"):
        daemon.get(tmp_path / "gone.sock", "/api/v1/daemon")


def test_the_bootstrap_is_the_one_on_the_listeners_command_line(tmp_path: Path) -> None:
    """The process listening on the socket (found by SO_PEERCRED) names its bootstrap as nydusd does."""
    sock = tmp_path / "api.sock"
    script = (
        "import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); "
        "print('up', flush=True); time.sleep(60)"
    )
    for args, expected in (
        ([str(sock), "fuse", "--bootstrap", "/snap/1/fs/image/image.boot"], Path("/snap/1/fs/image/image.boot")),
        ([str(sock), "--bootstrap=/b.boot"], Path("/b.boot")),
        ([str(sock), "--bootstrap", "rel.boot"], tmp_path / "rel.boot"),
    ):
        sock.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "up\n"
            assert daemon.serving_bootstrap(sock) == expected
        finally:
            proc.kill()
            proc.wait()
    sock.unlink()
    proc = subprocess.Popen([sys.executable, "-c", script, str(sock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        with pytest.raises(
            DaemonError,
            match=rf"^the nydusd on {sock} \(pid {proc.pid}\) was started without "
            "--bootstrap: name it$",
        ):
            daemon.serving_bootstrap(sock)
    finally:
        proc.kill()
        proc.wait()


class _CuttingHandler(_Handler):
    """As nydusd 2.2's server: an answer that does not fit the connection's send buffer is cut there."""

    def do_GET(self) -> None:
        status, body = self.answers[self.path]
        room = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:room])
        self.wfile.flush()
        self.close_connection = True


def test_an_answer_cut_at_the_send_buffer_is_asked_for_again_with_one_that_holds_it(tmp_path: Path) -> None:
    records = [record(n, 1, n) for n in range(8000)]  # ~600 KB of JSON
    body = json.dumps(records).encode()
    wmem_default = Path("/proc/sys/net/core/wmem_default")
    before = wmem_default.read_text()
    assert len(body) > int(before)
    handler = type("Handler", (_CuttingHandler,), {"answers": {"/api/v1/metrics/pattern": (200, body)}})
    server = _UnixServer(str(tmp_path / "api.sock"), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        if os.geteuid() == 0:
            assert daemon.get(tmp_path / "api.sock", "/api/v1/metrics/pattern") == records
        else:
            with pytest.raises(DaemonError, match=rf"it sent [0-9]+ of {len(body)} bytes \(nydusd 2\.2 drops"):
                daemon.get(tmp_path / "api.sock", "/api/v1/metrics/pattern")
    finally:
        server.shutdown()
        server.server_close()
    assert wmem_default.read_text() == before
