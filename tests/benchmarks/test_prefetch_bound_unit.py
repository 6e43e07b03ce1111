"""bench-image's bound, the report of each variant against it, the run-to-run table and the lists compared, on
made-up samples (the real ones are in tests/e2e/test_bench_image_nydus.py)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.prefetch import bounds, lists, report, targets
from benchmarks.prefetch.config import Variant
from benchmarks.prefetch.runner import Sample, warm_variant
from benchmarks.prefetch.shaping import Link

OCI = Variant("oci", "overlayfs")
OFF = Variant("nydus", "nydus", "_nydus", "off")
LIST = Variant("nydus-prefetch-list", "nydus", "_nydus_prefetch", "list")
NYDUSD = Variant("nydus-nydusd-list", "nydus", "_nydus_nydusdlist", "list", "nydusd")
LINK = "20mbit/40ms"


def sample(
    variant: Variant, rep: int, pull: int, create: int, run: int, *, nydusd: int | None = None, link: str = LINK
) -> Sample:
    return Sample(
        "app:1",
        variant,
        f"r/app:1{variant.tag_suffix}",
        rep,
        f"t{rep}",
        "ok",
        pull,
        create,
        run,
        pull + create + run,
        nydusd_bytes=nydusd,
        link=link,
    )


def samples(link: str = LINK) -> list[Sample]:
    return [
        sample(OCI, 1, 9_000_000, 300_000, 2_000_000, link=link),
        sample(warm_variant(OCI), 1, 50_000, 250_000, 1_000_000, link=link),
        sample(OCI, 2, 8_000_000, 300_000, 2_000_000, link=link),
        sample(warm_variant(OCI), 2, 60_000, 200_000, 1_400_000, link=link),
        sample(OFF, 1, 400_000, 600_000, 9_000_000, nydusd=10_000_000, link=link),
        sample(OFF, 2, 500_000, 700_000, 11_000_000, nydusd=12_000_000, link=link),
        sample(LIST, 1, 450_000, 650_000, 5_000_000, nydusd=11_000_000, link=link),
        sample(LIST, 2, 450_000, 650_000, 6_000_000, nydusd=11_000_000, link=link),
    ]


def test_the_bound_is_pull_and_create_of_nydus_without_prefetch_and_the_slower_of_warm_run_and_transfer() -> None:
    found = bounds.bounds(report.summarize(samples()), {LINK: Link.parse(LINK)})
    bound = found[(LINK, "app:1")]
    assert isinstance(bound, bounds.Bound)
    # medians: pull 0.45 s, create 0.65 s (prefetch off); warm run 1.2 s; 11 MB at 20 Mbit/s = 4.4 s
    assert (bound.metadata_pull_us, bound.create_us, bound.warm_run_us, bound.needed_bytes, bound.transfer_us) == (
        450_000,
        650_000,
        1_200_000,
        11_000_000,
        4_400_000,
    )
    assert (bound.total_us, bound.limited_by) == (5_500_000, "the link")
    unshaped = bounds.bounds(report.summarize(samples(link="")), {"": None})[("", "app:1")]
    assert isinstance(unshaped, bounds.Bound) and (unshaped.total_us, unshaped.limited_by) == (2_300_000, "the run")


def test_without_prefetch_off_or_a_warm_start_there_is_no_bound_and_it_says_why() -> None:
    no_off = [s for s in samples() if s.variant != OFF]
    no_warm = [s for s in samples() if not s.warm]
    link = {LINK: Link.parse(LINK)}
    assert bounds.bounds(report.summarize(no_off), link)[(LINK, "app:1")] == (
        "no bound: it needs nydus without prefetch (prefetch: off) measured"
    )
    assert bounds.bounds(report.summarize(no_warm), link)[(LINK, "app:1")] == (
        "no bound: it needs the warm start of an overlayfs variant measured"
    )


def test_each_variant_against_the_bound_in_the_table_and_the_summary() -> None:
    summaries = report.summarize(samples())
    found = bounds.bounds(summaries, {LINK: Link.parse(LINK)})
    lines = report.table(summaries, found).splitlines()
    assert lines[0] == (
        "**app:1**, link 20mbit/40ms: bound 5.50 s = pull 0.45 + create 0.65 + max(warm run 1.20, "
        "10.5 MiB needed at the link's rate 4.40)"
    )
    ratios = {line.split(" | ")[0][2:]: line.split(" | ")[6] for line in lines[4:]}
    # medians over 5.5 s: oci 10.8 s, off 11.1 s, list 6.6 s; the warm start has none (it is a part of the bound)
    assert ratios == {"oci": "1.96", "oci-warm": "", "nydus": "2.02", "nydus-prefetch-list": "1.20"}
    rows = {row["variant"]: row for row in report.summary_rows(summaries, "r", found)}
    assert (rows["nydus-prefetch-list"]["bound_s"], rows["nydus-prefetch-list"]["total_vs_bound"]) == (
        "5.500000",
        "1.200",
    )
    assert rows["oci-warm"]["total_vs_bound"] == ""


def test_run_to_run_shows_every_total_in_order_and_the_spread() -> None:
    table = report.run_to_run(report.summarize(samples())).splitlines()
    assert table[0] == "**app:1**, link 20mbit/40ms: total (s) of each repetition"
    assert table[2:] == [
        "| variant | #1 | #2 | (max-min)/median |",
        "|---|---|---|---|",
        "| oci | 11.30 | 10.30 | 9% |",
        "| oci-warm | 1.30 | 1.66 | 24% |",
        "| nydus | 10.00 | 12.20 | 20% |",
        "| nydus-prefetch-list | 6.10 | 7.10 | 15% |",
    ]


def test_nydusds_list_against_ours(tmp_path: Path) -> None:
    (tmp_path / "ours").write_text("# incomplete: 1 events lost\n/a\n/b\n/c\n/d\n")
    (tmp_path / "nydusd").write_text("/etc/passwd\n/b\n/a\n/d\n")
    (comparison,) = lists.comparisons(
        {"app:1": {"ours": tmp_path / "ours", "nydusd": tmp_path / "nydusd"}, "other:1": {"ours": tmp_path / "ours"}}
    )
    assert comparison == lists.Comparison("app:1", 4, 4, 0.75, 0.75, 1, ("/c",), ("/etc/passwd",))
    measured = report.summarize([sample(LIST, 1, 1, 1, 3_000_000), sample(NYDUSD, 1, 1, 1, 4_000_000)])
    assert report.lists_table([comparison], measured).splitlines()[2] == (
        "| app:1 | 4 | 4 | 0.750 | 0.750 | 1 | 3.00 (20mbit/40ms) | 4.00 (20mbit/40ms) |"
    )


def test_the_targets_are_read_off_the_summaries() -> None:
    runtime = Variant("nydus-runtime-list", "nydus", "_nydus", "runtime")
    all_ = Variant("nydus-prefetch-all", "nydus", "_nydus_prefetchall", "all")
    measured = [
        *samples(),
        sample(runtime, 1, 450_000, 650_000, 6_000_000, nydusd=11_000_000),
        sample(all_, 1, 450_000, 650_000, 20_000_000, nydusd=40_000_000),
    ]
    summaries = report.summarize(measured)
    link = {LINK: Link.parse(LINK)}
    found = {c.target: c for c in targets.checks(summaries, bounds.bounds(summaries, link), link)}
    # list 6.6 s: bound 5.5 s (1.2), OCI 10.8 s, off 11.1 s (RTT 40 ms: the 0.5 target), all 21.1 s; runtime 7.1 s
    assert {t: c.describe() for t, c in found.items()} == {
        "19: list / bound <= 1.3": "met (1.20)",
        "19: list / OCI <= 0.5": "missed: 0.61, +22% over",
        "19, 20: list / nydus without prefetch <= 0.5 (RTT >= 40 ms)": "missed: 0.59, +19% over",
        "19: list below prefetch-all": "met (0.31)",
        "20: list never slower than nydus without prefetch": "met (0.59)",
        "20: list / bound <= 1.2": "met (1.20)",
        "19: runtime list / converted list <= 1.05": "missed: 1.08, +2% over",
        "19: bytes by ready, list / needed <= 1.5": "not measured",  # the samples have no bytes by ready
        "20: bytes by ready, list / needed <= 1.2": "not measured",
        "19: bytes by ready, list / prefetch-all <= 0.5": "not measured",
    }
    table = targets.table(list(found.values())).splitlines()
    assert table[0] == "| target | app:1 20mbit/40ms |"
    assert table[3] == "| 19: list / OCI <= 0.5 | missed: 0.61, +22% over |"
