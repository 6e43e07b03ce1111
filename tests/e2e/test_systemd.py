"""The systemd unit, for real where it can be: the unit make install-optimizer installs passes `systemd-analyze
verify`, and its exact ExecStart, run with the unit's sandboxing, traces a pod on containerd 2.1 and 1.7.

systemd is not the init of the machines this project is tested on, so the unit cannot be started with systemctl or
systemd-run. The test applies what of the unit confines the daemon the way systemd would: CapabilityBoundingSet,
NoNewPrivileges, ProtectSystem=strict with ReadWritePaths, ProtectHome=read-only, PrivateTmp, PrivateNetwork, read
from the installed unit itself. The seccomp-based settings (RestrictAddressFamilies, RestrictNamespaces,
SystemCallArchitectures...) are left to systemd.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import debs
from testbed.plugin import REGISTERED, PluginLog
from testbed.tracing import Traced, build_workload_image
from tests.e2e.test_install import CONF, RESULTS, UNIT, make

# The API file systems ProtectSystem=strict leaves writable (systemd.exec(5)).
API_FILE_SYSTEMS = ("/dev", "/proc", "/sys")


def systemd_analyze() -> list[str]:
    """The host's systemd-analyze, else Debian's, unpacked into the cache (its private library beside it)."""
    if found := shutil.which("systemd-analyze"):
        return [found]
    binary = debs.package_file("systemd", "bookworm", "usr/bin/systemd-analyze")
    private = binary.parents[1] / "lib" / "x86_64-linux-gnu" / "systemd"
    return ["env", f"LD_LIBRARY_PATH={private}", str(binary)]


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """make install-optimizer into a DESTDIR outside /tmp, which PrivateTmp=yes hides from the service."""
    dest = Path(tempfile.mkdtemp(prefix="nri-optimizer-unit-", dir="/run"))
    try:
        make("install-optimizer", dest)
        yield dest
    finally:
        shutil.rmtree(dest)


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


def service(unit: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    return parser["Service"]


def test_the_installed_unit_passes_systemd_analyze_verify(installed: Path) -> None:
    verify = subprocess.run(
        [*systemd_analyze(), "verify", str(installed / UNIT)], capture_output=True, text=True, timeout=60
    )
    assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")


def test_verify_catches_a_broken_unit(installed: Path, tmp_path: Path) -> None:
    broken = tmp_path / "nri-optimizer.service"
    broken.write_text((installed / UNIT).read_text().replace("/venv/bin/nri-optimizer ", "/venv/bin/no-such-program "))
    verify = subprocess.run([*systemd_analyze(), "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert verify.returncode != 0 and "no-such-program is not executable" in verify.stderr


def sandboxed(settings: configparser.SectionProxy) -> list[str]:
    """The unit's ExecStart, confined as its settings say (the module docstring lists which)."""
    assert settings["ProtectSystem"] == "strict" and settings["ProtectHome"] == "read-only"
    assert settings["NoNewPrivileges"] == "yes" and settings["PrivateTmp"] == "yes"
    assert settings["PrivateNetwork"] == "yes"
    # "-" before a path: ignored when it does not exist.
    writable = [path.lstrip("-") for path in settings["ReadWritePaths"].split()]
    bounding = ",".join(f"+{cap.removeprefix('CAP_').lower()}" for cap in settings["CapabilityBoundingSet"].split())
    api = " ".join(API_FILE_SYSTEMS)
    script = f"""
        # ProtectSystem=strict, ProtectHome=read-only: every mount read-only but the API file systems.
        for m in $(awk '{{print $5}}' /proc/self/mountinfo); do
            skip=; for a in {api}; do case "$m" in "$a"|"$a"/*) skip=1;; esac; done
            [ -n "$skip" ] || mount -o remount,bind,ro "$m" 2>/dev/null || true
        done
        # PrivateTmp.
        mount -t tmpfs -o mode=1777 tmpfs /tmp
        mount -t tmpfs -o mode=1777 tmpfs /var/tmp
        # ReadWritePaths, those that exist.
        for p in {" ".join(map(shlex.quote, writable))}; do
            if [ -e "$p" ]; then mount --bind "$p" "$p"; mount -o remount,bind,rw "$p"; fi
        done
        exec setpriv --no-new-privs --bounding-set -all,{bounding} --inh-caps -all -- {settings["ExecStart"]}
    """
    return ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-ec", script]


def cap_mask(names: str) -> int:
    bits = {"CAP_DAC_READ_SEARCH": 2, "CAP_NET_ADMIN": 12, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21}
    return sum(1 << bits[name] for name in names.split())


def test_the_units_execstart_with_its_sandboxing_traces_a_pod(
    make_containerd, flavour, installed, workload_image, tmp_path
) -> None:
    settings = service(installed / UNIT)
    # The NRI socket where the unit can reach it (not under the /tmp PrivateTmp hides); the config's own key for it.
    nri_dir = Path(tempfile.mkdtemp(prefix="nri-", dir=installed))
    bed = make_containerd(flavour, nri_socket=nri_dir / "nri.sock")
    bed.ctd.import_image(workload_image)
    conf = installed / CONF
    original = conf.read_text()
    # A results directory of this test's own, inside the one the unit makes writable.
    results = Path(tempfile.mkdtemp(prefix=f"{flavour}-", dir=installed / RESULTS))
    installed_results = f'persist_dir = "{installed / RESULTS}"'
    assert installed_results in original
    conf.write_text(
        f'{original.replace(installed_results, f"persist_dir = {str(results)!r}")}socket = "{bed.ctd.nri_socket}"\n'
    )
    stderr = tmp_path / "journal"
    with open(stderr, "wb") as journal:
        daemon = subprocess.Popen(sandboxed(settings), stdout=journal, stderr=subprocess.STDOUT)
    try:
        log = PluginLog(stderr)
        log.wait_for(REGISTERED)
        (started,) = log.wait_for(r"starting 02-optimizer-nri-plugin \(external mode, pid [0-9]+\)")
        pid = int(started.rpartition("pid ")[2].rstrip(")"))
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        assert int(status["CapBnd"], 16) == int(status["CapEff"], 16) == cap_mask(settings["CapabilityBoundingSet"])
        assert status["NoNewPrivs"].strip() == "1"
        traced = Traced(bed, log, results)
        run = traced.run(["/bin/cat", "/data/f005", "/data/f001"])
        assert "recorded 3 files" in traced.finish(run)
        assert traced.result() == ["/bin/busybox", "/data/f005", "/data/f001"]
        assert not log.matching("Traceback|ERROR")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        conf.write_text(original)
        shutil.rmtree(results)
    log.wait_for("stopped")
