"""What a bench run prints and writes: the table of medians and spreads, the targets, JSON, and a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.cost.scenarios import Results
from benchmarks.cost.stats import summary

BASELINE = "none"
SCENARIO_TITLES = {
    "a": "(a) start latency",
    "b": "(b) stop latency",
    "c": "(c) capture completeness",
    "d": "(d) event cost",
    "e": "(e) memory",
    "f": "(f) scale",
    "g": "(g) the keep check against the images recorded",
}


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"


def summaries(results: Results) -> dict[str, dict[str, dict[str, Any]]]:
    """metric -> variant -> summary (with ratio and difference to the baseline's median where there is one)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, metric in results.metrics.items():
        per: dict[str, dict[str, Any]] = {}
        base = summary(metric.samples[BASELINE])["median"] if BASELINE in metric.samples else None
        for variant, samples in metric.samples.items():
            s = summary(samples)
            if base is not None and variant != BASELINE:
                s["ratio"] = s["median"] / base if base else math.nan
                s["added"] = s["median"] - base
            per[variant] = s
        out[key] = per
    return out


def table(results: Results, variants: list[str]) -> str:
    sums = summaries(results)
    head = f"{'metric':44} {'variant':9} {'n':>4} {'median':>9} {'p90':>9} {'min-max':>19} {'x base':>7} {'added':>9}"
    lines = [head, "-" * len(head)]
    by_scenario: dict[str, list[str]] = {}
    for key, metric in results.metrics.items():
        by_scenario.setdefault(metric.scenario, []).append(key)
    for scenario in sorted(by_scenario):
        lines.append(SCENARIO_TITLES.get(scenario, scenario))
        for key in by_scenario[scenario]:
            metric = results.metrics[key]
            label = f"  {metric.label} ({metric.unit})"
            first = True
            for variant in variants:
                if variant not in sums[key]:
                    continue
                s = sums[key][variant]
                spread = f"{_fmt(s['min'])}-{_fmt(s['max'])}"
                ratio = _fmt(s["ratio"]) if "ratio" in s else ""
                added = ("+" if s.get("added", 0) >= 0 else "") + _fmt(s["added"]) if "added" in s else ""
                name = label if first else ""
                if len(name) > 44:
                    lines.append(name)
                    name = ""
                lines.append(
                    f"{name:44} {variant:9} {s['n']:>4} {_fmt(s['median']):>9} {_fmt(s['p90']):>9} "
                    f"{spread:>19} {ratio:>7} {added:>9}"
                )
                first = False
    return "\n".join(lines)


def _samples(results: Results, key: str, variant: str) -> list[float]:
    metric = results.metrics.get(key)
    return list(metric.samples.get(variant, [])) if metric else []


def targets(results: Results, variants: list[str]) -> list[dict[str, Any]]:
    """The issue's targets, for each traced variant: value, limit, met (None when not measured)."""
    sums = summaries(results)
    out: list[dict[str, Any]] = []

    def stat(key: str, variant: str, field: str) -> float | None:
        value = sums.get(key, {}).get(variant, {}).get(field)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    def add(variant: str, name: str, value: float | None, limit: float, unit: str, higher_ok: bool = False) -> None:
        met = None if value is None else (value >= limit if higher_ok else value <= limit)
        out.append({"variant": variant, "target": name, "value": value, "limit": limit, "unit": unit, "met": met})

    many = results.metrics["time_many"].label.partition(": ")[2] if "time_many" in results.metrics else "files once"
    for v in variants:
        if v == BASELINE:
            continue
        base_p90 = stat("start", BASELINE, "p90")
        p90 = stat("start", v, "p90")
        add(v, "start: added p50", stat("start", v, "added"), 5, "ms")
        add(v, "start: added p90", None if p90 is None or base_p90 is None else p90 - base_p90, 10, "ms")
        add(v, "StopContainer vs baseline (paired)", stat("stop_container_ratio", v, "median"), 1.1, "x")
        add(v, "StopPodSandbox vs baseline (paired)", stat("stop_pod_ratio", v, "median"), 1.1, "x")
        recalls = [x for k in results.metrics if k.startswith("recall_c") for x in _samples(results, k, v)]
        inv = [x for k in results.metrics if k.startswith("inversions_c") for x in _samples(results, k, v)]
        add(v, "(c) recall, worst run", min(recalls) if recalls else None, 100, "%", higher_ok=True)
        add(v, "(c) order inversions, worst run", max(inv) if inv else None, 0, "pairs")
        add(v, f"{many}: workload time vs baseline (paired)", stat("time_ratio_many", v, "median"), 1.08, "x")
        add(v, f"{many}: workload time vs baseline (paired), p90", stat("time_ratio_many", v, "p90"), 1.15, "x")
        lost = _samples(results, "recall_many", v)
        add(v, f"{many}: recall, worst run", min(lost) if lost else None, 100, "%", higher_ok=True)
        add(v, "500 x 100: workload time vs baseline (paired)", stat("time_ratio_few", v, "median"), 1.03, "x")
        epf = _samples(results, "events_per_file_few", v)
        add(v, "500 x 100: events / files recorded, worst", max(epf) if epf else None, 1.1, "x")
        add(v, f"CPU per distinct file ({many})", stat("cpu_per_file_many", v, "median"), 10, "us")
        # The footprint counts each resident page once: the sum of RSS counts the pages of the interpreter's
        # shared library (and libc) in every process, though they are in memory once.
        add(v, "footprint, 20 traced at once (pages once)", stat("mem20_total_pages", v, "median"), 35, "MB")
        idle, after = stat("daemon_rss_idle", v, "median"), stat("daemon_rss_after", v, "median")
        add(v, "daemon RSS after the pods - idle", None if idle is None or after is None else after - idle, 2, "MB")
        exact = [
            x
            for k in results.metrics
            if k.startswith("scale") and k.endswith("_exact")
            for x in _samples(results, k, v)
        ]
        cross = [x for k in results.metrics if k.endswith("_crosstalk") for x in _samples(results, k, v)]
        add(v, "(f) lists exact, worst round", min(exact) if exact else None, 100, "%", higher_ok=True)
        if "scale100_watching" in results.metrics:  # not in --quick
            # Past READY_TIMEOUT (plugin.py) a container starts untraced: its list would not be exact either.
            add(
                v,
                "(f) 100 at once: plugin StartContainer to watching, worst",
                stat("scale100_watching", v, "max"),
                1000,
                "ms",
            )
        add(v, "(f) lists with crosstalk, worst round", max(cross) if cross else None, 0, "lists")
        sizes = sorted(
            int(k.split("_")[2]) for k in results.metrics if k.startswith("keep_check_") and k.endswith("_hit")
        )
        if len(sizes) > 1:  # O(1): the check costs the most images recorded what it costs the fewest
            most, fewest = (stat(f"keep_check_{n}_hit", v, "median") for n in (sizes[-1], sizes[0]))
            add(
                v,
                f"(g) keep check, {sizes[-1]:,} images / {sizes[0]:,}",
                None if most is None or not fewest else most / fewest,
                1.5,
                "x",
            )
    return out


def targets_text(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'target':56} {'variant':9} {'value':>10} {'limit':>8}  result"]
    for row in rows:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[row["met"]]
        cmp = ">=" if "recall" in row["target"] or "exact" in row["target"] else "<="
        value = _fmt(row["value"]) if row["value"] is not None else "-"
        lines.append(
            f"{row['target']:56} {row['variant']:9} {value:>10} {cmp}{_fmt(row['limit']):>6} {row['unit']:5} {verdict}"
        )
    return "\n".join(lines)


def to_json(results: Results, variants: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    sums = summaries(results)
    return {
        "meta": meta,
        "variants": variants,
        "metrics": {
            key: {"scenario": m.scenario, "label": m.label, "unit": m.unit, "samples": m.samples, "summary": sums[key]}
            for key, m in results.metrics.items()
        },
        "targets": targets(results, variants),
        "timeline": results.timeline,
        "durations_s": results.durations,
        "details": results.details,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        return value

    path.write_text(json.dumps(clean(data), indent=1, sort_keys=False) + "\n")


PLOT_PANELS = [
    "start",
    "stop_container",
    "stop_pod",
    "time_many",
    "time_few",
    "cpu_per_file_many",
    "scale20_start",
    "scale20_traced_all",
]
MEMORY_BARS = [
    ("daemon_rss_idle", "daemon idle"),
    ("mem1_total_pages", "all, 1 traced"),
    ("mem20_total_pages", "all, 20 traced"),
    ("mem20_total_rss", "RSS sum, 20 traced"),
    ("mem20_total_pss", "PSS sum, 20 traced"),
    ("daemon_rss_after", "daemon after pods"),
]
COLOURS = {"none": "#7f7f7f", "ours": "#1f77b4", "upstream": "#d62728"}


def plot(results: Results, variants: list[str], path: Path, title: str) -> None:
    """A PNG of the distributions (box + points per variant), capture recall, and memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, results.metrics[k].label) for k in PLOT_PANELS if k in results.metrics]
    n = len(panels) + 2
    cols = 3
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, (key, label) in zip(flat, panels, strict=False):
        metric = results.metrics[key]
        present = [v for v in variants if metric.samples.get(v)]
        data = [metric.samples[v] for v in present]
        ax.boxplot(data, showfliers=False, widths=0.5)
        ax.set_xticks(range(1, len(present) + 1), present)
        for j, (variant, values) in enumerate(zip(present, data, strict=True), start=1):
            xs = [j + 0.18 * ((i * 0.618) % 1 - 0.5) for i in range(len(values))]
            ax.scatter(xs, values, s=8, alpha=0.6, color=COLOURS.get(variant, "black"), zorder=3)
        ax.set_title(label, fontsize=10)
        ax.set_ylabel(metric.unit)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    # capture completeness: recall per case, each run a point
    ax = flat[len(panels)]
    keys = [k for k in results.metrics if k.startswith("recall_c") or k == "recall_many"]
    traced = [v for v in variants if v != BASELINE]
    for j, key in enumerate(keys):
        for t, variant in enumerate(traced):
            values = results.metrics[key].samples.get(variant, [])
            xs = [j + 0.25 * (t - (len(traced) - 1) / 2) + 0.1 * ((i * 0.618) % 1 - 0.5) for i in range(len(values))]
            ax.scatter(
                xs, values, s=10, alpha=0.6, color=COLOURS.get(variant, "black"), label=variant if j == 0 else None
            )
    ax.set_xticks(range(len(keys)), [k.removeprefix("recall_").replace("_", "\n") for k in keys], fontsize=7)
    ax.set_ylim(-5, 105)
    ax.set_title("recall per run", fontsize=10)
    ax.set_ylabel("%")
    if keys:
        ax.legend(fontsize=7)
    # memory
    ax = flat[len(panels) + 1]
    bars = [(k, label) for k, label in MEMORY_BARS if k in results.metrics]
    width = 0.8 / max(1, len(traced))
    for t, variant in enumerate(traced):
        heights = [summary(results.metrics[k].samples.get(variant, []))["median"] for k, _ in bars]
        ax.bar(
            [i + t * width for i in range(len(bars))],
            [0 if math.isnan(h) else h for h in heights],
            width,
            label=variant,
            color=COLOURS.get(variant, "black"),
        )
    ax.set_xticks(
        [i + width * (len(traced) - 1) / 2 for i in range(len(bars))], [b for _, b in bars], fontsize=7, rotation=20
    )
    ax.axhline(35, color="black", linestyle=":", linewidth=1)
    ax.text(-0.4, 35.5, "35 MB target (all, 20 traced: each page once)", fontsize=6, ha="left")
    ax.set_ylim(0, max(45.0, ax.get_ylim()[1] * 1.15))  # room above the bars for the legend
    ax.set_title("memory (median)", fontsize=10)
    ax.set_ylabel("MB")
    ax.legend(fontsize=7, loc="upper right")
    for ax in flat[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
