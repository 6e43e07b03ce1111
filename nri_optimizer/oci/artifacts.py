"""Recorded lists as OCI artifacts attached to their image in its registry, the way signatures and SBOMs travel:
what ``push-list``, ``pull-list``, ``convert --from-registry`` and the daemon's ``publish`` do.

One artifact holds one result, its files byte for byte as the plugin wrote them (OCI image-spec 1.1)::

    manifest     application/vnd.oci.image.manifest.v1+json
      artifactType   application/vnd.nri-optimizer.list.v1
      config         the same media type, content "{}": a registry that reports a referrer's type from its config
                     (go-containerregistry's does) reports ours
      layers         application/vnd.nri-optimizer.list.v1.paths         the plain list (required)
                     application/vnd.nri-optimizer.list.v1.csv           path,size,elapsed
                     application/vnd.nri-optimizer.list.v1.nydus+json    nydus's prefetch file
                     each titled (org.opencontainers.image.title) with the file name the plugin gives it
      subject        the image manifest the list was recorded from: one platform's, never an index
      annotations    org.opencontainers.image.created   when it was pushed (RFC 3339, UTC)
                     io.nri-optimizer.list.node         the node that recorded it
                     io.nri-optimizer.list.files        paths in the list
                     io.nri-optimizer.list.incomplete   "true" when the trace lost events (the list says why)
                     io.nri-optimizer.list.workload     the workload, for a workload's own list (none otherwise)
                     io.nri-optimizer.version           the version of nri-optimizer that pushed it

A node's newest list stands for that node: a push whose plain list is the one this node's newest list there already
has pushes nothing, and where the registry has no referrers API the tag schema's index keeps one list per node and
workload (older ones drop out of it, so the registry may collect them). Pulling takes every node's newest list of the
workload, checks each digest, subject, type and line, and merges them by results.merge's rule; incomplete lists take
part only when no node has a complete one, as for a node's own runs (results.runs). Referrers of other types
(signatures, SBOMs) are left alone; an artifact of our type that is not a list we can read is an error.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nri_optimizer.errors import ListArtifactError, MergeInputError, RegistryError, RegistryUnreachable
from nri_optimizer.oci.registry import OCI_MANIFEST, Manifest, Registry, digest_of
from nri_optimizer.results.formats import INCOMPLETE_MARK, incompleteness
from nri_optimizer.results.merge import Merged, Run, merge, parse_run

ARTIFACT_TYPE = "application/vnd.nri-optimizer.list.v1"
PATHS_TYPE = f"{ARTIFACT_TYPE}.paths"
CSV_TYPE = f"{ARTIFACT_TYPE}.csv"
NYDUS_TYPE = f"{ARTIFACT_TYPE}.nydus+json"
EMPTY_CONFIG = b"{}"

CREATED = "org.opencontainers.image.created"
TITLE = "org.opencontainers.image.title"
NODE = "io.nri-optimizer.list.node"
FILES = "io.nri-optimizer.list.files"
INCOMPLETE = "io.nri-optimizer.list.incomplete"
WORKLOAD = "io.nri-optimizer.list.workload"
VERSION = "io.nri-optimizer.version"

# A list's blob is read into memory: 64 MiB holds a list, or a CSV, of half a million paths, ten times the largest
# image start we have seen; a larger one is not a list the plugin wrote.
MAX_LIST_BLOB = 64 << 20
# Nodes whose lists one pull reads, at most: each costs a manifest and up to three blobs.
MAX_NODES = 1000
_OLDEST = datetime.min.replace(tzinfo=UTC)  # the time of a list without a readable one


@dataclass(frozen=True)
class ListFiles:
    """A result's files as the plugin writes them: the plain list, the CSV and nydus's JSON (None when absent)."""

    plain: bytes
    table: bytes | None = None
    prefetch: bytes | None = None

    def layers(self) -> list[tuple[str, str, bytes]]:
        """(media type, file name suffix, content) of each file it has."""
        found = [(PATHS_TYPE, "", self.plain), (CSV_TYPE, ".csv", self.table), (NYDUS_TYPE, ".json", self.prefetch)]
        return [(media_type, suffix, data) for media_type, suffix, data in found if data is not None]


@dataclass(frozen=True)
class Subject:
    """The image manifest lists are attached to, in its registry."""

    registry: Registry
    repository: str
    manifest: Manifest

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def __str__(self) -> str:
        return f"{self.registry.domain}/{self.repository}@{self.digest}"


def resolve(registry: Registry, repository: str, reference: str, platform: tuple[str, str] | None = None) -> Subject:
    """The image manifest `reference` (a tag or a digest) names; an index is resolved to `platform` (default: this
    machine's), since a list is recorded from one platform's files."""
    return Subject(registry, repository, registry.image_manifest(repository, reference, platform))


@dataclass(frozen=True)
class Published:
    digest: str  # the artifact's manifest
    unchanged: bool  # this node's newest list there was the same: nothing was pushed


def push_list(
    subject: Subject, files: ListFiles, *, name: str, node: str, workload: str = "", created: datetime | None = None
) -> Published:
    """Attach `files` (a result named `name` on this node) to `subject`."""
    paths = _paths(files.plain, f"the list {name}")
    for _, suffix, data in files.layers():
        if len(data) > MAX_LIST_BLOB:  # a pull would refuse it
            raise ListArtifactError(
                f"{name}{suffix}: {len(data)} bytes, more than a list artifact carries ({MAX_LIST_BLOB})"
            )
    plain_digest = digest_of(files.plain)
    if (newest := _newest_by_node(subject, workload, [node])) and _has_list(subject, newest[0], plain_digest):
        return Published(str(newest[0]["digest"]), unchanged=True)
    registry, repository = subject.registry, subject.repository
    blobs = [data for _, _, data in files.layers()] + [EMPTY_CONFIG]
    for data in blobs:
        registry.push_blob(repository, digest_of(data), data)
    layers = [
        {"mediaType": media_type, "digest": digest_of(data), "size": len(data), "annotations": {TITLE: name + suffix}}
        for media_type, suffix, data in files.layers()
    ]
    annotations = {
        CREATED: (created or datetime.now(UTC)).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        NODE: node,
        FILES: str(len(paths)),
        INCOMPLETE: "true" if incompleteness(files.plain) is not None else "false",
        VERSION: _version(),
    }
    if workload:
        annotations[WORKLOAD] = workload
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": ARTIFACT_TYPE, "digest": digest_of(EMPTY_CONFIG), "size": len(EMPTY_CONFIG)},
        "layers": layers,
        "subject": {
            "mediaType": subject.manifest.media_type,
            "digest": subject.digest,
            "size": len(subject.manifest.body),
        },
        "annotations": annotations,
    }
    body = json.dumps(manifest, separators=(",", ":")).encode()

    def superseded(descriptor: Mapping[str, Any]) -> bool:  # this node's earlier lists of the workload
        return (
            _is_list(descriptor)
            and _annotation(descriptor, NODE) == node
            and _annotation(descriptor, WORKLOAD) == workload
        )

    try:
        digest = registry.push_referrer(repository, body, OCI_MANIFEST, replaces=superseded)
    except RegistryError as exc:
        if exc.status != 400:
            raise
        # docker-registry 2.8 can answer that it has a blob (HEAD) while another client's upload of the same blob is
        # still being linked, and then refuse the manifest as naming an unknown blob: send ours, and put it again.
        for data in blobs:
            registry.push_blob(repository, digest_of(data), data, force=True)
        digest = registry.push_referrer(repository, body, OCI_MANIFEST, replaces=superseded)
    return Published(digest, unchanged=False)


@dataclass(frozen=True)
class RemoteList:
    """A list pulled from the registry, checked."""

    digest: str  # its artifact's manifest
    node: str
    created: str  # as the artifact says (RFC 3339), "" when it says nothing
    run: Run
    files: ListFiles

    @property
    def incomplete(self) -> bool:
        return self.run.incomplete is not None


@dataclass(frozen=True)
class Pulled:
    lists: list[RemoteList]  # each node's newest list of the workload, newest first
    older: int  # earlier lists of those nodes, not read
    foreign: int  # referrers of other types (signatures, SBOMs...), left alone


def pull_lists(subject: Subject, *, workload: str = "", nodes: Sequence[str] = ()) -> Pulled:
    """Every node's newest list of `workload` ("" for the image's own lists) attached to `subject`; only those of
    `nodes` when given."""
    referrers = subject.registry.referrers(subject.repository, subject.digest)
    ours = [d for d in referrers if _is_list(d)]
    of_workload = [d for d in ours if _annotation(d, WORKLOAD) == workload]
    newest = _newest_by_node(subject, workload, nodes, of_workload)
    if len(newest) > MAX_NODES:
        raise ListArtifactError(
            f"{subject}: lists of {len(newest)} nodes; at most {MAX_NODES} are read "
            "(name the nodes to read with --node)"
        )
    lists = [_read_list(subject, descriptor) for descriptor in newest]
    wanted = [d for d in of_workload if not nodes or _annotation(d, NODE) in nodes]
    return Pulled(lists, older=len(wanted) - len(newest), foreign=len(referrers) - len(ours))


@dataclass(frozen=True)
class MergedLists:
    merged: Merged
    used: list[RemoteList]  # the lists merged
    incomplete: str | None  # why the merged list is incomplete (every list used is), None if complete


def merge_lists(lists: Sequence[RemoteList], *, min_runs: int = 1) -> MergedLists:
    """The lists merged by results.merge's rule; incomplete ones only when none is complete. ValueError for a
    `min_runs` beyond the lists merged."""
    complete = [remote for remote in lists if not remote.incomplete]
    used = complete or list(lists)
    merged = merge([remote.run for remote in used], min_runs=min_runs)
    why = None
    if used and not complete:
        latest = used[0].run.incomplete
        why = latest if len(used) == 1 else f"{len(used)} nodes' lists merged, each incomplete; newest: {latest}"
    return MergedLists(merged, used, why)


def _newest_by_node(
    subject: Subject, workload: str, nodes: Sequence[str], descriptors: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The descriptor of each node's newest list of `workload` (of `nodes` only, when given), newest first."""
    if descriptors is None:
        descriptors = [
            d
            for d in subject.registry.referrers(subject.repository, subject.digest)
            if _is_list(d) and _annotation(d, WORKLOAD) == workload
        ]
    newest: dict[str, dict[str, Any]] = {}
    for descriptor in descriptors:
        node = _annotation(descriptor, NODE)
        if nodes and node not in nodes:
            continue
        if node not in newest or _created(descriptor) > _created(newest[node]):
            newest[node] = descriptor
    return sorted(newest.values(), key=_created, reverse=True)


def _has_list(subject: Subject, descriptor: Mapping[str, Any], plain_digest: str) -> bool:
    """Whether the artifact `descriptor` points to holds the plain list `plain_digest` (not when it is gone or
    unreadable: a push then puts a good one beside it)."""
    try:
        layers = _artifact_manifest(subject, descriptor)["layers"]
    except RegistryUnreachable:
        raise
    except RegistryError:
        return False
    return any(
        isinstance(layer, dict) and layer.get("mediaType") == PATHS_TYPE and layer.get("digest") == plain_digest
        for layer in layers
    )


def _read_list(subject: Subject, descriptor: Mapping[str, Any]) -> RemoteList:
    manifest = _artifact_manifest(subject, descriptor)
    where = f"{subject.registry.domain}/{subject.repository}@{descriptor['digest']}"
    for key in (NODE, WORKLOAD, CREATED):
        if _annotation(manifest, key) != _annotation(descriptor, key):
            raise ListArtifactError(f"{where}: its {key} annotation is not the one the referrers index gives it")
    layers: dict[str, bytes] = {}
    for layer in manifest.get("layers", []):
        media_type = layer.get("mediaType") if isinstance(layer, dict) else None
        if media_type not in (PATHS_TYPE, CSV_TYPE, NYDUS_TYPE):
            continue  # a later version's addition: the files we know are enough
        if media_type in layers:
            raise ListArtifactError(f"{where}: two {media_type} layers")
        size, digest = layer.get("size"), layer.get("digest")
        if not isinstance(size, int) or not isinstance(digest, str) or not 0 <= size <= MAX_LIST_BLOB:
            raise ListArtifactError(f"{where}: a {media_type} layer of size {size!r}, not 0 to {MAX_LIST_BLOB} bytes")
        layers[media_type] = subject.registry.blob(subject.repository, digest, MAX_LIST_BLOB)
    if PATHS_TYPE not in layers:
        raise ListArtifactError(f"{where}: no {PATHS_TYPE} layer: not a list")
    files = ListFiles(layers[PATHS_TYPE], layers.get(CSV_TYPE), layers.get(NYDUS_TYPE))
    _paths(files.plain, where)
    try:
        run = parse_run(files.plain, files.table, where=where)
    except MergeInputError as exc:
        raise ListArtifactError(str(exc)) from None
    return RemoteList(
        str(descriptor["digest"]), _annotation(manifest, NODE), _annotation(manifest, CREATED), run, files
    )


def _artifact_manifest(subject: Subject, descriptor: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest `descriptor` points to, checked to be a list artifact of `subject`."""
    digest = str(descriptor["digest"])
    where = f"{subject.registry.domain}/{subject.repository}@{digest}"
    manifest = subject.registry.manifest(subject.repository, digest, (OCI_MANIFEST,)).json()
    if not isinstance(manifest, dict):
        raise ListArtifactError(f"{where}: not a manifest")
    kind = manifest.get("artifactType") or (manifest.get("config") or {}).get("mediaType")
    if kind != ARTIFACT_TYPE:
        raise ListArtifactError(f"{where}: listed as a {ARTIFACT_TYPE} but is a {kind or 'manifest of no type'}")
    named = (manifest.get("subject") or {}).get("digest")
    if named != subject.digest:
        raise ListArtifactError(f"{where}: listed as a referrer of {subject.digest} but its subject is {named}")
    if not isinstance(manifest.get("layers"), list) or not isinstance(manifest.get("annotations", {}), dict):
        raise ListArtifactError(f"{where}: not an image manifest (layers, annotations)")
    return manifest


def _paths(plain: bytes, where: str) -> list[bytes]:
    """The paths of a plain list, which must be one: UTF-8, every line absolute, but for a first line saying the
    list is incomplete."""
    try:
        plain.decode("utf-8")
    except UnicodeDecodeError:
        raise ListArtifactError(f"{where}: not UTF-8 text: not a list") from None
    lines = plain.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if lines and lines[0].startswith(INCOMPLETE_MARK.encode()):
        lines.pop(0)
    for number, line in enumerate(lines, 1):
        if not line.startswith(b"/"):
            raise ListArtifactError(f"{where}: line {number} is not an absolute path: not a list")
    return lines


def _is_list(descriptor: Mapping[str, Any]) -> bool:
    return descriptor.get("artifactType") == ARTIFACT_TYPE


def _annotation(item: Mapping[str, Any], key: str) -> str:
    annotations = item.get("annotations")
    value = annotations.get(key, "") if isinstance(annotations, dict) else ""
    return value if isinstance(value, str) else ""


def _created(descriptor: Mapping[str, Any]) -> datetime:
    try:
        created = datetime.fromisoformat(_annotation(descriptor, CREATED))
    except ValueError:
        return _OLDEST
    return created if created.tzinfo is not None else created.replace(tzinfo=UTC)


def _version() -> str:
    try:
        return importlib.metadata.version("nri-optimizer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
