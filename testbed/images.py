"""Deterministic OCI image-layout tarballs, for importing into containerd without a registry.

The same inputs always give the same bytes (fixed mtimes, owners, ordering, gzip header), so tests
know exactly which files an image holds and image digests are stable across runs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

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
_CHUNK = 1 << 20


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
    extra_layers: Sequence[Layer | Path] = (),
    busybox: Path | None = None,
    base: bool = True,
) -> Path:
    """Write an OCI image-layout tarball of busybox (unless not `base`) + `files` + `extra_layers` to `out`.

    `name` is a full reference (`host.tld/repo:tag`), which is what CRI will know the image by. A layer given as
    a directory holds its tree as it is on disk (owners, modes, links; mtimes 0), streamed through files beside
    `out`, so that an image of a whole root filesystem is never held in memory.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-image-") as tmp:
        work = Path(tmp)
        layers: list[bytes | Layer | Path] = [busybox_layer(busybox or debs.busybox_path())] if base else []
        layers += [layer for layer in (files, *extra_layers) if layer]
        blobs: dict[str, bytes | Path] = {}

        def add_blob(data: bytes, media_type: str) -> dict[str, object]:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            blobs[digest] = data
            return {"mediaType": media_type, "digest": digest, "size": len(data)}

        layer_descs, diff_ids = [], []
        for number, layer in enumerate(layers):
            blob = work / f"layer-{number}"
            diff_id, digest, size = _write_layer(layer, blob)
            blobs[digest] = blob
            diff_ids.append(diff_id)
            layer_descs.append({"mediaType": _OCI_LAYER, "digest": digest, "size": size})
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
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
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
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [manifest_desc],
        }
        entries: dict[str, bytes | FileSpec | Path] = {
            "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
            "index.json": _json(index),
            **{f"blobs/sha256/{d.removeprefix('sha256:')}": data for d, data in blobs.items()},
        }
        with open(out, "wb") as f:
            _write_tar(entries, f)
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
    buf = io.BytesIO()
    _write_tar(entries, buf)
    return buf.getvalue()


def _write_tar(entries: Mapping[str, bytes | FileSpec | Path], fileobj: IO[bytes]) -> None:
    """A tar with sorted entries, every parent directory included before its children, owned by root,
    mtime 0. Leading slashes are dropped: layer paths are relative to the rootfs. A Path value is a regular
    file on disk whose bytes are streamed into the entry."""
    specs = {
        str(PurePosixPath(p.lstrip("/"))): s if isinstance(s, FileSpec | Path) else FileSpec(s)
        for p, s in entries.items()
    }
    for path in list(specs):  # every parent directory, made explicit
        for parent in PurePosixPath(path).parents:
            if str(parent) != ".":
                specs.setdefault(str(parent), FileSpec(mode=0o755, directory=True))
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(specs):
            spec = specs[path]
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = _MTIME, 0, 0, "root", "root"
            info.mode = 0o644 if isinstance(spec, Path) else spec.mode
            if isinstance(spec, Path):
                info.size = spec.stat().st_size
                with open(spec, "rb") as data:
                    tar.addfile(info, data)
            elif spec.directory:
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
                info.pax_headers = {
                    "GNU.sparse.major": "1",
                    "GNU.sparse.minor": "0",
                    "GNU.sparse.name": path,
                    "GNU.sparse.realsize": str(spec.sparse_size),
                }
                info.size = len(sparse_map) + len(spec.data)
                tar.addfile(info, io.BytesIO(sparse_map + spec.data))
            else:
                info.size = len(spec.data)
                tar.addfile(info, io.BytesIO(spec.data))


def _write_tree(root: Path, fileobj: IO[bytes]) -> None:
    """A tar of the tree under `root` as it is on disk (owners, modes, symbolic and hard links), in sorted order
    with mtime 0 and no owner names, so that the same tree always gives the same bytes. Sockets and devices are
    left out: no package ships one, and a container gets its /dev from the runtime."""
    paths = sorted(str(Path(d, n).relative_to(root)) for d, dirs, names in os.walk(root) for n in dirs + names)
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            info = tar.gettarinfo(root / path, arcname=path)
            if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
                continue
            info.mtime, info.uname, info.gname = _MTIME, "", ""
            if info.isreg():
                with open(root / path, "rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)


def _write_layer(layer: bytes | Layer | Path, blob: Path) -> tuple[str, str, int]:
    """Write `layer` (a tar, a mapping of files or a directory) gzipped to `blob`: (diff_id, digest, size)."""
    plain = blob.with_suffix(".tar")
    with open(plain, "wb") as f:
        if isinstance(layer, bytes):
            f.write(layer)
        elif isinstance(layer, Path):
            _write_tree(layer, f)
        else:
            f.write(_tar(layer))
    diff_id, digest = hashlib.sha256(), hashlib.sha256()
    with open(plain, "rb") as src, open(blob, "wb") as dst:
        hashed = _Hashed(dst, digest.update)
        # mtime=0 and no file name keep the gzip header, and so the layer digest, reproducible.
        with gzip.GzipFile(fileobj=hashed, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
            while chunk := src.read(_CHUNK):
                diff_id.update(chunk)
                gz.write(chunk)
    plain.unlink()
    return "sha256:" + diff_id.hexdigest(), "sha256:" + digest.hexdigest(), blob.stat().st_size


class _Hashed:
    """A write-only file that hashes what goes through it."""

    def __init__(self, out: IO[bytes], update: Callable[[bytes], object]) -> None:
        self._out, self._update = out, update

    def write(self, data: bytes) -> int:
        self._update(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
