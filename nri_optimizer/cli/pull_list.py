"""``nri-optimizer pull-list IMAGE [--merge]``: fetch the lists nodes attached to IMAGE in its registry (push-list, the
daemon's ``publish``) and write them, merged, as IMAGE's result: where ``convert`` and a runtime list look for it.

Each node's newest list counts (of the workload, with ``--workload``; of the nodes named, with ``--node``). With
``--merge`` they are merged by ``nri-optimizer merge``'s rule (the newest list first, for ties); without, the newest
list is taken. Incomplete lists take part only when no node has a complete one. Every manifest and blob is checked
against its digest, and each artifact's type, subject and lines; any failure is one line and writes nothing.

The result replaces IMAGE's result under persist_dir (``timeout`` and ``--workload`` name it as the daemon does), in
one step as every result is written; or goes to ``-o FILE`` (and ``FILE.csv``, ``FILE.json``). stdout gets the path
of the plain list.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nri_optimizer.errors import CommandError, UsageError
from nri_optimizer.oci import artifacts
from nri_optimizer.results import runs
from nri_optimizer.results.key import ResultKey

from .push_list import add_image_arguments, config_flags, local, subject

PROG = "nri-optimizer pull-list"


@dataclass(frozen=True)
class Written:
    path: str  # the plain list
    files: int  # paths in it
    lists: list[artifacts.RemoteList]  # those it was made of


def pull(
    image_text: str,
    *,
    merge: bool,
    insecure: bool = False,
    platform: str | None = None,
    workload: str = "",
    flags: dict[str, Any] | None = None,
    min_runs: int = 1,
    nodes: Sequence[str] = (),
    output: str | None = None,
) -> Written:
    """Fetch, check, merge (or take the newest) and write IMAGE's lists; ``flags`` are config and persist_dir."""
    here = local(image_text, workload=workload, flags=flags or {})
    attached_to = subject(here.image, insecure=insecure, platform_text=platform)
    pulled = artifacts.pull_lists(attached_to, workload=workload, nodes=nodes)
    if not pulled.lists:
        of = f" of workload {workload}" if workload else ""
        from_nodes = f" from node {', '.join(nodes)}" if nodes else ""
        raise CommandError(
            f"no list{of}{from_nodes} is attached to {attached_to} (nodes attach theirs with "
            "nri-optimizer push-list, or the daemon's publish)"
        )
    chosen = pulled.lists if merge else [next((r for r in pulled.lists if not r.incomplete), pulled.lists[0])]
    try:
        merged = artifacts.merge_lists(chosen, min_runs=min_runs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if output is not None:
        directory, name = os.path.split(os.path.abspath(output))
        persist_dir, key = directory, ResultKey("", name)
    else:
        persist_dir, key = here.config.persist_dir, here.result
    recorded = runs.record(
        persist_dir,
        key,
        merged.merged.entries,
        readable=here.config.readable,
        on_repeat="replace",
        window=1,
        incomplete=merged.incomplete,
    )
    for remote in merged.used:
        _say(
            f"{remote.digest[:19]}… node {remote.node or '(none)'}, {remote.created or 'no time'}, "
            f"{len(remote.run.entries)} files{', incomplete' if remote.incomplete else ''}"
        )
    undetailed = [remote.node or remote.digest for remote in merged.used if not remote.run.detailed]
    if undetailed:
        _say(
            f"no plain-units CSV in the lists of {', '.join(undetailed)}: sizes and times from the others only "
            "(0 where none has them)"
        )
    left = (
        [f"{len(pulled.lists) - len(merged.used)} lists of other nodes not taken"]
        if len(pulled.lists) > len(merged.used)
        else []
    )
    left += [f"{pulled.older} older lists"] if pulled.older else []
    left += [f"{pulled.foreign} referrers of other types"] if pulled.foreign else []
    how = f"merged {len(merged.used)} nodes' lists" if merge else "took the newest list"
    dropped = f", {merged.merged.dropped} read by fewer than {min_runs} dropped" if merged.merged.dropped else ""
    _say(
        f"{how} of {attached_to}: {recorded.result_listed} files{dropped} in {recorded.path}"
        + (f" ({'; '.join(left)} left alone)" if left else "")
    )
    return Written(recorded.path, recorded.result_listed, merged.used)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fetch the lists nodes attached to IMAGE in its registry (push-list) and write them, merged, as "
        "IMAGE's result under persist_dir, where convert and a runtime list find it.",
    )
    add_image_arguments(parser)
    parser.add_argument(
        "--merge", action="store_true", help="merge every node's newest list (default: take the newest list)"
    )
    parser.add_argument(
        "--min-runs",
        type=int,
        default=1,
        metavar="K",
        help="with --merge: drop files that fewer than K of the lists have (default: %(default)s, keep all)",
    )
    parser.add_argument("--node", action="append", metavar="NAME", help="only the lists of this node (repeatable)")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the list here (FILE.csv and FILE.json beside it) instead of under persist_dir",
    )
    args = parser.parse_args(argv)
    written = pull(
        args.image,
        merge=args.merge,
        insecure=args.insecure,
        platform=args.platform,
        workload=args.workload,
        flags=config_flags(args),
        min_runs=args.min_runs,
        nodes=args.node or (),
        output=args.output,
    )
    print(written.path)
    return 0


def _say(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)
