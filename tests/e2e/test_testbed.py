"""The testbed itself: real containerd 2.1 and 1.7 run pods through CRI, restart, and leave nothing behind."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from testbed import host
from testbed.bed import Testbed
from testbed.containerd import SHIM_SOCKET_DIR, Containerd, shim_socket_name
from testbed.images import TESTBED_ID, TESTBED_ID_FILE

MakeContainerd = Callable[..., Testbed]


def test_pod_runs_image_and_logs_exactly(containerd: Testbed) -> None:
    run = containerd.run_busybox(["sh", "-c", f"echo hello; cat {TESTBED_ID_FILE}"])

    assert run.status is not None
    assert (run.status.state, run.status.exit_code, run.status.reason) == ("exited", 0, "Completed")
    assert run.log_lines() == ["hello", TESTBED_ID.decode().rstrip("\n")]


def test_exit_code_and_stderr_are_reported(containerd: Testbed) -> None:
    run = containerd.run_busybox(["sh", "-c", "echo oops >&2; exit 3"])

    assert run.status is not None
    assert (run.status.state, run.status.exit_code) == ("exited", 3)
    assert run.log_lines() == ["oops"]


def test_restart_keeps_pods_and_works_after(containerd: Testbed) -> None:
    long = containerd.run_busybox(["sleep", "1000"], wait=False)
    pid = containerd.cri.container_status(long.container_id).pid
    assert pid is not None and host.Proc.read(pid) is not None

    old_pid = containerd.ctd.pid
    containerd.ctd.restart()

    assert containerd.ctd.pid not in (None, old_pid)
    assert [p.id for p in containerd.cri.list_pods()] == [long.pod.id]
    status = containerd.cri.container_status(long.container_id)
    assert (status.state, status.pid) == ("running", pid)
    again = containerd.run_busybox(["echo", "after restart"])
    assert again.status is not None and again.status.exit_code == 0
    assert again.log_lines() == ["after restart"]


def test_nri_socket_follows_config(make_containerd: MakeContainerd, flavour: str, tmp_path: Path) -> None:
    plugins, confs = tmp_path / "plugins", tmp_path / "conf.d"
    plugins.mkdir()
    confs.mkdir()
    on = make_containerd(flavour, nri_socket=tmp_path / "nri.sock", plugin_path=plugins, plugin_config_path=confs)
    off = make_containerd(flavour, nri=False)

    assert on.ctd.nri_socket == tmp_path / "nri.sock" and on.ctd.nri_socket.is_socket()
    assert f'plugin_path = "{plugins}"' in on.ctd.config_path.read_text()
    assert not off.ctd.nri_socket.exists()


def test_close_leaves_nothing_behind(make_containerd: MakeContainerd, flavour: str) -> None:
    bed = make_containerd(flavour)
    running = bed.run_busybox(["sleep", "1000"], wait=False)
    bed.run_busybox(["true"])
    ctd = bed.ctd
    sockets = [SHIM_SOCKET_DIR / shim_socket_name(ctd.address, "k8s.io", p.id) for p in bed.cri.list_pods()]
    assert len(sockets) == 2 and all(s.is_socket() for s in sockets)
    assert host.cgroup_dirs(ctd.cgroup_parent) and host.mounts_under(ctd.dir)
    container = _proc(bed, running.container_id)

    ctd.close()

    _assert_gone(ctd, sockets, container)


def test_close_after_containerd_crash_leaves_nothing(make_containerd: MakeContainerd, flavour: str) -> None:
    """If containerd dies with pods running, close() must still find and kill shims and containers."""
    bed = make_containerd(flavour)
    running = bed.run_busybox(["sleep", "1000"], wait=False)
    ctd = bed.ctd
    sockets = [SHIM_SOCKET_DIR / shim_socket_name(ctd.address, "k8s.io", running.pod.id)]
    container = _proc(bed, running.container_id)
    assert ctd.pid is not None
    os.kill(ctd.pid, signal.SIGKILL)

    ctd.close()

    _assert_gone(ctd, sockets, container)


def _proc(bed: Testbed, container_id: str) -> host.Proc:
    pid = bed.cri.container_status(container_id).pid
    assert pid is not None
    proc = host.Proc.read(pid)
    assert proc is not None
    return proc


def _assert_gone(ctd: Containerd, sockets: list[Path], container: host.Proc) -> None:
    marker = str(ctd.dir)
    assert [p for p in host.processes() if any(marker in arg for arg in p.cmdline)] == []
    assert not container.alive()
    assert host.mounts_under(ctd.dir) == []
    assert host.cgroup_dirs(ctd.cgroup_parent) == []
    assert [s for s in sockets if s.exists()] == []
    assert not ctd.dir.exists()
    assert ctd.leftovers() == []
