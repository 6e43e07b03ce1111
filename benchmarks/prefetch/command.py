"""``nri-optimizer bench-image run CONFIG`` and ``nri-optimizer bench-image convert CONFIG``.

`run` starts a private containerd (the testbed's, from the cache; or uses a node's own with ``--runtime-endpoint``),
and for ``registry: local`` Debian's docker-registry on loopback with the config's images pushed into it, their lists
made and their nydus images converted; then for each link setting (``throttle``, ``--throttle RATE/RTT``: the
registry's link shaped, shaping.py) and each round of repetitions it pulls, creates and runs every image and variant
through CRI and cleans up; it prints the table and writes runs.csv, summary.csv, results.json, table.md, runs.md and a
PNG per image and link. Nydus variants run where containerd-nydus-grpc and nydusd are found (config `nydus:`, flags,
else PATH): on a private nydus-snapshotter per prefetch mode, their images made by nri-optimizer convert's built-in
converter (nydus-image); elsewhere they are reported as skipped with the reason. `convert` makes the nydus variants'
images in a registry that stays. Everything it started is stopped and removed at the end, also on errors, Ctrl-C and
SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.prefetch import config as cfg
from benchmarks.prefetch.convert import ConvertError, plan, run_plan
from nri_optimizer import config as plugin_config
from nri_optimizer.errors import UsageError
from nri_optimizer.nydus import tool
from testbed import debs

PROG = "nri-optimizer bench-image"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="What a prefetch list buys: pull, create and run "
        "times of images and their variants, measured through CRI.",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    run = actions.add_parser("run", help="measure (needs root: it runs a private containerd)")
    run.add_argument("config", type=Path, help="the YAML config (see examples/bench-image.yaml)")
    run.add_argument("--out", type=Path, help="results directory (default: bench-image-results/<UTC time>)")
    run.add_argument("--repetitions", type=int, metavar="N", help="override the config's repetitions")
    run.add_argument(
        "--throttle",
        metavar="RATE/RTT",
        action="append",
        help="a link setting between the local registry and its clients, e.g. 20mbit/40ms (repeat for "
        "more; replaces the config's throttle)",
    )
    run.add_argument(
        "--settle",
        type=float,
        metavar="SECONDS",
        help="how long nydusd may go on fetching after ready before its total is read (config: settle)",
    )
    run.add_argument(
        "--containerd",
        choices=sorted(debs.CONTAINERD_FLAVOURS),
        default="2.1",
        help="containerd flavour from the testbed cache (default: %(default)s)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument(
        "--nydus-snapshotter",
        metavar="PATH",
        help="containerd-nydus-grpc to use (default: the config's nydus.snapshotter, else from PATH)",
    )
    run.add_argument("--nydusd", metavar="PATH", help="nydusd to use (default: nydus.nydusd, else from PATH)")
    run.add_argument(
        "--nydus-image",
        metavar="PATH",
        help="nydus-image converting the local registry's images "
        "(default: nydus.nydus_image, else from PATH, else make nydus's cache)",
    )
    run.add_argument(
        "--persist-dir",
        default=plugin_config.Config.persist_dir,
        help="where the plugin saved its lists, for prefetch: list (default: %(default)s)",
    )
    node = run.add_argument_group("a node's own containerd and nydus-snapshotter (default: private ones)")
    node.add_argument(
        "--runtime-endpoint",
        metavar="SOCKET",
        help="its CRI socket, e.g. /run/containerd/"
        "containerd.sock: the benchmark runs there instead of on a private containerd",
    )
    node.add_argument("--nri-socket", type=Path, help="its NRI socket, for list: record (NRI connections enabled)")
    node.add_argument("--cgroup-parent", default="", help="the pods' cgroup parent (default: the runtime's)")
    node.add_argument(
        "--snapshotter",
        metavar="NAME",
        help="the runtime handler (and snapshotter) of its nydus-snapshotter; without it no nydus variant runs",
    )
    node.add_argument(
        "--snapshotter-prefetch",
        choices=("off", "all", "list"),
        default="list",
        help="what its nydusd template prefetches (fs_prefetch): the variants of that mode run "
        "(default: %(default)s: prefetch list and runtime)",
    )
    node.add_argument(
        "--nydus-root",
        type=Path,
        default=Path("/var/lib/containerd-nydus"),
        help="its root: nydusd's API sockets under socket/, the blob cache under cache/ (default: %(default)s)",
    )
    node.add_argument(
        "--nydus-system-socket",
        type=Path,
        default=Path("/run/containerd-nydus/system.sock"),
        help="its [system] address (default: %(default)s)",
    )
    convert = actions.add_parser(
        "convert", help="build the nydus variants' images (nri-optimizer convert's built-in converter)"
    )
    convert.add_argument("config", type=Path)
    convert.add_argument("--target", help="registry to push to (default: the config's registry)")
    convert.add_argument(
        "--persist-dir",
        default=plugin_config.Config.persist_dir,
        help="where the plugin saved its lists (default: %(default)s)",
    )
    convert.add_argument(
        "--nydus-image",
        metavar="PATH",
        help="nydus-image (default: nydus.nydus_image, else from PATH, else make nydus's cache)",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.action == "run":
        overrides = {
            key: value for key in ("repetitions", "throttle", "settle") if (value := getattr(args, key)) is not None
        }
    config = cfg.load(args.config, overrides)
    config = _with_tools(config, args)
    if args.action == "convert":
        return _convert(config, args)
    from benchmarks.prefetch.bench import Existing, bench  # grpc, the testbed and matplotlib only when measuring

    existing = None
    if args.runtime_endpoint is not None:
        existing = Existing(
            args.runtime_endpoint,
            args.nri_socket,
            args.snapshotter,
            args.snapshotter_prefetch,
            args.nydus_root,
            args.nydus_system_socket,
            args.cgroup_parent,
        )
    elif args.snapshotter is not None or args.nri_socket is not None:
        raise UsageError("--snapshotter and --nri-socket name a node's own: give its --runtime-endpoint too")
    out = args.out or Path("bench-image-results") / datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    # SIGTERM unwinds like Ctrl-C: the shaping of lo, the registry, containerd and the snapshotters are undone.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return bench(
            config,
            args.config,
            flavour=args.containerd,
            out_dir=out,
            quiet=args.quiet,
            prog=PROG,
            persist_dir=args.persist_dir,
            existing=existing,
        )
    except KeyboardInterrupt as interrupted:
        signum = interrupted.signum if isinstance(interrupted, Terminated) else signal.SIGINT
        print(
            f"\n{PROG}: interrupted by {signal.Signals(signum).name}; what it started was stopped and removed",
            file=sys.stderr,
        )
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding the run as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _with_tools(config: cfg.BenchConfig, args: argparse.Namespace) -> cfg.BenchConfig:
    """The nydus tools' flags (paths relative to the working directory) over the config's `nydus:` section."""

    def flag(value: str | None, configured: str | None) -> str | None:
        return configured if value is None else str(Path(value).absolute())

    tools = dataclasses.replace(config.nydus, nydus_image=flag(args.nydus_image, config.nydus.nydus_image))
    if args.action == "run":
        tools = dataclasses.replace(
            tools,
            snapshotter=flag(args.nydus_snapshotter, config.nydus.snapshotter),
            nydusd=flag(args.nydusd, config.nydus.nydusd),
        )
    return dataclasses.replace(config, nydus=tools)


def _convert(config: cfg.BenchConfig, args: argparse.Namespace) -> int:
    target = args.target or (None if config.local else config.registry)
    if target is None:
        raise ConvertError(
            "registry: local lives only while `run` runs: give --target HOST[:PORT] (a registry "
            "that stays), e.g. one started with docker-registry"
        )
    conversions = plan(config, target, persist_dir=args.persist_dir)
    nydus_image = tool.find("nydus-image", config.nydus.nydus_image)
    for image in config.images:
        if image.build or image.archive:
            _push(image, target, config.insecure)
    return run_plan(conversions, nydus_image, f"{PROG} convert")


def _push(image: cfg.Image, target: str, insecure: bool) -> None:
    from benchmarks.prefetch.workloads import build
    from nri_optimizer.oci.registry import Registry
    from testbed.registry import push_layout

    repository, _, tag = image.name.rpartition(":")
    host, _, namespace = target.partition("/")
    with tempfile.TemporaryDirectory(prefix="nriopt-benchimage-push-") as work:
        tarball = image.archive or build(str(image.build), f"{target}/{image.name}", Path(work) / "image.tar")
        repository = f"{namespace}/{repository}" if namespace else repository
        push_layout(tarball, Registry(host, insecure=insecure), repository, tag)
    print(f"{PROG} convert: pushed {target}/{image.name}", file=sys.stderr)
