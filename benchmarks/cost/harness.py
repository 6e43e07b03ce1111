"""Variants under test, each a private containerd of its own (built on the e2e testbed), and what is measured
of them: CRI call durations, container logs, the plugin's log, its result files, and the CPU and memory of
the plugin daemon and its tracer processes from /proc.

Variants:
  none      containerd with NRI enabled and no plugin (the baseline)
  ours      nri-optimizer pre-launched (testbed/plugin.py's launcher), our optimizer-server
  upstream  nydus-snapshotter's optimizer-nri-plugin pre-launched, its optimizer-server (paths given by the user)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nri_optimizer.cri.client import CriClient, CriError, NamespaceMode, Pod, read_log
from nri_optimizer.errors import OptimizerError
from nri_optimizer.results import reference
from testbed import TestbedError, debs
from testbed.containerd import Containerd
from testbed.plugin import PLUGIN_FILE, REGISTERED, install_prelaunched
from testbed.tracing import SERVER

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PAGE_KB = PAGE_SIZE // 1024

# "<cid> recorded N files (why; E events, R files reported, W written by the container, ...) in PATH"
_RECORDED = re.compile(
    r"(?P<cid>[0-9a-f]{64}) recorded (?P<files>\d+) files \((?P<why>[^;]+); "
    r"(?P<kernel_events>\d+) events, (?P<reported>\d+) files reported"
)
_ENDED = r"{cid} (recorded|trace lost|done;|cannot write|not traced)"
_WATCHING = re.compile(
    r"(?P<cid>[0-9a-f]{64}) tracing pid \d+ .*\(watching after (?P<ms>[0-9.]+) ms, "
    r"(?P<mode>\w+) events\)"
)


class BenchError(OptimizerError):
    """The bench cannot go on; the message says why."""


# --- /proc -----------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime (clock ticks): the process and its reaped children."""
    fields = _stat_fields(pid)
    return sum(int(fields[i]) for i in (11, 12, 13, 14))


def sched_ns(pid: int) -> int:
    """Nanoseconds on CPU of every live thread of pid (schedstat; finer than ticks, misses reaped children)."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def resident_frames(pid: int) -> set[int]:
    """The physical page frames a process has resident (from /proc/PID/pagemap; needs root to see them)."""
    frames: set[int] = set()
    with (
        open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as maps,
        open(f"/proc/{pid}/pagemap", "rb") as pagemap,
    ):
        for line in maps:
            start, end = (int(x, 16) for x in line.split(" ", 1)[0].split("-"))
            if line.rstrip().endswith("[vsyscall]"):
                continue
            first, count = start // PAGE_SIZE, (end - start) // PAGE_SIZE
            pagemap.seek(first * 8)
            data = pagemap.read(count * 8)
            for (entry,) in struct.iter_unpack("<Q", data):
                if entry >> 63:  # present; bits 0-54 are the frame number
                    frames.add(entry & ((1 << 55) - 1))
    return frames


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat_fields(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    kids = children_map()
    out, todo = [], list(kids.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(kids.get(child, []))
    return out


# --- logs ------------------------------------------------------------------------------------------------


class LogFollower:
    """Reads a growing log file incrementally (a bench must not re-read a long log on every poll)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # the scale scenario waits on it from 20 threads
        self._offset = 0
        self._partial = b""
        self.lines: list[str] = []

    def poll(self) -> list[str]:
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except FileNotFoundError:
                return []
            self._offset += len(data)
            data = self._partial + data
            *complete, self._partial = data.split(b"\n")
            new = [line.decode(errors="replace") for line in complete]
            self.lines += new
            return new

    def _snapshot(self, start: int = 0) -> list[str]:
        with self._lock:
            return self.lines[start:]

    def find(self, pattern: str) -> list[str]:
        self.poll()
        return [line for line in self._snapshot() if re.search(pattern, line)]

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = 30.0, interval: float = 0.02) -> list[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        found: list[str] = []
        checked = 0
        while True:
            self.poll()
            new = self._snapshot(checked)
            checked += len(new)
            found += [line for line in new if regex.search(line)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                tail = "\n".join(self.lines[-10:])
                raise BenchError(
                    f"{self.path}: fewer than {count} lines matching {pattern!r} after {timeout}s:\n{tail}"
                )
            time.sleep(interval)


# --- containers ------------------------------------------------------------------------------------------


@dataclass
class Launched:
    variant: Variant
    pod: Pod
    name: str
    container_id: str
    log_path: Path
    image: str
    times: dict[str, float] = field(default_factory=dict)  # seconds, per CRI call

    def log_lines(self) -> list[str]:
        try:
            return read_log(self.log_path)
        except FileNotFoundError:
            return []


@dataclass
class Variant:
    name: str
    ctd: Containerd
    cri: CriClient
    dir: Path
    results: Path | None = None
    log: LogFollower | None = None
    plugin_pid: int | None = None
    pods: int = 0
    kind: str = ""  # none, ours or upstream; name is the label (defaults to the kind)
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def traced(self) -> bool:
        return self.kind != "none"

    # -- containers -------------------------------------------------------------------------------------

    def launch(
        self,
        image: str,
        command: Sequence[str],
        *,
        pid_namespace: NamespaceMode = "container",
        before_start: Any = None,
    ) -> Launched:
        """RunPodSandbox, CreateContainer, StartContainer, each timed around its gRPC call."""
        name = f"{self.name}-{next(self._names)}"
        log_dir = self.ctd.logs_dir / name
        log_dir.mkdir(parents=True)
        t0 = time.perf_counter()
        pod = self.cri.run_pod(
            name, cgroup_parent=self.ctd.cgroup_parent, log_directory=str(log_dir), pid_namespace=pid_namespace
        )
        t1 = time.perf_counter()
        cid = self.cri.create_container(pod, name, image, command=list(command))
        t2 = time.perf_counter()
        if before_start is not None:
            before_start()
        t3 = time.perf_counter()
        self.cri.start_container(cid)
        t4 = time.perf_counter()
        self.pods += 1
        return Launched(
            self,
            pod,
            name,
            cid,
            log_dir / f"{name}.log",
            image,
            {"run_pod": t1 - t0, "create": t2 - t1, "start": t4 - t3},
        )

    def wait_exited(self, run: Launched, timeout: float = 60.0, interval: float = 0.02) -> int:
        deadline = time.monotonic() + timeout
        while (status := self.cri.container_status(run.container_id)).state != "exited":
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: container {run.name} still {status.state} after {timeout}s")
            time.sleep(interval)
        return status.exit_code

    def wait_output(self, run: Launched, text: str, timeout: float = 60.0, interval: float = 0.02) -> list[str]:
        deadline = time.monotonic() + timeout
        while text not in (lines := run.log_lines()):
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.name}: container {run.name} did not print {text!r} in {timeout}s: {lines[-5:]}"
                )
            time.sleep(interval)
        return lines

    def stop_container(self, run: Launched, timeout: int = 0) -> float:
        t0 = time.perf_counter()
        self.cri.stop_container(run.container_id, timeout)
        return time.perf_counter() - t0

    def stop_pod(self, run: Launched) -> float:
        t0 = time.perf_counter()
        self.cri.stop_pod(run.pod.id)
        return time.perf_counter() - t0

    def remove(self, run: Launched) -> None:
        """Stop (if not yet) and remove the pod; its log directory goes too."""
        with contextlib.suppress(CriError):
            self.cri.stop_pod(run.pod.id)
        with contextlib.suppress(CriError):
            self.cri.remove_pod(run.pod.id)
        shutil.rmtree(run.log_path.parent, ignore_errors=True)

    # -- traces -----------------------------------------------------------------------------------------

    def result_path(self, image: str) -> Path:
        assert self.results is not None
        ref = reference.parse(image)
        return self.results / ref.result_dir / ref.result_name

    def clear_result(self, image: str) -> None:
        if self.results is None:
            return
        base = self.result_path(image)
        for suffix in ("", ".csv", ".json"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{base}{suffix}").unlink()

    def result_list(self, image: str) -> list[str]:
        try:
            return self.result_path(image).read_text(errors="surrogateescape").splitlines()
        except FileNotFoundError:
            return []

    def wait_trace_done(self, run: Launched, timeout: float = 60.0) -> dict[str, Any]:
        """After StopContainer: wait until the trace is written. Ours says so in its log; upstream appends to
        its list as it goes, so wait until the file has been still for a while."""
        if self.kind == "ours":
            assert self.log is not None
            try:
                (line,) = self.log.wait_for(_ENDED.format(cid=run.container_id), timeout=timeout)[:1]
            except BenchError as error:
                raise BenchError(f"{error}\n{self.diagnose()}") from None
            info: dict[str, Any] = {"line": line}
            if m := _RECORDED.search(line):
                # events: what reached the plugin; kernel_events: what the server read to find them.
                info |= {
                    "files": int(m["files"]),
                    "events": int(m["reported"]),
                    "kernel_events": int(m["kernel_events"]),
                    "why": m["why"],
                }
            for watched in self.log.find(rf"{run.container_id} tracing pid"):
                if m := _WATCHING.search(watched):
                    info["watching_ms"] = float(m["ms"])
                    info["mode"] = m["mode"]
            return info
        path = self.result_path(run.image)
        deadline = time.monotonic() + min(timeout, 10.0)
        last, still_since = None, time.monotonic()
        while time.monotonic() < deadline:
            try:
                st = path.stat()
                now = (st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                now = None
            if now != last:
                last, still_since = now, time.monotonic()
            elif time.monotonic() - still_since > 0.2:
                break
            time.sleep(0.05)
        return {"files": len(self.result_list(run.image))}

    def diagnose(self) -> str:
        """Whether the plugin still runs, and what containerd said about NRI lately (for error messages)."""
        alive = self.plugin_pid is not None and Path(f"/proc/{self.plugin_pid}").exists()
        try:
            lines = self.ctd.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        nri = [
            line
            for line in lines
            if ("level=error" in line or "level=warning" in line or PLUGIN_FILE in line or "plugin" in line.lower())
            and "ImageUpdate" not in line
            and "loading plugin" not in line
        ][-12:]
        text = f"plugin pid {self.plugin_pid} {'alive' if alive else 'GONE'}; containerd on NRI:\n" + "\n".join(nri)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if alive and os.access(spy, os.X_OK):  # where the daemon and its tracers are stuck, if they are
            for pid in [self.plugin_pid, *descendants(self.plugin_pid or 0)]:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    out = subprocess.run([spy, "dump", "-p", str(pid)], capture_output=True, text=True, timeout=20)
                    text += f"\npy-spy dump {pid}:\n{out.stdout}{out.stderr}"
        return text

    # -- processes --------------------------------------------------------------------------------------

    def server_pid(self) -> int:
        """Our trace server's pid (the daemon's one child)."""
        _, tracers = self.tree()
        if len(tracers) != 1:
            raise BenchError(f"{self.name}: expected one trace server under the daemon, found pids {tracers}")
        return tracers[0]

    def tree(self) -> tuple[int | None, list[int]]:
        if self.plugin_pid is None:
            return None, []
        return self.plugin_pid, descendants(self.plugin_pid)

    def cpu(self) -> dict[str, float]:
        """CPU so far of the daemon and of its tracers: ticks (with reaped children) and schedstat ns."""
        daemon, tracers = self.tree()
        if daemon is None:
            return {"daemon_ticks": 0, "tracer_ticks": 0, "daemon_ns": 0, "tracer_ns": 0}
        out = {"daemon_ticks": 0.0, "tracer_ticks": 0.0, "daemon_ns": 0.0, "tracer_ns": 0.0}
        with contextlib.suppress(OSError):
            out["daemon_ticks"] = cpu_ticks(daemon)
            out["daemon_ns"] = sched_ns(daemon)
        for pid in tracers:
            with contextlib.suppress(OSError, IndexError):
                out["tracer_ticks"] += cpu_ticks(pid)
                out["tracer_ns"] += sched_ns(pid)
        return out

    def memory(self) -> dict[str, float]:
        """RSS and PSS (MB) of the daemon and of all its tracer processes, how many tracers run, and their
        footprint: the distinct physical pages resident in any of them (a page that several map, such as the
        interpreter's shared library, counted once; RSS counts it in each, PSS shares it with every other
        process that maps it, the bench's own included)."""
        daemon, tracers = self.tree()
        out = {"daemon_rss": 0.0, "daemon_pss": 0.0, "tracer_rss": 0.0, "tracer_pss": 0.0, "tracers": 0.0}
        if daemon is None:
            return out
        frames: set[int] = set()
        with contextlib.suppress(OSError):
            out["daemon_rss"] = rss_kb(daemon) / 1024
            out["daemon_pss"] = pss_kb(daemon) / 1024
            frames |= resident_frames(daemon)
        for pid in tracers:
            with contextlib.suppress(OSError):
                out["tracer_rss"] += rss_kb(pid) / 1024
                out["tracer_pss"] += pss_kb(pid) / 1024
                frames |= resident_frames(pid)
                out["tracers"] += 1
        out["total_rss"] = out["daemon_rss"] + out["tracer_rss"]
        out["total_pages"] = len(frames) * PAGE_SIZE / 2**20
        out["total_pss"] = out["daemon_pss"] + out["tracer_pss"]
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cri.close()
        self.ctd.close()


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """ms of CPU between two cpu() readings, daemon and tracers and their sum."""
    d = {k: after[k] - before[k] for k in before}
    daemon_ms = d["daemon_ticks"] * 1000 / CLK_TCK
    tracer_ms = d["tracer_ticks"] * 1000 / CLK_TCK
    return {
        "daemon_ms": daemon_ms,
        "tracer_ms": tracer_ms,
        "total_ms": daemon_ms + tracer_ms,
        "daemon_sched_ms": d["daemon_ns"] / 1e6,
        "tracer_sched_ms": d["tracer_ns"] / 1e6,
    }


# --- setting variants up ---------------------------------------------------------------------------------


def _child_of(parent: int, marker: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children_map().get(parent, []):
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
        time.sleep(0.05)
    raise BenchError(f"no process {marker!r} under containerd {parent} after {timeout}s")


def make_variant(
    name: str,
    runtime: debs.Runtime,
    base: Path,
    images: Sequence[Path],
    *,
    upstream_plugin: Path | None = None,
    upstream_server: Path | None = None,
    label: str | None = None,
    extra_config: str = "",
    persist_dir: Path | None = None,
    plugin: Path | None = None,
    server: Path | None = None,
    snapshotter: str = "overlayfs",
) -> Variant:
    """Start a containerd for one variant (its plugin, if any, pre-launched), import the images.

    name is the kind (none, ours, upstream); label names the variant in results (several variants of one
    kind, e.g. ours with different extra_config lines appended to its config, for experiments). plugin and server
    are ours as installed (make install-optimizer): by default, launchers of this source tree. snapshotter is CRI's
    (testbed.config.render)."""
    label = label or name
    vdir = base / label
    vdir.mkdir(parents=True)
    if name == "none":
        plugins, confs, results, log = _empty_plugin_dirs(vdir), vdir / "conf.d", None, None
    elif name == "ours":
        results = persist_dir or vdir / "results"
        results.mkdir(parents=True, exist_ok=True)
        log = LogFollower(vdir / "plugin.log")
        text = (
            f'persist_dir = "{results}"\nlog_file = "{log.path}"\nlog_level = "info"\n'
            f'server_path = "{server or SERVER}"\noverwrite = true\n{extra_config}'
        )
        plugins, confs = install_prelaunched(vdir, text)
        if plugin is not None:
            shutil.copy2(plugin, plugins / PLUGIN_FILE)  # the installed launcher names its own interpreter
    elif name == "upstream":
        assert upstream_plugin is not None and upstream_server is not None
        plugins, confs, log = _empty_plugin_dirs(vdir), vdir / "conf.d", None
        results = vdir / "results"
        results.mkdir()
        shutil.copy2(upstream_plugin, plugins / PLUGIN_FILE)
        (plugins / PLUGIN_FILE).chmod(0o755)
        (confs / f"{PLUGIN_FILE}.conf").write_text(
            f'persist_dir = "{results}"\nserver_path = "{upstream_server}"\noverwrite = true\nreadable = false\n'
            'timeout = 0\nevents = ["StartContainer", "StopContainer"]\n'
        )
    else:
        raise BenchError(f"unknown variant {name!r}")
    ctd = Containerd(runtime, nri=True, nri_plugin_path=plugins, nri_plugin_config_path=confs, snapshotter=snapshotter)
    try:
        ctd.start()
        for image in images:
            ctd.import_image(image, timeout=120)
        variant = Variant(label, ctd, CriClient(ctd.address, timeout=120), vdir, results, log, kind=name)
        _wait_for_plugin(variant)
        return variant
    except BaseException:
        with contextlib.suppress(TestbedError):
            ctd.close()
        raise


def _empty_plugin_dirs(vdir: Path) -> Path:
    """vdir/plugins and vdir/conf.d, empty; returns the plugins dir."""
    (vdir / "conf.d").mkdir()
    (vdir / "plugins").mkdir()
    return vdir / "plugins"


def _wait_for_plugin(variant: Variant) -> None:
    """Until the variant's plugin is registered with its containerd (and ours has started its trace server, so
    that idle means idle); notes the plugin's pid."""
    assert variant.ctd.pid is not None
    if variant.kind == "ours":
        assert variant.log is not None
        variant.log.wait_for(REGISTERED, timeout=30)
        variant.plugin_pid = _child_of(variant.ctd.pid, PLUGIN_FILE, 10)
        variant.log.wait_for(r"trace server started", timeout=30)  # Configure starts it
    elif variant.kind == "upstream":
        variant.plugin_pid = _child_of(variant.ctd.pid, PLUGIN_FILE, 30)
        time.sleep(1.0)  # it logs nowhere we can read: give it time to register


# --- load ------------------------------------------------------------------------------------------------


class CpuHogs:
    """n busy-loop shells on the host, for the "loaded" runs; killed by their pids on exit."""

    def __init__(self, n: int = 2) -> None:
        self.n = n
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> CpuHogs:
        for _ in range(self.n):
            self.procs.append(
                subprocess.Popen(
                    ["sh", "-c", "while :; do :; done"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait()
        self.procs.clear()
