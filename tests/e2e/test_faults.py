"""Faults: the plugin or its server killed, stopped or starved mid-trace. The user's containers always
start and run, earlier results stay intact, no half-written result exists, and what was lost is logged."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from testbed import host
from testbed.plugin import REGISTERED, ExternalPlugin, config_text, prelaunched_pid
from testbed.tracing import SERVER, WORKLOAD_IMAGE, Traced, build_workload_image, start_traced


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def wait_noted(results: Path, container_id: str) -> None:
    """Until the plugin has noted the trace in its journal. It writes the note just after answering
    StartContainer, off its loop, so as never to delay a start: a plugin killed before that loses the trace
    without a word, and under load "tracing pid" is in the log well before the note is on disk."""
    note = results / ".inflight" / container_id
    deadline = time.monotonic() + 10
    while not note.exists():
        assert time.monotonic() < deadline, f"no journal note {note} 10 s after the trace began"
        time.sleep(0.01)


def server_of(plugin_pid: int) -> host.Proc:
    (server,) = [p for p in host.processes() if p.ppid == plugin_pid and "optimizer-server" in " ".join(p.cmdline)]
    return server


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_prelaunched_plugin_killed_or_stopped_mid_trace(
    make_containerd, flavour, tmp_path, workload_image, signum: int
) -> None:
    traced = start_traced(make_containerd, flavour, tmp_path, workload_image, extra="overwrite = true\n")
    traced.finish(traced.run(["/bin/cat", "/data/f001"]))
    before = snapshot(traced.results)
    running = traced.run(["/bin/sh", "-c", "cat /data/f002; exec sleep 1000"], wait=False)
    traced.log.wait_for(rf"{running.container_id} tracing pid")
    wait_noted(traced.results, running.container_id)
    plugin = prelaunched_pid(traced.bed)
    server = server_of(plugin)
    os.kill(plugin, signum)
    began = time.monotonic()
    after = traced.run(["echo", "still starts"])
    assert after.log_lines() == ["still starts"]
    assert time.monotonic() - began < 5  # a stopped plugin costs one request timeout, once
    # containerd 2.x kills a plugin that timed out; 1.7 only drops it, and a continued plugin finds the
    # connection gone and exits. Either way its server goes with it: no orphan.
    with contextlib.suppress(ProcessLookupError):
        os.kill(plugin, signal.SIGCONT)
    assert host.wait_gone([server], 5) == []
    assert traced.bed.cri.container_status(running.container_id).state == "running"
    traced.bed.cri.stop_container(running.container_id, 1)
    results = snapshot(traced.results)
    note = results.pop(f".inflight/{running.container_id}", None)
    assert results == before  # no result for the lost trace, the earlier one intact
    traced.bed.ctd.restart()
    if note is None:
        # A plugin that lived to see its connection close (1.7 drops a stopped plugin without killing it)
        # said so itself.
        traced.log.wait_for(rf"{running.container_id} trace lost: the plugin is shutting down")
    else:
        # Killed: the next plugin (containerd restarted) says what its predecessor lost, and clears the note.
        assert note == WORKLOAD_IMAGE.encode()
        traced.log.wait_for(
            rf"{running.container_id} trace lost: the plugin stopped before finishing it "
            rf"\(image {WORKLOAD_IMAGE}\)"
        )
    assert snapshot(traced.results) == before


def external_plugin(make_containerd, flavour: str, tmp_path: Path, workload_image: Path):
    """A testbed containerd with the workload image, and our plugin started against it by hand."""
    bed = make_containerd(flavour)
    bed.ctd.import_image(workload_image)
    config = tmp_path / "plugin.conf"
    config.write_text(config_text(tmp_path / "plugin.log", tmp_path / "results", f'server_path = "{SERVER}"\n'))
    return bed, config, ExternalPlugin(bed, config, tmp_path / "plugin.log")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_external_plugin_killed_or_stopped_mid_trace(
    make_containerd, flavour, tmp_path, workload_image, signum: int
) -> None:
    bed, config, plugin = external_plugin(make_containerd, flavour, tmp_path, workload_image)
    results = tmp_path / "results"
    try:
        plugin.log.wait_for(REGISTERED)
        traced = Traced(bed, plugin.log, results)
        running = traced.run(["/bin/sh", "-c", "cat /data/f002; exec sleep 1000"], wait=False)
        plugin.log.wait_for(rf"{running.container_id} tracing pid")
        wait_noted(results, running.container_id)
        plugin.signal(signum)
        began = time.monotonic()
        other = traced.run(["echo", "still starts"])
        assert other.log_lines() == ["still starts"]
        assert time.monotonic() - began < 5  # at most containerd's request timeout, once
        bed.cri.stop_container(running.container_id, 1)
        if signum == signal.SIGSTOP:
            # Continued, it finds containerd gone away, reconnects, learns from Synchronize that the
            # container stopped meanwhile, and writes its list.
            plugin.signal(signal.SIGCONT)
            plugin.log.wait_for(REGISTERED, count=2)
            plugin.log.wait_for(rf"{running.container_id} recorded 2 files \(gone while disconnected;")
            assert traced.result() == ["/bin/busybox", "/data/f002"]
        else:
            # As systemd would (Restart=on-failure): the next one logs what the killed one lost.
            plugin.proc.wait()
            plugin = ExternalPlugin(bed, config, tmp_path / "plugin.log")
            plugin.log.wait_for(rf"{running.container_id} trace lost: the plugin stopped before finishing it")
            assert not results.exists() or snapshot(results) == {}
    finally:
        plugin.close()


def test_containerd_restart_mid_trace_external(make_containerd, flavour, tmp_path, workload_image) -> None:
    bed, _, plugin = external_plugin(make_containerd, flavour, tmp_path, workload_image)
    results = tmp_path / "results"
    try:
        plugin.log.wait_for(REGISTERED)
        traced = Traced(bed, plugin.log, results)
        running = traced.run(["/bin/sh", "-c", "cat /data/f002; sleep 1; cat /data/f003; exec sleep 1000"], wait=False)
        plugin.log.wait_for(rf"{running.container_id} tracing pid")
        bed.ctd.restart()  # the container keeps running; the trace goes on across the restart
        plugin.log.wait_for(REGISTERED, count=2)
        time.sleep(1.5)
        traced.finish(running)
        assert traced.result() == ["/bin/busybox", "/data/f002", "/data/f003"]
    finally:
        plugin.close()


def test_full_persist_dir_keeps_the_earlier_result_and_leaves_no_temp_file(
    make_containerd, flavour, tmp_path, workload_image
) -> None:
    traced = start_traced(make_containerd, flavour, tmp_path, workload_image, extra="overwrite = true\n")
    traced.finish(traced.run(["/bin/cat", "/data/f001"]))
    before = snapshot(traced.results)
    saved = tmp_path / "saved"
    shutil.copytree(traced.results, saved, symlinks=True)  # as it is: its names are links into its set
    # Fill the file system holding persist_dir: a tiny tmpfs mounted over it, with the result copied in.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(traced.results)], check=True)
    try:
        shutil.copytree(saved, traced.results, symlinks=True, dirs_exist_ok=True)
        filler = traced.results / "filler"
        with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 512)
        big = traced.run(["/bin/cat", *[f"/data/f{i:03d}" for i in range(200)]])
        line = traced.finish(big)
        assert "cannot write the result for nri-optimizer.test/workload:1" in line
        assert "No space left on device" in line and line.endswith("earlier results kept")
        filler.unlink()
        assert snapshot(traced.results) == before  # no temp file, no half list
    finally:
        subprocess.run(["umount", str(traced.results)], check=True)


@pytest.mark.stress  # 100,000 opens from a shell loop: about a minute per runtime
def test_a_burst_beyond_a_bounded_queue_is_reported_and_the_list_says_incomplete(
    make_containerd, flavour, tmp_path, workload_image
) -> None:
    traced = start_traced(make_containerd, flavour, tmp_path, workload_image, extra="unlimited_queue = false\n")
    run = traced.run(
        [
            "/bin/sh",
            "-c",
            "cat /data/f001; while [ ! -e /tmp/go ]; do sleep 0.05; done; "
            "i=0; while [ $i -lt 100000 ]; do : > /tmp/f$i; i=$((i+1)); done; echo burst done; "
            "exec sleep 1000",
        ],
        wait=False,
    )
    traced.log.wait_for(rf"{run.container_id} tracing pid")
    server = server_of(prelaunched_pid(traced.bed))
    server.kill(signal.SIGSTOP)  # the server lags: the kernel queue (16384 events) fills up
    try:
        # The go signal, from the host through the container's root (not runc exec, which reads files too).
        pid = traced.bed.cri.container_status(run.container_id).pid
        Path(f"/proc/{pid}/root/tmp/go").touch()
        deadline = time.monotonic() + 120
        while run.log_lines() != ["content of /data/f001", "burst done"]:
            assert time.monotonic() < deadline, run.log_lines()
            time.sleep(0.2)
    finally:
        server.kill(signal.SIGCONT)
    line = traced.finish(run, timeout=60)
    assert "list is incomplete" not in line  # that is its own line, before
    traced.log.wait_for(
        rf"{run.container_id} list is incomplete: the kernel's event queue overflowed, files are missing"
    )
    assert traced.result() == [
        "# incomplete: the kernel's event queue overflowed, files are missing",
        "/bin/busybox",
        "/data/f001",
    ]
