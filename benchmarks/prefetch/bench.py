"""The measuring run: set up containerd (and the local registry, and a nydus-snapshotter per prefetch mode the nydus
variants use), run every repetition, write and print results, tear everything down.

With ``registry: local`` the nydus variants' images are made during the run: nri-optimizer convert's built-in converter
turns each pushed image into one tag per nydus variant in the local registry (see convert.py). A nydus variant that
cannot run (tools missing, no recorded list for `prefetch: list`) is reported as skipped with the reason.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.prefetch import plot, report, variants, workloads
from benchmarks.prefetch.config import BenchConfig, Image, Variant
from benchmarks.prefetch.convert import ConvertError, variant_conversion
from benchmarks.prefetch.handlers import HandlerCri
from benchmarks.prefetch.progress import Progress
from benchmarks.prefetch.registry import pull_size
from benchmarks.prefetch.runner import Runner, Sample, Status
from benchmarks.prefetch.throttle import Throttle
from nri_optimizer.errors import OptimizerError
from nri_optimizer.oci.registry import Registry
from testbed import debs, nydus
from testbed.containerd import Containerd
from testbed.images import build_pause_image
from testbed.registry import LocalRegistry, push_layout, registry_binary, write_hosts


def nydus_backend(config: BenchConfig) -> nydus.Backend:
    """How nydusd talks to the registry: plain HTTP to the local one; HTTPS without certificate checks to an
    insecure one (containerd also falls back to HTTP there, nydusd cannot); HTTPS otherwise."""
    if config.local:
        return nydus.Backend("http")
    return nydus.Backend("https", skip_verify=config.insecure)


def bench(config: BenchConfig, config_path: Path, *, flavour: str, out_dir: Path, quiet: bool, prog: str,
          persist_dir: str) -> int:
    """Measure; `persist_dir` is where the plugin saved its lists (for `prefetch: list` images without `list`)."""
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    found = variants.find(config)
    skips = {variant.name: variants.skip_reason(variant, found, local=config.local) for variant in config.variants}
    for name, reason in skips.items():
        if reason is not None:
            print(f"{prog}: {name}: skipped: {reason}", file=sys.stderr)
    modes = sorted({v.prefetch for v in config.variants if v.prefetch and skips[v.name] is None},
                   key=nydus.PREFETCH_MODES.index)
    runnable = sum(reason is None for reason in skips.values())
    progress = Progress(len(config.images) * runnable * config.repetitions, quiet=quiet)
    runtime = debs.fetch_runtime(flavour)
    samples: list[Sample] = []
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="nriopt-benchimage-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        snapshotters: dict[str, nydus.NydusSnapshotter] = {}
        for mode in modes:
            assert found.tools.snapshotter is not None and found.tools.nydusd is not None
            snapshotters[mode] = stack.enter_context(nydus.NydusSnapshotter(
                found.tools.snapshotter, found.tools.nydusd, mode, nydus_backend(config),
                threads=config.nydus.prefetch_threads))
            progress.note(f"nydus-snapshotter {snapshotters[mode].name} running privately in "
                          f"{snapshotters[mode].dir} (nydusd {found.tools.nydusd})")
        hosts = work / "hosts"
        # Entered after the snapshotters, so it is closed (its pods removed) before they are.
        ctd = stack.enter_context(Containerd(runtime, nri=False, registry_config_dir=hosts,
                                             snapshotters={s.name: s.address for s in snapshotters.values()}))
        pause = build_pause_image(work / "pause.tar")
        ctd.import_image(pause)
        for snapshotter in snapshotters.values():  # a handler's pods run their sandbox from its snapshotter
            nydus.import_image(runtime.bin_dir / "ctr", ctd.address, pause, snapshotter.name)
        progress.note(f"containerd {runtime.deb_version} running privately in {ctd.dir}")
        cri = HandlerCri(ctd.address)
        stack.callback(cri.close)
        local: Registry | None = None
        not_made: dict[tuple[str, str], tuple[Status, str]] = {}  # (image, variant) -> (status, note)
        if config.local:
            registry = stack.enter_context(LocalRegistry(registry_binary()))
            address, local = registry.address, registry.client()
            write_hosts(hosts, address, plain_http=True)
            progress.note(f"docker-registry listening on {address} (data in {registry.dir})")
            for image in config.images:
                _push(image, address, local, work, progress)
                for variant in config.variants:
                    if variant.snapshotter == "nydus" and skips[variant.name] is None:
                        assert found.nydus_image is not None
                        failure = _convert(config, image, variant, address, found.nydus_image, persist_dir, progress)
                        if failure is not None:
                            not_made[(image.name, variant.name)] = failure
            if config.throttle:
                stack.enter_context(Throttle(config.throttle, registry.port))
                progress.note(f"throttled: the registry's replies shaped to {config.throttle} on lo (tc)")
        else:
            address = config.registry
            if config.insecure:
                write_hosts(hosts, address.split("/")[0], plain_http=False)
        progress.total -= len(not_made) * config.repetitions
        runner = Runner(cri, cgroup_parent=ctd.cgroup_parent, logs_dir=work / "logs",
                        pull_timeout=config.pull_timeout, on_phase=progress.phase)
        for image in config.images:
            for variant in config.variants:
                reference = config.reference(address, image, variant)
                skipped = skips[variant.name]
                status: Status
                status, reason = ("skipped", skipped) if skipped else not_made.get((image.name, variant.name),
                                                                                    ("ok", ""))
                if reason:
                    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
                    samples.append(Sample(image.name, variant, reference, 0 if status == "skipped" else 1, now,
                                          status, note=reason))
                    continue
                fetched = None
                if local is not None:
                    repository, _, tag = f"{image.name}{variant.tag_suffix}".rpartition(":")
                    fetched = pull_size(local, repository, tag, nydus=variant.snapshotter == "nydus")
                for repetition in range(1, config.repetitions + 1):
                    progress.start(f"{image.name} {variant.name} #{repetition}")
                    sample = runner.repetition(image, variant, reference, repetition, fetched,
                                               snapshotters.get(variant.prefetch or ""))
                    samples.append(sample)
                    progress.finished(sample)
        summaries = report.summarize(samples)
        meta = {
            "started": started,
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "config": str(config_path),
            "registry": address,
            "containerd": runtime.deb_version,
            "throttle": config.throttle,
            "repetitions": config.repetitions,
            "nydus": {
                "snapshotter": str(found.tools.snapshotter) if found.tools.snapshotter else None,
                "nydusd": str(found.tools.nydusd) if found.tools.nydusd else None,
                "nydus_image": str(found.nydus_image) if found.nydus_image else None,
                "prefetch_threads": config.nydus.prefetch_threads,
                "snapshotters": [s.name for s in snapshotters.values()],
            },
        }
        files = report.write(out_dir, samples, summaries, meta)
        try:
            files += plot.plot_all(summaries, out_dir, address, config.throttle)
        except ImportError:
            print(f"{prog}: no plots: matplotlib is not installed (pip install 'nri-optimizer[bench]')",
                  file=sys.stderr)
    print(report.table(summaries, address))
    for path in files:
        print(f"{prog}: wrote {path}", file=sys.stderr)
    return 0 if all(s.status != "failed" for s in samples) else 1


def _convert(config: BenchConfig, image: Image, variant: Variant, address: str, nydus_image: Path, persist_dir: str,
             progress: Progress) -> tuple[Status, str] | None:
    """Convert the pushed image into the variant's tag; (status, why) when that cannot be or fails."""
    try:
        conversion = variant_conversion(config, image, variant, address, persist_dir=persist_dir)
    except ConvertError as exc:
        return "skipped", str(exc)
    progress.note(f"converting: {conversion.printable()}")
    try:
        converted = conversion.run(str(nydus_image))
    except OptimizerError as exc:
        return "failed", f"convert: {exc}"
    table = converted.build.prefetch
    progress.note(f"pushed {converted.target} ({converted.size} bytes, prefetch table of {len(table)} files)")
    return None


def _push(image: Image, address: str, registry: Registry, work: Path, progress: Progress) -> None:
    """Put the image (a built-in workload, or a tarball) into the local registry."""
    repository, _, tag = image.name.rpartition(":")
    if image.archive is not None:
        tarball = image.archive
    else:
        tarball = workloads.build(str(image.build), f"{address}/{image.name}", work / "images" / f"{repository}.tar")
    size = push_layout(tarball, registry, repository, tag)
    progress.note(f"pushed {address}/{image.name} ({size} bytes)")
