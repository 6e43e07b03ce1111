"""Helpers of the bench-image e2e tests (test_bench_image*.py)."""

from __future__ import annotations

import re
import struct
import sys
import zlib
from pathlib import Path

# `nri-optimizer bench-image run` as this checkout's Python runs it; the config and flags follow.
BENCH_IMAGE_RUN = [sys.executable, "-m", "nri_optimizer", "bench-image", "run"]

# Python with SIGINT raising KeyboardInterrupt, as from a terminal, whatever runs the suite: one started in the
# background (nohup, `&`) has SIGINT ignored, and a child would inherit that and sleep on through Ctrl-C. The child
# resets it itself. Not by preexec_fn: that makes subprocess fork this process, which holds gRPC's threads (the
# tests' CRI clients), and gRPC's fork handler restarts them in the child before exec; one of them aborting killed
# the child by SIGABRT, before it ran at all (a core dump showed it), in about one full suite run in three.
_INTERRUPTIBLE = "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "


def interruptible_module(module: str, *args: str) -> list[str]:
    """The command line of `python -X faulthandler -m module args`, interruptible by SIGINT (_INTERRUPTIBLE);
    faulthandler puts every thread's stack on stderr if it dies of a fatal signal."""
    run = (
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"  # sys.argv: ['-c', *args] -> [path, *args]
    )
    return [sys.executable, "-X", "faulthandler", "-c", _INTERRUPTIBLE + run, *args]


def interruptible_script(script: str) -> list[str]:
    """The command line of `python -X faulthandler -c script`, interruptible by SIGINT (_INTERRUPTIBLE)."""
    return [sys.executable, "-X", "faulthandler", "-c", _INTERRUPTIBLE + "\n" + script]


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
