"""``nri-optimizer import-pattern`` against the real nydusd 2.2.0 (``make nydus``): a nydus image built with
nydus-image, mounted by nydusd over FUSE from a local blob directory (``localfs`` backend: the access pattern does
not depend on where the blobs come from), files read in a known order; the command must give exactly those files,
in that order, with their paths from the bootstrap (a hard link under its first name, odd names as they are).

It also pins what nydusd 2.2.0 answers, which the command relies on: the pattern is reads only (a file opened or
stat'ed and never read is not in it), the inode numbers are RAFS's, and without ``access_pattern`` in the RAFS
config nothing is recorded.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nri_optimizer.nydus import build, daemon
from testbed import TestbedError, host, toolchain

MiB = 1 << 20
FILES = {
    "app/run.sh": b"#!/bin/sh\n",
    "app/big.bin": os.urandom(3 * MiB),
    "app/lib/libx.so": os.urandom(2 * MiB),
    "etc/app.conf": b"key = value\n",
    "app/data.txt": b"d" * 10_000,
    "app/with space & 'quote'.txt": b"odd\n",
    "app/never-read.bin": os.urandom(MiB),
}
HARD_LINK = ("app/a-link.txt", "app/data.txt")  # the link sorts first: the bootstrap names the inode by it
# Enough files that the pattern of reading them all (~90 bytes a record) outgrows a socket's default send buffer.
MANY = [f"app/many/{n:05d}" for n in range(3000)]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The nydus image's directory: image.boot and blobs/."""
    try:
        tools = toolchain.install()
    except TestbedError as error:
        pytest.fail(f"the nydus tool chain cannot be installed (make nydus): {error}")
    work = tmp_path_factory.mktemp("pattern-image")
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for directory in ("app", "app/lib", "app/many", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in FILES.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for name in MANY:
            info = tarfile.TarInfo(name)
            info.size, info.mode = 100, 0o644
            tar.addfile(info, io.BytesIO(name.encode().ljust(100, b".")))
        link = tarfile.TarInfo(HARD_LINK[0])
        link.type, link.linkname = tarfile.LNKTYPE, HARD_LINK[1]
        tar.addfile(link)
    (work / "layer.tar").write_bytes(layer.getvalue())
    build.build_image([work / "layer.tar"], work, listed=None, nydus_image=str(tools.nydus_image))
    return work


Mount = Callable[[bool], tuple[Path, Path]]


@pytest.fixture
def mount(image: Path, tmp_path: Path) -> Iterator[Mount]:
    """mount(access_pattern) -> (mountpoint, API socket) of a nydusd serving the image; stopped and unmounted after."""
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(access_pattern: bool) -> tuple[Path, Path]:
        n = len(started)
        mountpoint, sock, cache = tmp_path / f"mnt{n}", tmp_path / f"api{n}.sock", tmp_path / f"cache{n}"
        mountpoint.mkdir()
        cache.mkdir()
        config = {
            "device": {
                "backend": {"type": "localfs", "config": {"dir": str(image / "blobs")}},
                "cache": {"type": "blobcache", "config": {"work_dir": str(cache)}},
            },
            "mode": "direct",
            "digest_validate": False,
            "iostats_files": False,
            "enable_xattr": True,
            "access_pattern": access_pattern,
            "fs_prefetch": {"enable": False},
        }
        (tmp_path / f"config{n}.json").write_text(json.dumps(config))
        log = tmp_path / f"nydusd{n}.log"
        with open(log, "wb") as stderr:  # --rlimit-nofile 0: root here may not raise the limit (NYDUS.md)
            proc = subprocess.Popen(
                [
                    str(toolchain.install().nydusd),
                    "fuse",
                    "--rlimit-nofile",
                    "0",
                    "--config",
                    str(tmp_path / f"config{n}.json"),
                    "--bootstrap",
                    str(image / "image.boot"),
                    "--mountpoint",
                    str(mountpoint),
                    "--apisock",
                    str(sock),
                    "--log-level",
                    "warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        started.append((proc, mountpoint))
        deadline = time.monotonic() + 20
        while True:
            try:
                if daemon.get(sock, "/api/v1/daemon").get("state") == "RUNNING":
                    return mountpoint, sock
            except daemon.DaemonError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nydusd did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    yield start
    for proc, mountpoint in started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        host.unmount_under(mountpoint)  # nydusd unmounts on SIGTERM; this is for one that could not
    assert not host.mounts_under(tmp_path)


def import_pattern(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nri_optimizer", "import-pattern", *args], capture_output=True, text=True, timeout=60
    )


def test_the_list_is_the_files_read_in_the_order_first_read(mount: Mount, image: Path, tmp_path: Path) -> None:
    mountpoint, sock = mount(True)
    (mountpoint / "app/big.bin").stat()  # looked at, never read
    with open(mountpoint / "app/run.sh", "rb"):  # opened, never read
        pass
    expected = []
    for name in ("etc/app.conf", "app/lib/libx.so", "app/data.txt", "app/with space & 'quote'.txt"):
        with open(mountpoint / name, "rb") as f:
            f.read(100)
        expected.append(f"/{name}")
    (mountpoint / HARD_LINK[0]).read_bytes()  # the same inode again: no new entry
    expected[2] = f"/{HARD_LINK[0]}"

    result = import_pattern("--api-sock", str(sock))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected
    assert result.stderr == "nri-optimizer import-pattern: 4 files in the order nydusd first saw them read\n"

    out = tmp_path / "nydusd.list"
    result = import_pattern("--api-sock", str(sock), "--bootstrap", str(image / "image.boot"), "-o", str(out))
    assert (result.returncode, out.read_text().splitlines()) == (0, expected), result.stderr
    assert result.stdout == ""


def test_a_nydusd_that_records_no_pattern_is_a_one_line_error(mount: Mount, tmp_path: Path) -> None:
    mountpoint, sock = mount(False)
    (mountpoint / "etc/app.conf").read_bytes()
    result = import_pattern("--api-sock", str(sock))
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        f"nri-optimizer import-pattern: nydusd at {sock} records no access pattern: its RAFS config needs "
        '"access_pattern": true\n',
    )
    gone = tmp_path / "gone.sock"
    result = import_pattern("--api-sock", str(gone))
    assert result.returncode == 1
    assert result.stderr.startswith(f"nri-optimizer import-pattern: nydusd at {gone}: GET /api/v1/metrics: ")


def test_a_pattern_longer_than_the_socket_buffer_comes_whole(mount: Mount) -> None:
    """nydusd 2.2 cuts an answer at its socket's send buffer (net.core.wmem_default): the command asks again with
    one that holds it, and leaves the sysctl as it was."""
    wmem_default = Path("/proc/sys/net/core/wmem_default").read_text()
    mountpoint, sock = mount(True)
    order = random.Random(3).sample(MANY, len(MANY))
    for name in order:
        (mountpoint / name).read_bytes()
    # What nydusd does when the reader is not there to drain the socket as it writes: the answer's Content-Length
    # is the whole, the stream ends where the socket's buffer was full.
    connection = daemon.UnixHTTPConnection(sock, 10)
    try:
        connection.request("GET", "/api/v1/metrics/pattern")
        time.sleep(1)
        with pytest.raises(http.client.IncompleteRead):
            connection.getresponse().read()
    finally:
        connection.close()
    result = import_pattern("--api-sock", str(sock))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"/{name}" for name in order]
    assert Path("/proc/sys/net/core/wmem_default").read_text() == wmem_default
