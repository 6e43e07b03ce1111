"""``nri-optimizer convert``: build the nydus image of an image, its prefetch table a recorded list, and push it.

The list: the plugin's result for the source under persist_dir, ``--list FILE``, or with ``--from-registry`` the lists
nodes attached to the source in its registry, merged (``pull-list --merge``, which writes them as that result first).

Two converters, whichever is there:

- nydusify (on PATH, or ``--nydusify``): ``nydusify convert --source S --target T --fs-version N
  --prefetch-patterns``, the list's paths on stdin (arguments after ``--`` go to nydusify as they are).
- Otherwise the built-in one, nydus-image 2.2.0 (``--nydus-image``, PATH, or the cache ``make nydus`` fills):
  the source image is pulled from its registry (this machine's platform, or ``--platform``), each layer's tar is
  reordered so the listed files lead its blob (``--no-reorder``: the blob keeps the layer's order), nydus-image
  builds a blob and a bootstrap per layer and merges the bootstraps with the list as the prefetch table
  (nri_optimizer.nydus), and the image nydus-snapshotter runs is pushed: blobs, bootstrap layer, config, then the
  manifest under the target's tag. RAFS v6 only.

Files the start read only in small part (the list's CSV, ``<list>.csv``, says how much of each file was in the page
cache when the trace stopped) are left out of the prefetch table: nydusd would fetch them whole, and on-demand
reads fetch only the chunks the start touches. ``--unread-budget`` sets the rule (nri_optimizer.nydus.partial);
the built-in converter places those files right after the prefetched ones in the blob.

The list is the plugin's (one path a line). A first line ``# incomplete: why`` (the trace lost events) is a warning:
the image gets what the list has. A list naming no file at all is an error (nothing to prefetch; ``--no-list``
converts without a prefetch table). Listed paths the image does not have are left out of the table and counted
in a warning (nri_optimizer.nydus.build's); they never fail the conversion. A registry that does not speak TLS
must be named insecure (``--source-insecure``, ``--target-insecure``, as nydusify's flags): then HTTPS without
certificate checks, or plain HTTP.

stdout gets one line, the pushed image by digest (``TARGET@sha256:...``) from the built-in converter; progress
and warnings go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from nri_optimizer import config as cfg
from nri_optimizer.cli import pull_list
from nri_optimizer.cli.push_list import parse_platform
from nri_optimizer.errors import CommandError, UsageError
from nri_optimizer.nydus import build, image, partial, tool
from nri_optimizer.oci import layout
from nri_optimizer.oci.registry import Registry, host_platform_name
from nri_optimizer.results import reference
from nri_optimizer.results.key import result_key
from nri_optimizer.results.merge import parse_run
from nri_optimizer.results.store import read_result

PROG = "nri-optimizer convert"


@dataclass(frozen=True)
class RecordedList:
    path: Path
    paths: tuple[str, ...]
    incomplete: str | None  # why, when the list says it is incomplete
    partial: tuple[str, ...] = ()  # listed files read only in small part (nri_optimizer.nydus.partial)


@dataclass(frozen=True)
class Converted:
    target: str  # reference of the pushed image, by digest
    size: int  # bytes the image takes in the registry (manifest, config, layers)
    build: build.ImageBuild


def read_list(path: Path, budget: int | None = None) -> RecordedList:
    """A recorded list; an error if it names no file. With a `budget` (nri_optimizer.nydus.partial), the files to
    leave on demand, from the residency in the CSV beside it (``<list>.csv``, as the plugin writes it)."""
    try:
        files = read_result(str(path), ("", ".csv") if budget is not None else ("",))
    except OSError as exc:
        raise UsageError(f"cannot read the list {path}: {exc.strerror}") from None
    if "" not in files:
        raise UsageError(f"cannot read the list {path}: No such file or directory")
    data = files[""]
    paths = tuple(build.list_paths(data.decode(errors="surrogateescape")))
    if not paths:
        raise CommandError(
            f"{path} names no file: nothing to prefetch (record the image again, or convert "
            "without a prefetch table with --no-list)"
        )
    run = parse_run(data, files.get(".csv"), where=str(path))
    return RecordedList(path, paths, run.incomplete, tuple(partial.read_in_part(run.entries, budget)))


def default_list(persist_dir: str, source: str, workload: str = "", timeout: int = 0) -> str:
    """Where the plugin saved the list for ``source`` (of ``workload``, with a workload key; traced ``timeout``
    seconds; see results.key)."""
    result = result_key(reference.parse(source), timeout=timeout, workload=workload)
    return os.path.join(persist_dir, result.directory, result.name)


def nydusify_command(nydusify: str, source: str, target: str, fs_version: str, extra: Sequence[str]) -> list[str]:
    return [
        nydusify,
        "convert",
        "--source",
        source,
        "--target",
        target,
        "--fs-version",
        fs_version,
        *extra,
        "--prefetch-patterns",
    ]


def convert(
    source: str,
    target: str,
    listed: Sequence[str] | None,
    *,
    nydus_image: str,
    source_insecure: bool = False,
    target_insecure: bool = False,
    platform: tuple[str, str] | None = None,
    work_dir: Path | None = None,
    reorder: bool = True,
    on_demand: Collection[str] = (),
    say: Callable[[str], None] = lambda line: None,
) -> Converted:
    """The built-in converter: `source` from its registry, the nydus image (prefetch table `listed` but
    `on_demand`, or none) to `target`; with `reorder` (and a list) the listed files lead each blob (those on demand
    after the rest), else the blob keeps the layer's order."""
    source_ref, target_ref = reference.parse(source), reference.parse(target)
    if not target_ref.tag:
        raise UsageError(f"--target {target}: name a tag to push to, not a digest")
    source_registry = Registry(source_ref.domain, insecure=source_insecure)
    target_registry = (
        source_registry
        if (target_ref.domain, target_insecure) == (source_ref.domain, source_insecure)
        else Registry(target_ref.domain, insecure=target_insecure)
    )
    with tempfile.TemporaryDirectory(prefix="nriopt-convert-", dir=work_dir) as work:
        pulled, built = Path(work) / "source", Path(work) / "nydus"
        say(f"pulling {source_ref}")
        layout.pull(source_registry, source_ref.path, source_ref.digest or source_ref.tag, pulled, platform)
        say(f"building with {nydus_image}" + (f" ({len(listed)} listed paths)" if listed is not None else ""))
        converted = image.convert_layout(
            pulled, built, listed=listed, nydus_image=nydus_image, reorder=reorder, on_demand=on_demand
        )
        say(f"pushing {target_ref}")
        digest, size = layout.push(built, target_registry, target_ref.path, target_ref.tag)
    pushed = f"{target_ref.domain}/{target_ref.path}@{digest}"
    return Converted(pushed, size, converted.build)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert an image to nydus, its prefetch table a recorded list, and push it.",
        epilog="Arguments after -- go to nydusify convert as they are (nydusify only).",
    )
    parser.add_argument("--source", required=True, help="the image to convert (a registry reference)")
    parser.add_argument("--target", required=True, help="where to push the nydus image (a reference with a tag)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--list",
        dest="list_file",
        help="the recorded list (default: the plugin's result for --source under persist_dir)",
    )
    which.add_argument("--no-list", action="store_true", help="no prefetch table")
    parser.add_argument(
        "--no-reorder",
        dest="reorder",
        action="store_false",
        help="the list as the prefetch table "
        "only: each blob keeps its layer's order (built-in converter; default: the listed files lead "
        "the blob, in list order)",
    )
    parser.add_argument(
        "--unread-budget",
        type=partial.parse_budget,
        default=partial.DEFAULT_BUDGET,
        metavar="SIZE",
        help="a listed file the start read only in part (the list's resident column) is prefetched whole when the "
        "bytes it did not read are at most SIZE per MiB it read; otherwise it is read in part, see --read-in-part "
        "(default: 256KiB, about a round trip's worth of a 20-100 Mbit/s link; 0: only files read entirely; "
        "'all': every listed file, as upstream)",
    )
    parser.add_argument(
        "--read-in-part",
        choices=partial.READ_IN_PART,
        default="on-demand",
        help="what becomes of the files read in part: left out of the prefetch table, after the prefetched files "
        "in the blob (on-demand, the default), or prefetched after every other file (last)",
    )
    which.add_argument(
        "--from-registry",
        action="store_true",
        help="the lists nodes attached to --source in its "
        "registry, merged (nri-optimizer pull-list --merge: written as --source's result under "
        "persist_dir first)",
    )
    parser.add_argument(
        "--workload",
        default="",
        help="the list of this workload of the image (the daemon's workload_key), not the image's own",
    )
    parser.add_argument(
        "--fs-version",
        default="6",
        choices=["5", "6"],
        help="RAFS version (default: %(default)s; the built-in converter writes 6)",
    )
    parser.add_argument(
        "--source-insecure",
        action="store_true",
        help="the source registry may be plain HTTP or have a certificate that does not verify",
    )
    parser.add_argument("--target-insecure", action="store_true", help="the same, for the target registry")
    parser.add_argument(
        "--platform",
        help=f"OS/ARCH of a multi-platform source (default: this machine's, {'/'.join(host_platform_name())})",
    )
    parser.add_argument("--work-dir", type=Path, help="where the layers are unpacked (default: $TMPDIR)")
    parser.add_argument("--config", help=f"TOML config file, for persist_dir (default: {cfg.DEFAULT_CONFIG_FILE})")
    parser.add_argument("--persist-dir", dest="persist_dir", default=argparse.SUPPRESS)
    converter = parser.add_mutually_exclusive_group()
    converter.add_argument("--nydusify", help="convert with this nydusify (default: nydusify from PATH if there)")
    converter.add_argument(
        "--nydus-image", help=f"convert with this nydus-image (default: from PATH, else {tool.tools_bin()})"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    own, extra = _split_extra(argv)
    args = parser.parse_args(own)
    if args.from_registry:
        flags = {key: value for key, value in vars(args).items() if key in ("config", "persist_dir")}
        args.list_file = pull_list.pull(
            args.source,
            merge=True,
            insecure=args.source_insecure,
            platform=args.platform,
            workload=args.workload,
            flags=flags,
        ).path
    recorded = None if args.no_list else read_list(Path(_list_file(args)), args.unread_budget)
    listed, on_demand = partial.arrange(recorded.paths, recorded.partial, args.read_in_part) if recorded else ([], [])
    if recorded is not None and recorded.incomplete is not None:
        _warn(f"{recorded.path} is incomplete ({recorded.incomplete}): the prefetch table gets the files it has")
    nydusify = _nydusify(args.nydusify) if args.nydus_image is None else None
    if nydusify is not None:
        left = set(on_demand)
        return _run_nydusify(nydusify, args, extra, recorded, [path for path in listed if path not in left])
    if extra:
        raise UsageError(f"arguments after -- are nydusify's, and nydusify is not installed: {' '.join(extra)}")
    if args.fs_version != "6":
        raise UsageError(f"--fs-version {args.fs_version}: the built-in converter (nydus-image) writes RAFS v6 only")
    nydus_image = tool.find("nydus-image", args.nydus_image)
    _show_library_warnings()
    converted = convert(
        args.source,
        args.target,
        listed if recorded else None,
        nydus_image=nydus_image,
        source_insecure=args.source_insecure,
        target_insecure=args.target_insecure,
        platform=parse_platform(args.platform),
        work_dir=args.work_dir,
        reorder=args.reorder,
        on_demand=on_demand,
        say=_say,
    )
    table = converted.build
    if recorded is None:
        summary = "no prefetch table"
    else:
        summary = f"prefetch table of {len(table.prefetch)} files"
        if table.on_demand:
            summary += f", {len(table.on_demand)} read only in part left to on-demand reads"
        elif recorded.partial:
            summary += f", the {len(recorded.partial)} read only in part last"
        if table.absent:
            summary += f", {len(table.absent)} listed paths not in the image left out"
        if table.empty:
            summary += f", {len(table.empty)} empty files left out"
    _say(f"pushed {converted.target} ({converted.size} bytes, {len(table.blobs)} blobs; {summary})")
    print(converted.target)
    return 0


def _list_file(args: argparse.Namespace) -> str:
    if args.list_file is not None:
        return str(args.list_file)
    flags = {key: value for key, value in vars(args).items() if key in ("config", "persist_dir")}
    config = cfg.load_config(flags)
    found = default_list(config.persist_dir, args.source, args.workload, config.timeout)
    if not os.path.isfile(found):
        raise UsageError(
            f"no recorded list at {found}; record one first (nri-optimizer profile {args.source}) or pass --list"
        )
    return found


def _nydusify(explicit: str | None) -> str | None:
    """nydusify's path: `explicit` (which must exist), else from PATH, else None."""
    if explicit is None:
        return shutil.which("nydusify")
    if (found := shutil.which(explicit)) is None:
        raise UsageError(f"--nydusify {explicit}: not an executable")
    return found


def _run_nydusify(
    nydusify: str, args: argparse.Namespace, extra: list[str], recorded: RecordedList | None, table: Sequence[str]
) -> int:
    """nydusify convert, its prefetch patterns `table` (of `recorded`'s list) on stdin."""
    flags = [
        *(["--source-insecure"] if args.source_insecure else []),
        *(["--target-insecure"] if args.target_insecure else []),
        *(["--platform", args.platform] if args.platform else []),
        *extra,
    ]
    command = nydusify_command(nydusify, args.source, args.target, args.fs_version, flags)
    if recorded is None:
        command.remove("--prefetch-patterns")
    _say(" ".join(command) + (f" < {recorded.path}" if recorded else ""))
    stdin = "".join(f"{path}\n" for path in table)
    return subprocess.run(command, input=stdin.encode(errors="surrogateescape"), check=False).returncode


def _show_library_warnings() -> None:
    """nri_optimizer.nydus logs what it leaves out; a command shows that as its own warnings."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    logging.getLogger("nri_optimizer.nydus").addHandler(handler)


def _say(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def _warn(line: str) -> None:
    print(f"{PROG}: warning: {line}", file=sys.stderr, flush=True)


def _split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []
