"""The nydus path for real, on containerd 2.1 and 1.7: record a workload's list with the daemon, convert the image
with it (``nri-optimizer convert``, the built-in nydus-image converter), push it to a registry on loopback, and run
it lazily through CRI on nydus-snapshotter, once per nydusd prefetch mode (off, all, list).

The tools are the real ones ``make nydus`` installs: nydus-image, nydusd (nydus-rs 2.2.0), containerd-nydus-grpc
(Debian's nydus-snapshotter 0.13.4), docker-registry (Debian). The workload reads four files of the image; 16 MiB
of it are never read, so prefetching everything costs far more than prefetching the list.

What is checked:
(a) the container's output, in every mode;
(b) the pushed image's prefetch table (``nydus-image inspect -R prefetch`` of the bootstrap pulled back from the
    registry) is the recorded list, in its order;
(c) nydusd's metrics, once its prefetch is done and before the workload starts, then after it: with the list nydusd
    prefetches exactly the listed files' chunks and the workload then reads nothing more from the registry;
    prefetch-all reads every blob whole; with prefetch off nothing is prefetched and the workload's reads fetch the
    listed files' chunks on demand. The pull itself is lazy: containerd's content store never holds a data blob.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import random
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.prefetch.handlers import HandlerCri
from nri_optimizer.cri.client import read_log
from nri_optimizer.errors import RegistryError
from nri_optimizer.nydus import bootstrap
from nri_optimizer.nydus.image import BOOTSTRAP_ANNOTATION, BOOTSTRAP_IN_LAYER, NYDUS_BLOB
from nri_optimizer.oci.registry import Registry
from testbed import TestbedError, debs, nydus, toolchain
from testbed.bed import Testbed
from testbed.containerd import NAMESPACE, Containerd
from testbed.images import FileSpec, build_image, build_pause_image
from testbed.plugin import REGISTERED, PluginLog, config_text, install_prelaunched
from testbed.registry import LocalRegistry, push_layout, write_hosts
from testbed.tracing import SERVER, Traced

MiB = 1 << 20
REPOSITORY = "nydus-workload"
_rng = random.Random(13)  # the same bytes every run: stable digests, and content that does not compress
DATA = _rng.randbytes(300_000)
UNREAD = {f"/app/unused/blob-{n}": _rng.randbytes(4 * MiB) for n in range(4)}
GREETING = b"hello from a lazily pulled image\n"
WORKLOAD_FILES: dict[str, bytes | FileSpec] = {
    "/app/run.sh": FileSpec(b"#!/bin/sh\ncat /app/greeting.txt\nmd5sum /app/lib/data.bin\n", mode=0o755),
    "/app/greeting.txt": GREETING,
    "/app/lib/data.bin": DATA,
    **UNREAD,
}
# What the daemon records: the script, its interpreter (/bin/sh is busybox), the files the script reads.
READ_SET = ["/app/run.sh", "/bin/busybox", "/app/greeting.txt", "/app/lib/data.bin"]
OUTPUT = [GREETING.decode().strip(), f"{hashlib.md5(DATA).hexdigest()}  /app/lib/data.bin"]


@pytest.fixture(scope="module")
def tools() -> toolchain.Toolchain:
    try:
        return toolchain.install()
    except TestbedError as error:
        pytest.fail(f"the nydus tool chain cannot be installed (make nydus): {error}")


@pytest.fixture(scope="module")
def registry(tools: toolchain.Toolchain) -> Iterator[LocalRegistry]:
    with LocalRegistry(tools.registry) as started:
        yield started


@pytest.fixture(scope="module")
def workload(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(reference, image-layout tarball) of the workload, pushed to the registry as REPOSITORY:1."""
    reference = f"{registry.address}/{REPOSITORY}:1"
    tarball = build_image(
        reference, tmp_path_factory.mktemp("workload") / "workload.tar", WORKLOAD_FILES, entrypoint=["/app/run.sh"]
    )
    push_layout(tarball, registry.client(), REPOSITORY, "1")
    return reference, tarball


def convert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nri_optimizer", "convert", "--source-insecure", "--target-insecure", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def pushed_bootstrap(client: Registry, tag: str, out: Path) -> Path:
    """The image's bootstrap, as nydus-snapshotter gets it: the bootstrap layer of the pushed manifest."""
    manifest = client.image_manifest(REPOSITORY, tag).json()
    (layer,) = [layer for layer in manifest["layers"] if layer.get("annotations", {}).get(BOOTSTRAP_ANNOTATION)]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(client.blob(REPOSITORY, layer["digest"], 64 * MiB)))) as tar:
        member = tar.extractfile(BOOTSTRAP_IN_LAYER)
        assert member is not None
        out.write_bytes(member.read())
    return out


def chunk_bytes(boot: Path, paths: list[str] | None, nydus_image: str) -> int:
    """The bytes in the blobs of the chunks of `paths` (None: every file); a chunk stored once counts once."""
    layout = bootstrap.inodes(boot, nydus_image=nydus_image)
    chunks = {
        (c.blob_index, c.compressed_offset): c.compressed_size
        for path in (layout if paths is None else paths)
        for c in layout[path].chunks
    }
    return sum(chunks.values())


@dataclass(frozen=True)
class Metrics:
    registry_bytes: int  # /api/v1/metrics/backend read_amount_total: everything nydusd read from the registry
    prefetch_bytes: int  # /api/v1/metrics/blobcache prefetch_data_amount
    prefetch_requests: int


def settled_metrics(
    snapshotter: nydus.NydusSnapshotter, reference: str, at_least: int = 0, timeout: float = 60.0
) -> Metrics:
    """nydusd's metrics once it has read `at_least` bytes from the registry and its reads have stopped for a second
    (prefetch runs in the background from the mount on; nydusd has no "prefetch done" to ask for: its
    prefetch_end_time is set while it still reads)."""
    deadline = time.monotonic() + timeout
    last: Metrics | None = None
    while True:
        ((backend,), (blobcache,)) = (
            snapshotter.nydusd_api(reference, f"/api/v1/metrics/{what}") for what in ("backend", "blobcache")
        )
        now = Metrics(
            int(backend["read_amount_total"]),
            int(blobcache["prefetch_data_amount"]),
            int(blobcache["prefetch_requests_count"]),
        )
        if now == last and now.registry_bytes >= at_least:
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"nydusd still reading after {timeout} s: {now}")
        last = now
        time.sleep(1.0)


def content_digests(ctd: Containerd) -> set[str]:
    out = subprocess.run(
        [str(ctd.runtime.bin_dir / "ctr"), "-a", ctd.address, "-n", NAMESPACE, "content", "ls", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


@dataclass(frozen=True)
class LazyRun:
    output: list[str]
    content: set[str]  # containerd's content store right after the pull
    before: Metrics  # nydusd's, once its prefetch is done and before the workload starts
    after: Metrics  # once the workload has run


def run_lazily(
    cri: HandlerCri, ctd: Containerd, snapshotter: nydus.NydusSnapshotter, reference: str, logs: Path, prefetched: int
) -> LazyRun:
    """Pull `reference` on `snapshotter`'s handler, create its container (nydusd mounts the image and starts its
    prefetch), wait for nydusd to have read `prefetched` bytes and stopped, then run the workload to its end; then
    remove it all. The workload starting after the prefetch keeps the two from fetching a chunk both."""
    cri.pull_image_on(snapshotter.name, reference, timeout=120)
    content = content_digests(ctd)
    logs.mkdir()
    pod = cri.run_pod_on(snapshotter.name, logs.name, cgroup_parent=ctd.cgroup_parent, log_directory=str(logs))
    container = cri.create_container(pod, logs.name, reference)
    try:
        before = settled_metrics(snapshotter, reference, prefetched)
        cri.start_container(container)
        Testbed(ctd).wait_exited(container, 60)
        after = settled_metrics(snapshotter, reference)
        return LazyRun(read_log(logs / f"{logs.name}.log"), content, before, after)
    finally:
        cri.remove_container(container)
        cri.stop_pod(pod.id)
        cri.remove_pod(pod.id)
        cri.remove_image(reference)


def test_the_recorded_list_is_the_prefetch_table_and_what_nydusd_prefetches(
    flavour: str,
    tools: toolchain.Toolchain,
    registry: LocalRegistry,
    workload: tuple[str, Path],
    runtime: Callable[[str], debs.Runtime],
    tmp_path: Path,
) -> None:
    reference, tarball = workload
    client = registry.client()
    log = PluginLog(tmp_path / "plugin.log")
    plugins, confs = install_prelaunched(
        tmp_path / "nri", config_text(log.path, tmp_path / "results", f'server_path = "{SERVER}"\n')
    )
    with contextlib.ExitStack() as stack:
        snapshotters = {
            mode: stack.enter_context(
                nydus.NydusSnapshotter(tools.snapshotter, tools.nydusd, mode, nydus.Backend("http"))
            )
            for mode in nydus.PREFETCH_MODES
        }
        write_hosts(tmp_path / "hosts", registry.address, plain_http=True)
        ctd = stack.enter_context(
            Containerd(
                runtime(flavour),
                nri_plugin_path=plugins,
                nri_plugin_config_path=confs,
                registry_config_dir=tmp_path / "hosts",
                snapshotters={s.name: s.address for s in snapshotters.values()},
            )
        )
        pause = build_pause_image(tmp_path / "pause.tar")
        ctd.import_image(pause)
        for snapshotter in snapshotters.values():
            nydus.import_image(ctd.runtime.bin_dir / "ctr", ctd.address, pause, snapshotter.name)
        ctd.import_image(tarball)
        log.wait_for(REGISTERED)

        # Record: the OCI image, on overlayfs, traced by the pre-launched daemon.
        traced = Traced(Testbed(ctd), log, tmp_path / "results")
        run = traced.run(["/app/run.sh"], image=reference)
        assert run.log_lines() == OUTPUT
        traced.finish(run)
        recorded = traced.result(reference)
        assert recorded == READ_SET

        # Convert with the list the daemon saved (convert finds it under persist_dir) and push. Every listed file
        # goes into the table: which ones the default policy leaves on demand depends on the page cache's state
        # (tests/unit/nydus/test_partial.py has the rule, tests/e2e/test_nydus_build.py the image it makes).
        result = convert(
            "--source",
            reference,
            "--target",
            f"{registry.address}/{REPOSITORY}:nydus",
            "--persist-dir",
            str(tmp_path / "results"),
            "--config",
            "/dev/null",
            "--unread-budget",
            "all",
        )
        assert result.returncode == 0, result.stderr
        digest = client.manifest(REPOSITORY, "nydus").digest
        assert result.stdout == f"{registry.address}/{REPOSITORY}@{digest}\n"
        assert "warning" not in result.stderr
        manifest = client.manifest(REPOSITORY, "nydus")
        for mode in nydus.PREFETCH_MODES:  # one tag per mode: each pull is its own image to containerd
            client.push_manifest(REPOSITORY, f"nydus-{mode}", manifest.body, manifest.media_type)

        # (b) The pushed image's prefetch table is the recorded list, in its order.
        boot = pushed_bootstrap(client, "nydus", tmp_path / "image.boot")
        table = bootstrap.prefetch_table(boot, nydus_image=str(tools.nydus_image))
        assert bootstrap.prefetch_paths(table) == recorded
        assert all(entry.inode for entry in table)  # no pattern that matched nothing
        listed_bytes = chunk_bytes(boot, recorded, str(tools.nydus_image))
        blobs = [layer for layer in manifest.json()["layers"] if layer["mediaType"] == NYDUS_BLOB]
        bootstrap_digest = manifest.json()["layers"][-1]["digest"]
        blob_bytes = sum(int(blob["size"]) for blob in blobs)
        # Each blob ends with its chunk table and table of contents, which nydusd reads before its data.
        blob_tables = blob_bytes - chunk_bytes(boot, None, str(tools.nydus_image))

        # (a) and (c): run it lazily in each prefetch mode.
        cri = HandlerCri(ctd.address)
        stack.callback(cri.close)
        runs = {
            mode: run_lazily(
                cri,
                ctd,
                snapshotters[mode],
                f"{registry.address}/{REPOSITORY}:nydus-{mode}",
                tmp_path / f"logs-{mode}",
                {"off": 0, "all": blob_bytes, "list": listed_bytes}[mode],
            )
            for mode in nydus.PREFETCH_MODES
        }
    figures = {mode: (run.before, run.after) for mode, run in runs.items()}
    print(
        f"containerd {flavour}: listed chunks {listed_bytes} B, blobs {blob_bytes} B (chunk tables "
        f"{blob_tables} B), nydusd before / after the workload: {figures}"
    )
    for mode, lazy in runs.items():
        assert lazy.output == OUTPUT, mode
        # Lazy: the pull fetched the bootstrap layer, not one data blob.
        assert bootstrap_digest in lazy.content and not lazy.content & {blob["digest"] for blob in blobs}, mode
    off, every, listed = runs["off"], runs["all"], runs["list"]
    # To mount the image nydusd reads each blob's chunk table and table of contents from the registry, nothing else
    # (a few bytes more or less from one mount to the next: 8,499 and 8,564 B were seen for one image).
    for lazy in (off, listed):
        assert 0 < lazy.before.registry_bytes - lazy.before.prefetch_bytes < blob_tables + 4096, lazy
    # Off: nothing prefetched; the workload's reads fetch exactly the listed files' chunks, on demand.
    assert (off.after.prefetch_bytes, off.after.prefetch_requests) == (0, 0)
    assert off.after.registry_bytes - off.before.registry_bytes == listed_bytes
    # The list: before the workload starts, nydusd has prefetched exactly the listed files' chunks, and the workload
    # then reads nothing more from the registry: the list is what it needs, and all of it was there first.
    assert listed.before.prefetch_requests > 0
    assert listed.before.prefetch_bytes == listed_bytes
    assert listed.after == listed.before
    # Prefetch-all reads every blob whole, 13 times the list's bytes here (a chunk read at mount while the prefetch
    # fetches it can cross the link twice: 0.5 MB more was seen once on a busy machine).
    assert every.before.registry_bytes >= blob_bytes > 10 * listed.after.registry_bytes
    assert every.after == every.before


# --- what convert makes of odd lists, against the real registry and nydus-image ------------------------------------


def test_listed_paths_not_in_the_image_are_counted_and_left_out_of_the_table(
    tools: toolchain.Toolchain, registry: LocalRegistry, workload: tuple[str, Path], tmp_path: Path
) -> None:
    reference, _ = workload
    listing = tmp_path / "list"
    listing.write_text("# incomplete: 2 events lost\n/app/greeting.txt\n/no/such/file\n/bin/busybox\n/etc/gone\n")
    result = convert(
        "--source", reference, "--target", f"{registry.address}/{REPOSITORY}:partial", "--list", str(listing)
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"nri-optimizer convert: warning: {listing} is incomplete (2 events lost): the prefetch "
        "table gets the files it has"
    )
    assert (
        "nri-optimizer convert: warning: nydus build: 2 listed paths are not in the image, left out of the "
        "prefetch table (first: /no/such/file)"
    ) in lines
    assert lines[-1].endswith("; prefetch table of 2 files, 2 listed paths not in the image left out)")
    boot = pushed_bootstrap(registry.client(), "partial", tmp_path / "image.boot")
    table = bootstrap.prefetch_table(boot, nydus_image=str(tools.nydus_image))
    assert bootstrap.prefetch_paths(table) == ["/app/greeting.txt", "/bin/busybox"]
    assert all(entry.inode for entry in table)


@pytest.mark.parametrize("text", ["", "# incomplete: the trace server died\n"], ids=["empty", "marker-only"])
def test_a_list_naming_no_file_converts_nothing_and_pushes_nothing(
    registry: LocalRegistry, workload: tuple[str, Path], tmp_path: Path, text: str
) -> None:
    reference, _ = workload
    listing = tmp_path / "list"
    listing.write_text(text)
    result = convert(
        "--source", reference, "--target", f"{registry.address}/{REPOSITORY}:empty", "--list", str(listing)
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"nri-optimizer convert: {listing} names no file: nothing to prefetch (record the image "
        "again, or convert without a prefetch table with --no-list)\n"
    )
    with pytest.raises(RegistryError, match="HTTP 404 MANIFEST_UNKNOWN"):
        registry.client().manifest(REPOSITORY, "empty")


def test_no_list_converts_without_a_prefetch_table(
    tools: toolchain.Toolchain, registry: LocalRegistry, workload: tuple[str, Path], tmp_path: Path
) -> None:
    reference, _ = workload
    result = convert("--source", reference, "--target", f"{registry.address}/{REPOSITORY}:plain", "--no-list")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1].endswith("; no prefetch table)")
    boot = pushed_bootstrap(registry.client(), "plain", tmp_path / "image.boot")
    assert bootstrap.prefetch_table(boot, nydus_image=str(tools.nydus_image)) == []
