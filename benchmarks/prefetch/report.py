"""What a bench-image run writes: per-repetition rows, a summary per image and variant (median and min-max), as
a Markdown table, CSV files and JSON.

Seconds are written from whole microseconds as exact decimals, so in every repetition row
``total_s == pull_s + create_s + run_s`` holds digit for digit.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.prefetch.runner import PHASES, Sample
from nri_optimizer.results.formats import readable_size

TIMES = (*PHASES, "total")
RUN_COLUMNS = ("timestamp", "registry", "repo", "variant", "snapshotter", "prefetch", "repetition", "status",
               *(f"{t}_s" for t in TIMES), "bytes_fetched", "nydusd_bytes", "note")
SUMMARY_COLUMNS = ("timestamp", "registry", "repo", "variant", "snapshotter", "prefetch", "status", "n",
                   *(f"{t}_{s}_s" for t in TIMES for s in ("median", "min", "max")), "bytes_fetched", "nydusd_bytes",
                   "note")


@dataclass(frozen=True)
class Spread:
    median_us: int
    min_us: int
    max_us: int


@dataclass(frozen=True)
class Summary:
    samples: tuple[Sample, ...]  # one image and variant, in repetition order
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
        return self._median("bytes_fetched")

    @property
    def nydusd_bytes(self) -> int | None:
        return self._median("nydusd_bytes")

    def _median(self, key: str) -> int | None:
        values: list[int] = [v for s in self.samples if s.status == "ok" and (v := getattr(s, key)) is not None]
        first: int | None = getattr(self.first, key)
        return round(statistics.median(values)) if values else first


def summarize(samples: Sequence[Sample]) -> list[Summary]:
    """One summary per (image, variant), in the order they were run."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.image, sample.variant.name), []).append(sample)
    summaries = []
    for group in groups.values():
        ok = [s for s in group if s.status == "ok"]
        times = {}
        if ok:
            for phase in TIMES:
                values = [getattr(s, f"{phase}_us") for s in ok]
                times[phase] = Spread(round(statistics.median(values)), min(values), max(values))
        summaries.append(Summary(tuple(group), times))
    return summaries


def seconds(us: int | None) -> str:
    """Exact decimal seconds of whole µs ("" for none)."""
    if us is None:
        return ""
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def run_rows(samples: Sequence[Sample], registry: str) -> list[dict[str, Any]]:
    return [{
        "timestamp": s.timestamp, "registry": registry, "repo": f"{s.image}{s.variant.tag_suffix}",
        "variant": s.variant.name, "snapshotter": s.variant.snapshotter, "prefetch": s.variant.prefetch or "",
        "repetition": s.repetition, "status": s.status,
        **{f"{t}_s": seconds(getattr(s, f"{t}_us")) for t in TIMES},
        "bytes_fetched": _blank(s.bytes_fetched), "nydusd_bytes": _blank(s.nydusd_bytes), "note": s.note,
    } for s in samples]


def _blank(value: int | None) -> int | str:
    return "" if value is None else value


def summary_rows(summaries: Sequence[Summary], registry: str) -> list[dict[str, Any]]:
    rows = []
    for summary in summaries:
        s = summary.first
        row: dict[str, Any] = {
            "timestamp": s.timestamp, "registry": registry, "repo": f"{s.image}{s.variant.tag_suffix}",
            "variant": s.variant.name, "snapshotter": s.variant.snapshotter, "prefetch": s.variant.prefetch or "",
            "status": summary.status, "n": summary.n,
        }
        for phase in TIMES:
            spread = summary.times.get(phase)
            for stat in ("median", "min", "max"):
                row[f"{phase}_{stat}_s"] = seconds(getattr(spread, f"{stat}_us")) if spread else ""
        row["bytes_fetched"] = _blank(summary.bytes_fetched)
        row["nydusd_bytes"] = _blank(summary.nydusd_bytes)
        row["note"] = summary.note
        rows.append(row)
    return rows


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def table(summaries: Sequence[Summary], registry: str) -> str:
    """Markdown, as the seed's: median (min-max) seconds per phase."""
    head = ["timestamp", "registry", "repo", "variant", "n", *(f"{t} (s)" for t in TIMES), "fetched"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for summary in summaries:
        s = summary.first
        if summary.times:
            cells = [_cell(summary.times[t]) for t in TIMES]
        else:
            cells = [summary.status + (f": {summary.note}" if summary.note else ""), *([""] * (len(TIMES) - 1))]
        fetched = readable_size(summary.bytes_fetched) if summary.bytes_fetched is not None else ""
        if summary.nydusd_bytes is not None:
            fetched = f"{fetched} (nydusd {readable_size(summary.nydusd_bytes)})".lstrip()
        row = [s.timestamp, registry, f"{s.image}{s.variant.tag_suffix}", s.variant.name,
               f"{summary.n}/{len(summary.samples)}" if s.status != "skipped" else "-", *cells, fetched]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _cell(spread: Spread) -> str:
    return f"{spread.median_us / 1e6:.3f} ({spread.min_us / 1e6:.3f}-{spread.max_us / 1e6:.3f})"


def _numeric(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row for JSON: seconds as numbers, absent values as null."""
    numeric = {key for key in row if key.endswith("_s") or key in ("bytes_fetched", "nydusd_bytes")}
    return {key: (None if value == "" else float(value) if key.endswith("_s") else value) if key in numeric
            else value for key, value in row.items()}


def write(out_dir: Path, samples: Sequence[Sample], summaries: Sequence[Summary], meta: dict[str, Any]) -> list[Path]:
    """runs.csv, summary.csv, results.json (seconds, and each run's exact µs too) and table.md in `out_dir`."""
    registry = str(meta["registry"])
    runs, summary = run_rows(samples, registry), summary_rows(summaries, registry)
    files = {
        "runs.csv": to_csv(runs, RUN_COLUMNS),
        "summary.csv": to_csv(summary, SUMMARY_COLUMNS),
        "results.json": json.dumps({
            **meta,
            "summary": [_numeric(row) for row in summary],
            "runs": [{**_numeric(row), **{f"{t}_us": getattr(s, f"{t}_us") for t in TIMES}}
                     for row, s in zip(runs, samples, strict=True)],
        }, indent=1) + "\n",
        "table.md": table(summaries, registry) + "\n",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out_dir / name).write_text(text)
    return [out_dir / name for name in files]
