"""``nri-optimizer merge``: combine the lists of several runs (or nodes) of one image into one."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from nri_optimizer import config as cfg
from nri_optimizer.errors import UsageError
from nri_optimizer.results import reference
from nri_optimizer.results.key import ResultKey, result_key
from nri_optimizer.results.merge import merge, read_run
from nri_optimizer.results.runs import record


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nri-optimizer merge",
        description="Combine the recorded lists of several runs (or nodes) of one image into one ordered list: "
        "files ordered by their median rank of first access over the runs that read them; ties go to the file "
        "more runs read, then to the one that comes first in the earliest list given.",
    )
    parser.add_argument(
        "lists",
        nargs="+",
        metavar="LIST",
        help="a run's list (the plugin's result file; its .csv beside it gives sizes and times)",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "-o", "--output", metavar="FILE", help="the merged list; FILE.csv and FILE.json are written beside it"
    )
    where.add_argument(
        "--image",
        help="write the merged list as this image's result in persist_dir, where the "
        "daemon keeps it and convert finds it",
    )
    parser.add_argument(
        "--workload",
        default="",
        help="with --image: as the result of this workload of the image (the daemon's workload_key)",
    )
    parser.add_argument(
        "--min-runs",
        type=int,
        default=1,
        metavar="K",
        help="drop files that fewer than K of the runs read (default: %(default)s, keep all)",
    )
    parser.add_argument("--config", help=f"TOML config file, for persist_dir (default: {cfg.DEFAULT_CONFIG_FILE})")
    parser.add_argument("--persist-dir", dest="persist_dir", default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workload and args.image is None:
        raise UsageError("--workload names a workload's result in persist_dir: give --image too")
    runs = [read_run(path) for path in args.lists]
    try:
        merged = merge(runs, min_runs=args.min_runs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.image is not None:
        flags = {key: value for key, value in vars(args).items() if key in ("config", "persist_dir")}
        config = cfg.load_config(flags)
        persist_dir = config.persist_dir
        result = result_key(reference.parse(args.image), timeout=config.timeout, workload=args.workload)
    else:
        persist_dir, name = os.path.split(os.path.abspath(args.output))
        result = ResultKey("", name)
    # As one run that replaces the result: in one step, under the result's lock, beside a daemon writing it too.
    written = record(persist_dir, result, merged.entries, readable=False, on_repeat="replace", window=1)
    without_csv = [path for path, run in zip(args.lists, runs, strict=True) if not run.detailed]
    if without_csv:
        print(
            f"nri-optimizer merge: no plain-units CSV beside {', '.join(without_csv)}: sizes and times from "
            "the other runs only (0 where none has them)",
            file=sys.stderr,
        )
    print(
        f"nri-optimizer merge: {len(runs)} runs -> {written.listed} files in {written.path} ({merged.dropped} read "
        f"by fewer than {args.min_runs} runs dropped)",
        file=sys.stderr,
    )
    return 0
