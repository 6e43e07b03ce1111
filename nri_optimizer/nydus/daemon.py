"""A running nydusd, through its HTTP API on a unix socket (nydus-rs 2.2.0): its metrics, and the list of files
it saw read, in the order it first saw them (its "access pattern"), as a list of paths.

The endpoints read here, as nydusd 2.2.0 answers them (one RAFS filesystem per daemon, as nydus-snapshotter runs
it in dedicated mode):

- ``GET /api/v1/metrics/pattern``: ``[{"ino": N, "nr_read": N, "first_access_time_secs": S,
  "first_access_time_nanos": NS}, ...]``, one record per file read at least once, in no order. nydusd keeps it only
  when the RAFS config has ``"access_pattern": true`` (otherwise it answers ``[]``); ``GET /api/v1/metrics`` says
  which (``access_pattern_enabled``). Only reads count: a file opened and never read (or only stat'ed) is not in
  it, and the time is the first read's, not the open's. ``ino`` is the RAFS inode number, as the bootstrap has it
  (``nydus-image check``), not the st_ino the FUSE mount shows (which carries the filesystem's index in its top
  byte).
- ``GET /api/v1/metrics/backend``: ``read_count``, ``read_amount_total`` (requests to and bytes from the registry).
- ``GET /api/v1/metrics/blobcache``: ``prefetch_requests_count``, ``prefetch_data_amount``,
  ``prefetch_begin_time_secs``/``_millis``, ...
- ``GET /api/v1/metrics``: the filesystem's counters, with ``read_latency_dist`` (FUSE reads by how long they
  took: <=200 us, <=1 ms, <=20 ms, <=50 ms, <=500 ms, <=1 s, <=2 s, more).

nydusd serves the API on the socket given by ``--apisock``; its bootstrap is the ``--bootstrap`` of its command
line, found through the socket's peer (the process that listens on it).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import itertools
import json
import os
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nri_optimizer.errors import DaemonError

API_TIMEOUT = 10.0  # seconds: nydusd answers metrics from memory
_MAX_ANSWER = 64 << 20  # a pattern of a million files is ~100 MB of JSON; we take images of up to ~500k files
_SEND_BUFFER_MARGIN = 64 << 10  # the headers, and the kernel's overhead per buffer
_WMEM_DEFAULT = Path("/proc/sys/net/core/wmem_default")
_LOCK = Path("/run/lock/nri-optimizer-wmem-default.lock")


@dataclass(frozen=True, order=True)
class Access:
    """One file nydusd saw read: when first (ns since the epoch, nydusd's clock), how many reads."""

    first_ns: int
    ino: int
    reads: int


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (nydusd's API, nydus-snapshotter's system controller). With `send_buffer`, the
    server's end of the connection gets a send buffer of that many bytes (see `get`)."""

    def __init__(self, path: Path, timeout: float, *, send_buffer: int | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path
        self._send_buffer = send_buffer

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            with _default_send_buffer(self._send_buffer):
                sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def get(api_socket: Path, path: str, *, timeout: float = API_TIMEOUT) -> Any:
    """GET `path` from nydusd's API on `api_socket`: the decoded JSON.

    nydusd 2.2's HTTP server (dbs-uhttp 0.3.2) writes an answer once and closes the connection when the socket
    will not take it all: the client gets the first ~210 KB (the send buffer, ``net.core.wmem_default``) of a longer
    one, such as the access pattern of a few thousand files. A unix socket's end gets its send buffer when the
    connection is made, from that sysctl; so when an answer comes cut, it is asked again, as root, with the sysctl
    raised to the answer's size for the instant of connecting, then put back.
    """
    try:
        body, response = _get(api_socket, path, timeout, None)
    except http.client.IncompleteRead as cut:
        whole = len(cut.partial) + (cut.expected or 0)
        if os.geteuid() != 0 or whole > _MAX_ANSWER:
            raise DaemonError(
                f"nydusd at {api_socket}: GET {path}: it sent {len(cut.partial)} of {whole} bytes "
                "(nydusd 2.2 drops what does not fit its socket's send buffer, net.core.wmem_default; "
                "as root the answer is asked for again with a buffer that holds it)"
            ) from None
        try:
            body, response = _get(api_socket, path, timeout, whole + _SEND_BUFFER_MARGIN)
        except http.client.IncompleteRead as again:
            raise DaemonError(
                f"nydusd at {api_socket}: GET {path}: it sent {len(again.partial)} of {whole} "
                "bytes, with a send buffer to hold them all"
            ) from None
    if response.status != 200:
        raise DaemonError(
            f"nydusd at {api_socket}: GET {path}: HTTP {response.status} {body[:200].decode(errors='replace')}"
        )
    if len(body) > _MAX_ANSWER:
        raise DaemonError(f"nydusd at {api_socket}: GET {path}: answer larger than {_MAX_ANSWER} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise DaemonError(f"nydusd at {api_socket}: GET {path}: not JSON: {body[:200]!r}") from None


def _get(
    api_socket: Path, path: str, timeout: float, send_buffer: int | None
) -> tuple[bytes, http.client.HTTPResponse]:
    """(the body, the response) of GET `path`; IncompleteRead when the answer came cut."""
    connection = UnixHTTPConnection(api_socket, timeout, send_buffer=send_buffer)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        length = response.getheader("Content-Length")
        if length is None:  # to the end of the stream: bounded (nydusd always says how long)
            return response.read(_MAX_ANSWER + 1), response
        if int(length) > _MAX_ANSWER:
            raise DaemonError(f"nydusd at {api_socket}: GET {path}: answer larger than {_MAX_ANSWER} bytes")
        return response.read(), response  # raises IncompleteRead when the stream ends before `length`
    except http.client.IncompleteRead:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DaemonError(f"nydusd at {api_socket}: GET {path}: {exc}") from None
    finally:
        connection.close()


@contextlib.contextmanager
def _default_send_buffer(size: int | None) -> Iterator[None]:
    """net.core.wmem_default at least `size` while the block runs (a connection made then keeps it), under a lock so
    that two of us never restore each other's value."""
    if size is None:
        yield
        return
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = _WMEM_DEFAULT.read_text()
        if int(before) >= size:
            yield
            return
        _WMEM_DEFAULT.write_text(f"{size}\n")
        try:
            yield
        finally:
            _WMEM_DEFAULT.write_text(before)


def access_pattern(api_socket: Path) -> list[Access]:
    """The files the daemon saw read, in the order of their first read (ties: by inode number)."""
    fs = get(api_socket, "/api/v1/metrics")
    if not isinstance(fs, dict) or not fs.get("access_pattern_enabled"):
        raise DaemonError(
            f'nydusd at {api_socket} records no access pattern: its RAFS config needs "access_pattern": true'
        )
    return parse_pattern(get(api_socket, "/api/v1/metrics/pattern"))


def parse_pattern(records: Any) -> list[Access]:
    """/api/v1/metrics/pattern's answer, in the order of first reads."""
    try:
        found = [
            Access(
                int(r["first_access_time_secs"]) * 1_000_000_000 + int(r["first_access_time_nanos"]),
                int(r["ino"]),
                int(r["nr_read"]),
            )
            for r in records
        ]
    except (TypeError, KeyError, ValueError) as exc:
        raise DaemonError(
            f"nydusd's access pattern is not what 2.2.0 answers ({exc!r}): {json.dumps(records)[:200]}"
        ) from None
    return sorted(found)


def pattern_list(pattern: Iterable[Access], paths: Mapping[int, str]) -> tuple[list[str], list[int]]:
    """(the paths of `pattern` in its order, inode numbers `paths` has no path for)."""
    listed, unknown = [], []
    for access in pattern:
        path = paths.get(access.ino)
        if path is None:
            unknown.append(access.ino)
        else:
            listed.append(path)
    return listed, unknown


def paths_by_inode(inodes: Iterable[tuple[str, int]]) -> dict[int, str]:
    """inode number -> path, from (path, ino) pairs in the bootstrap's order: a hard-linked file gets the first
    of its names, as nydus-image's own inspect does."""
    found: dict[int, str] = {}
    for path, ino in inodes:
        found.setdefault(ino, path)
    return found


def serving_bootstrap(api_socket: Path) -> Path:
    """The bootstrap of the nydusd that listens on `api_socket` (its ``--bootstrap``), found through the socket's
    peer process."""
    pid = _peer_pid(api_socket)
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError as exc:
        raise DaemonError(f"cannot read the command line of nydusd (pid {pid}): {exc.strerror}") from None
    for flag, value in itertools.pairwise([*argv, b""]):
        if flag == b"--bootstrap":
            bootstrap = Path(os.fsdecode(value))
            if not bootstrap.is_absolute():  # relative to nydusd's working directory
                bootstrap = Path(os.readlink(f"/proc/{pid}/cwd")) / bootstrap
            return bootstrap
        if flag.startswith(b"--bootstrap="):
            return Path(os.fsdecode(flag.removeprefix(b"--bootstrap=")))
    raise DaemonError(f"the nydusd on {api_socket} (pid {pid}) was started without --bootstrap: name it")


def _peer_pid(api_socket: Path) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(API_TIMEOUT)
        sock.connect(str(api_socket))
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError as exc:
        raise DaemonError(f"nydusd at {api_socket}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return int(pid)
