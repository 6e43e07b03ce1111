"""What a new run does to its image's result (on_repeat), the runs a merged list is made of, and result names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nri_optimizer import config as cfg
from nri_optimizer.errors import ReferenceError
from nri_optimizer.nri.proto import nri_pb2 as api
from nri_optimizer.plugin import workload_of
from nri_optimizer.results import reference
from nri_optimizer.results.formats import Entry
from nri_optimizer.results.key import ResultKey, result_key, split_name
from nri_optimizer.results.merge import Run, merge
from nri_optimizer.results.runs import OnRepeat, Recorded, complete_result, record
from testbed.tracing import result_set

KEY = ResultKey("library", "app:1")


def entries(*paths: str) -> list[Entry]:
    return [Entry(p.encode(), len(p), 100 * i) for i, p in enumerate(paths)]


def run(
    persist_dir: Path,
    *paths: str,
    on_repeat: OnRepeat = "merge",
    window: int = 3,
    incomplete: str | None = None,
    readable: bool = False,
) -> Recorded:
    return record(
        str(persist_dir),
        KEY,
        entries(*paths),
        readable=readable,
        on_repeat=on_repeat,
        window=window,
        incomplete=incomplete,
    )


def listed(persist_dir: Path) -> list[str] | None:
    return result_set(persist_dir / KEY.directory / KEY.name)


def stored_runs(persist_dir: Path) -> list[str]:
    runs = persist_dir / KEY.directory / f".{KEY.name}" / "current" / "runs"
    return sorted(os.listdir(runs), key=lambda n: (int(n.split(".")[0]), n)) if runs.exists() else []


def merged(*runs: tuple[str, ...]) -> list[str]:
    return [e.path.decode() for e in merge([Run(entries(*r)) for r in runs]).entries]


def test_merge_lists_the_merge_of_the_last_window_complete_runs_and_keeps_no_more(tmp_path: Path) -> None:
    lists = [("/a", "/b", "/c"), ("/b", "/a", "/c"), ("/a", "/c", "/b", "/d"), ("/c", "/a"), ("/a", "/b")]
    for n, paths in enumerate(lists, 1):
        recorded = run(tmp_path, *paths)
        assert (recorded.runs, recorded.listed, recorded.unwritten) == (min(n, 3), len(paths), None)
        assert listed(tmp_path) == merged(*lists[max(0, n - 3) : n])
        assert recorded.result_listed == len(listed(tmp_path) or [])
    # Bounded disk: the window's runs only (numbered on), in one set.
    assert stored_runs(tmp_path) == ["3", "3.csv", "4", "4.csv", "5", "5.csv"]
    assert len([n for n in os.listdir(tmp_path / "library" / ".app:1") if n.startswith("set.")]) == 1


def test_the_merged_csv_has_the_runs_sizes_and_median_times(tmp_path: Path) -> None:
    record(
        str(tmp_path), KEY, [Entry(b"/a", 7, 100), Entry(b"/b", 9, 300)], readable=False, on_repeat="merge", window=3
    )
    record(
        str(tmp_path), KEY, [Entry(b"/b", 9, 200), Entry(b"/a", 7, 500)], readable=False, on_repeat="merge", window=3
    )
    # /a ranks 0, 1 and /b 1, 0 tie at 0.5: /a is first in the earlier run; times are the medians.
    assert (tmp_path / "library/app:1.csv").read_text() == "path,size,elapsed\n/a,7,300\n/b,9,250\n"


def test_an_incomplete_run_is_left_out_while_a_complete_one_exists(tmp_path: Path) -> None:
    run(tmp_path, "/a", "/b")
    recorded = run(tmp_path, "/x", incomplete="the kernel dropped 2 events")
    assert recorded.unwritten == "its list is incomplete and 1 complete runs are merged: left out (on_repeat = merge)"
    assert listed(tmp_path) == ["/a", "/b"]
    assert stored_runs(tmp_path) == ["1", "1.csv"]


def test_incomplete_runs_are_merged_while_there_is_no_complete_one_then_give_way(tmp_path: Path) -> None:
    run(tmp_path, "/a", incomplete="the kernel dropped 2 events")
    assert (tmp_path / "library/app:1").read_text() == "# incomplete: the kernel dropped 2 events\n/a\n"
    run(tmp_path, "/b", "/a", incomplete="the kernel's event queue overflowed")
    assert (tmp_path / "library/app:1").read_text().splitlines() == [
        "# incomplete: 2 runs merged, each incomplete; latest: the kernel's event queue overflowed",
        "/b",
        "/a",
    ]
    assert complete_result(str(tmp_path), KEY) is False
    run(tmp_path, "/c")
    assert (tmp_path / "library/app:1").read_text() == "/c\n"  # the first complete run: the others give way
    assert stored_runs(tmp_path) == ["3", "3.csv"]
    assert complete_result(str(tmp_path), KEY) is True


def test_a_result_without_runs_counts_as_one(tmp_path: Path) -> None:
    (tmp_path / "library").mkdir()
    (tmp_path / "library/app:1").write_text("/u1\n/u2\n")  # upstream's: a list and a CSV in readable units
    (tmp_path / "library/app:1.csv").write_text("path,size,elapsed\n/u1,1.2 KiB,850 us\n/u2,3 B,1.000 ms\n")
    recorded = run(tmp_path, "/u2", "/u1", "/n")
    assert recorded.runs == 2
    assert listed(tmp_path) == merged(("/u1", "/u2"), ("/u2", "/u1", "/n"))
    assert stored_runs(tmp_path) == ["1", "1.csv", "2", "2.csv"]
    run(tmp_path, "/r", on_repeat="replace")  # replace: the result is that run alone, its window gone
    assert run(tmp_path, "/m").runs == 2
    assert listed(tmp_path) == merged(("/r",), ("/m",))


def test_readable_units_in_the_result_plain_units_in_the_runs(tmp_path: Path) -> None:
    record(str(tmp_path), KEY, [Entry(b"/a", 2048, 1500)], readable=True, on_repeat="merge", window=3)
    assert (tmp_path / "library/app:1.csv").read_text() == "path,size,elapsed\n/a,2.0 KiB,1.500 ms\n"
    assert (tmp_path / "library/.app:1/current/runs/1.csv").read_text() == "path,size,elapsed\n/a,2048,1500\n"


def test_keep_replaces_an_incomplete_result_with_the_first_complete_run_only(tmp_path: Path) -> None:
    run(tmp_path, "/a", on_repeat="keep", incomplete="the kernel dropped 1 events")
    assert run(tmp_path, "/b", on_repeat="keep", incomplete="again").unwritten is not None  # incomplete: kept
    assert complete_result(str(tmp_path), KEY) is False
    assert run(tmp_path, "/c", on_repeat="keep").unwritten is None
    assert run(tmp_path, "/d", on_repeat="keep").unwritten is not None
    assert listed(tmp_path) == ["/c"]


def test_the_run_list_is_the_runs_own_whatever_the_result_holds(tmp_path: Path) -> None:
    run(tmp_path, "/a")
    assert run(tmp_path, "/b").run_list == b"/b\n"
    assert run(tmp_path, "/c", on_repeat="keep").run_list == b"/c\n"


# -- result names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "timeout", "workload", "name"),
    [
        ("nginx", 0, "", "nginx:latest"),
        ("nginx", 30, "", "nginx:latest.timeout30s"),
        ("nginx", 0, "web", "nginx:latest+web"),
        ("nginx", 30, "api.v2_x-1", "nginx:latest.timeout30s+api.v2_x-1"),
        ("nginx@sha256:" + "a" * 64, 0, "web", "nginx@sha256:" + "a" * 64 + "+web"),
    ],
)
def test_a_workloads_result_sits_beside_the_images_under_a_name_upstream_never_writes(
    image: str, timeout: int, workload: str, name: str
) -> None:
    key = result_key(reference.parse(image), timeout=timeout, workload=workload)
    assert key == ResultKey("library", name)
    assert split_name(key.name) == (name.partition("+")[0], workload)


@pytest.mark.parametrize("workload", ["-web", "web-", "a/b", "..", "a b", "x" * 64, "web\n"])
def test_a_workload_that_is_no_label_value_has_no_result(workload: str) -> None:
    with pytest.raises(ReferenceError, match="not a valid workload name"):
        result_key(reference.parse("nginx"), workload=workload)


def test_a_name_too_long_with_its_workload_is_refused() -> None:
    image = reference.parse("r/" + "n" * 150 + ":" + "t" * 64)
    with pytest.raises(ReferenceError, match="too long for a result file name"):
        result_key(image, workload="w" * 60)


def test_the_workload_comes_from_the_pod_label_or_the_container_name() -> None:
    pod = api.PodSandbox(labels={"app.kubernetes.io/name": "web", "tier": "front"})
    container = api.Container(name="nginx")
    assert workload_of("label:app.kubernetes.io/name", pod, container) == "web"
    assert workload_of("label:absent", pod, container) == ""
    assert workload_of(cfg.WORKLOAD_BY_CONTAINER_NAME, pod, container) == "nginx"
    assert workload_of("", pod, container) == ""
