"""A stalled trace server (SIGSTOP mid-trace) cannot hurt the node: containers still start within the NRI budget,
the daemon's memory stays put, the running trace is declared lost after stall_timeout (logged), and the next
container is traced by a fresh server."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from testbed import host
from testbed.plugin import prelaunched_pid
from testbed.tracing import build_workload_image, start_traced

STALL_TIMEOUT = 6
# containerd's plugin_request_timeout in the test bed: a StartContainer answered later would fail the start.
NRI_BUDGET = 2.0


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


def server_of(plugin_pid: int) -> host.Proc:
    (server,) = [p for p in host.processes() if p.ppid == plugin_pid and "optimizer-server" in " ".join(p.cmdline)]
    return server


def rss_kib(pid: int) -> int:
    (line,) = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1])


def test_a_stopped_server_is_replaced_and_containers_start_meanwhile(
    make_containerd, flavour, tmp_path, workload_image
) -> None:
    traced = start_traced(
        make_containerd, flavour, tmp_path, workload_image, extra=f"stall_timeout = {STALL_TIMEOUT}\noverwrite = true\n"
    )
    running = traced.run(["/bin/sh", "-c", "cat /data/f002; exec sleep 1000"], wait=False)
    traced.log.wait_for(rf"{running.container_id} tracing pid")
    plugin = prelaunched_pid(traced.bed)
    stalled = server_of(plugin)
    rss_before = rss_kib(plugin)
    stalled.kill(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # Containers keep starting while the server says nothing: each costs the plugin's bounded wait for READY,
        # well inside containerd's request timeout, and is not traced.
        meanwhile = []
        while time.monotonic() - stopped_at < STALL_TIMEOUT - 2:
            began = time.monotonic()
            run = traced.run(["echo", "started"])
            assert run.log_lines() == ["started"]
            (start,) = traced.log.wait_for(rf"{run.container_id} (tracing pid|not traced)")
            meanwhile.append((time.monotonic() - began, start))
        assert len(meanwhile) >= 2
        for took, line in meanwhile:
            assert took < NRI_BUDGET + 1.0, meanwhile  # the pod, its container, its exit: the wait is 1 s of it
            assert re.search(r"not traced: pid [0-9]+: the trace server did not answer within 1.0 s$", line), line
        traced.log.wait_for(
            rf"trace server \(pid {stalled.pid}\) stalled: a request unanswered and not a "
            r"word for [0-9]+ s; killing it \(1 traces lost\)",
            timeout=STALL_TIMEOUT + 5,
        )
        declared = time.monotonic() - stopped_at
        assert STALL_TIMEOUT <= declared < STALL_TIMEOUT + 5 + 3  # counted from the first unanswered request
        assert host.wait_gone([stalled], 5) == []
        assert rss_kib(plugin) - rss_before < 4096, "the daemon's memory grew while its server was stalled"
    finally:
        if stalled.alive():
            stalled.kill(signal.SIGCONT)
    # The trace that was running is lost, and says so when its container stops; nothing is written for it.
    traced.bed.cri.stop_container(running.container_id, 1)
    traced.log.wait_for(
        rf"{running.container_id} trace lost \(trace server stalled: no answer for [0-9]+ s\): "
        "nothing written, earlier results kept"
    )
    assert not traced.result_path().exists()
    # A fresh server traces the next container, exactly.
    fresh = server_of(plugin)
    assert fresh.pid != stalled.pid
    run = traced.run(["/bin/cat", "/data/f003"])
    assert "recorded 2 files" in traced.finish(run)
    assert traced.result() == ["/bin/busybox", "/data/f003"]
