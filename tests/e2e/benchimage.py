"""Helpers of the bench-image e2e tests (test_bench_image*.py)."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path


def made_by(stderr: str) -> list[Path]:
    """The private dirs a bench-image run says it made (its work dir, snapshotters, containerd, registry data)."""
    return [Path(p) for p in re.findall(r"(?:running privately in|data in|working in) (/\S+?)[)\s]", stderr + "\n")]


def png_size(path: Path) -> tuple[int, int]:
    """Walk every chunk, checking each CRC; (width, height) of a complete PNG, else AssertionError."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    at, kinds = 8, []
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        kinds.append(kind)
        at += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds, kinds
    width, height = struct.unpack(">II", data[16:24])
    return width, height
