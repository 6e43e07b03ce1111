"""The bench's images and workloads.

One workload image holds the e2e workload's files (200 data files, /entry.sh, ...) plus 20,000 small files
under /many and 500 under /few; a second tarball names the same image 100 times (scale-NNN), so that up to 100
containers at once each get a result of their own (results are keyed by image).

Workload time is taken inside the container: busybox here has no `date +%N`, but `adjtimex` prints the
clock to the microsecond.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from testbed.images import FileSpec, build_image
from testbed.tracing import DATA_FILES, shuffled, workload_files

IMAGE = "nri-optimizer.bench/workload:1"
SCALE_IMAGES = [f"nri-optimizer.bench/scale-{k:03d}:1" for k in range(100)]  # one per container at once
MANY_FILES = 20_000  # the full bench's count; --quick uses fewer (importing 20,000 files takes ~20 s)
FEW = [f"/few/f{f:03d}" for f in range(500)]
ENTRY_FILES = [f"/data/f{i:03d}" for i in range(10, 15)]  # what /entry.sh reads (testbed/tracing.py)
READY = "bench-ready"

__all__ = ["DATA_FILES", "shuffled"]


def many(count: int) -> list[str]:
    """The /many files, 1,000 to a directory, in the order a shell glob lists them."""
    return [f"/many/d{i // 1000:02d}/f{i % 1000:03d}" for i in range(count)]


def build_images(out: Path, many_files: int = MANY_FILES) -> tuple[Path, Path]:
    """(workload image tarball, 20-name scale tarball)."""
    files: dict[str, bytes | FileSpec] = dict(workload_files())
    for path in many(many_files):
        files[path] = f"{path}\n".encode()
    for path in FEW:
        files[path] = f"{path}\n".encode()
    workload = build_image(IMAGE, out / "workload.tar", files, entrypoint=["/bin/sh"])
    return workload, renamed(workload, SCALE_IMAGES, out / "scale.tar")


def renamed(tarball: Path, names: list[str], out: Path) -> Path:
    """The image of an image-layout tarball once per name: same layers, each with a config of its own (CRI
    takes images with one config for one image, and would give all the first name)."""
    with tarfile.open(tarball) as src:
        blobs = {m.name: src.extractfile(m).read() for m in src.getmembers() if m.isfile()}  # type: ignore[union-attr]
    (desc,) = json.loads(blobs["index.json"])["manifests"]
    manifest = json.loads(blobs[_blob_path(desc["digest"])])
    config = json.loads(blobs[_blob_path(manifest["config"]["digest"])])
    entries: dict[str, bytes | FileSpec] = {k: v for k, v in blobs.items() if k.startswith("blobs/")}
    entries["oci-layout"] = blobs["oci-layout"]
    manifests = []
    for name in names:
        own_config = {**config, "config": {**config["config"], "Labels": {"org.nri-optimizer.bench.name": name}}}
        config_blob = _json(own_config)
        own_manifest = {
            **manifest,
            "config": {**manifest["config"], "digest": _digest(config_blob), "size": len(config_blob)},
        }
        manifest_blob = _json(own_manifest)
        entries[_blob_path(_digest(config_blob))] = config_blob
        entries[_blob_path(_digest(manifest_blob))] = manifest_blob
        manifests.append(
            {
                **desc,
                "digest": _digest(manifest_blob),
                "size": len(manifest_blob),
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rpartition(":")[2],
                },
            }
        )
    entries["index.json"] = _json({**json.loads(blobs["index.json"]), "manifests": manifests})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for path in sorted(entries):
            data = entries[path]
            assert isinstance(data, bytes)
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            dst.addfile(info, io.BytesIO(data))
    out.write_bytes(buf.getvalue())
    return out


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


# --- commands -----------------------------------------------------------------------------------------------

CLOCK = "adjtimex | grep time.tv_"  # two lines: time.tv_sec, time.tv_usec


def timed(work: str) -> list[str]:
    """sh -c: clock, work, clock, then READY (the work's output goes to /dev/null)."""
    return ["/bin/sh", "-c", f"{CLOCK}; {work} >/dev/null; {CLOCK}; echo {READY}"]


def workload_seconds(lines: list[str]) -> float:
    """Seconds between the two clock readings a `timed` command printed."""
    values = [int(line.split(":")[1]) for line in lines if line.strip().startswith("time.tv_")]
    if len(values) != 4:
        raise ValueError(f"expected two clock readings in the container's output, got {lines[:8]}")
    s0, us0, s1, us1 = values
    return (s1 - s0) + (us1 - us0) / 1e6


def read_many() -> list[str]:
    return timed("cat /many/*/*")


def read_few_100_times() -> list[str]:
    return timed("i=0; while [ $i -lt 100 ]; do cat /few/*; i=$((i+1)); done")


def read_then_park(files: list[str]) -> list[str]:
    """Read files at once, say READY, then sleep (as PID 1: stopped by SIGKILL)."""
    return ["/bin/sh", "-c", f"cat {' '.join(files)} >/dev/null; echo {READY}; exec sleep 100000"]


def read_then_exit(files: list[str]) -> list[str]:
    return ["/bin/cat", *files]


# The start/stop workload: a shell that exits on TERM, as a real service would.
SERVICE = ["/bin/sh", "-c", "trap 'exit 0' TERM; cat /data/f000 >/dev/null; sleep 100000 & wait"]
