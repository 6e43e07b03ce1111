"""Reorder an uncompressed layer tar so that the files of a list come first, in list order.

nydus-image 2.2.0 (``create --type tar-rafs``) writes a layer's blob in the tar's order, whatever the prefetch
list says. Handing it a tar whose listed files come first puts their data at the blob's head, in the order the
container reads them, so that nydusd's prefetch turns them into a few long reads.

The rule:

1. Entries are moved whole, byte for byte: the header blocks (pax and GNU long-name headers included) and the
   data, as they are. The blocks after the last entry (end-of-archive, record padding) stay last. The output
   has the same size and the same entries; only their order changes.
2. The listed paths come first, in list order (a path listed twice counts once). Before each one come, once,
   the entries it needs to be read correctly: the entries of its parent directories, outermost first, and for
   a hard link the entry that holds its data (with that entry's own parents, first). A hard link names its target,
   which must come earlier in a tar; moving the target to the link's place puts the data where the list wants
   it, and every other link to it still follows it.
3. Then every other entry, in its original order.

A path with several entries (replaced within the layer) moves with all its entries, in their original order,
when they are all directories: a later entry only replaces an earlier one's metadata. Otherwise it stays where
it is, and so does any listed path that needs it, reported as ``kept``: a hard link binds to whichever of the
entries comes before it, and moving them could change which.

Whiteouts (``.wh.NAME``) and opaque markers (``.wh..wh..opq``) stay in place: within a layer their order does not
matter. They apply to lower layers only (OCI image spec, layer.md), and nydus-image merge applies them first.

Reading stops where Python's tarfile does, at the first end-of-archive block; anything after it is copied
after the reordered entries, unchanged. A global pax header is refused: it applies to every entry after it,
and nydus-image 2.2.0 refuses it too.

Two passes over a seekable file: ``scan`` reads the headers (no file data is held), ``reorder`` copies.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import BinaryIO, Literal

from nri_optimizer.errors import TarOrderError

_COPY_PIECE = 1 << 20  # bytes per read while copying an entry: entries can be GBs


Kind = Literal["file", "dir", "hardlink", "other"]


@dataclass(frozen=True)
class Entry:
    """One tar entry: where its bytes are, and what reordering needs to know of it."""

    path: str  # absolute, normalised: "/usr/bin/env", the root is "/"
    start: int  # offset of its first header block
    end: int  # offset after its data (and the data's padding)
    kind: Kind
    link: str | None  # a hard link's target, normalised as `path`
    size: int  # of a regular file's data; 0 for any other kind


@dataclass(frozen=True)
class LayerIndex:
    """The entries of one layer tar, in tar order, from its headers."""

    entries: tuple[Entry, ...]
    end: int  # offset after the last entry: the end-of-archive blocks start here

    @cached_property
    def by_path(self) -> dict[str, list[int]]:
        """Every path's entry indexes, in tar order."""
        found: dict[str, list[int]] = {}
        for index, entry in enumerate(self.entries):
            found.setdefault(entry.path, []).append(index)
        return found

    def last(self, path: str) -> Entry:
        """The entry of `path` that counts: the last one (KeyError if it has none)."""
        return self.entries[self.by_path[path][-1]]


@dataclass(frozen=True)
class Report:
    moved: tuple[str, ...]  # listed paths now at the head, in list order
    absent: tuple[str, ...]  # listed paths this layer has no entry for
    kept: tuple[str, ...]  # listed paths left where they were (see the module's rule)


def normalise(name: str) -> str:
    """A tar member name or a listed path as an absolute path: "./usr/bin/" and "usr/bin" are "/usr/bin"."""
    return posixpath.normpath("/" + name.lstrip("/"))


def scan(layer: BinaryIO) -> LayerIndex:
    """Read the headers of an uncompressed tar (first pass)."""
    starts: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(fileobj=layer, mode="r:") as tar:
            starts.extend(tar)
            end = tar.offset
            if tar.pax_headers:
                raise TarOrderError(
                    "the layer has a global pax header, which applies to every entry after it; "
                    "reordering would change them (nydus-image 2.2.0 refuses it as well)"
                )
    except tarfile.TarError as exc:
        raise TarOrderError(f"not an uncompressed tar: {exc}") from None
    entries = []
    for index, info in enumerate(starts):
        entries.append(
            Entry(
                path=normalise(info.name),
                start=info.offset,
                end=starts[index + 1].offset if index + 1 < len(starts) else end,
                kind=_kind(info),
                link=normalise(info.linkname) if info.islnk() else None,
                size=info.size if info.isreg() else 0,
            )
        )
    return LayerIndex(tuple(entries), end)


def plan(index: LayerIndex, listed: Iterable[str]) -> tuple[list[int], Report]:
    """The new order of `index`'s entries (indexes into it), and what became of each listed path."""
    by_path = index.by_path
    taken = [False] * len(index.entries)
    head: list[int] = []
    moved: list[str] = []
    absent: list[str] = []
    kept: list[str] = []
    for path in dict.fromkeys(normalise(path) for path in listed):
        if path not in by_path:
            absent.append(path)
            continue
        needed = list(_needed(index, by_path, path))
        if any(not _movable(index, by_path[each]) for each in needed):
            kept.append(path)
            continue
        for each in needed:
            for entry in by_path[each]:
                if not taken[entry]:
                    taken[entry] = True
                    head.append(entry)
        moved.append(path)
    rest = [entry for entry in range(len(index.entries)) if not taken[entry]]
    return head + rest, Report(tuple(moved), tuple(absent), tuple(kept))


def reorder(layer: BinaryIO, out: BinaryIO, listed: Iterable[str], index: LayerIndex | None = None) -> Report:
    """Write `layer` to `out` with the `listed` paths first (the module's rule); `index` is `scan(layer)` if
    the caller has it already."""
    index = scan(layer) if index is None else index
    order, report = plan(index, listed)
    for entry in order:
        _copy(layer, out, index.entries[entry].start, index.entries[entry].end)
    _copy(layer, out, index.end, None)
    return report


def _needed(index: LayerIndex, by_path: dict[str, list[int]], path: str) -> Iterator[str]:
    """The paths whose entries must come before or with `path`'s, in the order they come, ending with it: a hard
    link's target (the data) with what it needs, then the parent directories, outermost first."""
    visiting: set[str] = set()

    def walk(path: str) -> Iterator[str]:
        if path in visiting:  # a hard link loop: the tar is broken, and its order is all we can keep
            return
        visiting.add(path)
        for entry in by_path[path]:
            target = index.entries[entry].link
            if target is not None and target in by_path:
                yield from walk(target)
        for parent in _parents(path):
            if parent in by_path:
                yield parent
        yield path

    return walk(path)


def _movable(index: LayerIndex, entries: Sequence[int]) -> bool:
    return len(entries) == 1 or all(index.entries[entry].kind == "dir" for entry in entries)


def _kind(info: tarfile.TarInfo) -> Kind:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    return "hardlink" if info.islnk() else "other"


def _parents(path: str) -> list[str]:
    """ "/a/b/c" -> ["/", "/a", "/a/b"]; "/" has none."""
    if path == "/":
        return []
    names = path.split("/")[1:-1]
    return ["/"] + ["/" + "/".join(names[:depth]) for depth in range(1, len(names) + 1)]


def _copy(source: BinaryIO, out: BinaryIO, start: int, end: int | None) -> None:
    source.seek(start)
    left = None if end is None else end - start
    while left is None or left > 0:
        piece = source.read(_COPY_PIECE if left is None else min(left, _COPY_PIECE))
        if not piece:
            if left:
                raise TarOrderError(f"the layer ends inside an entry (offset {start}, {left} bytes short)")
            return
        out.write(piece)
        if left is not None:
            left -= len(piece)
