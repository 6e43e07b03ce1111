"""A registry on loopback (Debian's docker-registry, started and removed by us), containerd's hosts.toml for it, and
pushing an image-layout tarball into it (through nri_optimizer.oci.registry, the client ``convert`` uses).

docker-registry 2.8 has no referrers API and serves Range GETs, which is all nydusd needs of a registry.
ReferrersRegistry is one that has the OCI 1.1 referrers API (testbed.toolchain.referrers_registry builds it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from nri_optimizer.oci.layout import push as layout_push
from nri_optimizer.oci.registry import Registry
from testbed import TestbedError, debs, host

REGISTRY_SUITE = "bookworm"
_LISTENING = re.compile(r'msg="listening on 127\.0\.0\.1:([0-9]+)"')
_REFERRERS_LISTENING = re.compile(r"^listening on 127\.0\.0\.1:([0-9]+)$", re.M)


def registry_binary(*, cache: Path | None = None) -> Path:
    """docker-registry from Debian bookworm, fetched into the testbed cache on first use."""
    return debs.package_file("docker-registry", REGISTRY_SUITE, "usr/bin/docker-registry", cache=cache)


class LocalRegistry:
    """docker-registry serving plain HTTP on 127.0.0.1 (a port the kernel picks), storing under its own temp dir.

    `close()` stops the process we started (by its pid) and removes the dir with everything pushed.
    """

    name = "docker-registry"
    listening = _LISTENING  # the log line that says where it listens

    def __init__(self, binary: Path, *, htpasswd: str | None = None) -> None:
        """`htpasswd`: the text of a password file (user:bcrypt hash lines): the registry asks for Basic credentials."""
        self.dir = Path(tempfile.mkdtemp(prefix="nriopt-registry-"))
        self._binary = binary
        self._htpasswd = htpasswd
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def command(self) -> list[str]:
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")}, "delete": {"enabled": True}},
            "http": {"addr": "127.0.0.1:0", "secret": "nri-optimizer-testbed"},
        }
        if self._htpasswd is not None:
            (self.dir / "htpasswd").write_text(self._htpasswd)
            config["auth"] = {"htpasswd": {"realm": "testbed", "path": str(self.dir / "htpasswd")}}
        # YAML is a superset of JSON: no YAML writer needed.
        (self.dir / "config.yml").write_text(json.dumps(config))
        return [str(self._binary), "serve", str(self.dir / "config.yml")]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def client(self, docker_config: Path | None = None) -> Registry:
        return Registry(self.address, insecure=True, docker_config=docker_config)

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (for a test to corrupt)."""
        hex_digest = digest.removeprefix("sha256:")
        return self.dir / "data/docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"

    def start(self, timeout: float = 10.0) -> None:
        log_path = self.dir / "registry.log"
        with open(log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.port:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                self.close()
                raise TestbedError(f"{self.name} did not start listening within {timeout:g} s:\n{tail}")
            if match := self.listening.search(log_path.read_text(errors="replace")):
                self.port = int(match[1])
            else:
                time.sleep(0.02)
        self.client().base_url  # noqa: B018 - the API answers

    def close(self) -> None:
        proc, self._proc = self._proc, None
        host.terminate(proc, 10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalRegistry:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ReferrersRegistry(LocalRegistry):
    """A registry with the OCI 1.1 referrers API (go-containerregistry's, testbed/go/referrers-registry): plain HTTP on
    127.0.0.1, manifests in its memory, blobs under its temp dir; stopped and removed as LocalRegistry."""

    name = "referrers-registry"
    listening = _REFERRERS_LISTENING

    def command(self) -> list[str]:
        return [str(self._binary), "-blobs", str(self.dir / "blobs")]

    def blob_file(self, digest: str) -> Path:
        return self.dir / "blobs/sha256" / digest.removeprefix("sha256:")


def write_hosts(config_dir: Path, host: str, *, plain_http: bool) -> None:
    """containerd's per-registry config (`config_path` layout): a plain-HTTP registry, or an insecure HTTPS one
    (certificate not verified, then plain HTTP), as nerdctl's --insecure-registry."""
    schemes = ["http"] if plain_http else ["https", "http"]
    lines = [f'server = "{schemes[0]}://{host}"']
    for scheme in schemes:
        lines += ["", f'[host."{scheme}://{host}"]', '  capabilities = ["pull", "resolve"]', "  skip_verify = true"]
    (config_dir / host).mkdir(parents=True, exist_ok=True)
    (config_dir / host / "hosts.toml").write_text("\n".join(lines) + "\n")


def push_layout(tarball: Path, registry: Registry, repository: str, tag: str) -> int:
    """Push the (single) image of an OCI image-layout tarball as repository:tag; return the bytes it takes."""
    with tempfile.TemporaryDirectory(prefix="nriopt-push-") as layout:
        with tarfile.open(tarball) as tar:
            tar.extractall(layout, filter="data")
        return layout_push(Path(layout), registry, repository, tag)[1]
