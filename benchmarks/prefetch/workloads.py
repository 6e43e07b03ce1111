"""Built-in workloads, built offline as OCI image-layout tarballs (busybox-static + a few MiB of app data).

Each reads a little of its data at start (as a real server loads its settings and first assets) and leaves most
of it alone, like the images in Slacker's study. `web` serves HTTP (ready: a URL answers); `db` prints a line
(ready: the log line). The data is incompressible and deterministic, so an image's bytes and digest are the same
on every machine and a pull moves them all.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from testbed import debs
from testbed.images import FileSpec, Layer, build_image

BLOB_SIZE = 512 * 1024
BLOBS = 8

_WEB_START = b"""#!/bin/sh
. /app/settings.sh
cat /app/templates/index.html /www/assets/app.js > /dev/null
exec httpd -f -p "127.0.0.1:${PORT:-18080}" -h /www
"""
_DB_START = b"""#!/bin/sh
. /app/db.conf
cat /app/data/schema.sql /app/data/table-0.bin > /dev/null
echo "${DB_NAME:-bench} ready to accept connections"
trap 'exit 0' TERM INT
sleep 2147483647 & wait
"""


def _data(seed: str, size: int = BLOB_SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def _web() -> Layer:
    files: dict[str, bytes | FileSpec] = {
        "/app/start.sh": FileSpec(_WEB_START, 0o755),
        "/app/settings.sh": b"SITE=bench\n",
        "/app/templates/index.html": b"<h1>bench</h1>\n",
        "/www/index.html": b"<h1>bench</h1>\n",
        "/www/assets/app.js": _data("web-app.js"),
    }
    files |= {f"/www/assets/bundle-{i}.bin": _data(f"web-bundle-{i}") for i in range(BLOBS)}
    return files


def _db() -> Layer:
    files: dict[str, bytes | FileSpec] = {
        "/app/start.sh": FileSpec(_DB_START, 0o755),
        "/app/db.conf": b"PAGES=64\n",
        "/app/data/schema.sql": b"create table t (id int);\n",
    }
    files |= {f"/app/data/table-{i}.bin": _data(f"db-table-{i}") for i in range(BLOBS)}
    return files


WORKLOADS = {"web": _web, "db": _db}


def build(workload: str, name: str, out: Path) -> Path:
    """Write workload `workload` as an image-layout tarball named `name` to `out`."""
    return build_image(name, out, WORKLOADS[workload](), entrypoint=["/app/start.sh"], busybox=_own_busybox(out.parent))


def _own_busybox(work: Path) -> Path:
    """busybox with a trailer (the ELF loader ignores it): the base layer then differs from the sandbox image's,
    which stays in containerd, so a pull after cleanup has to fetch every layer of the image."""
    path = work / "busybox-bench" / "busybox"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(debs.busybox_path(), path)
        with open(path, "ab") as f:
            f.write(b"\nnri-optimizer bench-image base layer\n")
        path.chmod(0o755)
    return path
