"""``bench-image run --runtime-endpoint ...``: the benchmark on a node's own containerd and nydus-snapshotter, which
the benchmark neither starts nor configures. Here the "node" is a testbed containerd (2.1 and 1.7) with a
nydus-snapshotter in list mode, started by the test as an operator would have them running; the benchmark brings
only its registry (and its link) and must leave the node as it found it: no pod, no container, no image of its own,
none of its blobs in the snapshotter's cache, the snapshotter still serving."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.prefetch.handlers import HandlerCri
from testbed import TestbedError, debs, nydus, toolchain
from testbed.containerd import Containerd
from testbed.images import build_pause_image
from tests.e2e.benchimage import BENCH_IMAGE_RUN, made_by


def images(ctd: Containerd) -> list[str]:
    out = subprocess.run(
        [str(ctd.runtime.bin_dir / "ctr"), "-a", ctd.address, "-n", "k8s.io", "images", "ls", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(out.split())


@pytest.mark.parametrize("flavour", ["2.1", "1.7"])
def test_the_benchmark_runs_on_a_nodes_own_containerd_and_snapshotter(
    flavour: str, tmp_path: Path, runtime: Callable[[str], debs.Runtime]
) -> None:
    try:
        tools = toolchain.install()
    except TestbedError as error:
        pytest.fail(f"the nydus tool chain cannot be installed (make nydus): {error}")
    rt = runtime(flavour)
    with contextlib.ExitStack() as node:
        snapshotter = node.enter_context(
            nydus.NydusSnapshotter(tools.snapshotter, tools.nydusd, "list", nydus.Backend("http"))
        )
        ctd = node.enter_context(
            Containerd(rt, registry_config_dir=tmp_path / "hosts", snapshotters={snapshotter.name: snapshotter.address})
        )
        pause = build_pause_image(tmp_path / "pause.tar")
        ctd.import_image(pause)
        nydus.import_image(rt.bin_dir / "ctr", ctd.address, pause, snapshotter.name)
        cri = node.enter_context(HandlerCri(ctd.address))
        images_before = images(ctd)

        config = tmp_path / "bench.yaml"
        config.write_text("""
registry: local
repetitions: 1
timeout: 30
throttle: 100mbit/10ms
settle: 5
images:
  - {name: node-db:1, build: db, ready: {line: "ready to accept connections"}, list: record}
variants:
  - {name: oci, snapshotter: overlayfs}
  - {name: nydus, snapshotter: nydus, tag_suffix: _nydus, prefetch: "off"}
  - {name: nydus-prefetch-list, snapshotter: nydus, tag_suffix: _nydus_prefetch, prefetch: list}
  - {name: nydus-runtime-list, snapshotter: nydus, tag_suffix: _nydus, prefetch: runtime}
""")
        out = tmp_path / "out"
        result = subprocess.run(
            [
                *BENCH_IMAGE_RUN,
                str(config),
                "--out",
                str(out),
                "--runtime-endpoint",
                ctd.address,
                "--nri-socket",
                str(ctd.nri_socket),
                "--cgroup-parent",
                ctd.cgroup_parent,
                "--snapshotter",
                snapshotter.name,
                "--snapshotter-prefetch",
                "list",
                "--nydus-root",
                str(snapshotter.layout.root),
                "--nydus-system-socket",
                str(snapshotter.system_address),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stderr.splitlines()
        # The node's: no private containerd or snapshotter was started, only the registry and the work dir.
        assert "running privately" not in result.stderr
        (where,) = [line.split("] ", 1)[1] for line in lines if f" at {ctd.address}" in line]
        assert where.startswith("containerd ") and where.endswith(
            f" at {ctd.address}, nydus-snapshotter {snapshotter.name}"
        ), where
        assert (
            "nri-optimizer bench-image: nydus: skipped: needs a nydus-snapshotter whose nydusd prefetches off; "
            f"{snapshotter.name}'s prefetches list (--snapshotter-prefetch)"
        ) in lines
        data = json.loads((out / "results.json").read_text())
        runs = {r["variant"]: r for r in data["runs"]}
        assert [(name, r["status"]) for name, r in runs.items()] == [
            ("nydus", "skipped"),
            ("oci", "ok"),
            ("oci-warm", "ok"),
            ("nydus-prefetch-list", "ok"),
            ("nydus-runtime-list", "ok"),
        ]
        # The runtime list reached the node's snapshotter: nydusd prefetched the listed files of an image without
        # a prefetch table, as much as the converted list did.
        assert runs["nydus-runtime-list"]["prefetch_bytes"] == runs["nydus-prefetch-list"]["prefetch_bytes"] > 0

        # The node as it was: its images, no pod or container, none of the benchmark's blobs in the cache, the
        # snapshotter serving; the benchmark's own dirs gone.
        assert images(ctd) == images_before
        assert cri.list_pods() == [] and cri.list_containers() == []
        assert sorted(p.name for p in snapshotter.layout.cache.iterdir()) == []
        assert snapshotter.pid is not None and snapshotter.daemons() == []
        made = made_by(result.stderr)
        assert len(made) == 2 and not any(path.exists() for path in made), made  # the work dir, the registry's
