"""A registry on loopback (Debian's docker-registry, started and removed by us) and a small client of the OCI
distribution API: push an image-layout tarball, and tell how many bytes a pull of a tag fetches.

Pushing is a few HTTP requests (blobs uploaded monolithically: POST, then PUT with the digest; the manifest PUT
by tag), so it needs no skopeo, whose Debian package would bring libgpgme and containers-common along.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from nri_optimizer.errors import OptimizerError
from testbed import TestbedError, debs, host

REGISTRY_SUITE = "bookworm"
_LISTENING = re.compile(r'msg="listening on 127\.0\.0\.1:([0-9]+)"')
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
# Loopback and our own registry only: an http_proxy from the environment must not be asked.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RegistryError(OptimizerError):
    pass


def registry_binary(*, cache: Path | None = None) -> Path:
    """docker-registry from Debian bookworm, fetched into the testbed cache on first use."""
    cache = cache or debs.cache_dir()
    # The testbed's private apt (its own sources, lists and cache), under its lock.
    with debs._locked(cache):
        archive = debs._Archive(cache)
        version = archive.pick("docker-registry", REGISTRY_SUITE)
        binary = archive.unpacked("docker-registry", version, REGISTRY_SUITE) / "usr/bin/docker-registry"
    if not binary.is_file():
        raise TestbedError(f"docker-registry {version} has no /usr/bin/docker-registry; the package layout changed")
    return binary


class LocalRegistry:
    """docker-registry serving plain HTTP on 127.0.0.1 (a port the kernel picks), storing under its own temp dir.

    `close()` stops the process we started (by its pid) and removes the dir with everything pushed.
    """

    def __init__(self, binary: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nriopt-registry-"))
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")}, "delete": {"enabled": True}},
            "http": {"addr": "127.0.0.1:0", "secret": "nri-optimizer-bench"},
        }
        # YAML is a superset of JSON: no YAML writer needed.
        (self.dir / "config.yml").write_text(json.dumps(config))
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = 10.0) -> None:
        log_path = self.dir / "registry.log"
        with open(log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [str(self._binary), "serve", str(self.dir / "config.yml")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.port:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                self.close()
                raise RegistryError(f"docker-registry did not start listening within {timeout:g} s:\n{tail}")
            if match := _LISTENING.search(log_path.read_text(errors="replace")):
                self.port = int(match[1])
            else:
                time.sleep(0.02)
        _request("GET", f"{self.url}/v2/").close()  # the API answers

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


def write_hosts(config_dir: Path, host: str, *, plain_http: bool) -> None:
    """containerd's per-registry config (`config_path` layout): a plain-HTTP registry, or an insecure HTTPS one
    (certificate not verified, then plain HTTP), as nerdctl's --insecure-registry."""
    schemes = ["http"] if plain_http else ["https", "http"]
    lines = [f'server = "{schemes[0]}://{host}"']
    for scheme in schemes:
        lines += ["", f'[host."{scheme}://{host}"]', '  capabilities = ["pull", "resolve"]', "  skip_verify = true"]
    (config_dir / host).mkdir(parents=True, exist_ok=True)
    (config_dir / host / "hosts.toml").write_text("\n".join(lines) + "\n")


def push_layout(tarball: Path, base_url: str, repository: str, tag: str) -> int:
    """Push the (single) image of an OCI image-layout tarball as repository:tag; return the bytes it takes."""
    with tarfile.open(tarball) as tar:
        index = json.loads(_member(tar, "index.json"))
        if len(index.get("manifests", [])) != 1:
            raise RegistryError(f"{tarball}: expected one image in index.json, found {len(index.get('manifests', []))}")
        descriptor = index["manifests"][0]
        manifest = _member(tar, _blob_name(descriptor["digest"]))
        parsed = json.loads(manifest)
        for blob in (parsed["config"], *parsed["layers"]):
            _push_blob(base_url, repository, blob["digest"], _member(tar, _blob_name(blob["digest"])))
    _request("PUT", f"{base_url}/v2/{repository}/manifests/{tag}", manifest,
             {"Content-Type": descriptor["mediaType"]})
    return len(manifest) + sum(int(blob["size"]) for blob in (parsed["config"], *parsed["layers"]))


NYDUS_BLOB = "containerd.io/snapshot/nydus-blob"  # a nydus data layer: nydusd reads it, the pull does not


def pull_size(base_url: str, repository: str, tag: str, *, nydus: bool = False) -> int:
    """Bytes a cold pull of repository:tag fetches: the manifest (and index), the config and every layer; with
    `nydus`, the layers nydus-snapshotter lets containerd skip (annotated as nydus blobs) are not counted."""
    body, media_type = _get_manifest(base_url, repository, tag)
    total = len(body)
    manifest = json.loads(body)
    if media_type in MANIFEST_TYPES[:2]:
        arch = _ARCH.get(platform.machine(), platform.machine())
        chosen = [m for m in manifest["manifests"] if m.get("platform", {}).get("architecture") == arch
                  and m.get("platform", {}).get("os") == "linux"]
        if not chosen:
            raise RegistryError(f"{repository}:{tag} has no linux/{arch} image")
        body, _ = _get_manifest(base_url, repository, chosen[0]["digest"])
        total += len(body)
        manifest = json.loads(body)
    layers = [layer for layer in manifest["layers"]
              if not (nydus and layer.get("annotations", {}).get(NYDUS_BLOB) == "true")]
    return total + int(manifest["config"]["size"]) + sum(int(layer["size"]) for layer in layers)


def _get_manifest(base_url: str, repository: str, reference: str) -> tuple[bytes, str]:
    with _request("GET", f"{base_url}/v2/{repository}/manifests/{reference}",
                  headers={"Accept": ", ".join(MANIFEST_TYPES)}) as response:
        return response.read(), response.headers.get("Content-Type", "").split(";")[0]


def _push_blob(base_url: str, repository: str, digest: str, data: bytes) -> None:
    if hashlib.sha256(data).hexdigest() != digest.removeprefix("sha256:"):
        raise RegistryError(f"blob {digest} does not match its content")
    try:
        _request("HEAD", f"{base_url}/v2/{repository}/blobs/{digest}").close()
        return  # the registry has it
    except RegistryError:
        pass
    with _request("POST", f"{base_url}/v2/{repository}/blobs/uploads/") as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = base_url + location
    separator = "&" if "?" in location else "?"
    _request("PUT", f"{location}{separator}digest={digest}", data,
             {"Content-Type": "application/octet-stream"}).close()


def _request(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        return _opener.open(request, timeout=60)
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        raise RegistryError(f"{method} {url}: HTTP {exc.code} {detail}".strip()) from None
    except (urllib.error.URLError, OSError) as exc:
        raise RegistryError(f"{method} {url}: {exc}") from None


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    member: IO[bytes] | None = tar.extractfile(name)
    if member is None:
        raise RegistryError(f"{name} is not a regular file in the image layout")
    return member.read()


def _blob_name(digest: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    return f"blobs/{algorithm}/{hex_digest}"
