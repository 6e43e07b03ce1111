"""`nri-optimizer ls` on what a real trace wrote."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.tracing import build_workload_image, start_traced


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


def test_ls_shows_the_list_a_trace_wrote(make_containerd, flavour, tmp_path, workload_image) -> None:
    traced = start_traced(make_containerd, flavour, tmp_path, workload_image)
    assert "recorded 4 files" in traced.finish(traced.run(["/bin/cat", "/data/f001", "/data/f002", "/data/f003"]))
    done = subprocess.run(
        [sys.executable, "-m", "nri_optimizer", "ls", "--json", "--persist-dir", str(traced.results)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    with open(f"{traced.result_path()}.csv", newline="") as table:
        sizes = [int(row["size"]) for row in csv.DictReader(table)]
    (entry,) = json.loads(done.stdout)
    assert {key: entry[key] for key in ("image", "path", "files", "bytes", "incomplete")} == {
        "image": "workload:1",
        "path": str(traced.result_path()),
        "files": 4,
        "bytes": sum(sizes),
        "incomplete": None,
    }
    assert sizes[1:] == [len(b"content of /data/f001\n")] * 3
