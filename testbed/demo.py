"""`make demo`: a private containerd, a demo image whose reads are known, `nri-optimizer profile` on it.

Nothing needs to be installed: containerd and runc come from the testbed cache, the image is built here,
and everything is torn down at the end.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from testbed import debs
from testbed.containerd import Containerd
from testbed.images import FileSpec, build_image, build_pause_image

DEMO_IMAGE = "nri-optimizer.test/demo-app:1"
START = b"""#!/bin/sh
. /app/lib/settings.sh
cat /etc/demo-app.conf /app/templates/index.html > /dev/null
for part in header body footer; do cat /app/static/$part.css > /dev/null; done
echo "demo-app ready on port $PORT"
exec sleep 3600
"""
DEMO_FILES: dict[str, bytes | FileSpec] = {
    "/app/start.sh": FileSpec(START, mode=0o755),
    "/app/lib/settings.sh": b"PORT=8080\n",
    "/etc/demo-app.conf": b"[server]\nport = 8080\n",
    "/app/templates/index.html": b"<h1>demo</h1>\n",
    "/app/static/header.css": b"h1 {}\n",
    "/app/static/body.css": b"p {}\n",
    "/app/static/footer.css": b"footer {}\n",
    "/app/static/unused.css": b"never read\n",
}
# What the profile must print: the entrypoint script, its interpreter, then the files in read order.
EXPECTED = [
    "/app/start.sh",
    "/bin/busybox",
    "/app/lib/settings.sh",
    "/etc/demo-app.conf",
    "/app/templates/index.html",
    "/app/static/header.css",
    "/app/static/body.css",
    "/app/static/footer.css",
]


def run_demo() -> int:
    from nri_optimizer.cli import main as cli

    print("== fetching containerd 2.1 and runc into the cache (once) ==", file=sys.stderr)
    runtime = debs.fetch_runtime("2.1")
    work = Path(tempfile.mkdtemp(prefix="nri-optimizer-demo-"))
    try:
        image = build_image(DEMO_IMAGE, work / "demo.tar", DEMO_FILES, entrypoint=["/app/start.sh"])
        with Containerd(runtime) as ctd:
            ctd.start()
            print(
                f"== containerd {runtime.deb_version} running privately in {ctd.dir} (pid {ctd.pid}) ==",
                file=sys.stderr,
            )
            ctd.import_image(build_pause_image(work / "pause.tar"))
            ctd.import_image(image)
            server = shutil.which("optimizer-server") or str(Path(sys.executable).with_name("optimizer-server"))
            print(f"== nri-optimizer profile {DEMO_IMAGE} --wait-on-line ready ==", file=sys.stderr)
            status = cli(
                [
                    "profile",
                    DEMO_IMAGE,
                    "--wait-on-line",
                    "ready",
                    "--runtime-endpoint",
                    ctd.address,
                    "--nri-socket",
                    str(ctd.nri_socket),
                    "--persist-dir",
                    str(work / "results"),
                    "--server-path",
                    server,
                    "--cgroup-parent",
                    ctd.cgroup_parent,
                    "--config",
                    "/dev/null",
                ]
            )
        print("== torn down: containerd, its pods, mounts and cgroups ==", file=sys.stderr)
        return status
    finally:
        shutil.rmtree(work, ignore_errors=True)
