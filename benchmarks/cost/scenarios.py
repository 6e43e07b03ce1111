"""The scenarios of issue "the optimizer benchmark", each run on every variant, interleaved (A B A B, then
B A B A, so that drift and position cancel), recording samples into a Results.

  start_stop   (a) StartContainer and (b) StopContainer, per-container pid namespace
  stop_pod     (b) StopPodSandbox with a shared pid namespace
  completeness (c) recall, precision, order inversions: 200 files at once, exec first, 50 files and exit;
               unloaded and with two CPU hogs
  scale        (f) 1 and 20 containers at once: start, lists exact, no crosstalk, time to trace all, and
               (e) the footprint while they are traced
  memory       (e) daemon RSS idle, and after N pods
  event_cost   (d) 20,000 files once, 500 files x 100: workload time, events, CPU per distinct file
  syscalls     (d) system calls per file recorded, of the trace server and of the daemon (strace -c), while
               the first of those workloads runs
  instructions (d) the trace server's instructions per file, per event mode (callgrind, benchmarks.cost.instructions):
               a figure that does not move with the machine's load
  keep_check   (g) the on_repeat = keep check at StartContainer with 10, 1,000 and 10,000 images recorded
               (benchmarks.cost.keep_check): the same cost whatever the node's history
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.cost import stats, workloads
from benchmarks.cost.harness import BenchError, CpuHogs, Launched, Variant, cpu_delta
from benchmarks.cost.keep_check import measure as measure_keep_check
from benchmarks.cost.progress import Progress


@dataclass(frozen=True)
class Plan:
    """How many runs of each scenario."""

    start_stop: int = 60
    stop_pod: int = 40
    completeness: int = 20
    event_cost: int = 30
    scale_rounds: int = 5
    scale_sizes: tuple[int, ...] = (1, 20, 100)  # containers started at once
    pods_for_memory: int = 200
    many_files: int = workloads.MANY_FILES
    instruction_files: tuple[int, int] = (1000, 3000)  # the two traces whose difference is counted
    keep_check_images: tuple[int, ...] = (10, 1_000, 10_000)  # images recorded in persist_dir

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            start_stop=3,
            stop_pod=2,
            completeness=2,
            event_cost=2,
            scale_rounds=1,
            scale_sizes=(1, 20),
            pods_for_memory=10,
            many_files=2_000,
            instruction_files=(500, 1500),
            keep_check_images=(10, 1_000),
        )


@dataclass
class Metric:
    scenario: str
    label: str
    unit: str
    samples: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Results:
    metrics: dict[str, Metric] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # raw per-run records, per scenario
    timeline: list[dict[str, Any]] = field(default_factory=list)  # memory after each scenario
    durations: dict[str, float] = field(default_factory=dict)  # seconds each scenario took

    def add(self, key: str, variant: str, value: float | None, *, scenario: str, label: str, unit: str) -> None:
        metric = self.metrics.setdefault(key, Metric(scenario, label, unit))
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            metric.samples.setdefault(variant, []).append(float(value))

    def record(self, scenario: str, row: dict[str, Any]) -> None:
        self.details.setdefault(scenario, []).append(row)


@dataclass
class Context:
    variants: list[Variant]
    plan: Plan
    results: Results
    progress: Progress
    server: list[str] = field(default_factory=lambda: [sys.executable, "-m", "optimizer_server"])  # ours

    @property
    def traced(self) -> list[Variant]:
        return [v for v in self.variants if v.traced]


def interleaved(variants: Sequence[Variant], runs: int) -> Iterator[tuple[int, Variant]]:
    """(run, variant): A B C, C B A, A B C, ..."""
    for i in range(runs):
        for v in variants if i % 2 == 0 else list(reversed(variants)):
            yield i, v


def add_pair_ratios(
    results: Results, key: str, runs: dict[int, dict[str, float]], *, scenario: str, label: str
) -> None:
    """Each variant's value over the baseline's in the same run. The variants of a run ran back to back
    (interleaved), so a ratio within the run cancels the drift of a shared machine, which the ratio of two
    medians taken over the whole scenario does not."""
    for values in runs.values():
        for name, value in values.items():
            if name != "none" and values.get("none"):
                results.add(
                    key,
                    name,
                    value / values["none"],
                    scenario=scenario,
                    label=f"{label} / baseline's in the same run",
                    unit="x",
                )


def _ms(seconds: float) -> float:
    return seconds * 1000


def _finish(v: Variant, run: Launched, *, stopped: bool = False, timeout: int = 0) -> dict[str, Any]:
    """StopContainer (containerd tells plugins even when the container has exited), wait for the trace."""
    if not stopped:
        v.stop_container(run, timeout)
    return v.wait_trace_done(run) if v.traced else {}


# --- (a), (b) ---------------------------------------------------------------------------------------------

SERVICE = [
    "/bin/sh",
    "-c",
    f"trap 'exit 0' TERM; cat /data/f000 >/dev/null; echo {workloads.READY}; sleep 100000 & wait",
]


def start_stop(ctx: Context) -> None:
    runs = ctx.plan.start_stop
    stops: dict[int, dict[str, float]] = {}
    for i, v in interleaved(ctx.variants, runs):
        run = v.launch(workloads.IMAGE, SERVICE)
        try:
            v.wait_output(run, workloads.READY)
            stop = v.stop_container(run, 10)  # graceful: the shell exits on TERM
            trace = _finish(v, run, stopped=True)
        finally:
            v.remove(run)
        r = ctx.results
        r.add("start", v.name, _ms(run.times["start"]), scenario="a", label="StartContainer", unit="ms")
        r.add("stop_container", v.name, _ms(stop), scenario="b", label="StopContainer (own pid ns)", unit="ms")
        stops.setdefault(i, {})[v.name] = _ms(stop)
        r.add("run_pod", v.name, _ms(run.times["run_pod"]), scenario="a", label="RunPodSandbox", unit="ms")
        if "watching_ms" in trace:
            r.add(
                "watching",
                v.name,
                trace["watching_ms"],
                scenario="a",
                label="plugin: StartContainer to watching",
                unit="ms",
            )
        r.record(
            "start_stop",
            {
                "variant": v.name,
                "run": i,
                "start_ms": _ms(run.times["start"]),
                "stop_ms": _ms(stop),
                **{k: t for k, t in trace.items() if k != "line"},
            },
        )
        ctx.progress.step(
            f"{v.name:8} run {i + 1}/{runs}  start {_ms(run.times['start']):6.1f} ms  stop {_ms(stop):7.1f} ms"
        )
    add_pair_ratios(ctx.results, "stop_container_ratio", stops, scenario="b", label="StopContainer (own pid ns)")


def stop_pod(ctx: Context) -> None:
    runs = ctx.plan.stop_pod
    stops: dict[int, dict[str, float]] = {}
    for i, v in interleaved(ctx.variants, runs):
        run = v.launch(workloads.IMAGE, SERVICE, pid_namespace="pod")
        try:
            v.wait_output(run, workloads.READY)
            stop = v.stop_pod(run)
            if v.traced:
                v.wait_trace_done(run)
        finally:
            v.remove(run)
        ctx.results.add("stop_pod", v.name, _ms(stop), scenario="b", label="StopPodSandbox (shared pid ns)", unit="ms")
        ctx.results.add(
            "start_shared",
            v.name,
            _ms(run.times["start"]),
            scenario="b",
            label="StartContainer (shared pid ns)",
            unit="ms",
        )
        stops.setdefault(i, {})[v.name] = _ms(stop)
        ctx.progress.step(f"{v.name:8} run {i + 1}/{runs}  StopPodSandbox {_ms(stop):7.1f} ms")
    add_pair_ratios(ctx.results, "stop_pod_ratio", stops, scenario="b", label="StopPodSandbox (shared pid ns)")


# --- (c) --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capture:
    key: str
    label: str
    command: Callable[[int], tuple[list[str], list[str], bool]]  # run -> (command, expected list, parks)


def _instant_200(i: int) -> tuple[list[str], list[str], bool]:
    order = workloads.shuffled(workloads.DATA_FILES, seed=1000 + i)
    return workloads.read_then_park(order), ["/bin/busybox", *order], True


def _exec_first(i: int) -> tuple[list[str], list[str], bool]:
    return ["/entry.sh"], ["/entry.sh", "/bin/busybox", *workloads.ENTRY_FILES], False


def _fifty_exit(i: int) -> tuple[list[str], list[str], bool]:
    order = workloads.shuffled(workloads.DATA_FILES, seed=2000 + i)[:50]
    return workloads.read_then_exit(order), ["/bin/busybox", *order], False


CAPTURES = [
    Capture("c200", "200 files at once", _instant_200),
    Capture("cexec", "exec first, 5 files", _exec_first),
    Capture("c50", "50 files, exit", _fifty_exit),
]


def capture_once(v: Variant, capture: Capture, i: int) -> dict[str, Any]:
    command, expected, parks = capture.command(i)
    v.clear_result(workloads.IMAGE)
    before = v.cpu()
    run = v.launch(workloads.IMAGE, command)
    try:
        if parks:
            v.wait_output(run, workloads.READY)
        else:
            v.wait_exited(run)
        trace = _finish(v, run)
        cpu = cpu_delta(before, v.cpu())
        got = v.result_list(workloads.IMAGE)
    finally:
        v.remove(run)
    return {
        **stats.compare(expected, got),
        **{k: t for k, t in trace.items() if k != "line"},
        "cpu_ms": cpu["total_ms"],
        "daemon_ms": cpu["daemon_ms"],
        "tracer_ms": cpu["tracer_ms"],
    }


def completeness(ctx: Context) -> None:
    runs = ctx.plan.completeness
    for load in ("unloaded", "loaded"):
        with CpuHogs(2) if load == "loaded" else contextlib.nullcontext():
            for i, v in interleaved(ctx.traced, runs):
                for capture in CAPTURES if i % 2 == 0 else reversed(CAPTURES):
                    row = capture_once(v, capture, i)
                    key = f"{capture.key}_{load}"
                    label = f"{capture.label}, {load}"
                    r = ctx.results
                    r.add(
                        f"recall_{key}", v.name, 100 * row["recall"], scenario="c", label=f"recall: {label}", unit="%"
                    )
                    r.add(
                        f"precision_{key}",
                        v.name,
                        100 * row["precision"],
                        scenario="c",
                        label=f"precision: {label}",
                        unit="%",
                    )
                    r.add(
                        f"inversions_{key}",
                        v.name,
                        row["inversions"],
                        scenario="c",
                        label=f"order inversions: {label}",
                        unit="pairs",
                    )
                    if load == "unloaded":
                        r.add(
                            f"cpu_{capture.key}",
                            v.name,
                            row["cpu_ms"],
                            scenario="c",
                            label=f"tracer+daemon CPU per container: {capture.label}",
                            unit="ms",
                        )
                    r.record(
                        "completeness", {"variant": v.name, "workload": capture.key, "load": load, "run": i, **row}
                    )
                    ctx.progress.step(
                        f"{load:8} {v.name:8} {capture.key:5} run {i + 1}/{runs}  recall "
                        f"{100 * row['recall']:5.1f}%  precision {100 * row['precision']:5.1f}%  "
                        f"inversions {row['inversions']}"
                    )


# --- (d) --------------------------------------------------------------------------------------------------


def event_cost(ctx: Context) -> None:
    runs = ctx.plan.event_cost
    cases = [
        (
            "many",
            f"{ctx.plan.many_files:,} files once",
            workloads.read_many(),
            ["/bin/busybox", *workloads.many(ctx.plan.many_files)],
        ),
        ("few", "500 files x 100", workloads.read_few_100_times(), ["/bin/busybox", *workloads.FEW]),
    ]
    for key, label, command, expected in cases:
        times: dict[int, dict[str, float]] = {}  # run -> variant -> workload ms
        for i, v in interleaved(ctx.variants, runs):
            v.clear_result(workloads.IMAGE)
            before = v.cpu()
            run = v.launch(workloads.IMAGE, command)
            try:
                v.wait_exited(run, timeout=120, interval=0.1)
                seconds = workloads.workload_seconds(run.log_lines())
                mem = v.memory()  # the trace is still open: what holding it costs
                trace = _finish(v, run)
                cpu = cpu_delta(before, v.cpu())
                got = v.result_list(workloads.IMAGE) if v.traced else []
            finally:
                v.remove(run)
            r = ctx.results
            r.add(f"time_{key}", v.name, _ms(seconds), scenario="d", label=f"workload time: {label}", unit="ms")
            times.setdefault(i, {})[v.name] = _ms(seconds)
            row: dict[str, Any] = {"variant": v.name, "case": key, "run": i, "workload_ms": _ms(seconds)}
            if v.traced:
                cmp = stats.compare(expected, got)
                files = trace.get("files", len(got))
                per_file = 1000 * cpu["total_ms"] / files if files else math.nan
                r.add(f"recall_{key}", v.name, 100 * cmp["recall"], scenario="d", label=f"recall: {label}", unit="%")
                r.add(
                    f"cpu_{key}", v.name, cpu["total_ms"], scenario="d", label=f"tracer+daemon CPU: {label}", unit="ms"
                )
                r.add(
                    f"cpu_per_file_{key}",
                    v.name,
                    per_file,
                    scenario="d",
                    label=f"CPU per distinct file: {label}",
                    unit="us",
                )
                r.add(
                    f"daemon_rss_{key}",
                    v.name,
                    mem["daemon_rss"],
                    scenario="e",
                    label=f"daemon RSS holding a trace: {label}",
                    unit="MB",
                )
                if "events" in trace:
                    r.add(
                        f"events_{key}",
                        v.name,
                        trace["events"],
                        scenario="d",
                        label=f"events delivered: {label}",
                        unit="events",
                    )
                    r.add(
                        f"events_per_file_{key}",
                        v.name,
                        trace["events"] / files if files else math.nan,
                        scenario="d",
                        label=f"events per file recorded: {label}",
                        unit="x",
                    )
                if "kernel_events" in trace:
                    r.add(
                        f"kernel_events_per_file_{key}",
                        v.name,
                        trace["kernel_events"] / files if files else math.nan,
                        scenario="d",
                        label=f"kernel events read per file recorded: {label}",
                        unit="x",
                    )
                row |= {
                    "files": files,
                    "events": trace.get("events"),
                    "kernel_events": trace.get("kernel_events"),
                    "mode": trace.get("mode"),
                    **cpu,
                    "per_file_us": per_file,
                    **{k: cmp[k] for k in ("recall", "precision", "inversions", "recorded")},
                }
            r.record("event_cost", row)
            extra = (
                f"  files {row.get('files')}  events {row.get('events')}  cpu/file {row.get('per_file_us', 0):.1f} us"
                if v.traced
                else ""
            )
            ctx.progress.step(f"{key:4} {v.name:8} run {i + 1}/{runs}  workload {_ms(seconds):7.1f} ms{extra}")
        add_pair_ratios(ctx.results, f"time_ratio_{key}", times, scenario="d", label=f"workload time: {label}")


# strace -c's table: "% time  seconds  usecs/call  calls  errors  syscall", errors blank when there are none.
_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(?P<calls>\d+)\s+(?:\d+\s+)?(?P<name>\w+)$")


def strace_counts(text: str) -> dict[str, int]:
    """syscall -> calls, from strace -c's summary (its "total" row included)."""
    return {m["name"]: int(m["calls"]) for line in text.splitlines() if (m := _STRACE_ROW.match(line))}


@contextlib.contextmanager
def straced(pid: int, out: Path) -> Iterator[None]:
    """strace -c attached to every thread of pid for the block; the summary is in out afterwards."""
    proc = subprocess.Popen(
        ["strace", "-c", "-f", "-qq", "-o", str(out), "-p", str(pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attached by then: strace -qq says nothing to wait for
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # detaches and writes the summary
        proc.wait(30)


def syscalls(ctx: Context) -> None:
    """System calls per file recorded while ours traces plan.many_files files read once: the kernel's side of
    the per-file cost, which instruction counts do not see."""
    if shutil.which("strace") is None:
        ctx.progress.note("syscalls skipped: strace is not installed (apt-get install strace)")
        return
    for v in ctx.traced:
        if v.kind != "ours" or v.plugin_pid is None:
            continue
        server = v.server_pid()
        v.clear_result(workloads.IMAGE)
        outs = {"server": v.dir / "strace-server.txt", "daemon": v.dir / "strace-daemon.txt"}
        with straced(server, outs["server"]), straced(v.plugin_pid, outs["daemon"]):
            run = v.launch(workloads.IMAGE, workloads.read_many())
            try:
                v.wait_exited(run, timeout=300, interval=0.1)
                trace = _finish(v, run)
            finally:
                v.remove(run)
        files = trace.get("files") or 0
        row: dict[str, Any] = {"variant": v.name, "files": files, "mode": trace.get("mode")}
        for who, out in outs.items():
            counts = strace_counts(out.read_text())
            total = counts.pop("total", 0)
            per_file = total / files if files else math.nan
            ctx.results.add(
                f"syscalls_per_file_{who}",
                v.name,
                per_file,
                scenario="d",
                label=f"{who} system calls per file recorded (strace -c)",
                unit="calls",
            )
            row[who] = {name: calls / files if files else math.nan for name, calls in sorted(counts.items())}
            ctx.progress.step(
                f"{v.name:8} {who}: {per_file:.2f} system calls per file ("
                + ", ".join(
                    f"{name} {calls / max(files, 1):.2f}"
                    for name, calls in sorted(counts.items(), key=lambda item: -item[1])[:6]
                )
                + ")"
            )
        ctx.results.record("syscalls", row)


def instructions(ctx: Context) -> None:
    """The trace server's user-space instructions per file in each event mode (benchmarks/cost/instructions.py):
    the same on a loaded machine as on an idle one, so that a regression shows as a number."""
    if shutil.which("valgrind") is None:
        ctx.progress.note("instructions skipped: valgrind is not installed (apt-get install valgrind)")
        return
    for mode in ("fd", "fid"):
        # A mount namespace of its own for the tmpfs; a network namespace of its own, which the kernel's process
        # events do not reach: the forks of the whole node would otherwise count.
        out = subprocess.run(
            [
                "unshare",
                "--mount",
                "--net",
                "--propagation",
                "private",
                sys.executable,
                "-m",
                "benchmarks.cost.instructions",
                "--server",
                " ".join(ctx.server),
                "--mode",
                mode,
                "--files",
                *map(str, ctx.plan.instruction_files),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
        if out.returncode != 0:
            raise BenchError(f"instructions ({mode} events) failed: {out.stderr.strip()[-2000:]}")
        counted = json.loads(out.stdout)
        ctx.results.add(
            f"server_instructions_{mode}",
            "ours",
            counted["per_file"],
            scenario="d",
            label=f"server instructions per file, {mode} events (callgrind)",
            unit="instr",
        )
        ctx.results.record("instructions", counted)
        ctx.progress.step(f"{mode} events: {counted['per_file']:,.0f} instructions per file")


# --- (e), (f) ---------------------------------------------------------------------------------------------


def _scale_round(ctx: Context, v: Variant, n: int, i: int) -> None:
    images = workloads.SCALE_IMAGES[:n]
    per = len(workloads.DATA_FILES) // n  # disjoint: 10 files each for 20, 2 for 100
    files = [
        workloads.shuffled(workloads.DATA_FILES[k * per : (k + 1) * per], seed=3000 + 100 * i + k) for k in range(n)
    ]
    for image in images:
        v.clear_result(image)
    runs: list[Launched] = []
    traces: list[dict[str, Any]] = []
    cpu_before = v.cpu()
    with ThreadPoolExecutor(n) as pool:
        t0 = time.perf_counter()
        futures = [
            pool.submit(v.launch, image, workloads.read_then_park(f)) for image, f in zip(images, files, strict=True)
        ]
        failed: list[BaseException] = []
        for future in futures:
            try:
                runs.append(future.result())
            except Exception as error:
                failed.append(error)
        started = time.perf_counter() - t0
        try:
            if failed:
                raise failed[0]
            for run in runs:
                v.wait_output(run, workloads.READY, interval=0.05)
            mem = v.memory()
            t1 = time.perf_counter()
            list(pool.map(lambda run: v.stop_container(run, 0), runs))
            if v.traced:
                traces = list(pool.map(v.wait_trace_done, runs))
            traced_all = time.perf_counter() - t1
            cpu = cpu_delta(cpu_before, v.cpu())
        finally:
            list(pool.map(v.remove, runs))
    r = ctx.results
    tag = f"{n}" if n > 1 else "1"
    r.add(f"scale{tag}_start_all", v.name, started, scenario="f", label=f"{n} at once: time to start all", unit="s")
    for run in runs:
        r.add(
            f"scale{tag}_start",
            v.name,
            _ms(run.times["start"]),
            scenario="f",
            label=f"{n} at once: StartContainer",
            unit="ms",
        )
    row: dict[str, Any] = {"variant": v.name, "n": n, "run": i, "start_all_s": started}
    if v.traced:
        exact = crosstalk = 0
        lists = [v.result_list(image) for image in images]
        for k, got in enumerate(lists):
            cmp = stats.compare(["/bin/busybox", *files[k]], got)
            exact += cmp["recall"] == 1 and cmp["precision"] == 1 and cmp["inversions"] == 0
            others = {p for j, f in enumerate(files) if j != k for p in f}
            crosstalk += bool(others & set(got))
        r.add(f"scale{tag}_exact", v.name, 100 * exact / n, scenario="f", label=f"{n} at once: lists exact", unit="%")
        r.add(
            f"scale{tag}_crosstalk",
            v.name,
            crosstalk,
            scenario="f",
            label=f"{n} at once: lists with crosstalk",
            unit="lists",
        )
        r.add(
            f"scale{tag}_traced_all",
            v.name,
            traced_all,
            scenario="f",
            label=f"{n} at once: stop to all traces written",
            unit="s",
        )
        for trace in traces:
            if "watching_ms" in trace:
                r.add(
                    f"scale{tag}_watching",
                    v.name,
                    trace["watching_ms"],
                    scenario="f",
                    label=f"{n} at once: plugin StartContainer to watching",
                    unit="ms",
                )
        for what, label in (
            ("total_pages", "whole footprint, each resident page once"),
            ("total_rss", "whole footprint RSS"),
            ("total_pss", "whole footprint PSS"),
            ("daemon_rss", "daemon RSS"),
            ("tracer_rss", "tracers RSS"),
        ):
            r.add(f"mem{tag}_{what}", v.name, mem[what], scenario="e", label=f"{label}, {n} traced", unit="MB")
        r.add(
            f"mem{tag}_tracers",
            v.name,
            mem["tracers"],
            scenario="e",
            label=f"tracer processes, {n} traced",
            unit="procs",
        )
        r.add(
            f"scale{tag}_daemon_cpu",
            v.name,
            cpu["daemon_ms"],
            scenario="f",
            label=f"{n} at once: daemon CPU, start to all traces written",
            unit="ms",
        )
        r.add(
            f"scale{tag}_tracer_cpu",
            v.name,
            cpu["tracer_ms"],
            scenario="f",
            label=f"{n} at once: trace server CPU, start to all traces written",
            unit="ms",
        )
        row |= {
            "exact": exact,
            "crosstalk": crosstalk,
            "traced_all_s": traced_all,
            **mem,
            "files": [t.get("files") for t in traces],
        }
    r.record("scale", row)
    ctx.progress.step(
        f"{n:3} at once {v.name:8} round {i + 1}  started in {started:5.2f} s"
        + (
            f"  exact {row['exact']}/{n}  all traced {traced_all:5.2f} s  footprint "
            f"{row['total_pages']:.1f} MB (RSS sum {row['total_rss']:.1f})"
            if v.traced
            else ""
        )
    )


def scale(ctx: Context) -> None:
    for n in ctx.plan.scale_sizes:
        for i, v in interleaved(ctx.variants, ctx.plan.scale_rounds):
            _scale_round(ctx, v, n, i)


def memory(ctx: Context) -> None:
    """Daemon RSS after at least plan.pods_for_memory pods since idle (earlier scenarios count)."""
    for v in ctx.traced:
        while v.pods < ctx.plan.pods_for_memory:
            run = v.launch(workloads.IMAGE, workloads.read_then_exit(["/data/f001"]))
            try:
                v.wait_exited(run)
                _finish(v, run)
            finally:
                v.remove(run)
            ctx.progress.step(f"{v.name:8} pods {v.pods}/{ctx.plan.pods_for_memory}")
    time.sleep(1.0)
    for v in ctx.traced:
        mem = v.memory()
        ctx.results.add(
            "daemon_rss_after", v.name, mem["daemon_rss"], scenario="e", label="daemon RSS after the pods", unit="MB"
        )
        ctx.results.add(
            "daemon_pss_after", v.name, mem["daemon_pss"], scenario="e", label="daemon PSS after the pods", unit="MB"
        )
        ctx.results.add("pods_after", v.name, v.pods, scenario="e", label="pods run so far", unit="pods")
        ctx.progress.step(f"{v.name:8} after {v.pods} pods: daemon RSS {mem['daemon_rss']:.1f} MB")


def idle(ctx: Context) -> None:
    """Daemon and tracer memory before any pod (called right after setup)."""
    for v in ctx.traced:
        mem = v.memory()
        r = ctx.results
        r.add("daemon_rss_idle", v.name, mem["daemon_rss"], scenario="e", label="daemon RSS idle", unit="MB")
        r.add("daemon_pss_idle", v.name, mem["daemon_pss"], scenario="e", label="daemon PSS idle", unit="MB")
        r.add("total_rss_idle", v.name, mem["total_rss"], scenario="e", label="whole footprint RSS idle", unit="MB")
        r.add(
            "total_pages_idle",
            v.name,
            mem["total_pages"],
            scenario="e",
            label="whole footprint idle, each resident page once",
            unit="MB",
        )


def keep_check(ctx: Context) -> None:
    """(g) The keep check's cost against the number of images recorded: no containerd, the plugin's own function."""
    for size, kinds in measure_keep_check(ctx.plan.keep_check_images).items():
        for kind, what in (("hit", "a recorded image"), ("miss", "an image never recorded")):
            for value in kinds[kind]:
                ctx.results.add(
                    f"keep_check_{size}_{kind}",
                    "ours",
                    value,
                    scenario="g",
                    label=f"keep check, {size:,} images recorded: {what}",
                    unit="us",
                )
        hit, miss = (stats.percentile(kinds[kind], 50) for kind in ("hit", "miss"))
        ctx.progress.step(f"{size:,} images: {hit:.1f} us a hit, {miss:.1f} us a miss")


SCENARIOS: dict[str, Callable[[Context], None]] = {
    "start_stop": start_stop,
    "stop_pod": stop_pod,
    "completeness": completeness,
    "scale": scale,
    "memory": memory,
    "event_cost": event_cost,
    "syscalls": syscalls,
    "instructions": instructions,
    "keep_check": keep_check,
}


def run_all(ctx: Context, names: Sequence[str]) -> None:
    idle(ctx)
    snapshot(ctx, "idle")
    for name in names:
        if name not in SCENARIOS:
            raise BenchError(f"unknown scenario {name!r}: choose from {', '.join(SCENARIOS)}")
        ctx.progress.scenario(name)
        t0 = time.monotonic()
        SCENARIOS[name](ctx)
        ctx.results.durations[name] = time.monotonic() - t0
        snapshot(ctx, f"after {name}")
        ctx.progress.done(name, ctx.results.durations[name])


def snapshot(ctx: Context, when: str) -> None:
    for v in ctx.traced:
        ctx.results.timeline.append({"when": when, "variant": v.name, "pods": v.pods, **v.memory()})
