"""The fastest start a link allows, from two figures measured in the same run (BENCH.md §3):

    bound = metadata pull + create + max(warm run, needed bytes / rate)

- metadata pull and create: the medians of nydus without prefetch (the pull fetches the manifest, the config and
  the bootstrap only; create starts nydusd);
- warm run: the median run-until-ready of the warm start (the OCI image started again on the same node, every byte
  local and in the page cache): the start when nothing has to be fetched;
- needed bytes: the median of what nydusd fetched by ready with prefetch off: what the start really reads, at the
  1 MiB chunks nydusd fetches;
- rate: the link's (unshaped: no transfer term).

A perfect list overlaps the fetching with the run and leaves no round trip in the way, so no variant should beat
the bound by more than the noise; each variant's median total is reported as a multiple of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from benchmarks.prefetch.report import Summary
from benchmarks.prefetch.shaping import Link


@dataclass(frozen=True)
class Bound:
    metadata_pull_us: int
    create_us: int
    warm_run_us: int
    needed_bytes: int
    transfer_us: int  # needed_bytes at the link's rate; 0 unshaped

    @property
    def total_us(self) -> int:
        return self.metadata_pull_us + self.create_us + max(self.warm_run_us, self.transfer_us)

    @property
    def limited_by(self) -> str:
        return "the link" if self.transfer_us > self.warm_run_us else "the run"

    def describe(self) -> str:
        return (
            f"{self.total_us / 1e6:.2f} s = pull {self.metadata_pull_us / 1e6:.2f} + create "
            f"{self.create_us / 1e6:.2f} + max(warm run {self.warm_run_us / 1e6:.2f}, "
            f"{self.needed_bytes / 2**20:.1f} MiB needed at the link's rate {self.transfer_us / 1e6:.2f})"
        )


def bound_of(summaries: Iterable[Summary], link: Link | None) -> Bound | str:
    """The bound for one link and image from its variants' summaries, or why there is none."""
    by_name = {s.first.variant.name: s for s in summaries}
    off = next((s for s in by_name.values() if s.first.variant.prefetch == "off"), None)
    warm = next((s for s in by_name.values() if s.first.warm), None)
    if off is None or not off.times or off.nydusd_bytes is None:
        return "no bound: it needs nydus without prefetch (prefetch: off) measured"
    if warm is None or not warm.times:
        return "no bound: it needs the warm start of an overlayfs variant measured"
    transfer = 0 if link is None else round(off.nydusd_bytes / link.bytes_per_second * 1e6)
    return Bound(
        off.times["pull"].median_us,
        off.times["create"].median_us,
        warm.times["run"].median_us,
        off.nydusd_bytes,
        transfer,
    )


def bounds(summaries: Iterable[Summary], links: Mapping[str, Link | None]) -> dict[tuple[str, str], Bound | str]:
    """(link, image) -> its bound (or why none), for every link and image of `summaries`."""
    groups: dict[tuple[str, str], list[Summary]] = {}
    for summary in summaries:
        groups.setdefault((summary.first.link, summary.first.image), []).append(summary)
    return {key: bound_of(group, links.get(key[0])) for key, group in groups.items()}
