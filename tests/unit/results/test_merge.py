"""`nri-optimizer merge`: the ordering rule (median rank, ties, missing files, k of n) and the files it writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nri_optimizer.cli import main as cli
from nri_optimizer.results.formats import Entry
from nri_optimizer.results.merge import Run, merge


def run(*paths: str, detailed: bool = True) -> Run:
    return Run([Entry(p.encode(), len(p), 10 * i) for i, p in enumerate(paths)], detailed=detailed)


def order(*runs: Run, min_runs: int = 1) -> list[str]:
    return [e.path.decode() for e in merge(runs, min_runs=min_runs).entries]


def test_identical_runs_give_that_list() -> None:
    assert order(run("/a", "/b", "/c"), run("/a", "/b", "/c")) == ["/a", "/b", "/c"]


def test_order_is_the_median_rank() -> None:
    # ranks: /a 0,1,0 -> 0; /b 1,0,2 -> 1; /c 2,2,1 -> 2
    assert order(run("/a", "/b", "/c"), run("/b", "/a", "/c"), run("/a", "/c", "/b")) == ["/a", "/b", "/c"]
    # one run's outlier does not move a file: /z is last in two runs of three
    assert order(run("/z", "/a", "/b"), run("/a", "/b", "/z"), run("/a", "/b", "/z")) == ["/a", "/b", "/z"]


def test_even_number_of_runs_takes_the_mean_of_the_middle_two() -> None:
    # /a ranks 0,3 -> 1.5; /b 1,0 -> 0.5; /c 2,1 -> 1.5; /d 3,2 -> 2.5. /a and /c tie at 1.5: /a comes first in
    # run 0 (rank 0 < 2).
    assert order(run("/a", "/b", "/c", "/d"), run("/b", "/c", "/d", "/a")) == ["/b", "/a", "/c", "/d"]


def test_a_tie_goes_to_the_file_more_runs_read() -> None:
    # /x: rank 1 in one run -> 1; /b: ranks 2, 1, 1 -> 1. Tied: /b, read by three runs, goes first, although
    # /x comes first in the earliest list.
    assert order(run("/a", "/x", "/b"), run("/a", "/b"), run("/a", "/b")) == ["/a", "/b", "/x"]


def test_a_full_tie_goes_to_the_earliest_list_then_its_order() -> None:
    # Each file is in one run only, at the same rank: the order of the lists given decides.
    assert order(run("/r0"), run("/r1"), run("/r2")) == ["/r0", "/r1", "/r2"]
    assert order(run("/r2"), run("/r1"), run("/r0")) == ["/r2", "/r1", "/r0"]


def test_a_missing_file_is_ranked_by_the_runs_that_have_it() -> None:
    # /late is missing from run 1: its rank comes from runs 0 and 2 only (2, 2), not pushed to the end
    runs = (run("/a", "/b", "/late", "/c"), run("/a", "/b", "/c"), run("/a", "/b", "/late", "/c"))
    assert order(*runs) == ["/a", "/b", "/late", "/c"]  # /c: 3, 2, 3 -> 3


def test_k_of_n_drops_files_fewer_runs_read() -> None:
    runs = (run("/a", "/once", "/b"), run("/a", "/b", "/twice"), run("/twice", "/a", "/b"))
    assert order(*runs, min_runs=1) == ["/a", "/twice", "/once", "/b"]  # /twice: 2, 0 -> 1; /once 1; /b: 2, 1, 2
    assert order(*runs, min_runs=2) == ["/a", "/twice", "/b"]
    assert order(*runs, min_runs=3) == ["/a", "/b"]
    assert merge(runs, min_runs=3).dropped == 2


@pytest.mark.parametrize("k", [0, 4])
def test_k_must_be_within_the_number_of_runs(k: int) -> None:
    with pytest.raises(ValueError, match=r"--min-runs must be between 1 and the number of runs \(3\), got"):
        merge((run("/a"), run("/a"), run("/a")), min_runs=k)


def test_a_repeated_path_counts_at_its_first_access() -> None:
    assert order(run("/a", "/b", "/a", "/c"), run("/a", "/b", "/c")) == ["/a", "/b", "/c"]


def test_sizes_from_the_first_detailed_run_and_median_times() -> None:
    runs = (
        Run([Entry(b"/a", 0, 0)], detailed=False),
        Run([Entry(b"/b", 7, 500), Entry(b"/a", 11, 300)]),
        Run([Entry(b"/a", 12, 100), Entry(b"/b", 7, 900)]),
        Run([Entry(b"/a", 13, 250)]),
    )
    # /a: ranks 0,1,0,0 -> 0; /b: 0,1 -> 0.5
    assert merge(runs).entries == [Entry(b"/a", 11, 250), Entry(b"/b", 7, 700)]
    assert merge([Run([Entry(b"/a", 5, 5)], detailed=False)]).entries == [Entry(b"/a", 0, 0)]


def test_no_runs_give_an_empty_list() -> None:
    assert merge([]).entries == []


def write_run(base: Path, paths: list[str], csv_rows: list[str] | None) -> Path:
    base.parent.mkdir(parents=True, exist_ok=True)
    base.write_text("".join(f"{p}\n" for p in paths))
    if csv_rows is not None:
        Path(f"{base}.csv").write_text("path,size,elapsed\n" + "".join(f"{r}\n" for r in csv_rows))
    return base


def test_command_writes_the_three_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = write_run(
        tmp_path / "node1/nginx:latest",
        ["/bin/sh", "/etc/a", "/etc/b"],
        ["/bin/sh,100,10", "/etc/a,20,30", "/etc/b,30,50"],
    )
    two = write_run(
        tmp_path / "node2/nginx:latest",
        ["/bin/sh", "/etc/b", "/etc/a", "/only-here"],
        ["/bin/sh,100,20", "/etc/b,30,40", "/etc/a,20,60", "/only-here,1,70"],
    )
    out = tmp_path / "merged/nginx:latest"
    assert cli(["merge", str(one), str(two), "-o", str(out), "--min-runs", "2"]) == 0
    # /etc/a: ranks 1, 2 -> 1.5; /etc/b: 2, 1 -> 1.5; tie, both in 2 runs: /etc/a is first in run 0
    assert out.read_text() == "/bin/sh\n/etc/a\n/etc/b\n"
    assert Path(f"{out}.csv").read_text() == "path,size,elapsed\n/bin/sh,100,15\n/etc/a,20,45\n/etc/b,30,45\n"
    assert json.loads(Path(f"{out}.json").read_text()) == {
        "version": "v1",
        "files": [{"path": "/bin/sh"}, {"path": "/etc/a"}, {"path": "/etc/b"}],
    }
    assert capsys.readouterr().err == (
        f"nri-optimizer merge: 2 runs -> 3 files in {out} (1 read by fewer than 2 runs dropped)\n"
    )


def test_command_without_csv_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = write_run(tmp_path / "a", ["/x", "/y"], None)
    readable = write_run(tmp_path / "b", ["/y", "/x"], ["/y,1.2 KiB,850 us", "/x,3 B,1.500 ms"])
    out = tmp_path / "m"
    assert cli(["merge", str(plain), str(readable), "-o", str(out)]) == 0
    assert out.read_text() == "/x\n/y\n"
    assert Path(f"{out}.csv").read_text() == "path,size,elapsed\n/x,0,0\n/y,0,0\n"
    assert capsys.readouterr().err.splitlines()[0] == (
        f"nri-optimizer merge: no plain-units CSV beside {plain}, {readable}: sizes and times from the other "
        "runs only (0 where none has them)"
    )


def test_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["merge", str(tmp_path / "absent"), "-o", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err == f"nri-optimizer merge: {tmp_path / 'absent'}: No such file or directory\n"
    one = write_run(tmp_path / "a", ["/x"], None)
    assert cli(["merge", str(one), "-o", str(tmp_path / "m"), "--min-runs", "2"]) == 2
    assert capsys.readouterr().err == (
        "nri-optimizer merge: --min-runs must be between 1 and the number of runs (1), got 2\n"
    )
    assert not (tmp_path / "m").exists()


def test_command_writes_an_images_or_a_workloads_result_where_the_daemon_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = write_run(tmp_path / "node1/app:1", ["/a", "/b"], ["/a,1,10", "/b,2,20"])
    two = write_run(tmp_path / "node2/app:1", ["/b", "/a"], ["/b,2,30", "/a,1,40"])
    results = tmp_path / "results"
    args = ["merge", str(one), str(two), "--persist-dir", str(results), "--config", os.devnull]
    assert cli([*args, "--image", "registry.example/team/app:1", "--workload", "web"]) == 0
    assert cli([*args, "--image", "registry.example/team/app:1"]) == 0
    for name in ("app:1", "app:1+web"):
        assert (results / "team" / name).read_text() == "/a\n/b\n"
        assert (results / "team" / f"{name}.csv").read_text() == "path,size,elapsed\n/a,1,25\n/b,2,25\n"
    assert capsys.readouterr().err.splitlines()[0] == (
        f"nri-optimizer merge: 2 runs -> 2 files in {results}/team/app:1+web (0 read by fewer than 1 runs dropped)"
    )
    # A merged result is one unit too: another merge replaces it in one step, and reads it back from one set.
    assert cli(["merge", str(results / "team/app:1"), "-o", str(tmp_path / "again/app:1")]) == 0
    assert (tmp_path / "again/app:1.csv").read_text() == "path,size,elapsed\n/a,1,25\n/b,2,25\n"


def test_command_workload_needs_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = write_run(tmp_path / "a", ["/x"], None)
    assert cli(["merge", str(one), "-o", str(tmp_path / "m"), "--workload", "web"]) == 2
    assert capsys.readouterr().err == (
        "nri-optimizer merge: --workload names a workload's result in persist_dir: give --image too\n"
    )


def test_residency_is_the_median_over_the_runs_that_measured_it() -> None:
    runs = [
        Run([Entry(b"/a", 10, 1, 100), Entry(b"/b", 5, 2, None)]),
        Run([Entry(b"/a", 10, 3, 300)]),
        Run([Entry(b"/a", 10, 2, 200), Entry(b"/b", 5, 1)]),
    ]
    assert merge(runs).entries == [Entry(b"/a", 10, 2, 200), Entry(b"/b", 5, 1, None)]
