"""bench-image's nydus variants against a real private containerd (2.1 and 1.7), the real nydus-snapshotter
(containerd-nydus-grpc from Debian sid) and, for a whole run, the real nydusd and nydus-image (`make nydus`).

The snapshotter starts from our generated config and takes its nydusd template, containerd registers it as a proxy
plugin, a pull, a pod and a container on its runtime handler really go through it, a bench-image nydus variant
refuses to count an image no nydusd served, teardown leaves nothing, a run whose nydusd is missing skips the nydus
variants with the exact reason, and a quick run with the tools measures every nydus variant.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.prefetch import workloads
from benchmarks.prefetch.config import Image, Ready, Variant
from benchmarks.prefetch.handlers import HandlerCri
from benchmarks.prefetch.runner import Runner
from testbed import TestbedError, debs, host, nydus, toolchain
from testbed.containerd import Containerd
from testbed.images import build_pause_image
from testbed.registry import LocalRegistry, push_layout, registry_binary, write_hosts

NYDUS_OFF = Variant("nydus", "nydus", "_nydus", "off")


@pytest.fixture(scope="module")
def snapshotter_binary() -> Path:
    try:
        return nydus.debian_snapshotter()
    except TestbedError as error:
        pytest.fail(f"cannot get containerd-nydus-grpc from Debian: {error}")


def stand_in_nydusd(directory: Path) -> Path:
    """Records that it was started and fails: for an OCI image nydus-snapshotter must never start it."""
    path = directory / "nydusd"
    path.write_text(f'#!/bin/sh\necho "$@" >> {directory / "nydusd.calls"}\nexit 1\n')
    path.chmod(0o755)
    return path


def made_by(stderr: str) -> list[Path]:
    """The private dirs a bench-image run says it made (snapshotters, containerd, registry data)."""
    return [Path(p) for p in re.findall(r"(?:running privately in|data in) (/\S+?)[)\s]", stderr + "\n")]


def snapshot_kinds(ctd: Containerd, snapshotter: str) -> list[str]:
    result = subprocess.run([str(ctd.runtime.bin_dir / "ctr"), "-a", ctd.address, "-n", "k8s.io", "snapshots",
                             "--snapshotter", snapshotter, "ls"], capture_output=True, text=True, check=True)
    return sorted(line.split()[-1] for line in result.stdout.splitlines()[1:])


@pytest.mark.parametrize("flavour", ["2.1", "1.7"])
def test_a_handler_pulls_and_runs_through_the_snapshotter(
        flavour: str, tmp_path: Path, runtime: Callable[[str], debs.Runtime], snapshotter_binary: Path) -> None:
    rt = runtime(flavour)
    snapshotter = nydus.NydusSnapshotter(snapshotter_binary, stand_in_nydusd(tmp_path), "off", nydus.Backend("http"))
    ctd = Containerd(rt, nri=False, registry_config_dir=tmp_path / "hosts",
                     snapshotters={snapshotter.name: snapshotter.address})
    registry = LocalRegistry(registry_binary())
    cri: HandlerCri | None = None
    try:
        snapshotter.start()
        assert snapshotter.pid is not None
        # The snapshotter read our config: its sockets are ours, and it took the nydusd template without complaint.
        assert snapshotter.daemons() == []
        log = snapshotter.log_tail(50)
        assert "FsDriver: fusedev, DaemonMode: dedicated" in log and "level=error" not in log, log
        ctd.start()
        plugins = subprocess.run([str(rt.bin_dir / "ctr"), "-a", ctd.address, "plugins", "ls"],
                                 capture_output=True, text=True, check=True).stdout.splitlines()
        assert [line.split() for line in plugins if " nydus-off " in line] == [
            ["io.containerd.snapshotter.v1", "nydus-off", "linux/amd64", "ok"]]

        pause = build_pause_image(tmp_path / "pause.tar")
        ctd.import_image(pause)
        nydus.import_image(rt.bin_dir / "ctr", ctd.address, pause, snapshotter.name)
        assert snapshot_kinds(ctd, "nydus-off") == ["Committed"]
        registry.start()
        write_hosts(tmp_path / "hosts", registry.address, plain_http=True)
        push_layout(workloads.build("db", "x/nydus-db:1", tmp_path / "db.tar"), registry.client(), "nydus-db", "1_nydus")
        reference = f"{registry.address}/nydus-db:1_nydus"

        cri = HandlerCri(ctd.address)
        seen: list[list[str]] = []

        def on_phase(phase: str) -> None:
            if phase == "cleanup":  # the container and its image are still there
                seen.append(snapshot_kinds(ctd, "nydus-off"))

        runner = Runner(cri, cgroup_parent=ctd.cgroup_parent, logs_dir=tmp_path / "logs", pull_timeout=60,
                        on_phase=on_phase)
        image = Image("nydus-db:1", Ready("line", "ready to accept connections"), 30)
        sample = runner.repetition(image, NYDUS_OFF, reference, 1, 1234, snapshotter)
        # An OCI image on nydus-snapshotter runs (as on overlayfs), but no nydusd served it: not a nydus measurement.
        assert (sample.status, sample.note, sample.bytes_fetched, sample.nydusd_bytes) == (
            "failed", f"no nydusd serves {reference}: not a nydus image? (convert it with bench-image convert)",
            None, None)
        # Pulled into the snapshotter (the image's two layers), the pod's and the container's rootfs prepared there.
        assert seen == [["Active", "Active", "Committed", "Committed", "Committed"]]
        assert not (tmp_path / "nydusd.calls").exists()
        # The cleanup removed the image's snapshots (sync_remove) and left the pause image's.
        assert snapshot_kinds(ctd, "nydus-off") == ["Committed"]
        assert not cri.image_status(reference) and cri.list_pods() == []
    finally:
        if cri is not None:
            cri.close()
        registry.close()
        ctd.close()
        snapshotter.close()
    assert snapshotter.pid is None and snapshotter.leftovers() == []
    assert not any(str(snapshotter.dir) in " ".join(p.cmdline) for p in host.processes())
    assert not any(path.exists() for path in (snapshotter.dir, ctd.dir, registry.dir))


def test_a_run_without_nydusd_skips_the_nydus_variants(
        tmp_path: Path, runtime: Callable[[str], debs.Runtime], snapshotter_binary: Path) -> None:
    runtime("2.1")
    config = tmp_path / "bench.yaml"
    config.write_text("""
registry: local
repetitions: 1
timeout: 30
images:
  - {name: e2e-db:1, build: db, ready: {line: "ready to accept connections"}}
variants:
  - {name: oci, snapshotter: overlayfs}
  - {name: nydus, snapshotter: nydus, tag_suffix: _nydus, prefetch: "off"}
  - {name: nydus-prefetch-list, snapshotter: nydus, tag_suffix: _nydus_prefetch, prefetch: list}
""")
    env = dict(os.environ, PATH=f"{tmp_path / 'empty'}:/usr/sbin:/usr/bin:/sbin:/bin")
    result = subprocess.run(
        [sys.executable, "-m", "nri_optimizer", "bench-image", "run", str(config), "--out", str(tmp_path / "out"),
         "--nydus-snapshotter", str(snapshotter_binary)],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    for variant in ("nydus", "nydus-prefetch-list"):
        assert f"nri-optimizer bench-image: {variant}: skipped: nydus not installed (nydusd not on PATH)" in lines
    table = result.stdout.splitlines()
    assert [line.split(" | ")[3:5] for line in table[2:]] == [
        ["oci", "1/1"], ["nydus", "-"], ["nydus-prefetch-list", "-"]]
    assert "| skipped: nydus not installed (nydusd not on PATH) |" in table[3]
    assert "nydus-snapshotter" not in result.stderr  # none was started for skipped variants
    made = made_by(result.stderr)
    assert len(made) == 2 and not any(path.exists() for path in made)  # containerd's and the registry's


DB_READS = "/app/start.sh\n/bin/busybox\n/app/db.conf\n/app/data/schema.sql\n/app/data/table-0.bin\n"


def test_a_quick_run_measures_every_nydus_variant_for_real(
        tmp_path: Path, runtime: Callable[[str], debs.Runtime]) -> None:
    """The whole `run` as make test runs it (one repetition, a throttled local registry) with the real tools: the
    harness converts the pushed image once per nydus variant with the built-in converter, each variant pulls and
    runs lazily on its own nydus-snapshotter, and nydusd's bytes show what each prefetch mode fetched."""
    runtime("2.1")
    try:
        tools = toolchain.install()
    except TestbedError as error:
        pytest.fail(f"the nydus tool chain cannot be installed (make nydus): {error}")
    (tmp_path / "db.list").write_text(DB_READS)
    config = tmp_path / "bench.yaml"
    config.write_text(f"""
registry: local
repetitions: 1
timeout: 30
throttle: 200mbit
images:
  - {{name: e2e-db:1, build: db, ready: {{line: "ready to accept connections"}}, list: db.list}}
variants:
  - {{name: oci, snapshotter: overlayfs}}
  - {{name: nydus, snapshotter: nydus, tag_suffix: _nydus, prefetch: "off"}}
  - {{name: nydus-prefetch-all, snapshotter: nydus, tag_suffix: _nydus_prefetchall, prefetch: all}}
  - {{name: nydus-prefetch-list, snapshotter: nydus, tag_suffix: _nydus_prefetch, prefetch: list}}
nydus: {{snapshotter: {tools.snapshotter}, nydusd: {tools.nydusd}, nydus_image: {tools.nydus_image}}}
""")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "nri_optimizer", "bench-image", "run", str(config), "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["nydus"]["snapshotters"] == ["nydus-off", "nydus-all", "nydus-list"]
    assert data["nydus"]["nydus_image"] == str(tools.nydus_image)
    runs = {r["variant"]: r for r in data["runs"]}
    assert [(name, r["status"], r["note"]) for name, r in runs.items()] == [
        (name, "ok", "") for name in ("oci", "nydus", "nydus-prefetch-all", "nydus-prefetch-list")]
    registry = data["registry"]
    notes = [line for line in result.stderr.splitlines() if "converting: nri-optimizer convert" in line]
    source = f"{registry}/e2e-db:1"
    flags = "--source-insecure --target-insecure"
    assert [n.split("converting: ")[1] for n in notes] == [
        f"nri-optimizer convert --source {source} --target {source}_nydus --no-list {flags}",
        f"nri-optimizer convert --source {source} --target {source}_nydus_prefetchall --no-list {flags}",
        f"nri-optimizer convert --source {source} --target {source}_nydus_prefetch --list {tmp_path / 'db.list'} "
        f"{flags}",
    ]
    assert any(line.endswith("prefetch table of 5 files)") for line in result.stderr.splitlines())
    nydusd = {name: runs[name]["nydusd_bytes"] for name in ("nydus", "nydus-prefetch-all", "nydus-prefetch-list")}
    # Seven of the image's eight 512 KiB tables are never read: prefetch-all fetches them (3.5 MiB; the bench reads
    # nydusd's count once the workload is ready, when the background prefetch may not quite be done), the list not.
    assert nydusd["nydus-prefetch-all"] > nydusd["nydus-prefetch-list"] + 2 * 1024 * 1024
    # The same chunks as reading on demand, fetched earlier; the two images' blobs differ in order, so their chunk
    # tables (read as well) differ by some bytes.
    assert abs(nydusd["nydus-prefetch-list"] - nydusd["nydus"]) < 4096
    assert runs["oci"]["nydusd_bytes"] is None
    made = made_by(result.stderr)
    assert len(made) == 5 and not any(path.exists() for path in made)  # 3 snapshotters, containerd, registry
