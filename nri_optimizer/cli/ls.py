"""``nri-optimizer ls``: the lists recorded in persist_dir — image, files, bytes, when, complete or not."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

from nri_optimizer import config as cfg
from nri_optimizer.errors import MergeInputError
from nri_optimizer.results.formats import incompleteness, readable_size
from nri_optimizer.results.key import WORKLOAD_SEPARATOR, split_name
from nri_optimizer.results.merge import read_run

COMPANIONS = (".csv", ".json")  # written beside each list


@dataclass(frozen=True)
class Recorded:
    image: str  # the list's path under persist_dir: the repository path and name:tag, as upstream names it
    workload: str | None  # whose own list it is (the daemon's workload_key; "+<workload>" in its name), or None
    path: str
    files: int
    bytes: int | None  # the listed files' sizes added up; None when the CSV beside gives none (readable = true)
    recorded: str  # when the list was written, UTC, ISO 8601
    incomplete: str | None  # why files are missing, or None for a complete list


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nri-optimizer ls",
        description="List the accessed-file lists recorded in persist_dir: image, files, bytes, when, and whether "
        "the list is complete.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON array of objects instead of a table")
    parser.add_argument("--workload", help="only this workload's lists (the daemon's workload_key)")
    parser.add_argument("--persist-dir", dest="persist_dir", help="where the lists are (default: from the config)")
    parser.add_argument("--config", help=f"TOML config file (default: {cfg.DEFAULT_CONFIG_FILE} if it exists)")
    args = parser.parse_args(argv)
    flags = {key: value for key, value in vars(args).items() if key in ("config", "persist_dir") and value}
    persist_dir = cfg.load_config(flags).persist_dir
    found = sorted(
        (r for r in recorded(persist_dir) if args.workload in (None, r.workload)),
        key=lambda r: (r.image, r.workload or ""),
    )
    if args.json:
        json.dump([asdict(r) for r in found], sys.stdout, indent=2)
        print()
    elif found:
        print_table(found)
    else:
        print(f"nri-optimizer ls: no lists in {persist_dir}", file=sys.stderr)
    return 0


def recorded(persist_dir: str) -> Iterator[Recorded]:
    """Every list under persist_dir; the store's own entries (names beginning with ".") are not lists."""
    for directory, subdirectories, names in os.walk(persist_dir):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        for name in names:
            if name.startswith(".") or name.endswith(COMPANIONS):
                continue
            path = os.path.join(directory, name)
            try:
                yield describe(persist_dir, path)
            except (OSError, MergeInputError) as exc:
                print(f"nri-optimizer ls: skipping {path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)


def describe(persist_dir: str, path: str) -> Recorded:
    run = read_run(path)
    with open(path, "rb") as plain:
        first = plain.readline(4096)
    incomplete = incompleteness(first)
    when = datetime.datetime.fromtimestamp(os.stat(path).st_mtime, datetime.UTC)
    image, workload = split_name(os.path.relpath(path, persist_dir))
    return Recorded(
        image=image,
        workload=workload or None,
        path=path,
        files=len(run.entries),
        bytes=sum(entry.size for entry in run.entries) if run.detailed else None,
        recorded=when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        incomplete=incomplete,
    )


def print_table(found: Sequence[Recorded]) -> None:
    rows = [("IMAGE", "FILES", "BYTES", "RECORDED (UTC)", "COMPLETE")]
    for r in found:
        size = "-" if r.bytes is None else readable_size(r.bytes)
        name = r.image + (WORKLOAD_SEPARATOR + r.workload if r.workload else "")
        rows.append(
            (
                name,
                str(r.files),
                size,
                r.recorded.replace("T", " ").rstrip("Z"),
                "yes" if r.incomplete is None else f"no: {r.incomplete}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(
                [
                    row[0].ljust(widths[0]),
                    row[1].rjust(widths[1]),
                    row[2].rjust(widths[2]),
                    row[3].ljust(widths[3]),
                    row[4],
                ]
            ).rstrip()
        )
