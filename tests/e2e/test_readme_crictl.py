"""The README's crictl walk-through, run as the README shows it, against a test bed containerd (2.1 and 1.7) whose
plugin is the one ``make install-optimizer`` installs (into a DESTDIR), with crictl v1.37.0 as ``make nydus``
installs it.

What the walk-through needs that a test bed does not have by default, and how it gets it without changing a command:
- ``nginx:latest`` is pulled by ``crictl run``, from docker.io: containerd is given a mirror for docker.io, the
  registry on loopback, which holds a stand-in nginx (busybox reading a config and a page, then serving nothing);
- the pod has a network namespace of its own (``linux: {}``): the test bed's containerd gets CNI plugins and a
  network that stays inside the pod (testbed.config.POD_NETWORK);
- ``sudo crictl``: we are root, and sudo would reset the environment that names the test bed's CRI socket
  (CONTAINER_RUNTIME_ENDPOINT), so ``sudo`` is a shell function that runs its command;
- the results directory is under DESTDIR, so the last line's path gets the DESTDIR prefix.
Between ``crictl run`` and ``crictl stop`` the test waits for the stand-in to say it is serving, as a person
would wait for nginx to come up before stopping it.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed import TestbedError, debs, toolchain
from testbed.containerd import Containerd
from testbed.images import FileSpec, build_image, build_pause_image
from testbed.plugin import REGISTERED, PluginLog
from testbed.registry import LocalRegistry, push_layout
from tests.e2e.test_install import CONF, PLUGIN, RESULTS, make

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Record a list: the seed's walk-through"
STAND_IN_LOG = Path("/tmp/nginx.0.log")  # where the walk-through's pod (log_directory: /tmp) logs
NGINX_FILES: dict[str, bytes | FileSpec] = {
    "/docker-entrypoint.sh": FileSpec(
        b"#!/bin/sh\ncat /etc/nginx/nginx.conf /usr/share/nginx/html/index.html "
        b">/dev/null\necho serving\nexec sleep 3600\n",
        mode=0o755,
    ),
    "/etc/nginx/nginx.conf": b"events {}\nhttp { server { listen 80; root /usr/share/nginx/html; } }\n",
    "/usr/share/nginx/html/index.html": b"<h1>Welcome to nginx!</h1>\n",
    "/usr/share/nginx/html/50x.html": b"<h1>An error occurred.</h1>\n",  # never read: not listed
}
NGINX_READS = ["/docker-entrypoint.sh", "/bin/busybox", "/etc/nginx/nginx.conf", "/usr/share/nginx/html/index.html"]


def walk_through() -> tuple[str, str]:
    """The README's walk-through, split after its `crictl run` line: (up to and with it, the rest)."""
    text = README.read_text()
    block = re.search(r"```console\n(.*?)```", text[text.index(SECTION) :], re.S)
    assert block is not None, f"no console block under {SECTION!r} in the README"
    lines = block[1].splitlines(keepends=True)
    (run,) = [n for n, line in enumerate(lines) if line.startswith("sudo crictl run ")]
    return "".join(lines[: run + 1]), "".join(lines[run + 1 :])


def mirror_for_docker_hub(hosts: Path, registry: str) -> None:
    """containerd's hosts.toml sending docker.io pulls to the plain-HTTP registry on loopback."""
    (hosts / "docker.io").mkdir(parents=True)
    (hosts / "docker.io" / "hosts.toml").write_text(
        f'server = "https://registry-1.docker.io"\n\n[host."http://{registry}"]\n  capabilities = ["pull", "resolve"]\n'
    )


def bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # We are root already, and sudo's env_reset would drop CONTAINER_RUNTIME_ENDPOINT.
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f'sudo() {{ "$@"; }}\n{script}'],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_readme_crictl_walk_through_records_the_list(
    flavour: str, runtime: Callable[[str], debs.Runtime], tmp_path: Path
) -> None:
    assert not STAND_IN_LOG.exists(), f"{STAND_IN_LOG} is in the way (another run of this test?)"
    try:
        tools = toolchain.install()
    except TestbedError as error:
        pytest.fail(f"crictl and docker-registry cannot be installed (make nydus): {error}")
    start, rest = walk_through()
    dest = tmp_path / "root"
    make("install-optimizer", dest)
    conf = dest / CONF
    log = PluginLog(tmp_path / "plugin.log")
    conf.write_text(f'{conf.read_text()}log_file = "{log.path}"\n')
    hosts = tmp_path / "hosts"
    image = build_image(
        "docker.io/library/nginx:latest", tmp_path / "nginx.tar", NGINX_FILES, entrypoint=["/docker-entrypoint.sh"]
    )
    with (
        LocalRegistry(tools.registry) as registry,
        Containerd(
            runtime(flavour),
            nri_plugin_path=(dest / PLUGIN).parent,
            nri_plugin_config_path=conf.parent,
            registry_config_dir=hosts,
            pod_network=True,
        ) as ctd,
    ):
        try:
            push_layout(image, registry.client(), "library/nginx", "latest")
            mirror_for_docker_hub(hosts, registry.address)
            ctd.import_image(build_pause_image(tmp_path / "pause.tar"))
            log.wait_for(REGISTERED)
            endpoint = f"unix://{ctd.address}"
            env = dict(
                os.environ,
                PATH=f"{tools.crictl.bin_dir}:{os.environ['PATH']}",
                CONTAINER_RUNTIME_ENDPOINT=endpoint,
                IMAGE_SERVICE_ENDPOINT=endpoint,
            )
            work = tmp_path / "work"
            work.mkdir()

            ran = bash(start, work, env)
            assert ran.returncode == 0, ran.stderr
            container_id = ran.stdout.strip()
            assert re.fullmatch(r"[0-9a-f]{64}", container_id), ran.stdout
            deadline = time.monotonic() + 30
            while "serving" not in (STAND_IN_LOG.read_text() if STAND_IN_LOG.exists() else ""):
                assert time.monotonic() < deadline, "the stand-in nginx did not come up"
                time.sleep(0.05)

            assert f"/{RESULTS}/" in rest
            stopped = bash(rest.replace(f"/{RESULTS}/", f"{dest / RESULTS}/"), work, env)
            assert stopped.returncode == 0, stopped.stderr
            # crictl stop prints the container id; cat prints the list, which is what the plugin recorded.
            assert stopped.stdout.splitlines() == [container_id, *NGINX_READS]
            assert (dest / RESULTS / "library" / "nginx:latest").read_text().splitlines() == NGINX_READS
            log.wait_for(rf"{container_id} recorded 4 files")
        finally:
            STAND_IN_LOG.unlink(missing_ok=True)
