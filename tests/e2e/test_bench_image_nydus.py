"""bench-image's nydus variants against a real private containerd (2.1 and 1.7), the real nydus-snapshotter
(containerd-nydus-grpc from Debian sid) and, for a whole run, the real nydusd and nydus-image (`make nydus`).

The snapshotter starts from our generated config and takes its nydusd template, containerd registers it as a proxy
plugin, a pull, a pod and a container on its runtime handler really go through it, a bench-image nydus variant
refuses to count an image no nydusd served, teardown leaves nothing, a run whose nydusd is missing skips the nydus
variants with the exact reason, and a quick run with the tools measures every nydus variant.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
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
from tests.e2e.benchimage import BENCH_IMAGE_RUN, made_by, png_size

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


def snapshot_kinds(ctd: Containerd, snapshotter: str) -> list[str]:
    result = subprocess.run(
        [
            str(ctd.runtime.bin_dir / "ctr"),
            "-a",
            ctd.address,
            "-n",
            "k8s.io",
            "snapshots",
            "--snapshotter",
            snapshotter,
            "ls",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(line.split()[-1] for line in result.stdout.splitlines()[1:])


@pytest.mark.parametrize("flavour", ["2.1", "1.7"])
def test_a_handler_pulls_and_runs_through_the_snapshotter(
    flavour: str, tmp_path: Path, runtime: Callable[[str], debs.Runtime], snapshotter_binary: Path
) -> None:
    rt = runtime(flavour)
    snapshotter = nydus.NydusSnapshotter(snapshotter_binary, stand_in_nydusd(tmp_path), "off", nydus.Backend("http"))
    ctd = Containerd(
        rt, nri=False, registry_config_dir=tmp_path / "hosts", snapshotters={snapshotter.name: snapshotter.address}
    )
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
        plugins = subprocess.run(
            [str(rt.bin_dir / "ctr"), "-a", ctd.address, "plugins", "ls"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        assert [line.split() for line in plugins if " nydus-off " in line] == [
            ["io.containerd.snapshotter.v1", "nydus-off", "linux/amd64", "ok"]
        ]

        pause = build_pause_image(tmp_path / "pause.tar")
        ctd.import_image(pause)
        nydus.import_image(rt.bin_dir / "ctr", ctd.address, pause, snapshotter.name)
        assert snapshot_kinds(ctd, "nydus-off") == ["Committed"]
        registry.start()
        write_hosts(tmp_path / "hosts", registry.address, plain_http=True)
        push_layout(
            workloads.build("db", "x/nydus-db:1", tmp_path / "db.tar"), registry.client(), "nydus-db", "1_nydus"
        )
        reference = f"{registry.address}/nydus-db:1_nydus"

        cri = HandlerCri(ctd.address)
        seen: list[list[str]] = []

        def on_phase(phase: str) -> None:
            if phase == "cleanup":  # the container and its image are still there
                seen.append(snapshot_kinds(ctd, "nydus-off"))

        runner = Runner(
            cri, cgroup_parent=ctd.cgroup_parent, logs_dir=tmp_path / "logs", pull_timeout=60, on_phase=on_phase
        )
        image = Image("nydus-db:1", Ready("line", "ready to accept connections"), 30)
        (sample,) = runner.repetition(image, NYDUS_OFF, reference, 1, 1234, snapshotter)
        # An OCI image on nydus-snapshotter runs (as on overlayfs), but no nydusd served it: not a nydus measurement.
        assert (sample.status, sample.note, sample.bytes_fetched, sample.nydusd_bytes) == (
            "failed",
            f"no nydusd serves {reference}: not a nydus image? (convert it with bench-image convert)",
            None,
            None,
        )
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
    tmp_path: Path, runtime: Callable[[str], debs.Runtime], snapshotter_binary: Path
) -> None:
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
    missing = tmp_path / "no-nydusd"
    result = subprocess.run(
        [
            *BENCH_IMAGE_RUN,
            str(config),
            "--out",
            str(tmp_path / "out"),
            "--nydus-snapshotter",
            str(snapshotter_binary),
            "--nydusd",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    why = f"nydus not installed (nydusd: {missing} is not an executable file)"
    for variant in ("nydus", "nydus-prefetch-list"):
        assert f"nri-optimizer bench-image: {variant}: skipped: {why}" in lines
    table = result.stdout.splitlines()
    assert [line.split(" | ")[:3] for line in table[4:7]] == [
        ["| oci", "1/1", table[4].split(" | ")[2]],
        ["| oci-warm", "1/1", table[5].split(" | ")[2]],
        ["| nydus", "-", f"skipped: {why}"],
    ]
    assert table[7].startswith(f"| nydus-prefetch-list | - | skipped: {why} |")
    assert "nydus-snapshotter" not in result.stderr  # none was started for skipped variants
    made = made_by(result.stderr)
    assert len(made) == 3 and not any(path.exists() for path in made)  # the work dir, containerd's, the registry's


DB_READS = ["/app/start.sh", "/bin/busybox", "/app/db.conf", "/app/data/schema.sql", "/app/data/table-0.bin"]
MiB = 1 << 20
VARIANTS = (
    "oci",
    "nydus",
    "nydus-prefetch-all",
    "nydus-prefetch-list",
    "nydus-runtime-list",
    "nydus-list-unordered",
    "nydus-nydusd-list",
)


def shaped_ports() -> set[int]:
    out = subprocess.run(["tc", "filter", "show", "dev", "lo"], capture_output=True, text=True, check=True).stdout
    return {int(match[1], 16) >> 16 for match in re.finditer(r"match ([0-9a-f]{8})/ffff0000 at 20", out)}


def test_the_quick_benchmark_runs_every_variant_against_the_bound(
    tmp_path: Path, runtime: Callable[[str], debs.Runtime]
) -> None:
    """What make test runs of the benchmark: one small workload, two rounds, every variant, on a shaped link, with
    the real tools (nydus-image converting, nydus-snapshotter and nydusd running it lazily, the plugin recording our
    list, nydusd recording its own). Nothing is skipped; the figures are checked for what they must be, never for
    how fast."""
    runtime("2.1")
    try:
        tools = toolchain.install()
    except TestbedError as error:
        pytest.fail(f"the nydus tool chain cannot be installed (make nydus): {error}")
    config = tmp_path / "bench.yaml"
    config.write_text(f"""
registry: local
repetitions: 2
timeout: 30
throttle: 100mbit/10ms
settle: 10
images:
  - {{name: e2e-db:1, build: db, ready: {{line: "ready to accept connections"}}, list: record}}
variants:
  - {{name: oci, snapshotter: overlayfs}}
  - {{name: nydus, snapshotter: nydus, tag_suffix: _nydus, prefetch: "off"}}
  - {{name: nydus-prefetch-all, snapshotter: nydus, tag_suffix: _nydus_prefetchall, prefetch: all}}
  - {{name: nydus-prefetch-list, snapshotter: nydus, tag_suffix: _nydus_prefetch, prefetch: list}}
  - {{name: nydus-runtime-list, snapshotter: nydus, tag_suffix: _nydus, prefetch: runtime}}
  - {{name: nydus-list-unordered, snapshotter: nydus, tag_suffix: _nydus_unordered, prefetch: list, reorder: false}}
  - {{name: nydus-nydusd-list, snapshotter: nydus, tag_suffix: _nydus_nydusdlist, prefetch: list, list: nydusd}}
nydus: {{snapshotter: {tools.snapshotter}, nydusd: {tools.nydusd}, nydus_image: {tools.nydus_image}}}
""")
    out = tmp_path / "out"
    result = subprocess.run(
        [*BENCH_IMAGE_RUN, str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["nydus"]["snapshotters"] == ["nydus-off", "nydus-all", "nydus-list"]
    (link,) = data["links"]
    assert link["link"] == "100mbit/10ms" and link["dropped_page_cache"] is True
    assert 10 <= link["rtt_measured_ms"] < 60

    # Our list was recorded by the plugin in the run; nydusd's from its access pattern: it has every file of ours
    # in the same order, and the two files runc reads before the workload starts (the plugin starts at
    # StartContainer, nydusd serves the root from CreateContainer on).
    assert (out / "table.md").read_text().count("| e2e-db:1 | 5 | 7 | 1.000 | 0.714 | 0 |") == 1
    (lists,) = data["lists"]
    assert (lists["missing"], lists["extra"]) == ([], ["/etc/group", "/etc/passwd"])
    notes = [line.split("converting: ")[1] for line in result.stderr.splitlines() if "converting: " in line]
    assert [n.split(" --target ")[1].split()[0].rsplit(":", 1)[1] for n in notes] == [
        "1_nydus",
        "1_nydus_prefetch",
        "1_nydus_unordered",
        "1_nydus_nydusdlist",
    ]
    assert "--no-reorder" in notes[2] and notes[1].endswith("e2e-db_1.ours --source-insecure --target-insecure")
    assert notes[3].split(" --list ")[1].startswith(str(made_by(result.stderr)[0]))
    # prefetch all's image is prefetch off's (no table): made once, tagged twice
    assert f"tagged {data['registry']}/e2e-db:1_nydus as :1_nydus_prefetchall as well (the same conversion)" in [
        line.split("] ", 1)[-1] for line in result.stderr.splitlines()
    ]

    # Every variant twice, the warm start after each OCI start; rounds interleaved, the order rotated.
    runs = [r for r in data["runs"] if r["status"] == "ok"]
    assert len(runs) == len(data["runs"]) == 2 * (len(VARIANTS) + 1)
    rounds = [[r["variant"] for r in runs if r["repetition"] == n] for n in (1, 2)]
    assert rounds == [["oci", "oci-warm", *VARIANTS[1:]], [*VARIANTS[1:], "oci", "oci-warm"]]
    by = {name: [r for r in runs if r["variant"] == name] for name in (*VARIANTS, "oci-warm")}
    blobs = workloads.BLOBS * workloads.BLOB_SIZE
    for r in runs:
        assert r["total_us"] == r["pull_us"] + r["create_us"] + r["run_us"] and r["settled"] == "true"
    for r in by["oci"]:  # the whole image through the link, by ready
        assert r["bytes_fetched"] == r["bytes_total"] > blobs
    for name in VARIANTS[1:]:
        for r in by[name]:  # a lazy pull: by ready the link carried what nydusd read, and the metadata (and for
            # prefetch-all, blob ranges still on their way, which nydusd counts once a request is complete)
            assert r["nydusd_bytes"] <= r["bytes_fetched"], r
            assert name == "nydus-prefetch-all" or r["bytes_fetched"] < r["nydusd_bytes"] + MiB, r
    for r in by["nydus-prefetch-all"]:  # every blob, by the end
        assert r["bytes_total"] > blobs and r["prefetch_bytes"] > blobs
    # What the start reads on demand, by the bound's rule: the median of prefetch off's runs. The same start's
    # on-demand reads may differ by a chunk run to run (seen under load: 1,612,098 and 2,660,674 B, 1 MiB apart):
    # nydusd merges the requests that arrive together.
    offs = [r["nydusd_bytes"] for r in by["nydus"]]
    needed = round(statistics.median(offs))
    assert max(offs) - min(offs) <= MiB + 64 * 1024 and [r["prefetch_bytes"] for r in by["nydus"]] == [0, 0], offs
    for name in ("nydus-prefetch-list", "nydus-runtime-list", "nydus-list-unordered", "nydus-nydusd-list"):
        for r in by[name]:  # the list's files, fetched by prefetch: the same chunks the start reads on demand
            assert abs(r["nydusd_bytes"] - needed) <= MiB + 64 * 1024 and r["prefetch_bytes"] > 0, (name, offs, r)
            assert r["ondemand_requests"] < min(o["ondemand_requests"] for o in by["nydus"]), (name, r)

    # The bound: nydus without prefetch's pull and create, the warm start's run, the needed bytes at the rate.
    (bound,) = data["bounds"]
    off = next(s for s in data["summary"] if s["variant"] == "nydus")
    warm = next(s for s in data["summary"] if s["variant"] == "oci-warm")
    assert (bound["metadata_pull_s"], bound["create_s"], bound["warm_run_s"]) == (
        off["pull_median_s"],
        off["create_median_s"],
        warm["run_median_s"],
    )
    assert bound["needed_bytes"] == needed and bound["transfer_s"] == round(needed * 8 / 100e6, 6)
    assert bound["bound_s"] == pytest.approx(
        bound["metadata_pull_s"] + bound["create_s"] + max(bound["warm_run_s"], bound["transfer_s"]), abs=2e-6
    )
    for summary in data["summary"]:
        assert summary["n"] == 2 and summary["status"] == "ok"
        if summary["variant"] != "oci-warm":
            assert summary["total_vs_bound"] == pytest.approx(summary["total_median_s"] / bound["bound_s"], abs=1e-3)

    png_size(out / "e2e-db_1-100mbit_10ms.png")
    assert (out / "runs.md").read_text().count("| nydus-nydusd-list |") == 1
    # Nothing left: the dirs the run made, its processes, its class and filter on lo.
    made = made_by(result.stderr)
    assert len(made) == 7 and not any(path.exists() for path in made), made  # work, 4 snapshotters, ctd, registry
    assert not any(str(d) in " ".join(p.cmdline) for p in host.processes() for d in made)
    assert int(data["registry"].rsplit(":", 1)[1]) not in shaped_ports()
