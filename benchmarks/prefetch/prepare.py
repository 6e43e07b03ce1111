"""Before measuring, with the local registry unshaped: each image pushed, its lists made, its nydus variants'
images converted (one conversion per tag).

- **Our list**: the image's ``list`` file; with ``list: record``, recorded here by ``nri-optimizer profile`` (the
  plugin, tracing through fanotify) on the OCI image started through CRI until it is ready, as a node records it.
- **nydusd's list** (only when a variant uses it): the image converted without a list is started on a
  nydus-snapshotter whose nydusd records its access pattern, and ``nri-optimizer import-pattern`` turns what it saw
  by ready into a list. It is compared with ours (`lists.py`).
- **Conversions**: ``nri-optimizer convert``'s built-in converter, from the pushed image into each nydus tag; the
  tags that take nydusd's list come after it is made.

Whatever cannot be made is reported per (image, variant) as skipped (a list that does not exist) or failed (a
conversion or a recording that broke), and those variants are not run.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.prefetch import workloads
from benchmarks.prefetch.apps import APPS
from benchmarks.prefetch.apps import build as build_app
from benchmarks.prefetch.config import BenchConfig, Image, ListSource, Variant
from benchmarks.prefetch.convert import ConvertError, list_for, nydus_tags, variant_conversion
from benchmarks.prefetch.handlers import HandlerCri
from benchmarks.prefetch.runner import Status, drop_page_cache, readahead
from benchmarks.prefetch.snapshotter import Handler
from benchmarks.prefetch.timing import NotReady, wait_ready
from nri_optimizer.cli.convert import default_list
from nri_optimizer.cli.import_pattern import import_pattern
from nri_optimizer.cri.client import CriError
from nri_optimizer.errors import OptimizerError
from nri_optimizer.oci.registry import Registry
from testbed.registry import push_layout
from testbed.tracing import SERVER

Say = Callable[[str], None]
FUSE_READAHEAD_KIB = 128  # a nydusd mount's (its /sys/class/bdi/0:N/read_ahead_kb, measured with nydusd 2.2.0)


class ListError(OptimizerError):
    """A list could not be recorded."""


@dataclass
class Prepared:
    """What the measuring needs from the preparation."""

    lists: dict[str, dict[ListSource, Path]] = field(default_factory=dict)  # image -> list files by source
    unmade: dict[tuple[str, str], tuple[Status, str]] = field(default_factory=dict)  # (image, variant) -> why not
    blobs: set[str] = field(default_factory=set)  # the nydus images' blob digests (hex), to clear from a cache


@dataclass(frozen=True)
class Node:
    """Where the workloads run while preparing: CRI, the cgroup parent, the NRI socket (for recording)."""

    cri: HandlerCri
    runtime_endpoint: str
    nri_socket: Path | None
    cgroup_parent: str
    root: Path | None = None  # where its snapshots are, on a private containerd (else: not to be touched)


def push(image: Image, address: str, registry: Registry, work: Path, say: Say) -> None:
    """Put the image (a built-in workload, an app, or a tarball) into the local registry."""
    repository, _, tag = image.name.rpartition(":")
    if image.archive is not None:
        tarball = image.archive
    elif image.build in APPS:
        tarball = build_app(image.build)
    else:
        tarball = workloads.build(str(image.build), f"{address}/{image.name}", work / "images" / f"{repository}.tar")
    size = push_layout(tarball, registry, repository, tag)
    say(f"pushed {address}/{image.name} ({size} bytes)")


def our_list(
    config: BenchConfig, image: Image, address: str, node: Node, work: Path, persist_dir: str, say: Say
) -> Path:
    """Our list of `image`: recorded now (``list: record``), else the configured or saved one (which may not
    exist: then the variants that need it are skipped)."""
    if not image.record:
        return list_for(image, f"{address if config.local else config.registry}/{image.name}", persist_dir)
    out = work / "lists" / f"{_file_name(image.name)}.ours"
    out.parent.mkdir(parents=True, exist_ok=True)
    reference = f"{address}/{image.name}"
    node.cri.pull_image_on("", reference)
    # The pull's unpacking left the image's files in the page cache: without them, the list's resident column
    # says how much of each file the start read (and readahead brought in) rather than what the pull wrote. The
    # readahead while recording is that of the nydusd mount that will serve these reads: a disk's can be 8 MiB
    # (this machine kind's virtio disk) and make every file the start touches look read whole.
    drop_page_cache()
    try:
        argv = [
            sys.executable,
            "-m",
            "nri_optimizer",
            "profile",
            reference,
            "--runtime-endpoint",
            node.runtime_endpoint,
            "--persist-dir",
            str(work / "results"),
            "--server-path",
            SERVER,
            "--deadline",
            f"{image.timeout:g}",
            *_stop_flags(image),
        ]
        argv += [f"--env={key}={value}" for key, value in image.env.items()]
        if node.nri_socket is not None:
            argv += ["--nri-socket", str(node.nri_socket)]
        if node.cgroup_parent:
            argv += ["--cgroup-parent", node.cgroup_parent]
        with readahead(node.root, FUSE_READAHEAD_KIB):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=image.timeout + 120, check=False)
    finally:
        node.cri.remove_image(reference)
    if done.returncode != 0:
        raise ListError(f"{image.name}: recording our list failed: {done.stderr.strip()[-500:]}")
    out.write_text(done.stdout)
    with contextlib.suppress(FileNotFoundError):  # the CSV beside it: sizes, times, residency (convert's policy)
        shutil.copyfile(default_list(str(work / "results"), reference) + ".csv", f"{out}.csv")
    say(f"recorded our list of {image.name}: {len(done.stdout.splitlines())} files (nri-optimizer profile)")
    return out


def nydusd_list(
    image: Image, reference: str, node: Node, pattern: Handler, work: Path, nydus_image: str, say: Say
) -> Path:
    """nydusd's list of `image`: `reference` (a nydus image without a prefetch table) started on `pattern` (a
    snapshotter whose nydusd records its access pattern) until ready, the pattern imported then."""
    out = work / "lists" / f"{_file_name(image.name)}.nydusd"
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = work / "pattern-logs" / _file_name(image.name)
    logs.mkdir(parents=True, exist_ok=True)
    cri = node.cri
    cri.pull_image_on(pattern.name, reference)
    pod = cri.run_pod_on(pattern.name, "nydusd-pattern", cgroup_parent=node.cgroup_parent, log_directory=str(logs))
    try:
        container = cri.create_container(pod, "nydusd-pattern", reference, env=image.env, log_path="workload.log")
        cri.start_container(container)
        wait_ready(cri, container, logs / "workload.log", image.ready, image.timeout)
        sockets = pattern.api_sockets(reference)
        if len(sockets) != 1:
            raise ListError(f"{image.name}: {len(sockets)} nydusd serve {reference}; expected one")
        listed, unknown = import_pattern(sockets[0], nydus_image=nydus_image)
    except (CriError, NotReady) as exc:
        raise ListError(f"{image.name}: recording nydusd's list failed: {exc}") from None
    finally:
        cri.stop_pod(pod.id)
        cri.remove_pod(pod.id)
        cri.remove_image(reference)
        pattern.clear_cache()
    out.write_text("".join(f"{path}\n" for path in listed))
    left = f" ({len(unknown)} inodes without a path left out)" if unknown else ""
    say(f"recorded nydusd's list of {image.name}: {len(listed)} files{left} (its access pattern, import-pattern)")
    return out


def convert_tags(
    config: BenchConfig,
    image: Image,
    variants: Sequence[Variant],
    address: str,
    registry: Registry,
    prepared: Prepared,
    nydus_image: str,
    say: Say,
) -> None:
    """Convert `image` into each of `variants`' tags (a tag that would get the same image as one already made, as
    prefetch off's and all's, is that image tagged again); what cannot be made goes to `prepared.unmade` for every
    variant of that tag."""
    made: dict[tuple[Path | None, bool, int | None, str], str] = {}  # (list, reorder, budget, read in part) -> tag
    for variant in variants:
        sharing = [v for v in config.variants if v.snapshotter == "nydus" and v.tag_suffix == variant.tag_suffix]
        try:
            conversion = variant_conversion(config, image, variant, address, lists=prepared.lists[image.name])
            if conversion.list_file is not None and not conversion.list_file.is_file():
                raise ConvertError(
                    f"{image.name}: no recorded list at {conversion.list_file}; record one "
                    "(nri-optimizer profile), set the image's `list`, or `list: record`"
                )
        except ConvertError as exc:
            say(f"{', '.join(v.name for v in sharing)}: skipped: {exc}")
            prepared.unmade.update({(image.name, v.name): ("skipped", str(exc)) for v in sharing})
            continue
        repository, _, tag = f"{image.name}{variant.tag_suffix}".rpartition(":")
        key = (
            conversion.list_file,
            conversion.reorder or conversion.list_file is None,
            conversion.unread_budget if conversion.list_file is not None else None,
            conversion.read_in_part if conversion.list_file is not None else "",
        )
        if (twin := made.get(key)) is not None:
            manifest = registry.manifest(repository, twin)
            registry.push_manifest(repository, tag, manifest.body, manifest.media_type)
            say(f"tagged {address}/{repository}:{twin} as :{tag} as well (the same conversion)")
            continue
        say(f"converting: {conversion.printable()}")
        try:
            converted = conversion.run(nydus_image)
        except OptimizerError as exc:
            say(f"{image.name}: {', '.join(v.name for v in sharing)}: convert failed: {exc}")
            prepared.unmade.update({(image.name, v.name): ("failed", f"convert: {exc}") for v in sharing})
            continue
        made[key] = tag
        prepared.blobs.update(blob.digest.removeprefix("sha256:") for blob in converted.build.blobs)
        table = converted.build.prefetch
        say(f"pushed {converted.target} ({converted.size} bytes, prefetch table of {len(table)} files)")


def prepare_image(
    config: BenchConfig,
    image: Image,
    address: str,
    node: Node,
    prepared: Prepared,
    *,
    runnable: Sequence[Variant],
    pattern: Handler | None,
    registry: Registry | None,
    work: Path,
    nydus_image: str | None,
    persist_dir: str,
    say: Say,
) -> None:
    """Our list, and with the local `registry` the conversions and nydusd's list when a runnable variant takes
    it."""
    lists: dict[ListSource, Path] = {}
    prepared.lists[image.name] = lists
    try:
        lists["ours"] = our_list(config, image, address, node, work, persist_dir, say)
    except (ListError, CriError) as exc:
        say(f"{image.name}: our list: {exc}")
        for variant in runnable:
            if variant.lists == "ours":
                prepared.unmade[(image.name, variant.name)] = ("failed", str(exc))
    if registry is None or nydus_image is None:
        return
    tags = [v for v in nydus_tags(config) if any(r.tag_suffix == v.tag_suffix for r in runnable)]
    first = [v for v in tags if v.conversion is None or v.conversion[0] == "ours"]
    convert_tags(config, image, first, address, registry, prepared, nydus_image, say)
    wants_nydusd = [v for v in runnable if v.lists == "nydusd"]
    if not wants_nydusd:
        return
    plain = next((v for v in first if v.conversion is None and (image.name, v.name) not in prepared.unmade), None)
    try:
        if pattern is None or plain is None:
            raise ListError(
                f"{image.name}: nydusd's list needs a nydus variant converted without a list (prefetch "
                "off, all or runtime) and nydus-snapshotter"
            )
        lists["nydusd"] = nydusd_list(
            image, config.reference(address, image, plain), node, pattern, work, nydus_image, say
        )
    except (ListError, CriError, OptimizerError) as exc:
        say(f"{image.name}: nydusd's list: {exc}")
        for variant in wants_nydusd:
            prepared.unmade[(image.name, variant.name)] = ("failed", str(exc))
        return
    convert_tags(config, image, [v for v in tags if v not in first], address, registry, prepared, nydus_image, say)


def _stop_flags(image: Image) -> list[str]:
    """profile's stop condition for the image's readiness."""
    ready = image.ready
    if ready.kind == "url":
        return ["--wait-on-url", ready.value]
    if ready.kind == "line":
        return ["--wait-on-line", ready.value]
    if ready.kind == "start":
        return ["--period", "1"]
    return []  # exit: profile stops when the container exits


def _file_name(image: str) -> str:
    return image.replace("/", "_").replace(":", "_")
