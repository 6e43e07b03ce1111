"""Tracing real containers started through CRI: exact lists, in order, nothing missed, nothing extra."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nri_optimizer.cri.client import Mount
from testbed import host
from testbed.images import FileSpec, build_image
from testbed.plugin import prelaunched_pid
from testbed.tracing import DATA_FILES, EVENT_MODES, Traced, build_workload_image, shuffled, start_traced

SPARSE_IMAGE = "nri-optimizer.test/sparse:1"
SPARSE = "/data/sparse-5g"


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


@pytest.fixture(params=EVENT_MODES)
def event_mode(request: pytest.FixtureRequest) -> str:
    """Every test traces in each way the trace server can receive events; the plugin requires that one."""
    return str(request.param)


@pytest.fixture
def traced(make_containerd, flavour, tmp_path, workload_image, event_mode) -> Traced:
    return start_traced(make_containerd, flavour, tmp_path, workload_image, event_mode=event_mode)


def test_entrypoint_then_200_files_in_read_order(traced: Traced) -> None:
    order = shuffled(DATA_FILES, seed=1)
    run = traced.run(["/bin/cat", *order])
    line = traced.finish(run)
    assert "recorded 201 files" in line
    assert traced.result() == ["/bin/busybox", *order]


def test_exec_first_binary_and_its_five_files_come_first_in_order(traced: Traced) -> None:
    run = traced.run(["/entry.sh"])
    traced.finish(run)
    assert traced.result() == [
        "/entry.sh",
        "/bin/busybox",
        "/data/f010",
        "/data/f011",
        "/data/f012",
        "/data/f013",
        "/data/f014",
    ]


def test_fifty_files_then_exit_at_once_is_complete(traced: Traced) -> None:
    order = shuffled(DATA_FILES, seed=2)[:50]
    run = traced.run(["/bin/cat", *order])
    assert run.status is not None and run.status.exit_code == 0
    traced.finish(run)
    assert traced.result() == ["/bin/busybox", *order]


def test_odd_names_are_left_out_and_counted(traced: Traced) -> None:
    # A shell glob reaches the name that is not UTF-8 (CRI strings must be).
    run = traced.run(
        ["/bin/sh", "-c", "cat /data/f001 /data/new?line '/data/trailing ' /data/tab? /data/bad? /data/f002"]
    )
    line = traced.finish(run)
    assert traced.result() == ["/bin/busybox", "/data/f001", "/data/f002"]
    assert "recorded 3 files" in line and "4 unlistable" in line


def test_written_and_created_files_are_absent_on_overlayfs_and_bind_mounted_ones_always(
    traced: Traced, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "file").write_text("from the host\n")
    script = (
        "echo new > /tmp/created; cat /tmp/created /data/f001; echo more >> /data/rewritten; "
        "cat /data/rewritten /mnt/volume/file /data/f002"
    )
    run = traced.run(["/bin/sh", "-c", script], mounts=[Mount(str(volume), "/mnt/volume", readonly=True)])
    assert run.log_lines() == [
        "new",
        "content of /data/f001",
        "image version",
        "more",
        "from the host",
        "content of /data/f002",
    ]
    line = traced.finish(run)
    if traced.bed.ctd.snapshotter == "overlayfs":
        assert traced.result() == ["/bin/busybox", "/data/f001", "/data/f002"]
        assert "2 written by the container" in line
    else:  # fid mode's native snapshotter: no upper layer says what the container wrote (README.md)
        assert traced.result() == ["/bin/busybox", "/tmp/created", "/data/f001", "/data/rewritten", "/data/f002"]
        assert "0 written by the container" in line


def test_two_containers_of_one_image_at_once_are_both_traced(traced: Traced) -> None:
    first, second = DATA_FILES[:60], DATA_FILES[100:140]
    runs = [
        traced.run(["/bin/sh", "-c", f"cat {' '.join(files)}; exec sleep 1000"], wait=False)
        for files in (first, second)
    ]
    lines = [traced.finish(run) for run in runs]
    # Each trace is its own; the one result is one of them whole (overwrite = false: the first to finish).
    assert "recorded 61 files" in lines[0]
    assert "done; nri-optimizer.test/workload:1 was recorded meanwhile and is kept" in lines[1]
    assert traced.result() == ["/bin/busybox", *first]
    csv = traced.result(suffix=".csv")
    # The resident column: busybox is over 128 KiB (a file whose page-cache bytes are measured).
    assert csv[0] == "path,size,elapsed,resident" and [row.split(",")[0] for row in csv[1:]] == ["/bin/busybox", *first]


def test_overwrite_false_keeps_the_result_and_does_not_trace_again(traced: Traced) -> None:
    traced.finish(traced.run(["/bin/cat", "/data/f001"]))
    before = {p.name: p.read_bytes() for p in traced.results.iterdir() if p.is_file()}
    run = traced.run(["/bin/cat", "/data/f002"])
    traced.log.wait_for(rf"{run.container_id} not traced: nri-optimizer.test/workload:1 is recorded already")
    assert {p.name: p.read_bytes() for p in traced.results.iterdir() if p.is_file()} == before


@pytest.fixture
def overwriting(make_containerd, flavour, tmp_path, workload_image, event_mode) -> Traced:
    return start_traced(
        make_containerd, flavour, tmp_path, workload_image, extra="overwrite = true\n", event_mode=event_mode
    )


def test_overwrite_true_replaces_the_result_wholly(overwriting: Traced) -> None:
    overwriting.finish(overwriting.run(["/bin/cat", *DATA_FILES[:30]]))
    overwriting.finish(overwriting.run(["/bin/cat", "/data/f199"]))
    assert overwriting.result() == ["/bin/busybox", "/data/f199"]
    assert len(overwriting.result(suffix=".csv")) == 3
    assert json.loads(overwriting.result_path(suffix=".json").read_text()) == {
        "version": "v1",
        "files": [{"path": "/bin/busybox"}, {"path": "/data/f199"}],
    }


def test_200_files_in_order_20_of_20_runs(overwriting: Traced) -> None:
    for seed in range(20):
        order = shuffled(DATA_FILES, seed=100 + seed)
        overwriting.finish(overwriting.run(["/bin/cat", *order]))
        assert overwriting.result() == ["/bin/busybox", *order], f"run {seed + 1} of 20"


def test_timeout_stops_tracing_on_time_and_names_the_file(
    make_containerd, flavour, tmp_path, workload_image, event_mode
) -> None:
    traced = start_traced(
        make_containerd, flavour, tmp_path, workload_image, extra="timeout = 1\n", event_mode=event_mode
    )
    run = traced.run(["/bin/sh", "-c", "cat /data/f001; sleep 2; cat /data/f002; exec sleep 1000"], wait=False)
    (line,) = traced.log.wait_for(rf"{run.container_id} recorded", timeout=5)
    assert "(timeout;" in line
    assert traced.result(suffix=".timeout1s") == ["/bin/busybox", "/data/f001"]
    assert sorted(p.name for p in traced.results.iterdir()) == [
        ".workload:1.timeout1s",
        "workload:1.timeout1s",
        "workload:1.timeout1s.csv",
        "workload:1.timeout1s.json",
    ]
    traced.bed.cri.stop_container(run.container_id, 1)


def test_missing_server_logs_and_the_container_still_runs(
    make_containerd, flavour, tmp_path, workload_image, event_mode
) -> None:
    traced = start_traced(
        make_containerd,
        flavour,
        tmp_path,
        workload_image,
        extra='server_path = "/nonexistent/optimizer-server"\n',
        event_mode=event_mode,
    )
    run = traced.run(["/bin/cat", "/data/f001"])
    assert run.status is not None and run.status.exit_code == 0
    assert run.log_lines() == ["content of /data/f001"]
    (line,) = traced.log.wait_for(rf"{run.container_id} not traced: cannot start the trace server")
    assert "No such file or directory" in line
    assert list(traced.results.iterdir()) == []


def test_server_killed_mid_trace_keeps_the_earlier_result(overwriting: Traced) -> None:
    overwriting.finish(overwriting.run(["/bin/cat", "/data/f001"]))
    before = {p.name: p.read_bytes() for p in overwriting.results.iterdir() if p.is_file()}
    run = overwriting.run(["/bin/sh", "-c", "cat /data/f002; exec sleep 1000"], wait=False)
    overwriting.log.wait_for(rf"{run.container_id} tracing pid")
    plugin = prelaunched_pid(overwriting.bed)
    (server,) = [p for p in host.processes() if p.ppid == plugin and "optimizer-server" in " ".join(p.cmdline)]
    server.kill(signal.SIGKILL)
    assert overwriting.bed.cri.container_status(run.container_id).state == "running"
    line = overwriting.finish(run)
    assert "trace lost (server died): nothing written, earlier results kept" in line
    assert {p.name: p.read_bytes() for p in overwriting.results.iterdir() if p.is_file()} == before
    # The next container gets a new server and is traced.
    overwriting.finish(overwriting.run(["/bin/cat", "/data/f003"]))
    assert overwriting.result() == ["/bin/busybox", "/data/f003"]


def test_files_read_by_an_exec_process_are_absent(traced: Traced) -> None:
    run = traced.run(
        [
            "/bin/sh",
            "-c",
            "cat /data/f001; while [ ! -e /tmp/go ]; do sleep 0.05; done; cat /data/f002; exec sleep 1000",
        ],
        wait=False,
    )
    traced.log.wait_for(rf"{run.container_id} tracing pid")
    # An exec probe reads f002 (which the workload reads later) and f003 (which it never reads).
    assert traced.bed.cri.exec_sync(
        run.container_id, ["/bin/sh", "-c", "cat /data/f002 /data/f003; touch /tmp/go"]
    ) == (0, b"content of /data/f002\ncontent of /data/f003\n", b"")
    deadline = time.monotonic() + 10
    while run.log_lines() != ["content of /data/f001", "content of /data/f002"]:  # the workload went on
        assert time.monotonic() < deadline, run.log_lines()
        time.sleep(0.05)
    line = traced.finish(run)
    assert traced.result() == ["/bin/busybox", "/data/f001", "/data/f002"]
    assert "files of exec'd processes" in line and " 0 files of exec'd processes" not in line


def test_a_sparse_5_gib_file_is_listed_with_its_size(make_containerd, tmp_path, event_mode) -> None:
    # One flavour only: the size comes from our fstat, whatever the runtime; and containerd writes the
    # hole out in full when it unpacks the layer (5 GiB of disk for the test's lifetime, ~20 s).
    image = build_image(
        SPARSE_IMAGE, tmp_path / "sparse.tar", {SPARSE: FileSpec(b"sparse head\n", sparse_size=5 << 30)}
    )
    traced = start_traced(make_containerd, "2.1", tmp_path / "bed", image, import_timeout=180, event_mode=event_mode)
    traced.bed.cri.timeout = 180  # fid mode's native snapshotter copies the 5 GiB, hole and all, at CreateContainer
    run = traced.run(["/bin/head", "-n", "1", SPARSE], image=SPARSE_IMAGE)
    assert run.log_lines() == ["sparse head"]
    traced.finish(run)
    assert traced.result(SPARSE_IMAGE) == ["/bin/busybox", SPARSE]
    rows = [row.split(",") for row in traced.result(SPARSE_IMAGE, suffix=".csv")]
    assert [(path, int(size)) for path, size, *_ in rows[1:]][1] == (SPARSE, 5 << 30)


LONG_PATH = "/" + "/".join(["d" * 199] * 19) + "/" + "f" * 100  # 3,901 bytes: near PATH_MAX (4,096)


def test_a_path_near_path_max_is_listed_whole(make_containerd, flavour, tmp_path, event_mode) -> None:
    image = build_image("nri-optimizer.test/long:1", tmp_path / "long.tar", {LONG_PATH: b"deep\n"})
    traced = start_traced(make_containerd, flavour, tmp_path / "bed", image, event_mode=event_mode)
    run = traced.run(["/bin/cat", LONG_PATH], image="nri-optimizer.test/long:1")
    assert run.log_lines() == ["deep"]
    traced.finish(run)
    assert traced.result("nri-optimizer.test/long:1") == ["/bin/busybox", LONG_PATH]


BURST = [f"/burst/d{i % 20:02d}/f{i:04d}" for i in range(2000)]  # 20 directories, 100 files each


def test_a_burst_of_2000_files_across_20_directories_is_listed_in_read_order(
    make_containerd, flavour, tmp_path, event_mode
) -> None:
    order = shuffled(BURST, seed=3)  # each read in another directory than the last, mostly
    image = build_image("nri-optimizer.test/burst:1", tmp_path / "burst.tar", {path: b"b\n" for path in BURST})
    traced = start_traced(make_containerd, flavour, tmp_path / "bed", image, event_mode=event_mode)
    run = traced.run(["/bin/cat", *order], image="nri-optimizer.test/burst:1")
    assert run.status is not None and run.status.exit_code == 0
    line = traced.finish(run)
    assert traced.result("nri-optimizer.test/burst:1") == ["/bin/busybox", *order]
    assert "recorded 2001 files" in line


def dynamic_program() -> tuple[str, dict[str, bytes | FileSpec], list[str]]:
    """The host's dynamically linked `true`, with its loader and libraries at the paths ldd names: (path in the
    image, the image's files, what it reads as it starts, in order: itself, the loader, the libraries)."""
    program = "/usr/local/bin/true"
    loaded = []
    for line in subprocess.run(
        ["ldd", "/usr/bin/true"], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            loaded.append(path)
    interpreter = [path for path in loaded if "/ld-" in path]
    libraries = [path for path in loaded if path not in interpreter]
    assert len(interpreter) == 1 and libraries, loaded
    files: dict[str, bytes | FileSpec] = {program: FileSpec(Path("/usr/bin/true").read_bytes(), mode=0o755)}
    for path in loaded:
        files[path] = FileSpec(Path(path).read_bytes(), mode=0o755)
    return program, files, [program, *interpreter, *libraries]


def test_a_dynamically_linked_program_lists_itself_its_loader_and_its_libraries_in_order(
    make_containerd, flavour, tmp_path, event_mode
) -> None:
    program, files, reads = dynamic_program()
    image = build_image("nri-optimizer.test/dynamic:1", tmp_path / "dynamic.tar", files)
    traced = start_traced(make_containerd, flavour, tmp_path / "bed", image, event_mode=event_mode)
    run = traced.run([program], image="nri-optimizer.test/dynamic:1")
    assert run.status is not None and run.status.exit_code == 0
    traced.finish(run)
    assert traced.result("nri-optimizer.test/dynamic:1") == reads


RESIDENT_IMAGE = "nri-optimizer.test/resident:1"


def test_the_csv_says_how_much_of_each_large_file_the_start_read(
    make_containerd, flavour, tmp_path, event_mode
) -> None:
    # Two 1 MiB files, the first 4 KiB of one read and all of the other, and a small file. containerd wrote the
    # files into the page cache when it unpacked them: they are dropped from it before the workload reads.
    image = build_image(
        RESIDENT_IMAGE,
        tmp_path / "resident.tar",
        {"/data/part": os.urandom(1 << 20), "/data/whole": os.urandom(1 << 20), "/data/small": b"small\n"},
    )
    traced = start_traced(make_containerd, flavour, tmp_path / "bed", image, event_mode=event_mode)
    run = traced.run(
        [
            "/bin/sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.05; done; head -c 4096 /data/part >/dev/null; "
            "cat /data/whole /data/small >/dev/null; echo read; exec sleep 1000",
        ],
        image=RESIDENT_IMAGE,
        wait=False,
    )
    traced.log.wait_for(rf"{run.container_id} tracing pid")
    root = Path(f"/proc/{traced.bed.cri.container_status(run.container_id).pid}/root")
    os.sync()  # the unpacked pages are clean, and so can be dropped
    for name in ("part", "whole"):
        fd = os.open(root / "data" / name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    (root / "tmp" / "go").touch()
    deadline = time.monotonic() + 10
    while "read" not in run.log_lines():
        assert time.monotonic() < deadline, run.log_lines()
        time.sleep(0.05)
    traced.finish(run, grace=0)
    with traced.result_path(RESIDENT_IMAGE, suffix=".csv").open() as table:
        rows = {row["path"]: row for row in csv.DictReader(table)}
    assert list(rows) == ["/bin/busybox", "/data/part", "/data/whole", "/data/small"]
    # The read's 4 KiB, and what readahead added: its first window is at most four times the read (busybox reads
    # in 64 KiB at most).
    assert 4096 <= int(rows["/data/part"]["resident"]) <= 256 * 1024, rows["/data/part"]
    assert int(rows["/data/whole"]["resident"]) == 1 << 20
    assert rows["/data/small"]["resident"] == "" and rows["/data/small"]["size"] == "6"
    # The nydus JSON says which part of /data/part: from its start, as many bytes as are resident. The others are
    # prefetched whole: no ranges.
    files = {f["path"]: f for f in json.loads(traced.result_path(RESIDENT_IMAGE, suffix=".json").read_text())["files"]}
    assert files["/data/part"]["ranges"][0][0] == 0, files["/data/part"]
    assert sum(size for _, size in files["/data/part"]["ranges"]) == int(rows["/data/part"]["resident"])
    assert files["/data/whole"] == {"path": "/data/whole"} and files["/data/small"] == {"path": "/data/small"}
