"""Deterministic OCI image-layout tarballs, for importing into containerd without a registry.

The same inputs always give the same bytes (fixed mtimes, owners, ordering, gzip header), so tests
know exactly which files an image holds and image digests are stable across runs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from testbed import debs

BUSYBOX_IMAGE = "nri-optimizer.test/busybox:1"
PAUSE_IMAGE = "nri-optimizer.test/pause:1"
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
# sh as PID 1 traps TERM (PID 1 ignores untrapped signals) while one long sleep keeps it parked;
# `wait` returns as soon as a trapped signal arrives.
PAUSE_ENTRYPOINT = ("/bin/sh", "-c", "trap 'exit 0' TERM INT; sleep 2147483647 & wait")

# A file only the test image has, so a test can tell its container really runs that image.
TESTBED_ID_FILE = "/etc/nri-optimizer-testbed"
TESTBED_ID = b"nri-optimizer testbed image\n"

_MTIME = 0
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True)
class FileSpec:
    """One entry of a layer: a regular file (data, mode), a symbolic link or a directory."""

    data: bytes = b""
    mode: int = 0o644
    symlink: str | None = None
    directory: bool = False
    sparse_size: int | None = None  # a sparse file this long: `data` at offset 0, a hole after it


Layer = Mapping[str, bytes | FileSpec]  # absolute path in the image -> content


def build_image(
    name: str,
    out: Path,
    files: Layer | None = None,
    *,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Sequence[str] = DEFAULT_ENV,
    working_dir: str = "/",
    extra_layers: Sequence[Layer] = (),
    busybox: Path | None = None,
) -> Path:
    """Write an OCI image-layout tarball of busybox + `files` + `extra_layers` to `out`.

    `name` is a full reference (`host.tld/repo:tag`), which is what CRI will know the image by.
    """
    layers = [busybox_layer(busybox or debs.busybox_path())]
    layers += [_tar(layer) for layer in (files, *extra_layers) if layer]
    blobs: dict[str, bytes] = {}

    def add_blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layer_descs = [add_blob(_gzip(tar), _OCI_LAYER) for tar in layers]
    arch = _ARCH.get(platform.machine(), platform.machine())
    config: dict[str, object] = {"Env": list(env), "WorkingDir": working_dir}
    if entrypoint is not None:
        config["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        config["Cmd"] = list(cmd)
    image_config = {
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": _OCI_MANIFEST,
        "config": add_blob(_json(image_config), _OCI_CONFIG),
        "layers": layer_descs,
    }
    manifest_desc = add_blob(_json(manifest), _OCI_MANIFEST)
    manifest_desc["platform"] = {"architecture": arch, "os": "linux"}
    manifest_desc["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rpartition(":")[2],
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]}
    entries: dict[str, bytes | FileSpec] = {
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "index.json": _json(index),
        **{f"blobs/sha256/{d.removeprefix('sha256:')}": data for d, data in blobs.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_tar(entries))
    return out


def build_busybox_image(out: Path, name: str = BUSYBOX_IMAGE, *, busybox: Path | None = None) -> Path:
    """The general test image: the busybox layer plus TESTBED_ID_FILE; runs `sh` unless told otherwise."""
    return build_image(name, out, {TESTBED_ID_FILE: TESTBED_ID}, cmd=["sh"], busybox=busybox)


def build_pause_image(out: Path, name: str = PAUSE_IMAGE, *, busybox: Path | None = None) -> Path:
    """The sandbox ("pause") image: the busybox layer parked in a sleep, exiting 0 on TERM."""
    return build_image(name, out, entrypoint=PAUSE_ENTRYPOINT, busybox=busybox)


def image_names(tarball: Path) -> list[str]:
    """The `io.containerd.image.name` annotations of an image-layout tarball's index."""
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ValueError(f"{tarball}: index.json is not a regular file")
        index = json.load(member)
    return [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]


def busybox_layer(busybox: Path) -> bytes:
    """Uncompressed tar of a minimal rootfs: /bin/busybox, one absolute symlink per applet, /etc basics."""
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    files: dict[str, bytes | FileSpec] = {"/bin/busybox": FileSpec(busybox.read_bytes(), 0o755)}
    for applet in applets:
        if applet != "busybox":
            files[f"/bin/{applet}"] = FileSpec(symlink="/bin/busybox")
    files["/etc/passwd"] = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    files["/etc/group"] = b"root:x:0:\nnogroup:x:65534:\n"
    # Mount points runc would otherwise create on the fly, so the rootfs is fully described by the layer.
    for directory in ("/proc", "/sys", "/dev", "/root"):
        files[directory] = FileSpec(mode=0o755, directory=True)
    files["/tmp"] = FileSpec(mode=0o1777, directory=True)
    return _tar(files)


def _tar(entries: Mapping[str, bytes | FileSpec]) -> bytes:
    """A tar with sorted entries, every parent directory included before its children, owned by root,
    mtime 0. Leading slashes are dropped: layer paths are relative to the rootfs."""
    specs = {
        str(PurePosixPath(p.lstrip("/"))): s if isinstance(s, FileSpec) else FileSpec(s) for p, s in entries.items()
    }
    for path in list(specs):
        for parent in PurePosixPath(path).parents:
            if str(parent) != ".":
                specs.setdefault(str(parent), FileSpec(mode=0o755, directory=True))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(specs):
            spec = specs[path]
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = _MTIME, 0, 0, "root", "root"
            info.mode = spec.mode
            if spec.directory:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif spec.symlink is not None:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, spec.symlink, 0o777
                tar.addfile(info)
            elif spec.sparse_size is not None:
                # PAX sparse format 1.0 (GNU tar's): the entry holds a map of its data fragments, then the
                # fragments; the holes take no room in the layer however long the file is.
                sparse_map = f"1\n0\n{len(spec.data)}\n".encode()
                sparse_map += b"\0" * (-len(sparse_map) % tarfile.BLOCKSIZE)
                info.name = f"{PurePosixPath(path).parent}/GNUSparseFile.0/{PurePosixPath(path).name}"
                info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": path,
                                    "GNU.sparse.realsize": str(spec.sparse_size)}
                info.size = len(sparse_map) + len(spec.data)
                tar.addfile(info, io.BytesIO(sparse_map + spec.data))
            else:
                info.size = len(spec.data)
                tar.addfile(info, io.BytesIO(spec.data))
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    # mtime=0 and no file name keep the gzip header, and so the layer digest, reproducible.
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
