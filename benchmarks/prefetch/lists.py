"""nydusd's list against ours, per image: how much of ours it has (recall), how much of its is in ours (precision),
and how many pairs of files the two order differently (order inversions, over the files both have).

Ours is the reference: the plugin sees every file the start opens, from the first instruction on (it holds the
start until it is watching); nydusd sees only files read through FUSE (not those opened and never read, nor reads
the page cache answers), and only once nydusd has mounted. The list file's lines that are not paths (the
``# incomplete`` marker) are not files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.cost.stats import compare
from benchmarks.prefetch.config import ListSource


@dataclass(frozen=True)
class Comparison:
    image: str
    ours: int  # files
    nydusd: int
    recall: float
    precision: float
    inversions: int
    missing: tuple[str, ...]  # a few of ours that nydusd's lacks
    extra: tuple[str, ...]  # a few of nydusd's that ours lacks

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "ours_files": self.ours,
            "nydusd_files": self.nydusd,
            "recall": self.recall,
            "precision": self.precision,
            "order_inversions": self.inversions,
            "missing": list(self.missing),
            "extra": list(self.extra),
        }


def paths(list_file: Path) -> list[str]:
    return [line for line in list_file.read_text(errors="surrogateescape").splitlines() if line.startswith("/")]


def comparisons(lists: Mapping[str, Mapping[ListSource, Path]]) -> list[Comparison]:
    """One comparison per image that has both lists."""
    found = []
    for image, by_source in lists.items():
        if "ours" in by_source and "nydusd" in by_source and by_source["ours"].is_file():
            ours, nydusd = paths(by_source["ours"]), paths(by_source["nydusd"])
            result = compare(ours, nydusd)
            found.append(
                Comparison(
                    image,
                    len(ours),
                    len(nydusd),
                    result["recall"],
                    result["precision"],
                    result["inversions"],
                    tuple(result["missing"]),
                    tuple(result["extra"]),
                )
            )
    return found
