"""What a RAFS v6 bootstrap says, as nydus-image 2.2.0 prints it: the prefetch table and every inode's chunks.

- ``nydus-image inspect -B B -R prefetch`` prints the prefetch table as JSON, in table order:
  ``[{"inode": N, "path": [...]}, ...]``. A pattern that matched nothing (a path not in the image, an empty
  regular file) leaves a trailing ``{"inode": 0, "path": []}``. A hard-linked inode's "path" repeats its first
  name once per link (2.2.0's path_from_ino finds the first child with that inode for each parent entry).
- ``nydus-image check -B B --verbose`` walks the tree (depth first, names sorted) and prints one line per inode,
  then one line per chunk of a regular file::

      inode: file "/usr/a": index 0 ino 137 ... i_nlink 1 i_size 3145728 ... link None i_mtime 12345 i_mtime_nsec 0
      \t chunk: id <hex digest>, index 0, blob_index 0, file_offset 0, compressed 0/1048576, uncompressed 0/1048576

  The path (and a symlink's ``link Some("...")``) is Rust's Debug form of an OsStr: quoted, with ``\\"``, ``\\\\``,
  ``\\n``-style escapes, ``\\u{...}`` for other unprintable characters and ``\\xNN`` for bytes that are not UTF-8.
  "compressed OFFSET/SIZE" is where the chunk's bytes are in its blob (the blob's head is offset 0). A chunk
  that repeats the content of an earlier one (same digest) points at the earlier one's bytes.

Neither command has a JSON form for chunks in 2.2.0; ``inspect -R "stat NAME"`` prints them as text too, and only
for names in the root directory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nri_optimizer.errors import ToolError
from nri_optimizer.nydus import tool


@dataclass(frozen=True)
class PrefetchEntry:
    inode: int  # 0: a pattern that matched nothing
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Chunk:
    digest: str  # hex, of the uncompressed data (blake3 by default)
    blob_index: int  # into the bootstrap's blob table
    file_offset: int
    compressed_offset: int  # in the blob
    compressed_size: int
    uncompressed_size: int


@dataclass(frozen=True)
class Inode:
    path: str
    kind: str  # "file", "hardlink" (a regular file with more than one name), "dir", "symlink", "" (others)
    ino: int
    nlink: int
    size: int
    mtime: int
    symlink: str | None
    chunks: tuple[Chunk, ...]


def prefetch_table(bootstrap: Path, *, nydus_image: str) -> list[PrefetchEntry]:
    out = tool.run([nydus_image, "inspect", "-B", str(bootstrap), "-R", "prefetch"])
    try:
        table = json.loads(out)
        return [PrefetchEntry(int(row["inode"]), tuple(row["path"])) for row in table]
    except (ValueError, TypeError, KeyError) as exc:
        raise ToolError(
            f"nydus-image inspect -R prefetch printed what we do not understand ({exc}): {out[:200]!r}"
        ) from None


def prefetch_paths(table: Iterable[PrefetchEntry]) -> list[str]:
    """The table as a list: each entry's first path, entries that matched nothing left out."""
    return [entry.paths[0] for entry in table if entry.inode and entry.paths]


_RUST_STR = r'"((?:[^"\\]|\\.)*)"'
_INODE = re.compile(
    rf"^inode: (\w*) {_RUST_STR}: index \d+ ino (\d+) .* i_nlink (\d+) i_size (\d+) .* "
    rf"link (None|Some\({_RUST_STR}\)) i_mtime (\d+) i_mtime_nsec \d+$"
)
_CHUNK = re.compile(
    r"^\t chunk: id ([0-9a-f]+), index \d+, blob_index (\d+), file_offset (\d+), "
    r"compressed (\d+)/(\d+), uncompressed \d+/(\d+)$"
)
_ESCAPE = re.compile(r"\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "\\": "\\", '"': '"', "'": "'"}


def inodes(bootstrap: Path, *, nydus_image: str) -> dict[str, Inode]:
    """Every path of the image, from ``check --verbose``."""
    return parse_check(tool.run([nydus_image, "check", "-B", str(bootstrap), "--verbose"]))


def parse_check(out: str) -> dict[str, Inode]:
    found: dict[str, Inode] = {}
    current: Inode | None = None
    chunks: list[Chunk] = []
    for line in out.splitlines():
        if match := _CHUNK.match(line):
            if current is None:
                raise ToolError(f"nydus-image check printed a chunk before any inode: {line!r}")
            digest, blob, file_offset, offset, size, uncompressed = match.groups()
            chunks.append(Chunk(digest, int(blob), int(file_offset), int(offset), int(size), int(uncompressed)))
        elif line.startswith("inode: "):
            if current is not None:
                found[current.path] = _with_chunks(current, chunks)
            match = _INODE.match(line)
            if match is None:
                raise ToolError(f"nydus-image check printed an inode line we do not understand: {line!r}")
            kind, path, ino, nlink, size, link, target, mtime = match.groups()
            current = Inode(
                _unrust(path),
                kind,
                int(ino),
                int(nlink),
                int(size),
                int(mtime),
                None if link == "None" else _unrust(target),
                (),
            )
            chunks = []
    if current is not None:
        found[current.path] = _with_chunks(current, chunks)
    return found


def listed_chunks_contiguous_in_order(layout: Mapping[str, Inode], listed: Sequence[str]) -> bool:
    """Whether the chunks of the `listed` files, taken in list order (each file's in file order), sit one after
    the other from the head of their blob: the first at offset 0, each next one where the one before ends.

    Per blob, as a multi-layer image has one blob per layer (each layer's listed files at its head). A chunk
    whose bytes an earlier listed chunk already placed (same content, stored once) does not break the run.
    Listed paths the image does not have, and files without data, take no place.
    """
    return not layout_breaks(layout, listed)


def layout_breaks(layout: Mapping[str, Inode], listed: Sequence[str]) -> list[str]:
    """Where the listed files' chunks leave list order, one line each (empty: contiguous and in order)."""
    ends: dict[int, int] = {}
    placed: set[tuple[int, int]] = set()
    breaks = []
    for path in dict.fromkeys(listed):
        inode = layout.get(path)
        for chunk in inode.chunks if inode else ():
            where = (chunk.blob_index, chunk.compressed_offset)
            if where in placed:
                continue
            expected = ends.get(chunk.blob_index, 0)
            if chunk.compressed_offset != expected:
                breaks.append(
                    f"{path}: chunk at file offset {chunk.file_offset} is at blob {chunk.blob_index} "
                    f"offset {chunk.compressed_offset}, expected {expected}"
                )
            placed.add(where)
            ends[chunk.blob_index] = chunk.compressed_offset + chunk.compressed_size
    return breaks


def _with_chunks(inode: Inode, chunks: Sequence[Chunk]) -> Inode:
    return Inode(inode.path, inode.kind, inode.ino, inode.nlink, inode.size, inode.mtime, inode.symlink, tuple(chunks))


def _unrust(quoted: str) -> str:
    """The text inside Rust's Debug quotes, unescaped; bytes that are not UTF-8 come back surrogate-escaped,
    as Python's tarfile and os functions give them."""
    raw = bytearray()
    at = 0
    for match in _ESCAPE.finditer(quoted):
        raw += quoted[at : match.start()].encode()
        escape = match.group(1)
        if escape.startswith("u{"):
            raw += chr(int(escape[2:-1], 16)).encode()
        elif escape.startswith("x") and len(escape) == 3:
            raw.append(int(escape[1:], 16))
        elif escape in _SIMPLE_ESCAPES:
            raw += _SIMPLE_ESCAPES[escape].encode()
        else:
            raise ToolError(f"nydus-image printed an escape we do not know: \\{escape} in {quoted!r}")
        at = match.end()
    raw += quoted[at:].encode()
    return raw.decode(errors="surrogateescape")
