"""`nri-optimizer ls`: what persist_dir holds, as a table and as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nri_optimizer.cli import main

WHEN = 1_790_000_000  # 2026-09-21T14:13:20Z


def put(persist_dir: Path, name: str, plain: str, table: str | None) -> None:
    path = persist_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plain)
    if table is not None:
        (persist_dir / f"{name}.csv").write_text(table)
    (persist_dir / f"{name}.json").write_text('{"version": "v1", "files": []}\n')
    os.utime(path, (WHEN, WHEN))


@pytest.fixture
def persist_dir(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    put(
        results,
        "library/nginx:latest",
        "/bin/sh\n/etc/nginx.conf\n",
        "path,size,elapsed\n/bin/sh,1000,10\n/etc/nginx.conf,24,20\n",
    )
    put(
        results,
        "team/app@sha256:" + "a" * 64,
        "# incomplete: the kernel's event queue overflowed, files are missing\n/app\n",
        "path,size,elapsed\n/app,5,1\n",
    )
    put(
        results,
        "redis:7.timeout30s",
        "/usr/bin/redis-server\n",
        "path,size,elapsed\n/usr/bin/redis-server,1.2 KiB,850 us\n",
    )  # readable = true: no byte count
    (results / ".inflight").mkdir()
    (results / ".inflight" / "abc").write_text("docker.io/library/busybox:1")  # a trace running: not a list
    return results


def test_json_lists_every_recorded_list(persist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "--persist-dir", str(persist_dir), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    when = "2026-09-21T14:13:20Z"
    assert json.loads(out) == [
        {
            "image": "library/nginx:latest",
            "workload": None,
            "path": f"{persist_dir}/library/nginx:latest",
            "files": 2,
            "bytes": 1024,
            "recorded": when,
            "incomplete": None,
        },
        {
            "image": "redis:7.timeout30s",
            "workload": None,
            "path": f"{persist_dir}/redis:7.timeout30s",
            "files": 1,
            "bytes": None,
            "recorded": when,
            "incomplete": None,
        },
        {
            "image": "team/app@sha256:" + "a" * 64,
            "workload": None,
            "path": f"{persist_dir}/team/app@sha256:" + "a" * 64,
            "files": 1,
            "bytes": 5,
            "recorded": when,
            "incomplete": "the kernel's event queue overflowed, files are missing",
        },
    ]


def test_table(persist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "--persist-dir", str(persist_dir)]) == 0
    digest = "team/app@sha256:" + "a" * 64
    pad = " " * (len(digest) - len("IMAGE"))
    assert capsys.readouterr().out.splitlines() == [
        f"IMAGE{pad}  FILES    BYTES  RECORDED (UTC)       COMPLETE",
        f"library/nginx:latest{' ' * (len(digest) - 20)}      2  1.0 KiB  2026-09-21 14:13:20  yes",
        f"redis:7.timeout30s{' ' * (len(digest) - 18)}      1        -  2026-09-21 14:13:20  yes",
        f"{digest}      1      5 B  2026-09-21 14:13:20  no: the kernel's event queue overflowed, files are missing",
    ]


def test_an_empty_or_missing_persist_dir_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "--persist-dir", str(tmp_path / "none")]) == 0
    assert capsys.readouterr() == ("", f"nri-optimizer ls: no lists in {tmp_path / 'none'}\n")
    assert main(["ls", "--persist-dir", str(tmp_path / "none"), "--json"]) == 0
    assert capsys.readouterr().out == "[]\n"


def test_a_persist_dir_that_is_a_file_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert main(["ls", "--persist-dir", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == (
        f"nri-optimizer ls: --persist-dir: persist_dir: {tmp_path / 'file'} exists and "
        "is not a directory; remove it or choose another path\n"
    )


def test_a_workloads_list_names_its_workload_and_can_be_asked_for(
    persist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(
        persist_dir,
        "library/nginx:latest+web",
        "/bin/sh\n/etc/web.conf\n",
        "path,size,elapsed\n/bin/sh,1000,10\n/etc/web.conf,1,20\n",
    )
    assert main(["ls", "--persist-dir", str(persist_dir), "--json", "--workload", "web"]) == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert (only["image"], only["workload"], only["path"], only["files"]) == (
        "library/nginx:latest",
        "web",
        f"{persist_dir}/library/nginx:latest+web",
        2,
    )
    assert main(["ls", "--persist-dir", str(persist_dir)]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [
        "IMAGE",
        "library/nginx:latest",
        "library/nginx:latest+web",
        "redis:7.timeout30s",
        "team/app@sha256:" + "a" * 64,
    ]
