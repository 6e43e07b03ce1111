"""`nri-optimizer bench-image` against a real containerd 2.1 and Debian's docker-registry on loopback: real pulls
of images built offline, readiness of each kind, cleanup between repetitions, the warm start, a pull through the
shaped link, and the outputs."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from benchmarks.prefetch import workloads
from benchmarks.prefetch.config import Image, Ready, Variant
from benchmarks.prefetch.handlers import HandlerCri
from benchmarks.prefetch.registry import pull_size
from benchmarks.prefetch.report import RUN_COLUMNS, SUMMARY_COLUMNS
from benchmarks.prefetch.runner import Runner, Sample
from benchmarks.prefetch.shaping import Link, ShapedLink
from testbed import debs, host
from testbed.containerd import Containerd
from testbed.images import build_image
from testbed.registry import LocalRegistry, push_layout, registry_binary, write_hosts
from tests.e2e.benchimage import BENCH_IMAGE_RUN, interruptible_module, made_by, png_size

OCI = Variant("oci", "overlayfs")
WEB_PORT = 18391


def processes_in(directories: list[Path]) -> list[host.Proc]:
    """Processes whose command line names one of `directories` (ours: other tests run beside us)."""
    return [p for p in host.processes() if any(str(d) in " ".join(p.cmdline) for d in directories)]


# --- the command, end to end ------------------------------------------------------------------------------


def test_run_two_images_three_repetitions(tmp_path: Path, runtime: Callable[[str], debs.Runtime]) -> None:
    runtime("2.1")  # root, and containerd in the cache: the command fetches nothing then
    config = tmp_path / "bench.yaml"
    config.write_text(f"""
registry: local
insecure_registry: true
repetitions: 3
timeout: 30
images:
  - name: e2e-web:1
    build: web
    arg: -e PORT={WEB_PORT}
    ready: {{url: "http://127.0.0.1:{WEB_PORT}/"}}
  - name: e2e-db:1
    build: db
    arg: -e DB_NAME=e2e
    ready: {{line: "e2e ready to accept connections"}}
variants:
  - {{name: oci, snapshotter: overlayfs}}
  - {{name: nydus-prefetch-list, snapshotter: nydus, tag_suffix: _nydus_prefetch, prefetch: list}}
""")
    out = tmp_path / "out"
    missing = tmp_path / "no-nydusd"  # as for a user without nydus: its variants are skipped, with the reason
    result = subprocess.run(
        [
            *BENCH_IMAGE_RUN,
            str(config),
            "--out",
            str(out),
            "--nydusd",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    why = f"nydus not installed (nydusd: {missing} is not an executable file)"
    assert f"nri-optimizer bench-image: nydus-prefetch-list: skipped: {why}" in result.stderr.splitlines()

    # Every repetition: all columns, the three phases adding up to the total digit for digit, real pulls; each
    # cold start followed by its warm start, which fetches nothing. Rounds run image after image.
    with open(out / "runs.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == RUN_COLUMNS
        rows = list(reader)
    registry = rows[0]["registry"]
    assert registry.startswith("127.0.0.1:")
    ok = [r for r in rows if r["status"] == "ok"]
    assert [(r["repo"], r["variant"], r["repetition"]) for r in ok] == [
        (image, variant, str(n))
        for n in (1, 2, 3)
        for image in ("e2e-web:1", "e2e-db:1")
        for variant in ("oci", "oci-warm")
    ]
    for row in ok:
        assert row["registry"] == registry and row["snapshotter"] == "overlayfs" and row["note"] == ""
        assert (row["link"], row["settled"]) == ("", "true")
        phases = [Decimal(row[f"{p}_s"]) for p in ("pull", "create", "run")]
        assert all(p > 0 for p in phases), row
        assert Decimal(row["total_s"]) == sum(phases), row
        if row["variant"] == "oci":  # every layer is fetched, counted by the delay line in front of the registry
            assert int(row["bytes_fetched"]) == int(row["bytes_total"]) > workloads.BLOBS * workloads.BLOB_SIZE
        else:
            assert (row["bytes_fetched"], row["bytes_total"]) == ("0", "0")
            assert Decimal(row["pull_s"]) < Decimal("0.5")  # the image is there: nothing to fetch
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert [(r["repo"], r["variant"], r["repetition"], r["total_s"]) for r in skipped] == [
        ("e2e-web:1_nydus_prefetch", "nydus-prefetch-list", "0", ""),
        ("e2e-db:1_nydus_prefetch", "nydus-prefetch-list", "0", ""),
    ]
    assert {r["note"] for r in skipped} == {why}
    assert len(rows) == 14

    # The summary: median within min-max for each phase, n = 3.
    with open(out / "summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == SUMMARY_COLUMNS
        summary = list(reader)
    assert [(s["variant"], s["repo"], s["status"], s["n"]) for s in summary] == [
        ("oci", "e2e-web:1", "ok", "3"),
        ("oci-warm", "e2e-web:1", "ok", "3"),
        ("nydus-prefetch-list", "e2e-web:1_nydus_prefetch", "skipped", "0"),
        ("oci", "e2e-db:1", "ok", "3"),
        ("oci-warm", "e2e-db:1", "ok", "3"),
        ("nydus-prefetch-list", "e2e-db:1_nydus_prefetch", "skipped", "0"),
    ]
    for s in summary:
        if s["status"] == "skipped":
            continue
        mine = [r for r in ok if (r["repo"], r["variant"]) == (s["repo"], s["variant"])]
        for phase in ("pull", "create", "run", "total"):
            values = sorted(Decimal(r[f"{phase}_s"]) for r in mine)
            assert [Decimal(s[f"{phase}_{k}_s"]) for k in ("min", "median", "max")] == values
        assert s["bound_s"] == s["total_vs_bound"] == ""  # no nydus without prefetch: no bound

    # JSON: exact µs per run, the same numbers as the CSV.
    data = json.loads((out / "results.json").read_text())
    assert data["registry"] == registry and data["repetitions"] == 3 and data["containerd"].startswith("2.1")
    for run, row in zip(data["runs"], rows, strict=True):
        if run["status"] == "ok":
            assert run["total_us"] == run["pull_us"] + run["create_us"] + run["run_us"]
            assert Decimal(row["total_s"]) * 1_000_000 == run["total_us"]

    # The table on stdout: per image, why there is no bound, a header, a rule and one line per variant.
    table = result.stdout.splitlines()
    for image in ("e2e-web:1", "e2e-db:1"):
        at = table.index(
            f"**{image}**, link not shaped: no bound: it needs nydus without prefetch (prefetch: off) measured"
        )
        assert table[at + 2].startswith("| variant | n | pull (s) |")
        assert [line.split(" | ")[0:2] for line in table[at + 4 : at + 7]] == [
            ["| oci", "3/3"],
            ["| oci-warm", "3/3"],
            ["| nydus-prefetch-list", "-"],
        ]
    runs_md = (out / "runs.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in runs_md if line.startswith("| oci")] == ["| oci", "| oci-warm"] * 2

    # A valid PNG per image, and what was written is what the command says it wrote.
    for name in ("e2e-web_1.png", "e2e-db_1.png"):
        width, height = png_size(out / name)
        assert width >= 600 and height >= 400
    wrote = {line.rsplit(" ", 1)[1] for line in result.stderr.splitlines() if " wrote " in line}
    assert wrote == {
        str(out / n)
        for n in (
            "runs.csv",
            "summary.csv",
            "results.json",
            "table.md",
            "runs.md",
            "targets.md",
            "e2e-web_1.png",
            "e2e-db_1.png",
        )
    }

    # Nothing left: no registry process, no work, containerd or registry dir.
    made = made_by(result.stderr)
    assert len(made) == 3 and not any(path.exists() for path in made), made
    assert processes_in(made) == []


def test_a_config_error_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text("images: [{name: web:1, build: web}]\n")
    result = subprocess.run(
        [*BENCH_IMAGE_RUN, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"nri-optimizer bench-image: {config}: images[0].ready: got None; expected {{url: URL}}, {{line: TEXT}}, "
        "exit or start, e.g. ready: {url: 'http://127.0.0.1:8080/'} (readiness is never guessed)\n"
    )


# --- the parts, against one containerd and registry -------------------------------------------------------


@dataclass
class Bed:
    ctd: Containerd
    registry: LocalRegistry
    runner: Runner
    work: Path

    def push(self, name: str, tarball: Path) -> str:
        repository, _, tag = name.rpartition(":")
        push_layout(tarball, self.registry.client(), repository, tag)
        return f"{self.registry.address}/{name}"

    def content_blobs(self) -> set[str]:
        blobs = self.ctd.dir / "root" / "io.containerd.content.v1.content" / "blobs" / "sha256"
        return {f"sha256:{p.name}" for p in blobs.iterdir()} if blobs.is_dir() else set()


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, runtime: Callable[[str], debs.Runtime]) -> Iterator[Bed]:
    from testbed.images import build_pause_image

    work = tmp_path_factory.mktemp("bench-bed")
    ctd = Containerd(runtime("2.1"), nri=False, registry_config_dir=work / "hosts")
    registry = LocalRegistry(registry_binary())
    try:
        ctd.start()
        ctd.import_image(build_pause_image(work / "pause.tar"))
        registry.start()
        write_hosts(work / "hosts", registry.address, plain_http=True)
        cri = HandlerCri(ctd.address)
        runner = Runner(cri, cgroup_parent=ctd.cgroup_parent, logs_dir=work / "logs", pull_timeout=120)
        yield Bed(ctd, registry, runner, work)
        cri.close()
    finally:
        registry.close()
        ctd.close()  # raises if anything of containerd's is left
    assert not registry.dir.exists() and processes_in([registry.dir]) == []


def manifest_blobs(bed: Bed, name: str) -> set[str]:
    import urllib.request

    repository, _, tag = name.rpartition(":")
    request = urllib.request.Request(
        f"{bed.registry.url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request) as response:
        manifest = json.load(response)
    return {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}


def test_cleanup_removes_the_image_and_its_content_so_each_pull_is_real(bed: Bed) -> None:
    name = "cleanup-db:1"
    reference = bed.push(name, workloads.build("db", name, bed.work / "cleanup-db.tar"))
    image = Image(name, Ready("line", "ready to accept connections"), timeout=30)
    blobs = manifest_blobs(bed, name)
    assert len(blobs) == 3  # config, busybox layer, app layer
    # A pull stores them (so the check below can see them), and a leftover image is removed before a repetition.
    bed.ctd.cri.pull_image(reference)
    assert blobs <= bed.content_blobs()
    for repetition in (1, 2):
        (sample,) = bed.runner.repetition(image, OCI, reference, repetition, None)
        assert sample.status == "ok", sample.note
        assert not bed.ctd.cri.image_status(reference)
        # Not one blob of the image is left (its busybox layer is its own, not the sandbox image's).
        assert blobs & bed.content_blobs() == set()
        assert bed.ctd.cri.list_pods() == [] and bed.ctd.cri.list_containers() == []


def sample_with(bed: Bed, name: str, image: Image, tarball: Path) -> Sample:
    (sample,) = bed.runner.repetition(image, OCI, bed.push(name, tarball), 1, None)
    return sample


def test_readiness_kinds_and_failures(bed: Bed) -> None:
    def job(script: str, out: str) -> Path:
        return build_image(
            f"x/{out}",
            bed.work / f"{out}.tar",
            {"/job": f"#!/bin/sh\n{script}\n".encode()},
            entrypoint=["/bin/sh", "/job"],
        )

    ok = sample_with(bed, "job-ok:1", Image("job-ok:1", Ready("exit"), 30), job("cat /etc/passwd", "ok"))
    assert (ok.status, ok.note) == ("ok", "")
    started = sample_with(bed, "job-start:1", Image("job-start:1", Ready("start"), 30), job("sleep 30", "start"))
    assert started.status == "ok" and started.run_us is not None and started.run_us < 5_000_000

    failing = sample_with(bed, "job-fail:1", Image("job-fail:1", Ready("exit"), 30), job("exit 3", "fail"))
    assert (failing.status, failing.note) == ("failed", "the container exited with 3, not 0")
    early = sample_with(bed, "job-early:1", Image("job-early:1", Ready("line", "never"), 30), job("true", "early"))
    assert (early.status, early.note) == ("failed", "the container exited with 0 before a log line contains 'never'")

    t0 = time.monotonic()
    late = sample_with(bed, "job-late:1", Image("job-late:1", Ready("line", "never"), 1.5), job("sleep 30", "late"))
    assert (late.status, late.note) == ("failed", "not ready after 1.5 s: a log line contains 'never' did not happen")
    assert 1.5 <= time.monotonic() - t0 < 15
    assert (late.pull_us, late.total_us) == (None, None)
    # Every failure was cleaned up like a success.
    assert bed.ctd.cri.list_pods() == [] and bed.ctd.cri.list_containers() == []


def test_the_shaped_link_slows_only_the_registry(bed: Bed) -> None:
    name = "shaped-web:1"
    reference = bed.push(name, workloads.build("web", name, bed.work / "shaped-web.tar"))
    image = Image(name, Ready("url", f"http://127.0.0.1:{WEB_PORT + 1}/"), 30, env={"PORT": str(WEB_PORT + 1)})
    size = pull_size(bed.registry.client(), *name.rsplit(":", 1))
    (fast,) = bed.runner.repetition(image, OCI, reference, 1, size)
    link = Link.parse("40mbit/20ms")
    with ShapedLink(link, bed.registry.port) as shaped:
        write_hosts(bed.work / "hosts", shaped.address, plain_http=True)
        runner = Runner(
            bed.runner.cri,
            cgroup_parent=bed.ctd.cgroup_parent,
            logs_dir=bed.work / "logs",
            pull_timeout=120,
            link_bytes=lambda: shaped.down_bytes,
            link=str(link),
        )
        (slow,) = runner.repetition(image, OCI, f"{shaped.address}/{name}", 2, size)
    assert fast.status == slow.status == "ok", (fast.note, slow.note)
    assert fast.pull_us is not None and slow.pull_us is not None
    # The pull fetched the image through the link (the delay line counted it; its requests too), at the rate.
    assert slow.link == "40mbit/20ms" and size <= (slow.bytes_fetched or 0) < size + 64 * 1024
    floor_us = size * 8 / link.rate * 1e6 * 0.9  # HTB lets a packet pass on credit
    assert slow.pull_us >= floor_us > fast.pull_us, (slow.pull_us, floor_us, fast.pull_us)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_removes_everything_it_started(
    tmp_path: Path, runtime: Callable[[str], debs.Runtime], signum: int
) -> None:
    """Ctrl-C (or SIGTERM) in the middle of a repetition on a shaped link: the run says so and exits 128 + signal,
    and its shaping of lo, its delay line, registry, containerd and dirs are gone."""
    runtime("2.1")
    config = tmp_path / "bench.yaml"
    config.write_text(f"""
registry: local
repetitions: 5
timeout: 60
throttle: 10mbit/40ms
images:
  - {{name: e2e-web:1, build: web, arg: -e PORT={WEB_PORT + 2}, ready: {{url: "http://127.0.0.1:{WEB_PORT + 2}/"}}}}
variants:
  - {{name: oci, snapshotter: overlayfs}}
""")
    proc = subprocess.Popen(
        interruptible_module("nri_optimizer", "bench-image", "run", str(config), "--out", str(tmp_path / "out")),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:  # until the first repetition has begun fetching through the link
            lines.append(line)
            if "round trip measured" in line:
                break
        time.sleep(2)
        proc.send_signal(signum)
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 128 + signum, rest[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(lines) + rest
    assert stderr.endswith(
        f"nri-optimizer bench-image: interrupted by {signal.Signals(signum).name}; what it "
        "started was stopped and removed\n"
    ), stderr[-2000:]
    made = made_by(stderr)
    assert len(made) == 3 and not any(path.exists() for path in made), made  # work, containerd, registry
    assert processes_in(made) == []
    registry_port = int(stderr.split("docker-registry listening on 127.0.0.1:")[1].split()[0])
    out = subprocess.run(["tc", "filter", "show", "dev", "lo"], capture_output=True, text=True, check=True).stdout
    assert f"match {registry_port << 16:08x}/ffff0000 at 20" not in out
