"""python -m benchmarks.cost [--quick] [--plugin PATH --server PATH] [--upstream-plugin PATH --upstream-server PATH]
[--containerd 2.1|1.7] [--snapshotter overlayfs|native] [--event-mode auto|fid|fd] [--out DIR]"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.cost import report, scenarios, workloads
from benchmarks.cost.harness import BenchError, Variant, make_variant
from benchmarks.cost.progress import Progress
from testbed import TestbedError, debs

DEFAULT_OUT = Path("build/bench")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a few runs of each scenario: checks that everything runs (CI), not timing"
    )
    parser.add_argument(
        "--containerd", default="2.1", choices=sorted(debs.CONTAINERD_FLAVOURS), help="containerd flavour (default 2.1)"
    )
    parser.add_argument(
        "--plugin",
        type=Path,
        help="our plugin as installed (make install-optimizer; default: a launcher of this source tree)",
    )
    parser.add_argument("--server", type=Path, help="our optimizer-server as installed (default: this venv's)")
    parser.add_argument("--upstream-plugin", type=Path, help="nydus-snapshotter's optimizer-nri-plugin binary")
    parser.add_argument("--upstream-server", type=Path, help="nydus-snapshotter's optimizer-server binary")
    parser.add_argument(
        "--runs",
        type=int,
        help="runs of each repeated scenario (start_stop, stop_pod, completeness, event_cost), instead of the plan's",
    )
    parser.add_argument(
        "--snapshotter",
        default="overlayfs",
        choices=["overlayfs", "native"],
        help="CRI's snapshotter, every variant's (default overlayfs; fid events need native)",
    )
    parser.add_argument(
        "--event-mode",
        default="auto",
        choices=["auto", "fid", "fd"],
        help="ours' event_mode (default auto: fid where the kernel allows it, else fd)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(scenarios.SCENARIOS),
        help=f"comma-separated subset, in order (default: {','.join(scenarios.SCENARIOS)})",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"where bench.json and bench.png go (default {DEFAULT_OUT})"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    args = parser.parse_args(argv)
    unknown = [n for n in args.scenarios.split(",") if n and n not in scenarios.SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}: choose from {', '.join(scenarios.SCENARIOS)}")
    if bool(args.upstream_plugin) != bool(args.upstream_server):
        parser.error("--upstream-plugin and --upstream-server go together")
    if bool(args.plugin) != bool(args.server):
        parser.error("--plugin and --server go together")
    for path in (args.upstream_plugin, args.upstream_server, args.plugin, args.server):
        if path is not None and not (path.is_file() and os.access(path, os.X_OK)):
            parser.error(f"{path}: not an executable file")
    return args


def _on_term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the bench; returns what it writes to bench.json."""
    if os.geteuid() != 0:
        raise BenchError("the bench runs a real containerd and needs root")
    names = [n for n in args.scenarios.split(",") if n]
    plan = _plan(args)
    progress = Progress(len(names))
    variants_wanted = _variants_wanted(args, progress)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    commit = _commit()  # the code measured is the code at the start (the daemon loads it then)
    load_before = os.getloadavg()
    runtime = debs.fetch_runtime(args.containerd)
    work = Path(tempfile.mkdtemp(prefix="nriopt-bench-", dir="/tmp"))
    variants: list[Variant] = []
    results = scenarios.Results()
    old_term = signal.signal(signal.SIGTERM, _on_term)
    try:
        _start_variants(args, plan, runtime, work, variants_wanted, progress, variants)
        time.sleep(1.0)
        ctx = scenarios.Context(variants, plan, results, progress)
        if args.server is not None:
            ctx.server = [str(args.server)]
        scenarios.run_all(ctx, names)
    except BenchError:
        _keep_logs(variants, args.out, progress)
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
        _close(variants, work, progress)
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": time.time() - started,
        "quick": bool(args.quick),
        "plan": asdict(plan),
        "scenarios": names,
        "containerd": runtime.deb_version,
        "snapshotter": args.snapshotter,
        "event_mode": args.event_mode,
        "event_modes_used": _modes_used(results),
        "runc": runtime.runc_version,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "python": platform.python_version(),
        "commit": commit,
        "upstream": {"plugin": str(args.upstream_plugin), "server": str(args.upstream_server)}
        if args.upstream_plugin
        else None,
        "ours": {"plugin": str(args.plugin), "server": str(args.server)} if args.plugin else "this source tree",
    }
    return report.to_json(results, variants_wanted, meta)


def _plan(args: argparse.Namespace) -> scenarios.Plan:
    plan = scenarios.Plan.quick() if args.quick else scenarios.Plan()
    if args.runs is None:
        return plan
    return dataclasses.replace(
        plan, start_stop=args.runs, stop_pod=args.runs, completeness=args.runs, event_cost=args.runs
    )


def _variants_wanted(args: argparse.Namespace, progress: Progress) -> list[str]:
    """none and ours; upstream's too where its two binaries are given (else the note says how)."""
    if not args.upstream_plugin:
        progress.note(
            "upstream anchor skipped: pass --upstream-plugin PATH --upstream-server PATH "
            "(nydus-snapshotter's optimizer-nri-plugin and its Rust optimizer-server, which Debian "
            "does not package)"
        )
        return ["none", "ours"]
    if not Path("/dev/log").exists():
        progress.note(
            "warning: no /dev/log here; upstream's plugin crashes on its server's first stderr line "
            "without a syslog socket (UPSTREAM.md weakness 10)"
        )
    return ["none", "ours", "upstream"]


def _start_variants(
    args: argparse.Namespace,
    plan: scenarios.Plan,
    runtime: debs.Runtime,
    work: Path,
    wanted: list[str],
    progress: Progress,
    started: list[Variant],
) -> None:
    """A containerd per variant, started side by side with the images imported, appended to started (those
    that did start are there for the caller to close, even when another fails and its error is raised)."""
    progress.note("building images")
    from testbed.images import build_pause_image

    workload, scale = workloads.build_images(work / "images", plan.many_files)
    pause = build_pause_image(work / "images" / "pause.tar")
    progress.note(
        f"starting containerd {runtime.version} for {', '.join(wanted)} and importing "
        f"the images ({plan.many_files:,} files take a while)"
    )
    event_mode = f'event_mode = "{args.event_mode}"\n' if args.event_mode != "auto" else ""
    with ThreadPoolExecutor(len(wanted)) as pool:
        futures = [
            pool.submit(
                make_variant,
                name,
                runtime,
                work,
                [pause, workload, scale],
                upstream_plugin=args.upstream_plugin,
                upstream_server=args.upstream_server,
                plugin=args.plugin,
                server=args.server,
                snapshotter=args.snapshotter,
                extra_config=event_mode,
            )
            for name in wanted
        ]
    for future in futures:
        if future.exception() is None:
            started.append(future.result())
    for future in futures:
        future.result()  # raise the first failure, if any


def _keep_logs(variants: list[Variant], out: Path, progress: Progress) -> None:
    """Each variant's containerd and plugin log into out/, as evidence, before the testbed removes them."""
    for variant in variants:
        logs = [("containerd", variant.ctd.log_path)] + ([("plugin", variant.log.path)] if variant.log else [])
        for what, path in logs:
            if path.exists():
                shutil.copy(path, out / f"failed-{variant.name}-{what}.log")
    progress.note(f"logs of the failed run: {out}/failed-*.log")


def _close(variants: list[Variant], work: Path, progress: Progress) -> None:
    """Stop every variant and remove the work directory; a variant that will not close is noted, not raised."""
    for variant in variants:
        try:
            variant.close()
        except (TestbedError, OSError) as error:
            progress.note(f"cleanup: {variant.name}: {error}")
    shutil.rmtree(work, ignore_errors=True)


def _modes_used(results: scenarios.Results) -> dict[str, dict[str, int]]:
    """variant -> event mode -> traces that used it (from the plugin's "watching after" log lines)."""
    used: dict[str, dict[str, int]] = {}
    for rows in results.details.values():
        for row in rows:
            if isinstance(row, dict) and row.get("mode") and row.get("variant"):
                counts = used.setdefault(row.get("variant", "?"), {})
                counts[row["mode"]] = counts.get(row["mode"], 0) + 1
    return used


def _commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if out.returncode == 0:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).resolve().parent.parent,
            ).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        data = run(args)
    except (BenchError, TestbedError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    results = scenarios.Results()  # rebuild the table from the JSON's samples
    for key, metric in data["metrics"].items():
        results.metrics[key] = scenarios.Metric(metric["scenario"], metric["label"], metric["unit"], metric["samples"])
    variants = data["variants"]
    meta = data["meta"]
    title = (
        f"nri-optimizer bench{' (quick)' if meta['quick'] else ''}: containerd {meta['containerd']}, "
        f"{meta['snapshotter']}, {meta['cpus']} CPUs, {meta['started']}, commit {meta['commit']}; ours' "
        f"events: {meta['event_modes_used'] or meta['event_mode']}"
    )
    text = f"{title}\n{report.table(results, variants)}\n\n{report.targets_text(data['targets'])}\n"
    print(text, end="")
    (args.out / "bench.txt").write_text(text)
    json_path = args.out / "bench.json"
    report.write_json(json_path, data)
    print(f"\nJSON: {json_path}")
    if not args.no_plot:
        try:
            png = args.out / "bench.png"
            report.plot(results, variants, png, title)
            print(f"PNG:  {png}")
        except ImportError:
            print("PNG:  not drawn: matplotlib is missing (pip install -e '.[bench]', or make bench)")
    print(f"took {meta['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
