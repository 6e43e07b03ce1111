"""Run our plugin next to a testbed containerd, pre-launched (from plugin_path) or external, and read its log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from deploy.launcher import write_launcher
from testbed.bed import MakeContainerd, Testbed

PLUGIN_FILE = "02-optimizer-nri-plugin"
REGISTERED = "registered as 02-optimizer-nri-plugin"


class PluginLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines() if re.search(pattern, line)]

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(found := self.matching(pattern)) < count:
            if time.monotonic() > deadline:
                tail = "\n".join(self.lines()[-20:])
                raise AssertionError(
                    f"fewer than {count} lines matching {pattern!r} in {self.path} after {timeout}s; log tail:\n{tail}"
                )
            time.sleep(0.02)
        return found


def config_text(log_file: Path, persist_dir: Path, extra: str = "") -> str:
    return f'persist_dir = "{persist_dir}"\nlog_file = "{log_file}"\nlog_level = "debug"\n{extra}'


def install_prelaunched(bed_dir: Path, text: str, *, python: str = sys.executable) -> tuple[Path, Path]:
    """(plugin_path, plugin_config_path) holding our launcher (running `python`) and its config, for a containerd
    to start."""
    plugins, confs = bed_dir / "plugins", bed_dir / "conf.d"
    plugins.mkdir(parents=True)
    confs.mkdir(parents=True)
    write_launcher(str(plugins / PLUGIN_FILE), python)
    (confs / f"{PLUGIN_FILE}.conf").write_text(text)
    return plugins, confs


def start_prelaunched(
    make_containerd: MakeContainerd,
    flavour: str,
    directory: Path,
    extra: str = "",
    *,
    registered: bool = True,
    snapshotter: str = "overlayfs",
) -> tuple[Testbed, PluginLog]:
    """A testbed containerd that launches our plugin, configured with `extra` on top of a private
    persist_dir and log file; waits for the registration unless told not to."""
    log = PluginLog(directory / "plugin.log")
    plugins, confs = install_prelaunched(directory, config_text(log.path, directory / "results", extra))
    bed = make_containerd(flavour, plugin_path=plugins, plugin_config_path=confs, snapshotter=snapshotter)
    if registered:
        log.wait_for(REGISTERED)
    return bed, log


def prelaunched_pid(bed: Testbed) -> int:
    """The pid of the plugin containerd launched (a child of that containerd)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == bed.ctd.pid and PLUGIN_FILE.encode() in cmdline:
            return int(entry)
    raise AssertionError("the pre-launched plugin is not running")


class ExternalPlugin:
    """`nri-optimizer` started by hand against the testbed's NRI socket; stopped by its pid."""

    def __init__(self, bed: Testbed, config: Path, log_file: Path, *args: str) -> None:
        self.log = PluginLog(log_file)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nri_optimizer",
                "--socket",
                str(bed.ctd.nri_socket),
                "--config",
                str(config),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
