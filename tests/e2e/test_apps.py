"""The realistic workloads (benchmarks/prefetch/apps), built offline from the registries and run on a real
containerd 2.1: each is hundreds of MB and thousands of files, serves its real page from a cold container, and
its start reads a small share of its files, which `nri-optimizer profile` records."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.prefetch.apps import APPS, PORT_ENV, App, build
from testbed.bed import MakeContainerd
from testbed.tracing import SERVER

READY_TIMEOUT = 120.0
POLL = 0.1  # as the seed's readiness probe: a GET every 100 ms
# Files each start must open: the programs and modules that show the app really ran, not only its shell. (The
# databases mariadbd and SQLite open for writing are not among them: the list leaves out files opened to write.)
SITE = "/usr/local/lib/python3.11/dist-packages"
MUST_READ = {
    "wordpress": (
        "/usr/sbin/apache2",
        "/usr/sbin/mariadbd",
        "/usr/share/wordpress/wp-settings.php",
        "/etc/wordpress/config-default.php",
        "/usr/share/wordpress/wp-includes/class-wpdb.php",
        "/usr/share/wordpress/wp-content/themes/twentytwentythree/theme.json",
    ),
    "python-web": (
        "/usr/bin/python3.11",
        "/app/__pycache__/app.cpython-311.pyc",
        f"{SITE}/pandas/__pycache__/__init__.cpython-311.pyc",
        f"{SITE}/scipy/stats/__pycache__/__init__.cpython-311.pyc",
        f"{SITE}/sqlalchemy/dialects/sqlite/__pycache__/pysqlite.cpython-311.pyc",
    ),
    "node-web": (
        "/usr/bin/node",
        "/app/server.js",
        "/app/node_modules/express/index.js",
        "/app/node_modules/typescript/lib/typescript.js",
        "/app/node_modules/sql.js/dist/sql-wasm.wasm",
        "/app/data/app.sqlite",
    ),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def layer_files(tarball: Path) -> dict[str, int]:
    """Path -> size of every regular file in the image's one layer."""
    with tarfile.open(tarball) as outer:
        index = json.load(outer.extractfile("index.json"))  # type: ignore[arg-type]
        digest = index["manifests"][0]["digest"].removeprefix("sha256:")
        manifest = json.load(outer.extractfile(f"blobs/sha256/{digest}"))  # type: ignore[arg-type]
        (layer,) = manifest["layers"]
        blob = outer.extractfile(f"blobs/sha256/{layer['digest'].removeprefix('sha256:')}")
        with gzip.open(blob) as plain, tarfile.open(fileobj=plain, mode="r|") as inner:  # type: ignore[arg-type]
            return {f"/{m.name}": m.size for m in inner if m.isreg()}


def wait_ready(app: App, port: int, deadline: float) -> tuple[int | str, str]:
    """(status, page) of the last GET: once it is 200 with the app's text, or at the deadline."""
    status: int | str = "no answer"
    page = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(app.url(port), timeout=10) as response:
                status, page = response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            status, page = error.code, error.read().decode(errors="replace")
        except OSError as error:
            status = str(error)
        if status == 200 and app.ready_text in page:
            break
        time.sleep(POLL)
    return status, page


@dataclass(frozen=True)
class Built:
    app: App
    tarball: Path
    files: dict[str, int]  # the image's regular files and their sizes


@pytest.fixture(scope="module", params=sorted(APPS))
def built(request: pytest.FixtureRequest) -> Built:
    """An app and its image (from the cache after the first build)."""
    tarball = build(request.param)
    return Built(APPS[request.param], tarball, layer_files(tarball))


def test_image_is_hundreds_of_mb_in_thousands_of_files(built: Built) -> None:
    app, files = built.app, built.files
    assert len(files) > 5000, len(files)
    assert sum(files.values()) > 200 << 20, sum(files.values())
    assert set(MUST_READ[app.name]) <= files.keys()


def test_cold_start_serves_the_real_page_and_reads_a_small_share(
    built: Built, make_containerd: MakeContainerd, tmp_path: Path
) -> None:
    app, files = built.app, built.files
    bed = make_containerd("2.1")
    bed.ctd.import_image(built.tarball, timeout=300)  # once for both starts: an import unpacks hundreds of MB

    # A plain start: the real page, polled every 100 ms.
    port = free_port()
    started = time.monotonic()
    run = bed.run_busybox([], image=app.image, env={PORT_ENV: str(port)}, wait=False)
    status, page = wait_ready(app, port, started + READY_TIMEOUT)
    log = "\n".join(run.log_lines()[-30:])
    assert status == 200 and app.ready_text in page, f"{app.url(port)}: {status}\n{page[-2000:]}\nlog:\n{log}"
    assert bed.cri.container_status(run.container_id).state == "running"
    bed.cri.stop_pod(run.pod.id)
    bed.cri.remove_pod(run.pod.id)

    # The same start traced by the plugin, until the page answers.
    port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nri_optimizer",
            "profile",
            app.image,
            "--runtime-endpoint",
            bed.ctd.address,
            "--nri-socket",
            str(bed.ctd.nri_socket),
            "--persist-dir",
            str(tmp_path),
            "--server-path",
            SERVER,
            "--env",
            f"{PORT_ENV}={port}",
            "--wait-on-url",
            app.url(port),
            "--deadline",
            str(READY_TIMEOUT),
        ],
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT + 60,
    )
    assert result.returncode == 0, result.stderr
    read = result.stdout.splitlines()
    in_image = [path for path in read if path in files]
    assert set(MUST_READ[app.name]) <= set(in_image), sorted(set(MUST_READ[app.name]) - set(in_image))
    # A small share of the files, as in real life (Slacker: a start reads 6.4 % of the bytes it pulls).
    assert 100 < len(in_image) < len(files) // 4, (len(in_image), len(files))
    if app.name == "python-web":
        # The .pyc made at build time are valid in the container: Python opens them, never the sources.
        sources = [path for path in read if path.startswith(SITE) and path.endswith(".py")]
        assert sources == []
