"""The measuring run: set up the node (a private containerd with a private nydus-snapshotter per prefetch mode the
nydus variants use, or a node's own with ``--runtime-endpoint``), the local registry, the lists and the images
(prepare.py); then, for each link setting, shape the registry's link (shaping.py) and run every repetition; write
and print the results; tear everything down (also on errors and Ctrl-C: every step is a context that undoes itself).

Repetitions are interleaved: round r runs every image with every variant once, the variants in an order rotated by
r, so that a slow drift of the machine spreads over all variants instead of landing on one. The first overlayfs
variant's repetitions also make the warm start (runner.py), which with nydus without prefetch gives the bound.
A variant that cannot run (tools missing, a list that does not exist, a conversion that failed) is reported as
skipped or failed with the reason, never dropped.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.prefetch import bounds as bounding
from benchmarks.prefetch import lists, plot, report, targets, variants
from benchmarks.prefetch.config import BenchConfig, Variant
from benchmarks.prefetch.convert import runtime_table
from benchmarks.prefetch.handlers import HandlerCri
from benchmarks.prefetch.prepare import FUSE_READAHEAD_KIB, Node, Prepared, prepare_image, push
from benchmarks.prefetch.progress import Progress
from benchmarks.prefetch.registry import nydus_blobs, pull_size
from benchmarks.prefetch.runner import WARM, Runner, Sample, Status
from benchmarks.prefetch.shaping import Link, ShapedLink
from benchmarks.prefetch.snapshotter import ExistingSnapshotter, Handler
from nri_optimizer.oci.registry import Registry
from testbed import debs, nydus
from testbed.containerd import Containerd
from testbed.images import build_pause_image
from testbed.registry import LocalRegistry, registry_binary, write_hosts

MODE_OF: dict[str, nydus.PrefetchMode] = {"off": "off", "all": "all", "list": "list", "runtime": "list"}
HandlerKey = tuple[nydus.PrefetchMode, nydus.FsPrefetch | None]
# Seconds a CRI call may take. Not the client's default 10: removing an image of 10,000 files (its snapshots
# deleted synchronously) or stopping a pod takes longer than that on a busy 2-core machine, and a cleanup that gives
# up would end the whole run.
CRI_TIMEOUT = 180.0


@dataclass(frozen=True)
class Existing:
    """A node's own containerd and nydus-snapshotter (``bench-image run --runtime-endpoint ...``)."""

    runtime_endpoint: str
    nri_socket: Path | None
    snapshotter: str | None  # its runtime handler for nydus; None: no nydus variant runs
    prefetch: nydus.PrefetchMode  # what its nydusd template prefetches
    nydus_root: Path
    system_socket: Path
    cgroup_parent: str = ""


@dataclass
class Setup:
    node: Node
    handlers: dict[HandlerKey, Handler]  # the snapshotter each nydus variant runs on (handler_key)
    pattern: Handler | None  # the snapshotter recording nydusd's access pattern
    hosts: Path | None  # containerd's registry hosts dir, None on a node's own containerd
    containerd: str
    place: str  # where, for the progress lines and the results


def nydus_backend(config: BenchConfig) -> nydus.Backend:
    """How nydusd talks to the registry: plain HTTP to the local one; HTTPS without certificate checks to an
    insecure one (containerd also falls back to HTTP there, nydusd cannot); HTTPS otherwise."""
    if config.local:
        return nydus.Backend("http")
    return nydus.Backend("https", skip_verify=config.insecure)


def handler_key(variant: Variant) -> HandlerKey:
    """Which snapshotter a nydus variant runs on: its prefetch mode and nydusd settings (None: the run's own)."""
    return MODE_OF[variant.prefetch or "off"], variant.nydusd if variant.prefetch != "off" else None


def skip_reason(variant: Variant, found: variants.Nydus, config: BenchConfig, existing: Existing | None) -> str | None:
    if existing is None or variant.snapshotter != "nydus":
        return variants.skip_reason(variant, found, local=config.local)
    if existing.snapshotter is None:
        return "no nydus-snapshotter given (--snapshotter NAME)"
    if MODE_OF[variant.prefetch or "off"] != existing.prefetch:
        return (
            f"needs a nydus-snapshotter whose nydusd prefetches {MODE_OF[variant.prefetch or 'off']}; "
            f"{existing.snapshotter}'s prefetches {existing.prefetch} (--snapshotter-prefetch)"
        )
    if variant.nydusd is not None:
        return f"nydusd's settings are {existing.snapshotter}'s own: a variant's nydusd key needs the private testbed"
    if config.local and found.nydus_image_problem is not None:
        return f"no nydus image to pull: the local registry's come from nydus-image ({found.nydus_image_problem})"
    return None


def bench(
    config: BenchConfig,
    config_path: Path,
    *,
    flavour: str,
    out_dir: Path,
    quiet: bool,
    prog: str,
    persist_dir: str,
    existing: Existing | None = None,
) -> int:
    """Measure; `persist_dir` is where the plugin saved its lists (for images without `list`)."""
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    found = variants.find(config)
    skips = {v.name: skip_reason(v, found, config, existing) for v in config.variants}
    for name, reason in skips.items():
        if reason is not None:
            print(f"{prog}: {name}: skipped: {reason}", file=sys.stderr)
    runnable = [v for v in config.variants if skips[v.name] is None]
    warm = next((v for v in runnable if v.snapshotter == "overlayfs"), None)
    links: Sequence[Link | None] = config.links or (None,)
    per_round = len(config.images) * (len(runnable) + (warm is not None))
    progress = Progress(len(links) * config.repetitions * per_round, quiet=quiet)
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="nriopt-benchimage-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        progress.note(f"bench-image working in {work}")
        setup = stack.enter_context(_setup(config, found, runnable, flavour, existing, work, progress))
        progress.note(setup.place)
        nydus_image = str(found.nydus_image) if found.nydus_image is not None else None
        registry: LocalRegistry | None = None
        if config.local:
            registry = stack.enter_context(LocalRegistry(registry_binary()))
            if setup.hosts is not None:
                write_hosts(setup.hosts, registry.address, plain_http=True)
            progress.note(f"docker-registry listening on {registry.address} (data in {registry.dir})")
        prepared = _prepare(config, setup, registry, runnable, work, nydus_image, persist_dir, progress)
        # The rounds of variants whose image could not be made are not run: the progress total loses them.
        unmade = [name for (_, name) in prepared.unmade if skips.get(name) is None]
        progress.total -= (
            len(links) * config.repetitions * (len(unmade) + sum(1 for n in unmade if warm and n == warm.name))
        )
        samples: list[Sample] = []
        meta_links: list[dict[str, Any]] = []
        for link in links:
            link_samples, about = _over_link(
                link, config, setup, registry, runnable, warm, skips, prepared, work, progress
            )
            samples += link_samples
            meta_links.append(about)
        meta = _meta(config, config_path, started, registry, setup, meta_links, found, nydus_image)
        summaries, found_bounds, compared, files = _write(config, links, samples, prepared, meta, work, out_dir, prog)
    print(report.table(summaries, found_bounds))
    if compared:
        print("\n" + report.lists_table(compared, summaries))
    for path in files:
        print(f"{prog}: wrote {path}", file=sys.stderr)
    return 0 if all(s.status != "failed" for s in samples) else 1


def _prepare(
    config: BenchConfig,
    setup: Setup,
    registry: LocalRegistry | None,
    runnable: list[Variant],
    work: Path,
    nydus_image: str | None,
    persist_dir: str,
    progress: Progress,
) -> Prepared:
    """Each image pushed to the local registry (if the run has one) and made in every form the variants need;
    then the nydus snapshotters are told which blobs are whose."""
    prepared = Prepared()
    for image in config.images:
        if registry is not None:
            push(image, registry.address, registry.client(), work, progress.note)
        prepare_image(
            config,
            image,
            registry.address if registry else config.registry,
            setup.node,
            prepared,
            runnable=runnable,
            pattern=setup.pattern,
            registry=registry.client() if registry else None,
            work=work,
            nydus_image=nydus_image,
            persist_dir=persist_dir,
            say=progress.note,
        )
    _tell_blobs(setup, prepared, config, registry)
    return prepared


def _over_link(
    link: Link | None,
    config: BenchConfig,
    setup: Setup,
    registry: LocalRegistry | None,
    runnable: list[Variant],
    warm: Variant | None,
    skips: dict[str, str | None],
    prepared: Prepared,
    work: Path,
    progress: Progress,
) -> tuple[list[Sample], dict[str, Any]]:
    """Every repetition of every variant with the registry behind this link; its samples and what the run's
    metadata says of the link."""
    label = str(link) if link else ""
    with _shaped(link, registry) as shaped:
        address = shaped.address if shaped is not None else config.registry
        about: dict[str, Any] = {"link": label, "address": address}
        if shaped is not None:
            assert registry is not None
            if setup.hosts is not None:
                write_hosts(setup.hosts, address, plain_http=True)
            about["rtt_measured_ms"] = round(shaped.rtt_measured * 1e3, 2)
            progress.note(
                f"{f'link {link}' if link else 'not shaped'}: the registry at {address} (a delay "
                f"line in front of {registry.address}{', HTB on lo' if link else ''}); round trip "
                f"measured {shaped.rtt_measured * 1e3:.1f} ms"
            )
        runner = Runner(
            setup.node.cri,
            cgroup_parent=setup.node.cgroup_parent,
            logs_dir=work / "logs",
            pull_timeout=config.pull_timeout,
            on_phase=progress.phase,
            settle=config.settle,
            link_bytes=_counter(shaped),
            link=label,
        )
        samples = _skipped(config, address, skips, prepared, label)
        samples += _measure(config, runner, address, runnable, warm, setup, prepared, registry, progress)
        about["dropped_page_cache"] = runner.dropped
    return samples, about


def _write(
    config: BenchConfig,
    links: Sequence[Link | None],
    samples: list[Sample],
    prepared: Prepared,
    meta: dict[str, Any],
    work: Path,
    out_dir: Path,
    prog: str,
) -> tuple[list[report.Summary], dict[tuple[str, str], bounding.Bound | str], list[lists.Comparison], list[Path]]:
    """The results into out_dir: samples, summaries, bounds, the lists compared, targets, the lists recorded,
    plots. Returns what the tables print and the files written."""
    summaries = report.summarize(sorted(samples, key=_in_config_order(config, links)))
    link_of = {str(link) if link else "": link for link in links}
    found_bounds = bounding.bounds(summaries, link_of)
    compared = lists.comparisons(prepared.lists)
    met = targets.checks(summaries, found_bounds, link_of)
    files = report.write(out_dir, samples, summaries, meta, found_bounds, compared, targets.table(met))
    if (work / "lists").is_dir():  # the lists the run recorded, and their CSVs: what was measured with
        shutil.copytree(work / "lists", out_dir / "lists", dirs_exist_ok=True)
        files.append(out_dir / "lists")
    try:
        files += plot.plot_all(summaries, out_dir, None if config.local else config.registry, found_bounds)
    except ImportError:
        print(f"{prog}: no plots: matplotlib is not installed (pip install 'nri-optimizer[bench]')", file=sys.stderr)
    return summaries, found_bounds, compared, files


def _meta(
    config: BenchConfig,
    config_path: Path,
    started: str,
    registry: LocalRegistry | None,
    setup: Setup,
    links: list[dict[str, Any]],
    found: variants.Nydus,
    nydus_image: str | None,
) -> dict[str, Any]:
    """What the run was, for results.json."""
    return {
        "started": started,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": str(config_path),
        "registry": registry.address if registry is not None else config.registry,
        "node": setup.place,
        "containerd": setup.containerd,
        "links": links,
        "repetitions": config.repetitions,
        "settle_s": config.settle,
        "lists_recorded_with_readahead_kib": FUSE_READAHEAD_KIB if any(i.record for i in config.images) else None,
        "nydus": {
            "snapshotter": str(found.tools.snapshotter) if found.tools.snapshotter else None,
            "nydusd": str(found.tools.nydusd) if found.tools.nydusd else None,
            "nydus_image": nydus_image,
            "prefetch_threads": config.nydus.prefetch_threads,
            "snapshotters": list(dict.fromkeys(h.name for h in setup.handlers.values())),
        },
    }


def _measure(
    config: BenchConfig,
    runner: Runner,
    address: str,
    runnable: Sequence[Variant],
    warm: Variant | None,
    setup: Setup,
    prepared: Prepared,
    registry: LocalRegistry | None,
    progress: Progress,
) -> list[Sample]:
    """Every repetition of every image and runnable variant at one link setting, interleaved round by round."""
    samples: list[Sample] = []
    pulled = {} if registry is not None else _pull_sizes(config, runnable)
    for repetition in range(1, config.repetitions + 1):
        shift = (repetition - 1) % max(1, len(runnable))
        for image in config.images:
            for variant in [*runnable[shift:], *runnable[:shift]]:
                if (image.name, variant.name) in prepared.unmade:
                    continue
                progress.start(f"{image.name} {variant.name} #{repetition}")
                reference = config.reference(address, image, variant)
                listed = prepared.lists[image.name].get(variant.list_source) if variant.prefetch == "runtime" else None
                runtime_list = (
                    runtime_table(listed, variant.unread_budget, variant.read_in_part) if listed is not None else None
                )
                for sample in runner.repetition(
                    image,
                    variant,
                    reference,
                    repetition,
                    pulled.get((image.name, variant.name)),
                    setup.handlers.get(handler_key(variant)) if variant.prefetch else None,
                    runtime_list=runtime_list,
                    warm=variant == warm,
                ):
                    samples.append(sample)
                    progress.finished(sample)
    return samples


def _in_config_order(config: BenchConfig, links: Sequence[Link | None]) -> Callable[[Sample], tuple[int, ...]]:
    """A sort key: link, image and variant in the config's order, a warm start after its variant, then the round."""
    link_at = {str(link) if link else "": n for n, link in enumerate(links)}
    image_at = {image.name: n for n, image in enumerate(config.images)}
    variant_at = {variant.name: n for n, variant in enumerate(config.variants)}

    def key(sample: Sample) -> tuple[int, ...]:
        name = sample.variant.name.removesuffix(WARM) if sample.warm else sample.variant.name
        return (link_at[sample.link], image_at[sample.image], variant_at[name], sample.warm, sample.repetition)

    return key


def _skipped(
    config: BenchConfig, address: str, skips: dict[str, str | None], prepared: Prepared, link: str
) -> list[Sample]:
    """A sample standing for each variant that does not run, with why."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    samples = []
    for image in config.images:
        for variant in config.variants:
            status: Status
            status, reason = (
                ("skipped", skips[variant.name])
                if skips[variant.name]
                else prepared.unmade.get((image.name, variant.name), ("ok", ""))
            )
            if status != "ok":
                samples.append(
                    Sample(
                        image.name,
                        variant,
                        config.reference(address, image, variant),
                        0 if status == "skipped" else 1,
                        now,
                        status,
                        note=str(reason),
                        link=link,
                    )
                )
    return samples


def _pull_sizes(config: BenchConfig, runnable: Sequence[Variant]) -> dict[tuple[str, str], int]:
    """What a pull of each image and variant fetches from a registry that is not ours (no link to count it)."""
    registry = Registry(config.registry.split("/")[0], insecure=config.insecure)
    namespace = config.registry.partition("/")[2]
    sizes = {}
    for image in config.images:
        for variant in runnable:
            repository, _, tag = f"{image.name}{variant.tag_suffix}".rpartition(":")
            path = f"{namespace}/{repository}" if namespace else repository
            sizes[(image.name, variant.name)] = pull_size(registry, path, tag, nydus=variant.snapshotter == "nydus")
    return sizes


def _tell_blobs(setup: Setup, prepared: Prepared, config: BenchConfig, registry: LocalRegistry | None) -> None:
    """A node's own snapshotter shares its blob cache with the node: it is told which blobs are the benchmark's."""
    for handler in setup.handlers.values():
        if isinstance(handler, ExistingSnapshotter):
            handler.blobs |= prepared.blobs
            if registry is None:  # the images were converted elsewhere: their manifests name the blobs
                remote = Registry(config.registry.split("/")[0], insecure=config.insecure)
                namespace = config.registry.partition("/")[2]
                for image in config.images:
                    for variant in config.variants:
                        if variant.snapshotter == "nydus":
                            repository, _, tag = f"{image.name}{variant.tag_suffix}".rpartition(":")
                            handler.blobs |= nydus_blobs(remote, f"{namespace}/{repository}".lstrip("/"), tag)


def _counter(shaped: ShapedLink | None) -> Callable[[], int] | None:
    """What the registry has sent through the link so far, if it has one."""
    if shaped is None:
        return None
    return lambda: shaped.down_bytes


@contextlib.contextmanager
def _shaped(link: Link | None, registry: LocalRegistry | None) -> Iterator[ShapedLink | None]:
    if registry is None:
        yield None
        return
    with ShapedLink(link, registry.port) as shaped:
        yield shaped


@contextlib.contextmanager
def _setup(
    config: BenchConfig,
    found: variants.Nydus,
    runnable: Sequence[Variant],
    flavour: str,
    existing: Existing | None,
    work: Path,
    progress: Progress,
) -> Iterator[Setup]:
    if existing is not None:
        setup = _existing(existing)
        try:
            yield setup
        finally:
            setup.node.cri.close()
        return
    keys = sorted(
        {handler_key(v) for v in runnable if v.prefetch},
        key=lambda key: (nydus.PREFETCH_MODES.index(key[0]), key[1] is not None, str(key[1])),
    )
    default = nydus.FsPrefetch(threads_count=config.nydus.prefetch_threads)
    runtime = debs.fetch_runtime(flavour)
    with contextlib.ExitStack() as stack:
        handlers: dict[HandlerKey, Handler] = {}
        snapshotters: list[nydus.NydusSnapshotter] = []
        for mode, settings in keys:
            assert found.tools.snapshotter is not None and found.tools.nydusd is not None
            snapshotter = stack.enter_context(
                nydus.NydusSnapshotter(
                    found.tools.snapshotter,
                    found.tools.nydusd,
                    mode,
                    nydus_backend(config),
                    prefetch=settings or default,
                )
            )
            handlers[mode, settings] = snapshotter
            snapshotters.append(snapshotter)
        pattern = None
        if keys and any(v.lists == "nydusd" for v in runnable):
            assert found.tools.snapshotter is not None and found.tools.nydusd is not None
            pattern = stack.enter_context(
                nydus.NydusSnapshotter(
                    found.tools.snapshotter,
                    found.tools.nydusd,
                    "off",
                    nydus_backend(config),
                    prefetch=default,
                    access_pattern=True,
                )
            )
            snapshotters.append(pattern)
        for snapshotter in snapshotters:
            progress.note(
                f"nydus-snapshotter {snapshotter.name} running privately in {snapshotter.dir} "
                f"(nydusd {found.tools.nydusd})"
            )
        hosts = work / "hosts"
        # Entered after the snapshotters, so it is closed (its pods removed) before they are. NRI is on for
        # `list: record` (nri-optimizer profile registers with it).
        ctd = stack.enter_context(
            Containerd(
                runtime,
                nri=any(image.record for image in config.images),
                registry_config_dir=hosts,
                snapshotters={s.name: s.address for s in snapshotters},
            )
        )
        pause = build_pause_image(work / "pause.tar")
        ctd.import_image(pause)
        for snapshotter in snapshotters:  # a handler's pods run their sandbox from its snapshotter
            nydus.import_image(runtime.bin_dir / "ctr", ctd.address, pause, snapshotter.name)
        cri = HandlerCri(ctd.address, timeout=CRI_TIMEOUT)
        stack.callback(cri.close)
        node = Node(
            cri,
            ctd.address,
            ctd.nri_socket if any(i.record for i in config.images) else None,
            ctd.cgroup_parent,
            root=ctd.dir,
        )
        yield Setup(
            node,
            handlers,
            pattern,
            hosts,
            runtime.deb_version,
            f"containerd {runtime.deb_version} running privately in {ctd.dir}",
        )


def _existing(existing: Existing) -> Setup:
    cri = HandlerCri(existing.runtime_endpoint, timeout=CRI_TIMEOUT)
    version = cri.version()
    handlers: dict[HandlerKey, Handler] = {}
    if existing.snapshotter is not None:
        handlers[existing.prefetch, None] = ExistingSnapshotter(
            existing.snapshotter, root=existing.nydus_root, system_address=existing.system_socket
        )
    node = Node(cri, existing.runtime_endpoint, existing.nri_socket, existing.cgroup_parent)
    return Setup(
        node,
        handlers,
        None,
        None,
        f"{version.runtime_name} {version.runtime_version}",
        f"{version.runtime_name} {version.runtime_version} at {existing.runtime_endpoint}"
        + (f", nydus-snapshotter {existing.snapshotter}" if existing.snapshotter else ""),
    )
