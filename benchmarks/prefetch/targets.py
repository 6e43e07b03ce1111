"""The issues' targets, read off a run's summaries (reported, never asserted: a target is met or missed by so much).

Per link setting and image, with the variants of the default set by their prefetch mode (the converted list is
the reordered one, our list, with convert's default unread budget; the runtime list the same list):

- the list's median total: at most 1.3x the bound; 0.5x OCI's; 0.5x nydus without prefetch's where round trips
  dominate (40 ms or more), 0.8x it on shorter ones; below prefetch-all's (issue 19); never above nydus without
  prefetch's, and at most 1.2x the bound (issue 20);
- the runtime list within 5 % of the converted list;
- bytes by ready with the list: at most 1.5x (issue 19) and 1.2x (issue 20) the needed bytes (nydus without
  prefetch's), at most 0.5x prefetch-all's. (On-demand requests "near zero" has no number: the table shows them.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from benchmarks.prefetch.bounds import Bound
from benchmarks.prefetch.config import Variant, default_conversion
from benchmarks.prefetch.report import Summary
from benchmarks.prefetch.shaping import Link
from nri_optimizer.nydus.partial import DEFAULT_BUDGET

LONG_RTT = 0.040  # seconds: from here on round trips dominate a start without prefetch (issue 19's 40 ms setting)


@dataclass(frozen=True)
class Check:
    link: str
    image: str
    target: str  # what the issue asks, e.g. "list / bound <= 1.3"
    value: float | None  # the measured ratio (None: not measured)
    limit: float
    at_most: bool = True  # the ratio must be at most `limit` (else: below it)

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.at_most else self.value < self.limit

    def describe(self) -> str:
        if self.value is None:
            return "not measured"
        if self.met:
            return f"met ({self.value:.2f})"
        return f"missed: {self.value:.2f}, {self.value / self.limit - 1:+.0%} over"


def checks(
    summaries: Sequence[Summary], bounds: Mapping[tuple[str, str], Bound | str], links: Mapping[str, Link | None]
) -> list[Check]:
    groups: dict[tuple[str, str], dict[str, Summary]] = {}
    for summary in summaries:
        role = _role(summary.first.variant)
        if role is not None and summary.times:
            groups.setdefault((summary.first.link, summary.first.image), {}).setdefault(role, summary)
    found: list[Check] = []
    for (link, image), by_role in groups.items():
        found += _of_one(link, image, by_role, bounds.get((link, image)), links.get(link))
    return found


def _of_one(
    link: str, image: str, by_role: Mapping[str, Summary], bound: Bound | str | None, setting: Link | None
) -> list[Check]:
    def total(role: str) -> float | None:
        summary = by_role.get(role)
        return summary.times["total"].median_us / 1e6 if summary is not None else None

    def fetched(role: str) -> float | None:
        summary = by_role.get(role)
        value = summary.bytes_fetched if summary is not None else None
        return float(value) if value is not None else None

    found: list[Check] = []

    def add(target: str, a: float | None, b: float | None, limit: float, at_most: bool = True) -> None:
        found.append(Check(link, image, target, a / b if a is not None and b else None, limit, at_most))

    needed = float(bound.needed_bytes) if isinstance(bound, Bound) else None
    bound_s = bound.total_us / 1e6 if isinstance(bound, Bound) else None
    add("19: list / bound <= 1.3", total("list"), bound_s, 1.3)
    add("19: list / OCI <= 0.5", total("list"), total("oci"), 0.5)
    if setting is not None and setting.rtt >= LONG_RTT:
        add("19, 20: list / nydus without prefetch <= 0.5 (RTT >= 40 ms)", total("list"), total("off"), 0.5)
    else:
        add("19, 20: list / nydus without prefetch <= 0.8 (RTT < 40 ms)", total("list"), total("off"), 0.8)
    add("19: list below prefetch-all", total("list"), total("all"), 1.0, at_most=False)
    add("20: list never slower than nydus without prefetch", total("list"), total("off"), 1.0)
    add("20: list / bound <= 1.2", total("list"), bound_s, 1.2)
    add("19: runtime list / converted list <= 1.05", total("runtime"), total("list"), 1.05)
    add("19: bytes by ready, list / needed <= 1.5", fetched("list"), needed, 1.5)
    add("20: bytes by ready, list / needed <= 1.2", fetched("list"), needed, 1.2)
    add("19: bytes by ready, list / prefetch-all <= 0.5", fetched("list"), fetched("all"), 0.5)
    return found


def _role(variant: Variant) -> str | None:
    """Which of the default set a variant is, if it is one of them."""
    if variant.snapshotter == "overlayfs":
        return "oci"
    if variant.prefetch == "off":
        return "off"
    if variant.prefetch == "all":
        return "all"
    if variant.prefetch == "list" and variant.conversion == default_conversion("ours"):
        return "list"
    if (
        variant.prefetch == "runtime"
        and variant.lists == "ours"
        and variant.unread_budget == DEFAULT_BUDGET
        and (variant.read_in_part == "on-demand")
    ):
        return "runtime"
    return None


def table(found: Sequence[Check]) -> str:
    """Markdown: one row per target, one column per link setting and image."""
    columns = list(dict.fromkeys((c.link, c.image) for c in found))
    targets = list(dict.fromkeys(c.target for c in found))
    by = {(c.target, c.link, c.image): c for c in found}
    head = ["target", *(f"{image} {link or '(not shaped)'}" for link, image in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for target in targets:
        cells = [by[(target, link, image)].describe() if (target, link, image) in by else "" for link, image in columns]
        lines.append("| " + " | ".join([target, *cells]) + " |")
    return "\n".join(lines)
