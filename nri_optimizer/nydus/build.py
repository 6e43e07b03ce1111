"""Build a nydus image (RAFS v6) from uncompressed layer tars with nydus-image 2.2.0, the listed files first.

For each layer, lowest first::

    nydus-image create --type tar-rafs --fs-version 6 --prefetch-policy none \\
        --bootstrap layer-N.boot --blob-dir blobs --output-json layer-N.json LAYER.tar

writes one data blob into ``blobs``, named by its sha256 (which is its registry digest), and the layer's
bootstrap; a layer without file data (directories, whiteouts only) has no blob. Then::

    nydus-image merge --prefetch-policy fs --bootstrap image.boot \\
        --blob-digests HEX,... --blob-sizes N,... --output-json merge.json layer-0.boot ... < LIST

makes the image's bootstrap, the one nydus-snapshotter mounts, with the prefetch table in list order (``none``
and no stdin without a list). merge must be given the blob digests: without them (and without ``--config``)
2.2.0 takes each blob's id from its bootstrap's file name.

With a list, each layer's tar is first rewritten by nri_optimizer.nydus.tarorder, because create writes the
blob in the tar's order and ignores the list for it. A listed path is ordered in the layer its content comes
from (the highest layer that has it, unless a layer above deletes it), so a file replaced by an upper layer does
not take the lower blob's head.

Listed files left to on-demand reads (nri_optimizer.nydus.partial: read only in small part) stay out of the
prefetch table and, in the blob, come right after the prefetched files, in list order.

What goes into the prefetch table: the listed paths the image has, in list order, once each, but those left on
demand. Lines that are not
absolute paths (the ``# incomplete`` marker) are skipped; paths the image does not have are counted and left out
(nydus-image would leave an empty ``{"inode": 0}`` entry for each), as are empty regular files (no data to fetch;
nydus-image drops them the same way). A listed directory stays: nydusd prefetches everything under it (the
plugin lists regular files only; a hand-written list may mean it). The layers' own bootstraps get no table:
nydusd reads the merged one.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from nri_optimizer.errors import ToolError
from nri_optimizer.nydus import tarorder, tool
from nri_optimizer.nydus.tarorder import LayerIndex

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."  # OCI image spec, layer.md "Whiteouts"
OPAQUE_MARKER = ".wh..wh..opq"
_NO_BLOB_DIGEST = "0" * 64  # merge wants a digest per bootstrap; it reads one only for a layer that has a blob


@dataclass(frozen=True)
class Blob:
    path: Path  # in the blob dir, named by its sha256
    digest: str  # "sha256:<hex>"
    size: int


@dataclass(frozen=True)
class LayerBuild:
    bootstrap: Path
    blob: Blob | None  # None: the layer has no file data
    order: tarorder.Report | None  # None: built from the tar as it was


@dataclass(frozen=True)
class ImageBuild:
    bootstrap: Path  # the merged one: the image's
    layers: tuple[LayerBuild, ...]
    prefetch: tuple[str, ...]  # the prefetch table's paths, in order, as given to merge
    on_demand: tuple[str, ...]  # listed paths the image has, left out of the table (after it in the blob)
    absent: tuple[str, ...]  # listed paths the image does not have
    empty: tuple[str, ...]  # listed empty regular files

    @property
    def blobs(self) -> list[Blob]:
        return [layer.blob for layer in self.layers if layer.blob is not None]


def list_paths(text: str) -> list[str]:
    """The paths of a plain list (one a line, as the plugin writes it): lines that are not absolute paths, such
    as the ``# incomplete`` marker, are not paths."""
    return [line for line in text.splitlines() if line.startswith("/")]


def build_image(
    layers: Sequence[Path],
    out_dir: Path,
    *,
    listed: Sequence[str] | None,
    nydus_image: str,
    reorder: bool = True,
    on_demand: Collection[str] = (),
    blob_dir: Path | None = None,
) -> ImageBuild:
    """Build the image of `layers` (uncompressed tars, lowest first): ``layer-N.boot`` and ``image.boot`` into
    `out_dir`, the blobs into `blob_dir` (default ``out_dir/blobs``; an OCI layout's ``blobs/sha256`` takes them
    as they are). With `listed`, the prefetch table is the list but `on_demand` (the module's rule) and, with
    `reorder`, each blob holds its listed files first: the table's in list order, then those left on demand."""
    blob_dir = blob_dir or out_dir / "blobs"
    blob_dir.mkdir(parents=True, exist_ok=True)
    indexes = [_scan(layer) for layer in layers]
    prefetch, absent, empty = prefetch_list(indexes, listed or [])
    if absent:
        log.warning(
            "nydus build: %d listed paths are not in the image, left out of the prefetch table (first: %s)",
            len(absent),
            absent[0],
        )
    left = {tarorder.normalise(path) for path in on_demand}
    table = [path for path in prefetch if path not in left]
    later = [path for path in prefetch if path in left]
    home = locate(indexes, prefetch)
    built = []
    for number, (layer, index) in enumerate(zip(layers, indexes, strict=True)):
        mine = [path for path in table + later if home[path] == number] if listed is not None and reorder else None
        built.append(
            build_layer(
                layer, out_dir / f"layer-{number}.boot", blob_dir, listed=mine, index=index, nydus_image=nydus_image
            )
        )
    bootstrap = out_dir / "image.boot"
    merge(built, bootstrap, prefetch=table if listed is not None else None, nydus_image=nydus_image)
    return ImageBuild(bootstrap, tuple(built), tuple(table), tuple(later), tuple(absent), tuple(empty))


def build_layer(
    layer: Path,
    bootstrap: Path,
    blob_dir: Path,
    *,
    listed: Sequence[str] | None,
    nydus_image: str,
    index: LayerIndex | None = None,
) -> LayerBuild:
    """One layer's blob (into `blob_dir`) and bootstrap; with `listed`, from the tar reordered to put them first."""
    with tempfile.TemporaryDirectory(prefix="nriopt-layer-", dir=bootstrap.parent) as work:
        source, report = layer, None if listed is None else tarorder.Report((), (), ())
        if listed:  # (an empty list would copy the tar as it is)
            source = Path(work) / "ordered.tar"
            with open(layer, "rb") as original, open(source, "wb") as ordered:
                report = tarorder.reorder(original, ordered, listed, index)
        output = Path(work) / "create.json"
        tool.run(
            [
                nydus_image,
                "create",
                "--type",
                "tar-rafs",
                "--fs-version",
                "6",
                "--prefetch-policy",
                "none",
                "--bootstrap",
                str(bootstrap),
                "--blob-dir",
                str(blob_dir),
                "--output-json",
                str(output),
                str(source),
            ]
        )
        blobs = _output_blobs(output)
    if len(blobs) > 1:
        raise ToolError(f"nydus-image create made {len(blobs)} blobs of one layer ({layer}); expected at most one")
    blob = None
    if blobs:
        path = blob_dir / blobs[0]
        blob = Blob(path, f"sha256:{blobs[0]}", path.stat().st_size)
    return LayerBuild(bootstrap, blob, report)


def merge(layers: Sequence[LayerBuild], bootstrap: Path, *, prefetch: Sequence[str] | None, nydus_image: str) -> None:
    """The image's bootstrap from the layers' (lowest first), its prefetch table `prefetch` in order."""
    digests = ",".join(layer.blob.digest.removeprefix("sha256:") if layer.blob else _NO_BLOB_DIGEST for layer in layers)
    sizes = ",".join(str(layer.blob.size if layer.blob else 0) for layer in layers)
    policy = "none" if prefetch is None else "fs"
    with tempfile.TemporaryDirectory(prefix="nriopt-merge-", dir=bootstrap.parent) as work:
        tool.run(
            [
                nydus_image,
                "merge",
                "--prefetch-policy",
                policy,
                "--bootstrap",
                str(bootstrap),
                "--blob-digests",
                digests,
                "--blob-sizes",
                sizes,
                "--output-json",
                str(Path(work) / "merge.json"),
                *(str(layer.bootstrap) for layer in layers),
            ],
            stdin="".join(f"{path}\n" for path in prefetch or []).encode(errors="surrogateescape"),
        )


def locate(indexes: Sequence[LayerIndex], paths: Sequence[str]) -> dict[str, int]:
    """For each of `paths` the image has, the layer its content comes from: the highest layer with an entry for
    it, unless a layer above whites it out (or one of its directories), or makes a directory above it opaque."""
    layers = [(index.by_path.keys(), _whiteouts(index)) for index in indexes]
    found: dict[str, int] = {}
    for path in paths:
        for number in reversed(range(len(layers))):
            entries, (removed, opaque) = layers[number]
            if path in entries:
                found[path] = number
                break
            ancestors = _ancestors(path)
            if removed.intersection([path, *ancestors]) or opaque.intersection(ancestors):
                break
    return found


def prefetch_list(indexes: Sequence[LayerIndex], listed: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(the prefetch table's paths, listed paths the image does not have, listed empty regular files): the
    module's rule, for the image of the layers `indexes` (lowest first)."""
    wanted = list(dict.fromkeys(tarorder.normalise(path) for path in listed if path.startswith("/")))
    home = locate(indexes, wanted)
    absent = [path for path in wanted if path not in home]
    empty = [path for path in wanted if path in home and _is_empty_file(indexes[home[path]], path)]
    dropped = set(absent) | set(empty)
    return [path for path in wanted if path not in dropped], absent, empty


def _is_empty_file(index: LayerIndex, path: str) -> bool:
    entry = index.last(path)
    if entry.link is not None and entry.link in index.by_path:
        entry = index.last(entry.link)
    return entry.kind == "file" and entry.size == 0


def _whiteouts(index: LayerIndex) -> tuple[set[str], set[str]]:
    """(paths this layer deletes from lower layers, directories it makes opaque)."""
    removed, opaque = set(), set()
    for path in index.by_path:
        parent, name = posixpath.split(path)
        if name == OPAQUE_MARKER:
            opaque.add(parent)
        elif name.startswith(WHITEOUT_PREFIX):
            removed.add(posixpath.join(parent, name[len(WHITEOUT_PREFIX) :]))
    return removed, opaque


def _ancestors(path: str) -> list[str]:
    """ "/a/b/c" -> ["/a/b", "/a", "/"]."""
    found = []
    while path != "/":
        path = posixpath.dirname(path)
        found.append(path)
    return found


def _scan(layer: Path) -> LayerIndex:
    with open(layer, "rb") as tar:
        return tarorder.scan(tar)


def _output_blobs(output: Path) -> list[str]:
    try:
        blobs = json.loads(output.read_text())["blobs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ToolError(f"nydus-image --output-json {output}: not what 2.2.0 writes ({exc})") from None
    return [str(blob) for blob in blobs]
