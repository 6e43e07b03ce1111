"""The measuring run: set up containerd (and the local registry), run every repetition, write and print results,
tear everything down."""

from __future__ import annotations

import contextlib
import datetime
import shutil
import sys
import tempfile
from pathlib import Path

from ..testbed import debs
from ..testbed.containerd import Containerd
from ..testbed.images import build_pause_image
from . import plot, report, workloads
from .config import BenchConfig, Image
from .progress import Progress
from .registry import LocalRegistry, pull_size, push_layout, registry_binary, write_hosts
from .runner import Runner, Sample
from .throttle import Throttle
from .variants import skip_reason


def bench(config: BenchConfig, config_path: Path, *, flavour: str, out_dir: Path, quiet: bool, prog: str) -> int:
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    skips = {variant.name: skip_reason(variant) for variant in config.variants}
    for name, reason in skips.items():
        if reason is not None:
            print(f"{prog}: {name}: skipped: {reason}", file=sys.stderr)
    runnable = sum(reason is None for reason in skips.values())
    progress = Progress(len(config.images) * runnable * config.repetitions, quiet=quiet)
    runtime = debs.fetch_runtime(flavour)
    samples: list[Sample] = []
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="nriopt-benchimage-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        hosts = work / "hosts"
        ctd = stack.enter_context(Containerd(runtime, nri=False, registry_config_dir=hosts))
        ctd.import_image(build_pause_image(work / "pause.tar"))
        progress.note(f"containerd {runtime.deb_version} running privately in {ctd.dir}")
        registry_url: str | None = None
        if config.local:
            registry = stack.enter_context(LocalRegistry(registry_binary()))
            address, registry_url = registry.address, registry.url
            write_hosts(hosts, address, plain_http=True)
            progress.note(f"docker-registry listening on {address} (data in {registry.dir})")
            for image in config.images:
                _push(image, address, registry_url, work, progress)
            if config.throttle:
                stack.enter_context(Throttle(config.throttle, registry.port))
                progress.note(f"throttled: the registry's replies shaped to {config.throttle} on lo (tc)")
        else:
            address = config.registry
            if config.insecure:
                write_hosts(hosts, address.split("/")[0], plain_http=False)
        runner = Runner(ctd.cri, cgroup_parent=ctd.cgroup_parent, logs_dir=work / "logs",
                        pull_timeout=config.pull_timeout, on_phase=progress.phase)
        for image in config.images:
            for variant in config.variants:
                reference = config.reference(address, image, variant)
                if (reason := skips[variant.name]) is not None:
                    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
                    samples.append(Sample(image.name, variant, reference, 0, now, "skipped", note=reason))
                    continue
                fetched = None
                if registry_url is not None:
                    repository, _, tag = f"{image.name}{variant.tag_suffix}".rpartition(":")
                    fetched = pull_size(registry_url, repository, tag)
                for repetition in range(1, config.repetitions + 1):
                    progress.start(f"{image.name} {variant.name} #{repetition}")
                    sample = runner.repetition(image, variant, reference, repetition, fetched)
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


def _push(image: Image, address: str, url: str, work: Path, progress: Progress) -> None:
    """Put the image (a built-in workload, or a tarball) into the local registry."""
    repository, _, tag = image.name.rpartition(":")
    if image.archive is not None:
        tarball = image.archive
    else:
        tarball = workloads.build(str(image.build), f"{address}/{image.name}", work / "images" / f"{repository}.tar")
    size = push_layout(tarball, url, repository, tag)
    progress.note(f"pushed {address}/{image.name} ({size} bytes)")
