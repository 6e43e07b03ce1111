"""``nri-optimizer merge``: combine the lists of several runs (or nodes) of one image into one."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from nri_optimizer.errors import UsageError
from nri_optimizer.results.merge import merge, read_run
from nri_optimizer.results.store import persist


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nri-optimizer merge",
        description="Combine the recorded lists of several runs (or nodes) of one image into one ordered list: "
        "files ordered by their median rank of first access over the runs that read them; ties go to the file "
        "more runs read, then to the one that comes first in the earliest list given.",
    )
    parser.add_argument("lists", nargs="+", metavar="LIST", help="a run's list (the plugin's result file; its "
                        ".csv beside it gives sizes and times)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="the merged list; FILE.csv and FILE.json are written beside it")
    parser.add_argument("--min-runs", type=int, default=1, metavar="K",
                        help="drop files that fewer than K of the runs read (default: %(default)s, keep all)")
    args = parser.parse_args(argv)
    runs = [read_run(path) for path in args.lists]
    try:
        merged = merge(runs, min_runs=args.min_runs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    directory, name = os.path.split(os.path.abspath(args.output))
    written = persist(directory, "", name, merged.entries, readable=False, overwrite=True)
    assert written is not None  # overwrite=True always writes
    without_csv = [path for path, run in zip(args.lists, runs, strict=True) if not run.detailed]
    if without_csv:
        print(f"nri-optimizer merge: no plain-units CSV beside {', '.join(without_csv)}: sizes and times from "
              "the other runs only (0 where none has them)", file=sys.stderr)
    print(f"nri-optimizer merge: {len(runs)} runs -> {written[1]} files in {written[0]} ({merged.dropped} read by "
          f"fewer than {args.min_runs} runs dropped)", file=sys.stderr)
    return 0
