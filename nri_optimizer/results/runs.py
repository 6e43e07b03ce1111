"""What a new run of an image does to the image's result (``on_repeat``), and the runs a merged result is made of.

- ``keep`` (upstream's ``overwrite = false``): the first complete run stays. A run that finds a complete result writes
  nothing; an incomplete result (the kernel lost events) is replaced by the first complete run after it.
- ``replace`` (``overwrite = true``): each run replaces the result with its own list.
- ``merge``: the result is the merge, by results.merge's rule, of the last ``window`` complete runs, which the result's
  set keeps as ``runs/<n>`` and ``runs/<n>.csv`` (each run's list and CSV, in plain units; n counts up). Incomplete
  runs take part only while no complete run exists, and the merged list then says it is incomplete. A result without
  runs (written under keep or replace, by upstream, or by ``merge -o``) counts as one run.

Each is one step under the result's lock (results.store): of runs of one image that finish at once, exactly one is
kept under keep, each is merged under merge, and under replace the result is one of them, whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from nri_optimizer.results.formats import INCOMPLETE_MARK, Entry, incompleteness, render
from nri_optimizer.results.key import ResultKey
from nri_optimizer.results.merge import merge, parse_run
from nri_optimizer.results.store import LIST, ResultSet, read_result

OnRepeat = Literal["keep", "replace", "merge"]
RUNS = "runs"  # the directory of a set that holds the runs merged into its list


@dataclass(frozen=True)
class Recorded:
    path: str  # the result's plain list
    listed: int  # paths in this run's own list (the odd-name rule may leave some out)
    run_list: bytes  # this run's own plain list (the result may hold another's by now, or a merge)
    unwritten: str | None = None  # why nothing was written: keep found a result, or merge left an incomplete run out
    runs: int = 1  # runs the result's list is made of
    result_listed: int = 0  # paths in the result's list


@dataclass(frozen=True)
class _Run:
    name: str  # "runs/<n>" in the set
    plain: bytes
    table: bytes | None
    stored: bool  # in the current set already: the new one links it

    @property
    def complete(self) -> bool:
        return incompleteness(self.plain) is None


def complete_result(persist_dir: str, key: ResultKey) -> bool:
    """Whether the result holds a complete list (under keep, the image need not be traced again)."""
    head = read_result(os.path.join(persist_dir, key.directory, key.name), ("",), limit=len(INCOMPLETE_MARK))
    return "" in head and incompleteness(head[""]) is None


def record(
    persist_dir: str,
    key: ResultKey,
    entries: Sequence[Entry],
    *,
    readable: bool,
    on_repeat: OnRepeat,
    window: int,
    incomplete: str | None = None,
) -> Recorded:
    """Put a run's list into its result as ``on_repeat`` says, in one step under the result's lock."""
    with ResultSet(persist_dir, key.directory, key.name) as result:
        if on_repeat == "merge":
            return _merge_into(result, entries, readable=readable, window=window, incomplete=incomplete)
        plain, table, prefetch, left_out = render(entries, readable=readable, incomplete=incomplete)
        listed = len(entries) - left_out
        if on_repeat == "keep":
            existing = result.read(LIST)
            if existing is not None and (incompleteness(existing) is None or incomplete is not None):
                return Recorded(
                    result.path, listed, plain, unwritten="was recorded meanwhile and is kept (on_repeat = keep)"
                )
        result.commit({LIST: plain, f"{LIST}.csv": table, f"{LIST}.json": prefetch})
        return Recorded(result.path, listed, plain, result_listed=listed)


def _merge_into(
    result: ResultSet, entries: Sequence[Entry], *, readable: bool, window: int, incomplete: str | None
) -> Recorded:
    plain, table, _, left_out = render(entries, readable=False, incomplete=incomplete)
    listed = len(entries) - left_out
    numbers = sorted(int(name) for name in result.listing(RUNS) if name.isdigit())
    runs = [
        _Run(f"{RUNS}/{n}", result.read(f"{RUNS}/{n}") or b"", result.read(f"{RUNS}/{n}.csv"), stored=True)
        for n in numbers
    ]
    if not runs and (earlier := result.read(LIST)) is not None:
        numbers = [1]
        runs.append(_Run(f"{RUNS}/1", earlier, result.read(f"{LIST}.csv"), stored=False))
    run = _Run(f"{RUNS}/{max(numbers, default=0) + 1}", plain, table, stored=False)
    runs.append(run)
    complete = [r for r in runs if r.complete]
    if complete and not run.complete:
        return Recorded(
            result.path,
            listed,
            plain,
            unwritten=f"its list is incomplete and {len(complete)} complete "
            "runs are merged: left out (on_repeat = merge)",
        )
    merged_runs = (complete or runs)[-window:]
    merged = merge([parse_run(r.plain, r.table, where=f"{result.path} ({r.name})") for r in merged_runs])
    why = None
    if not complete:
        latest = incompleteness(merged_runs[-1].plain)
        why = latest if len(merged_runs) == 1 else f"{len(merged_runs)} runs merged, each incomplete; latest: {latest}"
    out_plain, out_table, out_prefetch, out_left_out = render(merged.entries, readable=readable, incomplete=why)
    files = {LIST: out_plain, f"{LIST}.csv": out_table, f"{LIST}.json": out_prefetch}
    carry = []
    for r in merged_runs:
        names = [r.name] + ([f"{r.name}.csv"] if r.table is not None else [])
        if r.stored:
            carry += names
        else:
            files[r.name] = r.plain
            if r.table is not None:
                files[f"{r.name}.csv"] = r.table
    result.commit(files, carry)
    return Recorded(result.path, listed, plain, runs=len(merged_runs), result_listed=len(merged.entries) - out_left_out)
