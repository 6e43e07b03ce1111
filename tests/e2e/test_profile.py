"""`nri-optimizer profile IMAGE` against a real containerd: each stop condition, and each error."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.bed import Testbed
from testbed.images import BUSYBOX_IMAGE
from testbed.tracing import DATA_FILES, SERVER, WORKLOAD_IMAGE, build_workload_image

RESULT = "workload:1"


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


@pytest.fixture
def bed(make_containerd, flavour, workload_image) -> Testbed:
    bed = make_containerd(flavour)
    bed.ctd.import_image(workload_image)
    return bed


def profile(bed: Testbed, results: Path, *args: str, image: str = WORKLOAD_IMAGE, timeout: float = 60):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "nri_optimizer",
            "profile",
            image,
            "--runtime-endpoint",
            bed.ctd.address,
            "--nri-socket",
            str(bed.ctd.nri_socket),
            "--persist-dir",
            str(results),
            "--server-path",
            SERVER,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_until_exit_prints_and_saves_the_list(bed: Testbed, tmp_path: Path) -> None:
    result = profile(bed, tmp_path, "--cmd", shlex.join(["/bin/cat", *DATA_FILES[:5]]))
    assert result.returncode == 0, result.stderr
    expected = ["/bin/busybox", *DATA_FILES[:5]]
    assert result.stdout.splitlines() == expected
    assert result.stderr.splitlines()[-1] == f"nri-optimizer profile: 6 files, saved to {tmp_path / RESULT}"
    assert (tmp_path / RESULT).read_text().splitlines() == expected
    assert bed.cri.list_pods() == []  # the profile's pod is gone


def test_period(bed: Testbed, tmp_path: Path) -> None:
    script = "cat /data/f001; sleep 1.5; cat /data/f002; exec sleep 1000"
    result = profile(bed, tmp_path, "--period", "0.8", "--cmd", shlex.join(["/bin/sh", "-c", script]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["/bin/busybox", "/data/f001"]


def test_wait_on_line(bed: Testbed, tmp_path: Path) -> None:
    script = "cat /data/f001 >/dev/null; echo almost; echo server READY now; cat /data/f002 >/dev/null; exec sleep 1000"
    result = profile(bed, tmp_path, "--wait-on-line", "READY", "--args", shlex.join(["-c", script]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["/bin/busybox", "/data/f001"]


def test_wait_on_url(bed: Testbed, tmp_path: Path) -> None:
    port = free_port()
    script = f"cat /data/f001 >/dev/null; sleep 0.5; exec httpd -f -p 127.0.0.1:{port} -h /data"
    result = profile(
        bed, tmp_path, "--wait-on-url", f"http://127.0.0.1:{port}/f002", "--cmd", shlex.join(["/bin/sh", "-c", script])
    )
    assert result.returncode == 0, result.stderr
    # httpd served /data/f002 to the probe before the container was stopped.
    assert result.stdout.splitlines() == ["/bin/busybox", "/data/f001", "/data/f002"]


def test_image_not_present(bed: Testbed, tmp_path: Path) -> None:
    result = profile(bed, tmp_path, image="nri-optimizer.test/absent:1")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "nri-optimizer profile: image nri-optimizer.test/absent:1 is not present; pull it first "
        "(e.g. ctr -n k8s.io images pull nri-optimizer.test/absent:1)\n"
    )


def test_runtime_unreachable(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nri_optimizer",
            "profile",
            BUSYBOX_IMAGE,
            "--runtime-endpoint",
            f"unix://{tmp_path}/none.sock",
            "--persist-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"nri-optimizer profile: cannot reach the container runtime at unix://{tmp_path}/none.sock: "
    )
    assert result.stderr.endswith("; is containerd running? (--runtime-endpoint)\n")


def test_nri_disabled(make_containerd, flavour, tmp_path: Path) -> None:
    bed = make_containerd(flavour, nri=False)
    result = profile(bed, tmp_path, image=BUSYBOX_IMAGE)
    assert result.returncode == 1
    assert result.stderr == (
        f"nri-optimizer profile: cannot connect to the NRI socket {bed.ctd.nri_socket}: No such file or directory; "
        'enable NRI and external plugins in containerd\'s config ([plugins."io.containerd.nri.v1.nri"] '
        "disable = false, disable_connections = false) or pass --nri-socket\n"
    )
