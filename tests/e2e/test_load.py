"""Load (make stress): 200 containers in sequence and 20 at once, each reading its own files. Every list
exact, no crosstalk, and nothing leaks: no extra server process, fd, fanotify group or temp file, and the
daemon's RSS stays within a few MB."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from testbed import host
from testbed.plugin import prelaunched_pid
from testbed.tracing import DATA_FILES, Traced, build_workload_image, start_traced

pytestmark = pytest.mark.stress


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def fanotify_groups(pid: int) -> int:
    return sum(os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[fanotify]" for fd in os.listdir(f"/proc/{pid}/fd"))


def resources(traced: Traced) -> tuple[int, int, int, list[str]]:
    plugin = prelaunched_pid(traced.bed)
    servers = [p for p in host.processes() if p.ppid == plugin and "optimizer-server" in " ".join(p.cmdline)]
    fds = len(os.listdir(f"/proc/{plugin}/fd")) + sum(len(os.listdir(f"/proc/{s.pid}/fd")) for s in servers)
    temps = [p.name for p in traced.results.rglob("*") if p.name.endswith(".tmp") or p.name == ".inflight"]
    return len(servers), fds, sum(fanotify_groups(s.pid) for s in servers), temps


def expected(index: int) -> list[str]:
    return [DATA_FILES[(index * 7 + k) % len(DATA_FILES)] for k in range(3)]


def run_and_check(traced: Traced, indices: range) -> None:
    """Start a container per index (all before stopping any), then stop each; every trace exact."""
    runs = []
    for index in indices:
        files = expected(index)
        runs.append((index, traced.run(["/bin/sh", "-c", f"cat {' '.join(files)}; exec sleep 1000"], wait=False)))
    for index, run in runs:
        deadline = time.monotonic() + 30
        while len(run.log_lines()) < len(expected(index)):  # its reads are done: no need to wait longer
            assert time.monotonic() < deadline, run.log_lines()
            time.sleep(0.01)
        line = traced.finish(run, timeout=60, grace=0)
        assert f"recorded {1 + len(expected(index))} files" in line, (index, line)
    for _, run in runs:  # 220 pods left standing would make the teardown, not the plugin, the test
        traced.bed.cri.stop_pod(run.pod.id)
        traced.bed.cri.remove_pod(run.pod.id)


def test_200_in_sequence_and_20_at_once_exact_and_leak_free(make_containerd, tmp_path, workload_image) -> None:
    traced = start_traced(make_containerd, "2.1", tmp_path, workload_image, extra="overwrite = true\n")
    traced.finish(traced.run(["/bin/cat", "/data/f000"]))  # warm: server running, first allocations made
    plugin = prelaunched_pid(traced.bed)
    before, rss_before = resources(traced), rss_mb(plugin)
    for index in range(200):
        run_and_check(traced, range(index, index + 1))
        assert traced.result() == ["/bin/busybox", *expected(index)]
    run_and_check(traced, range(1000, 1020))
    # Every list of the 20 was written whole in turn (overwrite = true): the last one standing is one of them.
    assert traced.result() in [["/bin/busybox", *expected(i)] for i in range(1000, 1020)]
    after = resources(traced)
    assert after == before, (before, after)  # servers, fds, fanotify groups, temp files
    assert before[2] == 0 and before[3] == []
    assert rss_mb(plugin) - rss_before < 3, (rss_before, rss_mb(plugin))
