"""One PNG per image and link setting: for each variant, a bar per phase (pull, create, run, total) at the median,
with a whisker from the fastest to the slowest repetition, and the bound (bounds.py) as a dashed line. A variant that
did not run is named, with why, where its bars would be.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks.prefetch.bounds import Bound
from benchmarks.prefetch.report import TIMES, Summary

COLOURS = {"pull": "#4c72b0", "create": "#dd8452", "run": "#55a868", "total": "#8c8c8c"}


def plot_image(summaries: Sequence[Summary], out: Path, *, title: str, bound: Bound | None = None) -> Path:
    """Plot the summaries of one image and link setting (one per variant) to `out`."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    width = 0.8 / len(TIMES)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.9 * len(summaries)), 4.8), dpi=100)
    tops = [s.times["total"].max_us for s in summaries if s.times] + ([bound.total_us] if bound else [])
    top = max(tops, default=1_000_000) / 1e6
    for i, summary in enumerate(summaries):
        if not summary.times:
            reason = summary.status + (f": {summary.note}" if summary.note else "")
            ax.text(
                i,
                top * 0.05,
                "\n".join(textwrap.wrap(reason, 24)),
                ha="center",
                va="bottom",
                fontsize=7,
                color="#555555",
            )
            continue
        for j, phase in enumerate(TIMES):
            spread = summary.times[phase]
            median = spread.median_us / 1e6
            x = i - 0.4 + width * (j + 0.5)
            ax.bar(
                x,
                median,
                width,
                color=COLOURS[phase],
                label=phase if i == _first_measured(summaries) else None,
                yerr=[[median - spread.min_us / 1e6], [spread.max_us / 1e6 - median]],
                capsize=3,
                error_kw={"elinewidth": 1},
            )
    if bound is not None:
        ax.axhline(
            bound.total_us / 1e6,
            color="#c44e52",
            linestyle="--",
            linewidth=1.2,
            label=f"bound {bound.total_us / 1e6:.2f} s",
        )
    ax.set_xticks(range(len(summaries)))
    ax.set_xticklabels(
        [f"{s.first.variant.name}\n({'skipped' if s.status == 'skipped' else f'n={s.n}'})" for s in summaries],
        fontsize=8,
    )
    ax.set_ylabel("seconds (median; whiskers: min-max)")
    ax.set_ylim(0, top * 1.15)
    ax.set_title(title, fontsize=10)
    if any(s.times for s in summaries):
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def _first_measured(summaries: Sequence[Summary]) -> int:
    return next(i for i, s in enumerate(summaries) if s.times)


def file_name(image: str, link: str) -> str:
    """The PNG's name: image and link, characters other than letters, digits, . _ - as _."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{image}-{link}" if link else image) + ".png"


def plot_all(
    summaries: Sequence[Summary], out_dir: Path, registry: str | None, bounds: Mapping[tuple[str, str], Bound | str]
) -> list[Path]:
    """One PNG per image and link setting; the title names `registry` unless it is None (the run's own, on
    loopback: its port says nothing)."""
    groups: dict[tuple[str, str], list[Summary]] = {}
    for summary in summaries:
        groups.setdefault((summary.first.image, summary.first.link), []).append(summary)
    paths = []
    for (image, link), group in groups.items():
        repetitions = max(len(s.samples) for s in group)
        where = f"link {link}" if link else "registry not shaped"
        title = f"{f'{registry}/' if registry else ''}{image}: pull, create, run ({repetitions} repetitions, {where})"
        bound = bounds.get((link, image))
        paths.append(
            plot_image(
                group, out_dir / file_name(image, link), title=title, bound=bound if isinstance(bound, Bound) else None
            )
        )
    return paths
