"""Small statistics for noisy samples: median, p90, min-max, and list comparisons (recall, precision, order)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summary(values: Sequence[float]) -> dict[str, Any]:
    """n, median, p90, min, max of the values (nan where there are none)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {
        "n": len(vals),
        "median": percentile(vals, 50),
        "p90": percentile(vals, 90),
        "min": min(vals) if vals else math.nan,
        "max": max(vals) if vals else math.nan,
    }


def inversions(expected: Sequence[str], recorded: Sequence[str]) -> int:
    """Pairs of files present in both lists whose relative order differs (Kendall tau distance)."""
    position = {path: i for i, path in enumerate(expected)}
    ranks = [position[p] for p in _first_occurrences(recorded) if p in position]
    # Merge-sort inversion count: n log n, fine for 20,000 entries.
    return _count_inversions(ranks)[1]


def _first_occurrences(paths: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for path in paths:
        if path not in seen:
            seen.add(path)
            out.append(path)
    return out


def _count_inversions(values: list[int]) -> tuple[list[int], int]:
    if len(values) <= 1:
        return values, 0
    middle = len(values) // 2
    left, a = _count_inversions(values[:middle])
    right, b = _count_inversions(values[middle:])
    merged: list[int] = []
    count = a + b
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            count += len(left) - i
            j += 1
    merged += left[i:]
    merged += right[j:]
    return merged, count


def compare(expected: Sequence[str], recorded: Sequence[str]) -> dict[str, Any]:
    """recall, precision and order inversions of a recorded list against the expected one."""
    want, got = set(expected), set(recorded)
    hit = len(want & got)
    return {
        "expected": len(want),
        "recorded": len(recorded),
        "recall": hit / len(want) if want else 1.0,
        "precision": hit / len(got) if got else (1.0 if not want else 0.0),
        "inversions": inversions(expected, recorded),
        "missing": sorted(want - got)[:10],
        "extra": sorted(got - want)[:10],
    }
