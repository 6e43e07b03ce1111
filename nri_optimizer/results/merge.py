"""Combine the lists of several runs (or nodes) of one image into one ordered list.

One run's list can miss a file or order two files differently from another's (a cache that was warm, a
branch not taken, two threads racing). The merged list follows this rule:

- a file's *rank* in a run is its position in that run's list (0 = read first), its *support* the number of
  runs whose list has it;
- files with a support below ``min_runs`` (``--min-runs K``) are dropped (default 1: every file any run read);
- the rest are ordered by their median rank over the runs that have them (a run without the file neither
  pulls it forward nor pushes it back; with an even number of ranks the median is the mean of the middle two);
- ties go to the file more runs have, then to the file that comes first in the earliest run (in the order the
  lists were given) that has it; so the result is total and does not depend on anything else.

Sizes and first-access times come from each list's CSV beside it (``<list>.csv``, as the plugin writes it with
``readable = false``): the size from the first such run that has the file, the time as the median over those runs
(rounded down to whole µs); 0 when no run with a CSV has the file. Page-cache residency (the CSV's resident column,
where a trace measured it) is the median over the runs that measured the file, else unknown. Page-cache ranges are
not carried (the lists and CSVs merged do not hold them): the merged JSON has none, i.e. whole files. The three result
formats are written as the plugin writes them (see nri_optimizer.results.store).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from nri_optimizer.errors import MergeInputError, ResultError
from nri_optimizer.results.formats import Entry, incompleteness
from nri_optimizer.results.store import read_result


@dataclass(frozen=True)
class Run:
    entries: Sequence[Entry]
    detailed: bool = True  # whether the entries' sizes and times are known (a CSV came with the list)
    incomplete: str | None = None  # why the list is incomplete (its "# incomplete: ..." line), None if complete


@dataclass(frozen=True)
class Merged:
    entries: list[Entry]
    dropped: int  # files seen in fewer than min_runs runs


def merge(runs: Sequence[Run], *, min_runs: int = 1) -> Merged:
    """Merge the runs' lists by the module's rule."""
    if not 1 <= min_runs <= max(len(runs), 1):
        raise ValueError(f"--min-runs must be between 1 and the number of runs ({len(runs)}), got {min_runs}")
    ranks: dict[bytes, list[int]] = {}
    first: dict[bytes, tuple[int, int]] = {}  # path -> (run index, rank there): the tie-break
    sizes: dict[bytes, int] = {}
    elapsed: dict[bytes, list[int]] = {}
    resident: dict[bytes, list[int]] = {}
    for run_index, run in enumerate(runs):
        for rank, entry in enumerate(_first_occurrences(run.entries)):
            ranks.setdefault(entry.path, []).append(rank)
            first.setdefault(entry.path, (run_index, rank))
            if run.detailed:
                sizes.setdefault(entry.path, entry.size)
                elapsed.setdefault(entry.path, []).append(entry.elapsed_us)
                if entry.resident is not None:
                    resident.setdefault(entry.path, []).append(entry.resident)
    kept = [path for path, seen_at in ranks.items() if len(seen_at) >= min_runs]
    kept.sort(key=lambda path: (statistics.median(ranks[path]), -len(ranks[path]), first[path]))
    entries = [
        Entry(
            path,
            sizes.get(path, 0),
            int(statistics.median(elapsed[path])) if path in elapsed else 0,
            int(statistics.median(resident[path])) if path in resident else None,
        )
        for path in kept
    ]
    return Merged(entries, len(ranks) - len(kept))


def _first_occurrences(run: Sequence[Entry]) -> list[Entry]:
    # The plugin's lists have no duplicates; a hand-made one might, and then its first access is what counts.
    seen: set[bytes] = set()
    out = []
    for entry in run:
        if entry.path not in seen:
            seen.add(entry.path)
            out.append(entry)
    return out


def read_run(list_path: str) -> Run:
    """One run from its plain list, with sizes and times from ``<list>.csv`` when that has them in plain units; the
    two from one set when the list is in one (results.store)."""
    try:
        files = read_result(list_path, ("", ".csv"))
    except OSError as exc:
        raise MergeInputError(f"{list_path}: {exc.strerror or exc}") from exc
    except ResultError as exc:
        raise MergeInputError(str(exc)) from exc
    if "" not in files:
        raise MergeInputError(f"{list_path}: No such file or directory")
    return parse_run(files[""], files.get(".csv"), where=list_path)


def parse_run(plain: bytes, table: bytes | None, *, where: str) -> Run:
    """A run from the bytes of its plain list and of its CSV (None without one); ``where`` names them in errors."""
    # Paths only: the list's "# incomplete: ..." line, if any, is not one.
    paths = [line for line in plain.split(b"\n") if line.startswith(b"/")]
    details = _parse_csv(table, where + ".csv") if table is not None else {}
    return Run(
        [Entry(path, *details.get(path, (0, 0, None))) for path in paths],
        detailed=bool(details),
        incomplete=incompleteness(plain),
    )


def _parse_csv(table: bytes, where: str) -> dict[bytes, tuple[int, int, int | None]]:
    """path -> (size, elapsed µs, resident bytes or None); empty when the CSV is in readable units."""
    try:
        rows = csv.reader(io.StringIO(table.decode("utf-8"), newline=""))  # csv.reader, not DictReader: C per row
        header = next(rows, [])
        if not {"path", "size", "elapsed"} <= set(header):
            return {}
        at_path, at_size, at_elapsed = header.index("path"), header.index("size"), header.index("elapsed")
        at_resident = header.index("resident") if "resident" in header else None
        return {
            row[at_path].encode(): (
                int(row[at_size]),
                int(row[at_elapsed]),
                int(row[at_resident]) if at_resident is not None and row[at_resident] else None,
            )
            for row in rows
        }
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MergeInputError(f"{where}: {exc}") from exc
    except (IndexError, ValueError):
        return {}  # readable = true ("1.2 KiB", "850 us"): the list still gives the order
