"""One image between a registry and an OCI image layout (image-spec image-layout.md: ``oci-layout``, ``index.json``,
``blobs/sha256/<hex>``), the form nri_optimizer.nydus.image reads and writes.

``pull`` writes the image manifest (an index resolved to one platform first), its config and its layers, and an
index naming that manifest; ``push`` sends a layout's one image to a repository under a tag: blobs first, the
manifest last, so a tag never names an image whose blobs are not there yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nri_optimizer.errors import RegistryError

from .registry import Manifest, Registry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    return layout / "blobs" / algorithm / hex_digest


def pull(
    registry: Registry, repository: str, reference: str, layout: Path, platform: tuple[str, str] | None = None
) -> Manifest:
    """The image `reference` of `repository` into the directory `layout` (created); its image manifest."""
    manifest = registry.image_manifest(repository, reference, platform)
    parsed = manifest.json()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    blob_path(layout, manifest.digest).write_bytes(manifest.body)
    config = parsed["config"]
    blob_path(layout, config["digest"]).write_bytes(registry.blob(repository, config["digest"]))
    for layer in parsed.get("layers", []):
        target = blob_path(layout, layer["digest"])
        if not target.exists():  # a layer repeated in one image is fetched once
            registry.pull_blob(repository, layer["digest"], target)
    descriptor = {"mediaType": manifest.media_type, "digest": manifest.digest, "size": len(manifest.body)}
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]})
    )
    return manifest


def push(layout: Path, registry: Registry, repository: str, tag: str) -> tuple[str, int]:
    """The one image of `layout` to `repository`:`tag`: (its manifest's digest, the bytes it takes)."""
    descriptors = _read_json(layout / "index.json").get("manifests", [])
    if len(descriptors) != 1:
        raise RegistryError(f"{layout}/index.json: expected one image manifest, found {len(descriptors)}")
    descriptor = descriptors[0]
    body = _blob(layout, descriptor["digest"])
    manifest = json.loads(body)
    blobs = [manifest["config"], *manifest.get("layers", [])]
    for blob in blobs:
        path = blob_path(layout, blob["digest"])
        if not path.is_file():
            raise RegistryError(f"{layout}: blob {blob['digest']} is missing from the layout")
        registry.push_blob(repository, blob["digest"], path)
    media_type = descriptor.get("mediaType") or manifest.get("mediaType", "")
    digest = registry.push_manifest(repository, tag, body, media_type)
    return digest, len(body) + sum(int(blob["size"]) for blob in blobs)


def _blob(layout: Path, digest: str) -> bytes:
    try:
        return blob_path(layout, digest).read_bytes()
    except OSError as exc:
        raise RegistryError(f"{layout}: cannot read blob {digest}: {exc.strerror}") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: {exc}") from None
    if not isinstance(value, dict):
        raise RegistryError(f"{path}: not a JSON object")
    return value
