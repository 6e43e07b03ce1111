"""What a cold pull of a tag fetches from a registry, counted from its manifests (the registry itself, and pushing
into it, are the test bed's: testbed.registry)."""

from __future__ import annotations

from nri_optimizer.oci.registry import INDEX_TYPES, Registry

NYDUS_BLOB = "containerd.io/snapshot/nydus-blob"  # a nydus data layer: nydusd reads it, the pull does not


def pull_size(registry: Registry, repository: str, tag: str, *, nydus: bool = False) -> int:
    """Bytes a cold pull of repository:tag fetches: the manifest (and index), the config and every layer; with
    `nydus`, the layers nydus-snapshotter lets containerd skip (annotated as nydus blobs) are not counted."""
    top = registry.manifest(repository, tag)
    image = registry.image_manifest(repository, tag) if top.media_type in INDEX_TYPES else top
    total = len(top.body) + (len(image.body) if image is not top else 0)
    manifest = image.json()
    layers = [
        layer for layer in manifest["layers"] if not (nydus and layer.get("annotations", {}).get(NYDUS_BLOB) == "true")
    ]
    return total + int(manifest["config"]["size"]) + sum(int(layer["size"]) for layer in layers)


def nydus_blobs(registry: Registry, repository: str, tag: str) -> set[str]:
    """The sha256 hex digests of the nydus blobs of repository:tag (the layers nydusd reads)."""
    manifest = registry.image_manifest(repository, tag).json()
    return {
        layer["digest"].removeprefix("sha256:")
        for layer in manifest["layers"]
        if layer.get("annotations", {}).get(NYDUS_BLOB) == "true"
    }
