"""`python -m benchmarks.cost --quick`: every scenario runs on every variant and produces numbers. No timing asserts:
the machines this runs on are shared and noisy; `make bench` is where numbers are read."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

# metric -> the variants that must have produced samples of it
EXPECTED = {
    # (a), (b)
    "start": ["none", "ours"],
    "stop_container": ["none", "ours"],
    "stop_pod": ["none", "ours"],
    "stop_container_ratio": ["ours"],
    "stop_pod_ratio": ["ours"],
    "watching": ["ours"],
    # (c): three workloads, unloaded and loaded
    **{
        f"{what}_{case}_{load}": ["ours"]
        for what in ("recall", "precision", "inversions")
        for case in ("c200", "cexec", "c50")
        for load in ("unloaded", "loaded")
    },
    # (d)
    "time_many": ["none", "ours"],
    "time_few": ["none", "ours"],
    "time_ratio_many": ["ours"],
    "time_ratio_few": ["ours"],
    "kernel_events_per_file_few": ["ours"],
    "recall_many": ["ours"],
    "cpu_per_file_many": ["ours"],
    "cpu_per_file_few": ["ours"],
    "events_many": ["ours"],
    "events_per_file_few": ["ours"],
    "syscalls_per_file_server": ["ours"],
    "syscalls_per_file_daemon": ["ours"],
    "server_instructions_fd": ["ours"],
    "server_instructions_fid": ["ours"],
    # (e)
    "daemon_rss_idle": ["ours"],
    "daemon_rss_after": ["ours"],
    "mem1_total_rss": ["ours"],
    "mem20_total_rss": ["ours"],
    "mem20_total_pages": ["ours"],
    "mem20_total_pss": ["ours"],
    # (f)
    "scale20_start": ["none", "ours"],
    "scale20_start_all": ["none", "ours"],
    "scale20_exact": ["ours"],
    "scale20_traced_all": ["ours"],
    # (g)
    **{f"keep_check_{n}_{kind}": ["ours"] for n in (10, 1_000) for kind in ("hit", "miss")},
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    if os.geteuid() != 0:
        pytest.fail("the bench runs a real containerd and needs root: run it as root (e.g. in CI or a VM)")
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.cost", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return result, out


def test_quick_bench_exits_zero_and_prints_the_table(quick_run) -> None:
    result, _ = quick_run
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert "StartContainer" in result.stdout and "x base" in result.stdout
    assert "upstream anchor skipped" in result.stderr  # no upstream paths given: said so, not silently


def test_every_scenario_produced_numbers_for_every_variant(quick_run) -> None:
    _, out = quick_run
    data = json.loads((out / "bench.json").read_text())
    assert data["meta"]["quick"] is True
    assert set(data["durations_s"]) == {
        "start_stop",
        "stop_pod",
        "completeness",
        "scale",
        "memory",
        "event_cost",
        "syscalls",
        "instructions",
        "keep_check",
    }
    missing = []
    for key, variants in EXPECTED.items():
        metric = data["metrics"].get(key)
        for variant in variants:
            samples = (metric or {}).get("samples", {}).get(variant, [])
            if not samples or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in samples):
                missing.append(f"{key}/{variant}")
    assert not missing, f"no numbers for {missing}"
    for key in ("daemon_rss_idle", "mem20_total_rss", "mem20_total_pages"):
        assert data["metrics"][key]["samples"]["ours"][0] > 0


def test_every_target_was_measured(quick_run) -> None:
    _, out = quick_run
    targets = json.loads((out / "bench.json").read_text())["targets"]
    assert targets
    assert [t["target"] for t in targets if t["value"] is None] == []


def test_the_plot_is_drawn(quick_run) -> None:
    _, out = quick_run
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
