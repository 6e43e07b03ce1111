"""Tracing real containers started through CRI: exact lists, in order, nothing missed, nothing extra."""

from __future__ import annotations

from pathlib import Path

import pytest

from .tracing import DATA_FILES, Traced, build_workload_image, shuffled, start_traced


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


@pytest.fixture
def traced(make_containerd, flavour, tmp_path, workload_image) -> Traced:
    return start_traced(make_containerd, flavour, tmp_path, workload_image)


def test_entrypoint_then_200_files_in_read_order(traced: Traced) -> None:
    order = shuffled(DATA_FILES, seed=1)
    run = traced.run(["/bin/cat", *order])
    line = traced.finish(run)
    assert "recorded 201 files" in line
    assert traced.result() == ["/bin/busybox", *order]


def test_exec_first_binary_and_its_five_files_come_first_in_order(traced: Traced) -> None:
    run = traced.run(["/entry.sh"])
    traced.finish(run)
    assert traced.result() == ["/entry.sh", "/bin/busybox", "/data/f010", "/data/f011", "/data/f012", "/data/f013",
                               "/data/f014"]


def test_fifty_files_then_exit_at_once_is_complete(traced: Traced) -> None:
    order = shuffled(DATA_FILES, seed=2)[:50]
    run = traced.run(["/bin/cat", *order])
    assert run.status is not None and run.status.exit_code == 0
    traced.finish(run)
    assert traced.result() == ["/bin/busybox", *order]


def test_odd_names_are_left_out_and_counted(traced: Traced) -> None:
    # A shell glob reaches the name that is not UTF-8 (CRI strings must be).
    run = traced.run(["/bin/sh", "-c", "cat /data/f001 /data/new?line '/data/trailing ' /data/tab? /data/bad? "
                      "/data/f002"])
    line = traced.finish(run)
    assert traced.result() == ["/bin/busybox", "/data/f001", "/data/f002"]
    assert "recorded 3 files" in line and "4 unlistable" in line
