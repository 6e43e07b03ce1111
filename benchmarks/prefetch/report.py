"""What a bench-image run writes: per-repetition rows, a summary per link setting, image and variant (median and
min-max), each variant against the bound (bounds.py), the run-to-run totals, the lists compared (lists.py); as
Markdown tables, CSV files and JSON.

Seconds are written from whole microseconds as exact decimals, so in every repetition row
``total_s == pull_s + create_s + run_s`` holds digit for digit.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.prefetch.config import ListSource, default_conversion
from benchmarks.prefetch.runner import PHASES, Sample
from nri_optimizer.results.formats import readable_size

if TYPE_CHECKING:
    from benchmarks.prefetch.bounds import Bound
    from benchmarks.prefetch.lists import Comparison

TIMES = (*PHASES, "total")
# Per-repetition counts: their medians are in the summary.
COUNTS = ("bytes_fetched", "bytes_total", "nydusd_bytes", "prefetch_bytes", "ondemand_requests", "stalled_reads")
RUN_COLUMNS = (
    "timestamp",
    "link",
    "registry",
    "repo",
    "variant",
    "snapshotter",
    "prefetch",
    "repetition",
    "status",
    *(f"{t}_s" for t in TIMES),
    *COUNTS,
    "settled",
    "note",
)
SUMMARY_COLUMNS = (
    "timestamp",
    "link",
    "registry",
    "repo",
    "variant",
    "snapshotter",
    "prefetch",
    "status",
    "n",
    *(f"{t}_{s}_s" for t in TIMES for s in ("median", "min", "max")),
    *COUNTS,
    "bound_s",
    "total_vs_bound",
    "note",
)


@dataclass(frozen=True)
class Spread:
    median_us: int
    min_us: int
    max_us: int


@dataclass(frozen=True)
class Summary:
    samples: tuple[Sample, ...]  # one link, image and variant, in repetition order
    times: dict[str, Spread]  # over the repetitions that succeeded; empty when none did

    @property
    def first(self) -> Sample:
        return self.samples[0]

    @property
    def n(self) -> int:
        return sum(s.status == "ok" for s in self.samples)

    @property
    def status(self) -> str:
        if self.first.status == "skipped":
            return "skipped"
        return "ok" if self.n == len(self.samples) else "failed" if self.n == 0 else "partial"

    @property
    def note(self) -> str:
        return next((s.note for s in self.samples if s.note), "")

    @property
    def bytes_fetched(self) -> int | None:
        """Median over the repetitions that succeeded (a nydus variant's differ run to run); else the first's."""
        return self.median("bytes_fetched")

    @property
    def nydusd_bytes(self) -> int | None:
        return self.median("nydusd_bytes")

    def median(self, key: str) -> int | None:
        values: list[int] = [v for s in self.samples if s.status == "ok" and (v := getattr(s, key)) is not None]
        first: int | None = getattr(self.first, key)
        return round(statistics.median(values)) if values else first

    def spread(self, key: str) -> tuple[int, int] | None:
        values: list[int] = [v for s in self.samples if s.status == "ok" and (v := getattr(s, key)) is not None]
        return (min(values), max(values)) if values else None

    @property
    def settled(self) -> bool:
        return all(s.settled for s in self.samples if s.status == "ok")


def summarize(samples: Sequence[Sample]) -> list[Summary]:
    """One summary per (link, image, variant), in the order they were first run."""
    groups: dict[tuple[str, str, str], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.link, sample.image, sample.variant.name), []).append(sample)
    summaries = []
    for group in groups.values():
        ok = [s for s in group if s.status == "ok"]
        times = {}
        if ok:
            for phase in TIMES:
                values = [getattr(s, f"{phase}_us") for s in ok]
                times[phase] = Spread(round(statistics.median(values)), min(values), max(values))
        summaries.append(Summary(tuple(sorted(group, key=lambda s: s.repetition)), times))
    return summaries


def seconds(us: int | None) -> str:
    """Exact decimal seconds of whole µs ("" for none)."""
    if us is None:
        return ""
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def run_rows(samples: Sequence[Sample], registry: str) -> list[dict[str, Any]]:
    return [
        {
            "timestamp": s.timestamp,
            "link": s.link,
            "registry": registry,
            "repo": f"{s.image}{s.variant.tag_suffix}",
            "variant": s.variant.name,
            "snapshotter": s.variant.snapshotter,
            "prefetch": s.variant.prefetch or "",
            "repetition": s.repetition,
            "status": s.status,
            **{f"{t}_s": seconds(getattr(s, f"{t}_us")) for t in TIMES},
            **{key: _blank(getattr(s, key)) for key in COUNTS},
            "settled": "" if s.status != "ok" else str(s.settled).lower(),
            "note": s.note,
        }
        for s in samples
    ]


def _blank(value: int | None) -> int | str:
    return "" if value is None else value


def summary_rows(
    summaries: Sequence[Summary], registry: str, bounds: Mapping[tuple[str, str], Bound | str]
) -> list[dict[str, Any]]:
    rows = []
    for summary in summaries:
        s = summary.first
        row: dict[str, Any] = {
            "timestamp": s.timestamp,
            "link": s.link,
            "registry": registry,
            "repo": f"{s.image}{s.variant.tag_suffix}",
            "variant": s.variant.name,
            "snapshotter": s.variant.snapshotter,
            "prefetch": s.variant.prefetch or "",
            "status": summary.status,
            "n": summary.n,
        }
        for phase in TIMES:
            spread = summary.times.get(phase)
            for stat in ("median", "min", "max"):
                row[f"{phase}_{stat}_s"] = seconds(getattr(spread, f"{stat}_us")) if spread else ""
        row |= {key: _blank(summary.median(key)) for key in COUNTS}
        bound = bounds.get((s.link, s.image))
        ratio = versus(summary, bound)
        row["bound_s"] = seconds(bound.total_us) if bound is not None and not isinstance(bound, str) else ""
        row["total_vs_bound"] = f"{ratio:.3f}" if ratio is not None else ""
        row["note"] = summary.note
        rows.append(row)
    return rows


def versus(summary: Summary, bound: Bound | str | None) -> float | None:
    """The variant's median total as a multiple of the bound (None: no bound, or not measured)."""
    if bound is None or isinstance(bound, str) or not summary.times or summary.first.warm:
        return None
    return summary.times["total"].median_us / bound.total_us


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


TABLE_HEAD = (
    "variant",
    "n",
    "pull (s)",
    "create (s)",
    "run (s)",
    "total (s)",
    "total / bound",
    "fetched by ready",
    "fetched in all",
    "on-demand requests",
    "stalled reads",
)


def table(summaries: Sequence[Summary], bounds: Mapping[tuple[str, str], Bound | str]) -> str:
    """Markdown: per link setting and image, each variant's median (min-max) seconds per phase, its total as a
    multiple of the bound, what it fetched, and nydusd's on-demand requests and stalled reads by ready."""
    lines: list[str] = []
    for (link, image), group in _by_link_and_image(summaries).items():
        bound = bounds.get((link, image))
        about = "no bound" if bound is None else bound if isinstance(bound, str) else f"bound {bound.describe()}"
        lines += [f"**{image}**, link {link or 'not shaped'}: {about}", ""]
        lines += ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "|".join("---" for _ in TABLE_HEAD) + "|"]
        for summary in group:
            lines.append("| " + " | ".join(_table_row(summary, bound)) + " |")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def _table_row(summary: Summary, bound: Bound | str | None) -> list[str]:
    s = summary.first
    n = f"{summary.n}/{len(summary.samples)}" if s.status != "skipped" else "-"
    if not summary.times:
        reason = summary.status + (f": {summary.note}" if summary.note else "")
        return [s.variant.name, n, reason, *([""] * (len(TABLE_HEAD) - 3))]
    ratio = versus(summary, bound)
    in_all = _size(summary, "bytes_total") + ("" if summary.settled else " (still fetching)")
    return [
        s.variant.name,
        n,
        *(_cell(summary.times[t]) for t in TIMES),
        f"{ratio:.2f}" if ratio is not None else "",
        _size(summary, "bytes_fetched"),
        in_all,
        _count(summary, "ondemand_requests"),
        _count(summary, "stalled_reads"),
    ]


def _size(summary: Summary, key: str) -> str:
    median = summary.median(key)
    return "" if median is None else readable_size(median)


def _count(summary: Summary, key: str) -> str:
    median, spread = summary.median(key), summary.spread(key)
    if median is None or spread is None:
        return ""
    return f"{median}" if spread[0] == spread[1] else f"{median} ({spread[0]}-{spread[1]})"


def _cell(spread: Spread) -> str:
    return f"{spread.median_us / 1e6:.3f} ({spread.min_us / 1e6:.3f}-{spread.max_us / 1e6:.3f})"


def _by_link_and_image(summaries: Sequence[Summary]) -> dict[tuple[str, str], list[Summary]]:
    groups: dict[tuple[str, str], list[Summary]] = {}
    for summary in summaries:
        groups.setdefault((summary.first.link, summary.first.image), []).append(summary)
    return groups


def run_to_run(summaries: Sequence[Summary]) -> str:
    """Markdown: every repetition's total, per link setting, image and variant, in the order they ran (drift shows
    as a trend along a row), and each row's spread as a share of its median."""
    lines: list[str] = []
    for (link, image), group in _by_link_and_image(summaries).items():
        repetitions = max(len(s.samples) for s in group)
        head = ["variant", *(f"#{n}" for n in range(1, repetitions + 1)), "(max-min)/median"]
        lines += [
            f"**{image}**, link {link or 'not shaped'}: total (s) of each repetition",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
        ]
        for summary in group:
            if summary.first.status == "skipped":
                continue
            cells = [f"{s.total_us / 1e6:.2f}" if s.total_us is not None else s.status for s in summary.samples]
            cells += [""] * (repetitions - len(cells))
            total = summary.times.get("total")
            spread = f"{(total.max_us - total.min_us) / total.median_us:.0%}" if total else ""
            lines.append("| " + " | ".join([summary.first.variant.name, *cells, spread]) + " |")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def lists_table(comparisons: Sequence[Comparison], summaries: Sequence[Summary]) -> str:
    """Markdown: nydusd's list against ours, per image, and the median total each gives where both were measured."""
    if not comparisons:
        return ""
    head = [
        "image",
        "ours (files)",
        "nydusd's (files)",
        "recall",
        "precision",
        "order inversions",
        "total with ours (s)",
        "total with nydusd's (s)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for comparison in comparisons:
        totals = {source: _totals(summaries, comparison.image, source) for source in ("ours", "nydusd")}
        lines.append(
            "| "
            + " | ".join(
                [
                    comparison.image,
                    str(comparison.ours),
                    str(comparison.nydusd),
                    f"{comparison.recall:.3f}",
                    f"{comparison.precision:.3f}",
                    str(comparison.inversions),
                    totals["ours"],
                    totals["nydusd"],
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _totals(summaries: Sequence[Summary], image: str, source: ListSource) -> str:
    """The median totals of the reordered converted-list variants taking list `source` (convert's default
    budget), per link."""
    found = [
        f"{s.times['total'].median_us / 1e6:.2f} ({s.first.link or 'not shaped'})"
        for s in summaries
        if s.first.image == image and s.first.variant.conversion == default_conversion(source) and s.times
    ]
    return ", ".join(found)


def _numeric(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row for JSON: seconds and ratios as numbers, absent values as null."""
    numeric = {key for key in row if key.endswith("_s") or key in (*COUNTS, "total_vs_bound")}
    return {
        key: (None if value == "" else float(value) if key.endswith("_s") or key == "total_vs_bound" else value)
        if key in numeric
        else value
        for key, value in row.items()
    }


def write(
    out_dir: Path,
    samples: Sequence[Sample],
    summaries: Sequence[Summary],
    meta: dict[str, Any],
    bounds: Mapping[tuple[str, str], Bound | str],
    comparisons: Sequence[Comparison],
    targets: str,
) -> list[Path]:
    """runs.csv, summary.csv, results.json (seconds, and each run's exact µs too), table.md, runs.md and targets.md
    (`targets`: the issues' targets against this run, targets.py)."""
    registry = str(meta["registry"])
    runs, summary = run_rows(samples, registry), summary_rows(summaries, registry, bounds)
    bound_rows = [
        {
            "link": link,
            "image": image,
            **(
                {"none": bound}
                if isinstance(bound, str)
                else {
                    "bound_s": bound.total_us / 1e6,
                    "metadata_pull_s": bound.metadata_pull_us / 1e6,
                    "create_s": bound.create_us / 1e6,
                    "warm_run_s": bound.warm_run_us / 1e6,
                    "needed_bytes": bound.needed_bytes,
                    "transfer_s": bound.transfer_us / 1e6,
                    "limited_by": bound.limited_by,
                }
            ),
        }
        for (link, image), bound in bounds.items()
    ]
    lists = lists_table(comparisons, summaries)
    files = {
        "runs.csv": to_csv(runs, RUN_COLUMNS),
        "summary.csv": to_csv(summary, SUMMARY_COLUMNS),
        "results.json": json.dumps(
            {
                **meta,
                "bounds": bound_rows,
                "lists": [comparison.as_dict() for comparison in comparisons],
                "summary": [_numeric(row) for row in summary],
                "runs": [
                    {**_numeric(row), **{f"{t}_us": getattr(s, f"{t}_us") for t in TIMES}}
                    for row, s in zip(runs, samples, strict=True)
                ],
            },
            indent=1,
        )
        + "\n",
        "table.md": table(summaries, bounds) + ("\n\n" + lists if lists else "") + "\n",
        "runs.md": run_to_run(summaries) + "\n",
        "targets.md": targets + "\n",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out_dir / name).write_text(text)
    return [out_dir / name for name in files]
