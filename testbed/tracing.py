"""A containerd with our plugin pre-launched and tracing, and a workload image whose files we know."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nri_optimizer.results import reference
from testbed.bed import MakeContainerd, Run, Testbed
from testbed.images import FileSpec, build_image
from testbed.plugin import PluginLog, start_prelaunched

WORKLOAD_IMAGE = "nri-optimizer.test/workload:1"
DATA_FILES = [f"/data/f{i:03d}" for i in range(200)]
ODD_NAMES = ["/data/new\nline", "/data/trailing ", "/data/tab\t", "/data/bad\udcff"]
SERVER = str(Path(sys.executable).parent / "optimizer-server")
# The snapshotter under which a container's root takes fanotify's fid mode. The kernel refuses a fid-mode mount
# mark on an overlayfs whose file handles do not decode, which takes nfs_export=on and with it index=on
# (Documentation/filesystems/overlayfs.rst), and containerd's overlayfs snapshotter mounts every overlay with
# index=off. The native snapshotter's roots are directories of the host's file system (ext4 here), whose handles
# decode. The upper-layer filter needs an overlay: under native, files the container wrote are listed.
FID_SNAPSHOTTER = "native"
EVENT_MODES = ("fid", "fd")


def workload_files() -> dict[str, bytes | FileSpec]:
    files: dict[str, bytes | FileSpec] = {path: f"content of {path}\n".encode() for path in DATA_FILES}
    files["/data/rewritten"] = b"image version\n"
    # Names the list format cannot carry (see nri_optimizer/results/formats.py): read, but never listed.
    for odd in ODD_NAMES:
        files[odd] = b"odd\n"
    files["/entry.sh"] = FileSpec(
        b"#!/bin/sh\nexec cat /data/f010 /data/f011 /data/f012 /data/f013 /data/f014\n", mode=0o755
    )
    return files


def build_workload_image(out: Path) -> Path:
    return build_image(WORKLOAD_IMAGE, out, workload_files(), entrypoint=["/bin/sh"])


def shuffled(paths: list[str], seed: int) -> list[str]:
    order = list(paths)
    random.Random(seed).shuffle(order)
    return order


def result_set(list_path: Path) -> list[str] | None:
    """The paths a reader finds at a result's names (the list, ``.csv``, ``.json``), once it has checked that the
    three agree; None when there is no result at all. A set that is torn (a file missing, or the files of two
    writes) fails an assertion that shows it."""
    found = {}
    for suffix in ("", ".csv", ".json"):
        try:
            found[suffix] = Path(f"{list_path}{suffix}").read_text()
        except FileNotFoundError:
            continue
    if not found:
        return None
    assert len(found) == 3, f"torn: {list_path} has only {sorted(found)}: {found}"
    paths = [line for line in found[""].splitlines() if line.startswith("/")]
    assert [row.split(",")[0] for row in found[".csv"].splitlines()[1:]] == paths, f"torn: {list_path}: {found}"
    assert [f["path"] for f in json.loads(found[".json"])["files"]] == paths, f"torn: {list_path}: {found}"
    return paths


@dataclass
class Traced:
    bed: Testbed
    log: PluginLog
    results: Path
    event_mode: str = "auto"  # what the plugin was configured with; fid and fd are required of every trace

    def result_path(self, image: str = WORKLOAD_IMAGE, suffix: str = "") -> Path:
        ref = reference.parse(image)
        return self.results / ref.result_dir / (ref.result_name + suffix)

    def result(self, image: str = WORKLOAD_IMAGE, suffix: str = "") -> list[str]:
        return self.result_path(image, suffix).read_text().splitlines()

    def run(self, command: list[str], **kwargs: Any) -> Run:
        return self.bed.run_busybox(command, image=kwargs.pop("image", WORKLOAD_IMAGE), **kwargs)

    def finish(self, run: Run, timeout: float = 10.0, grace: int = 5) -> str:
        """Stop the container (containerd sends StopContainer) and wait for the trace to be written.

        A running workload gets `grace` seconds after SIGTERM: ours ignore it (a shell as pid 1), so the
        grace is also what lets one that was just started finish its reads."""
        if run.status is None:
            self.bed.cri.stop_container(run.container_id, grace)
        else:
            self.bed.cri.stop_container(run.container_id)
        (line,) = self.log.wait_for(rf"{run.container_id} (recorded|trace lost|done;|cannot write)", timeout=timeout)
        if self.event_mode != "auto":
            for tracing in self.log.matching(rf"{run.container_id} tracing pid"):
                assert tracing.endswith(f", {self.event_mode} events)"), tracing
        return line


def start_traced(
    make_containerd: MakeContainerd,
    flavour: str,
    tmp_path: Path,
    workload: Path,
    extra: str = "",
    import_timeout: float = 30,
    event_mode: str = "auto",
) -> Traced:
    """event_mode "fid" runs containerd with FID_SNAPSHOTTER and has the plugin require fid mode (a trace the kernel
    refuses it fails); "fd" has it require fd mode (on overlayfs); "auto" leaves both alone."""
    results = tmp_path / "results"
    results.mkdir(parents=True)
    if "server_path" not in extra:
        extra = f'server_path = "{SERVER}"\n{extra}'
    if event_mode != "auto":
        extra = f'event_mode = "{event_mode}"\n{extra}'
    bed, log = start_prelaunched(
        make_containerd, flavour, tmp_path, extra, snapshotter=FID_SNAPSHOTTER if event_mode == "fid" else "overlayfs"
    )
    bed.ctd.import_image(workload, timeout=import_timeout)
    return Traced(bed, log, results, event_mode)
