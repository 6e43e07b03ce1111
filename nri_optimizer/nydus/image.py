"""OCI image layouts in and out: the source image's layers as tars, and the nydus image nydus-snapshotter 0.13.4
runs, written as nydusify (and nydus-snapshotter's own converter, pkg/converter) write it.

The nydus image's manifest (an OCI image manifest; no index, no ``os.features``):

- ``layers``: one per data blob, lowest first, then the bootstrap layer::

      {"mediaType": "application/vnd.oci.image.layer.nydus.blob.v1", "digest": <the blob's sha256>, "size": ...,
       "annotations": {"containerd.io/snapshot/nydus-blob": "true"}}
      {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ..., "size": ...,
       "annotations": {"containerd.io/snapshot/nydus-bootstrap": "true",
                       "containerd.io/snapshot/nydus-fs-version": "6"}}

  The bootstrap layer is a tar.gz of a directory ``image`` and the image's bootstrap as ``image/image.boot``
  (where the snapshotter looks for it once containerd has unpacked the layer). containerd skips the blob layers
  (the snapshotter tells it so by their annotation): nydusd reads them from the registry on demand.
- ``config``: the source image's config (entrypoint, env, ...) with ``rootfs.diff_ids`` the blob digests (a blob
  is not compressed: its digest is its diff id), then the bootstrap tar's sha256, and one history entry for the
  bootstrap layer. A source layer without file data has no blob; its history entry is marked ``empty_layer``
  so that history still matches the layers.

An OCI image layout (image-spec image-layout.md) is a directory with ``oci-layout``, ``index.json`` and
``blobs/sha256/<hex>``. The source must hold one image manifest (or name it by its ref.name annotation); its
layers may be tar, tar+gzip (OCI or Docker media types). Reading and writing registries is not done here.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nri_optimizer.errors import ImageError
from nri_optimizer.nydus.build import ImageBuild, build_image
from nri_optimizer.oci.registry import IMAGE_MANIFEST_TYPES, INDEX_TYPES, OCI_INDEX, OCI_MANIFEST

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
# nydus-snapshotter 0.13.4 pkg/converter/constant.go
BLOB_ANNOTATION = "containerd.io/snapshot/nydus-blob"
BOOTSTRAP_ANNOTATION = "containerd.io/snapshot/nydus-bootstrap"
FS_VERSION_ANNOTATION = "containerd.io/snapshot/nydus-fs-version"
BOOTSTRAP_IN_LAYER = "image/image.boot"
REF_NAME = "org.opencontainers.image.ref.name"
FS_VERSION = "6"
BOOTSTRAP_HISTORY = {"created_by": "nri-optimizer convert", "comment": "Nydus Bootstrap Layer"}

_COPY_PIECE = 1 << 20  # bytes per read: layers can be GBs
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


class _Reader(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class _Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...


@dataclass(frozen=True)
class SourceImage:
    layout: Path
    manifest: dict[str, Any]
    config: dict[str, Any]

    def blob(self, digest: str) -> Path:
        return blob_path(self.layout, digest)


@dataclass(frozen=True)
class Converted:
    # What was built: the prefetch table, what was left out of it, each layer's order report, the blobs (now in the
    # output layout). Its bootstrap paths were in the scratch directory and are gone with it.
    build: ImageBuild
    manifest: dict[str, Any]  # the descriptor of the nydus image's manifest, as in the output's index.json


def blob_path(layout: Path, digest: str) -> Path:
    """Where a blob is; a digest that is not sha256:<64 hex> is refused (a manifest names paths with it)."""
    if not _SHA256.fullmatch(digest):
        raise ImageError(f"{layout}: unsupported digest {digest!r} (sha256 only)")
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def read_layout(layout: Path, ref_name: str | None = None) -> SourceImage:
    """The image in an OCI image layout: its only manifest, or the one annotated with `ref_name`. An index
    (a multi-platform image) must be resolved to one platform's manifest before."""
    index = _read_json(layout / "index.json")
    manifests = index.get("manifests", [])
    if ref_name is not None:
        manifests = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) == ref_name]
    if len(manifests) != 1:
        which = f" named {ref_name}" if ref_name else ""
        raise ImageError(f"{layout}/index.json: expected one image manifest{which}, found {len(manifests)}")
    descriptor = manifests[0]
    if descriptor.get("mediaType") in INDEX_TYPES:
        raise ImageError(f"{layout}: the image is an index (several platforms); pull one platform's manifest")
    manifest = _read_json(blob_path(layout, descriptor["digest"]))
    if manifest.get("mediaType", descriptor.get("mediaType")) not in IMAGE_MANIFEST_TYPES:
        raise ImageError(f"{layout}: {descriptor['digest']} is not an image manifest ({manifest.get('mediaType')})")
    config = _read_json(blob_path(layout, manifest["config"]["digest"]))
    return SourceImage(layout, manifest, config)


def uncompressed_layers(source: SourceImage, work: Path) -> list[Path]:
    """Each layer as an uncompressed tar in `work`, lowest first, checked against the config's diff_ids."""
    diff_ids = source.config.get("rootfs", {}).get("diff_ids", [])
    layers = source.manifest["layers"]
    if len(diff_ids) != len(layers):
        raise ImageError(f"{source.layout}: the config has {len(diff_ids)} diff_ids for {len(layers)} layers")
    tars = []
    for number, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        out = work / f"layer-{number}.tar"
        with _uncompressed(source.blob(layer["digest"]), layer["mediaType"]) as data, open(out, "wb") as tar:
            digest = _copy_hashing(data, tar)
        if f"sha256:{digest}" != diff_id:
            raise ImageError(
                f"{source.layout}: layer {layer['digest']} uncompresses to sha256:{digest}, the config says {diff_id}"
            )
        tars.append(out)
    return tars


def convert_layout(
    source_layout: Path,
    out_layout: Path,
    *,
    listed: Sequence[str] | None,
    nydus_image: str,
    reorder: bool = True,
    on_demand: Collection[str] = (),
    ref_name: str | None = None,
) -> Converted:
    """The nydus image of the image in `source_layout`, written as an OCI image layout to `out_layout` (under the
    same ref.name, if it has one). `listed`, `reorder` and `on_demand` as nri_optimizer.nydus.build.build_image."""
    source = read_layout(source_layout, ref_name)
    blob_dir = out_layout / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nriopt-convert-", dir=out_layout) as scratch:
        work = Path(scratch)
        build = build_image(
            uncompressed_layers(source, work),
            work,
            listed=listed,
            nydus_image=nydus_image,
            reorder=reorder,
            on_demand=on_demand,
            blob_dir=blob_dir,
        )
        bootstrap, bootstrap_diff_id = bootstrap_layer(build.bootstrap, blob_dir)
    config = nydus_config(source.config, build, bootstrap_diff_id)
    config_descriptor = _write_blob(out_layout, _json_bytes(config), OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor,
        "layers": [
            *(
                {
                    "mediaType": NYDUS_BLOB,
                    "digest": blob.digest,
                    "size": blob.size,
                    "annotations": {BLOB_ANNOTATION: "true"},
                }
                for blob in build.blobs
            ),
            bootstrap,
        ],
    }
    descriptor = _write_blob(out_layout, _json_bytes(manifest), OCI_MANIFEST)
    name = ref_name or _ref_name(source_layout)
    if name:
        descriptor["annotations"] = {REF_NAME: name}
    (out_layout / "oci-layout").write_bytes(_json_bytes({"imageLayoutVersion": "1.0.0"}))
    (out_layout / "index.json").write_bytes(
        _json_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]})
    )
    return Converted(build, descriptor)


def bootstrap_layer(bootstrap: Path, blob_dir: Path) -> tuple[dict[str, Any], str]:
    """The bootstrap layer (a tar.gz holding ``image/image.boot``) into `blob_dir` under its digest: its
    descriptor, and the tar's own digest (the config's diff id for it)."""
    tar_path, gz_path = blob_dir / ".bootstrap.tar", blob_dir / ".bootstrap.tar.gz"
    try:
        with open(tar_path, "w+b") as tar_file:
            # Fixed owners, modes and times: the same bootstrap always gives the same layer.
            with tarfile.open(fileobj=tar_file, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                directory = tarfile.TarInfo("image")
                directory.type, directory.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(directory)
                boot = tarfile.TarInfo(BOOTSTRAP_IN_LAYER)
                boot.mode, boot.size = 0o444, bootstrap.stat().st_size
                with open(bootstrap, "rb") as data:
                    tar.addfile(boot, data)
            tar_file.seek(0)
            with open(gz_path, "wb") as gz, gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0) as packed:
                diff_id = _copy_hashing(tar_file, packed)
        with open(gz_path, "rb") as layer:
            digest = _copy_hashing(layer, None)
        size = gz_path.stat().st_size
        gz_path.rename(blob_dir / digest)
    finally:
        tar_path.unlink(missing_ok=True)
        gz_path.unlink(missing_ok=True)
    descriptor = {
        "mediaType": OCI_LAYER_GZIP,
        "digest": f"sha256:{digest}",
        "size": size,
        "annotations": {BOOTSTRAP_ANNOTATION: "true", FS_VERSION_ANNOTATION: FS_VERSION},
    }
    return descriptor, f"sha256:{diff_id}"


def nydus_config(source: Mapping[str, Any], build: ImageBuild, bootstrap_diff_id: str) -> dict[str, Any]:
    """The source config with the nydus image's rootfs and history (the module's rule)."""
    config: dict[str, Any] = json.loads(json.dumps(source))  # a deep copy of plain JSON
    config["rootfs"] = {"type": "layers", "diff_ids": [*(blob.digest for blob in build.blobs), bootstrap_diff_id]}
    history = config.get("history")
    if history is not None:
        filled = [layer.blob is not None for layer in build.layers]
        kept = [entry for entry in history if not entry.get("empty_layer")]
        if len(kept) == len(filled):
            for entry, has_blob in zip(kept, filled, strict=True):
                if not has_blob:
                    entry["empty_layer"] = True
        history.append(dict(BOOTSTRAP_HISTORY))
    return config


@contextmanager
def _uncompressed(blob: Path, media_type: str) -> Iterator[_Reader]:
    """A layer blob's tar stream (OCI and Docker media types: tar, tar+gzip)."""
    if not media_type.endswith(("+gzip", ".gzip", ".tar")):
        raise ImageError(f"unsupported layer media type {media_type} (tar and tar+gzip only)")
    with open(blob, "rb") as data:
        if media_type.endswith(".tar"):
            yield data
        else:
            with gzip.GzipFile(fileobj=data, mode="rb") as unpacked:
                yield unpacked


def _copy_hashing(source: _Reader, out: _Writer | None) -> str:
    """Copy `source` to `out` (or nowhere), in pieces; the sha256 of what went through, in hex."""
    hashed = hashlib.sha256()
    while piece := source.read(_COPY_PIECE):
        hashed.update(piece)
        if out is not None:
            out.write(piece)
    return hashed.hexdigest()


def _write_blob(layout: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _ref_name(layout: Path) -> str | None:
    manifests = _read_json(layout / "index.json").get("manifests", [])
    names = {m.get("annotations", {}).get(REF_NAME) for m in manifests} - {None}
    return names.pop() if len(names) == 1 else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ImageError(f"{path}: {exc}") from None
    if not isinstance(value, dict):
        raise ImageError(f"{path}: not a JSON object")
    return value


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
