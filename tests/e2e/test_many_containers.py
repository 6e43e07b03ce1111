"""One image, many containers (issue 21), on the real containerd: a result set is written whole, and what
``on_repeat`` promises holds exactly, however many traces of one image end at once.

N containers of one image (N = 2, 4, 8) start, wait on one barrier (a file on a bind mount), read their own files
at once, and are stopped at once, beside two busy loops: N traces of one image are written within milliseconds of
each other. Every round checks the set at upstream's names (list, CSV and JSON agree, path for path) and, under
``keep``, that exactly the first writer's list survives; under ``merge``, that the set keeps every run exactly and
its list is their merge by results/merge.py's rule. Then the daemon and two ``profile`` processes write one image at
once, and pods of one image with different workload labels keep a list each.

``make test`` runs QUICK_ROUNDS rounds of each; ``make stress`` the issue's FULL_ROUNDS.
"""

from __future__ import annotations

import random
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.cost.harness import CpuHogs
from nri_optimizer.cli.convert import default_list
from nri_optimizer.cri.client import Mount
from nri_optimizer.results.merge import merge, parse_run
from testbed.tracing import DATA_FILES, SERVER, WORKLOAD_IMAGE, Traced, build_workload_image, result_set, start_traced

QUICK_ROUNDS = 3
FULL_ROUNDS = 30
ROUNDS = [
    pytest.param(QUICK_ROUNDS, id=f"{QUICK_ROUNDS}-rounds"),
    pytest.param(FULL_ROUNDS, id=f"{FULL_ROUNDS}-rounds", marks=pytest.mark.stress),
]
RESULT = "workload:1"
KEPT = "was recorded meanwhile and is kept (on_repeat = keep)"
WORKLOAD_LABEL = "app.kubernetes.io/name"


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


def files_of(round_: int, index: int) -> list[str]:
    """What container ``index`` reads in a round: 2 to 5 files of its own (no other container of the round reads
    them), in an order of its own."""
    block = DATA_FILES[(round_ * 40 + index * 5) % 200 :][:5]
    return random.Random(round_ * 100 + index).sample(block, 2 + (round_ + index) % 4)


def after_barrier(go: str, files: list[str], then: str = "exec sleep 1000") -> list[str]:
    """A container's command: wait for the barrier file, read the files, then (by default) sleep until stopped."""
    return ["/bin/sh", "-c", f"while [ ! -e /barrier/{go} ]; do sleep 0.01; done; cat {' '.join(files)}; {then}"]


def wait_until(done: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def clear(results: Path) -> None:
    """Remove every result (the daemon's journal of running traces stays: it is the daemon's)."""
    for entry in results.iterdir():
        if entry.name == ".inflight":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def one_round(traced: Traced, barrier: Path, round_: int, n: int) -> dict[str, tuple[list[str], str]]:
    """Run a round; {container id: (its expected list, the plugin's last line for it)}."""
    go = f"go-{round_}"
    runs = {}
    for index in range(n):
        files = files_of(round_, index)
        run = traced.run(after_barrier(go, files), mounts=[Mount(str(barrier), "/barrier", readonly=True)], wait=False)
        runs[run.container_id] = (run, files)
    for cid in runs:
        traced.log.wait_for(rf"{cid} tracing pid", timeout=30)
    (barrier / go).touch()  # the one barrier: every container reads now
    for run, files in runs.values():
        wait_until(lambda run=run, files=files: len(run.log_lines()) == len(files), what=f"{run.container_id} reads")
    stopping = threading.Barrier(n)
    failures: list[BaseException] = []

    def stop(cid: str) -> None:
        try:
            stopping.wait(10)
            traced.bed.cri.stop_container(cid, 0)
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    stoppers = [threading.Thread(target=stop, args=(cid,)) for cid in runs]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join(30)
    assert failures == []
    outcome = {}
    for cid, (_, files) in runs.items():
        (line,) = traced.log.wait_for(rf"{cid} (recorded|done;|trace lost|cannot write)", timeout=60)
        outcome[cid] = (["/bin/busybox", *files], line)
    for run, _ in runs.values():  # pods left standing would make later rounds, not the plugin, slow
        traced.bed.cri.stop_pod(run.pod.id)
        traced.bed.cri.remove_pod(run.pod.id)
    return outcome


@pytest.mark.parametrize("rounds", ROUNDS)
@pytest.mark.parametrize("n", [2, 4, 8])
def test_keep_n_containers_at_once_exactly_the_first_set_survives_whole(
    make_containerd, flavour, tmp_path, workload_image, n: int, rounds: int
) -> None:
    traced = start_traced(make_containerd, flavour, tmp_path, workload_image, extra='on_repeat = "keep"\n')
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    with CpuHogs(2):
        for round_ in range(rounds):
            clear(traced.results)  # each round starts with no result: every container is traced, and races
            outcome = one_round(traced, barrier, round_, n)
            written = [expected for cid, (expected, line) in outcome.items() if f"{cid} recorded " in line]
            kept = [line for _, line in outcome.values() if line.endswith(f"done; {WORKLOAD_IMAGE} {KEPT}")]
            assert len(written) == 1 and len(kept) == n - 1, (round_, outcome)
            assert result_set(traced.result_path()) == written[0], f"round {round_ + 1} of {rounds}"


@pytest.mark.parametrize("rounds", ROUNDS)
@pytest.mark.parametrize("n", [2, 4, 8])
def test_merge_n_containers_at_once_the_list_is_the_merge_of_every_run(
    make_containerd, flavour, tmp_path, workload_image, n: int, rounds: int
) -> None:
    traced = start_traced(
        make_containerd, flavour, tmp_path, workload_image, extra='on_repeat = "merge"\nmerge_window = 8\n'
    )
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    runs_dir = traced.results / f".{RESULT}" / "current" / "runs"
    with CpuHogs(2):
        for round_ in range(rounds):
            clear(traced.results)
            outcome = one_round(traced, barrier, round_, n)
            merged_with = sorted(int(line.split("; merged with ")[1].split()[0]) for _, line in outcome.values())
            assert merged_with == list(range(n)), (round_, outcome)  # each run joined the ones written before it
            stored = [(runs_dir / str(k)).read_bytes() for k in range(1, n + 1)]
            assert sorted(p.name for p in runs_dir.iterdir()) == sorted(
                f"{k}{s}" for k in range(1, n + 1) for s in ("", ".csv")
            )
            assert sorted(run.decode().splitlines() for run in stored) == sorted(e for e, _ in outcome.values())
            window = [
                parse_run(run, (runs_dir / f"{k}.csv").read_bytes(), where=str(k)) for k, run in enumerate(stored, 1)
            ]
            expected = [entry.path.decode() for entry in merge(window).entries]
            assert result_set(traced.result_path()) == expected, f"round {round_ + 1} of {rounds}"


def profile(traced: Traced, barrier: Path, go: str, files: list[str]) -> subprocess.Popen[str]:
    """``nri-optimizer profile`` of a container that reads ``files`` after the barrier and exits."""
    command = shlex.join(after_barrier(go, files, then="exit 0"))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nri_optimizer",
            "profile",
            WORKLOAD_IMAGE,
            "--runtime-endpoint",
            traced.bed.ctd.address,
            "--nri-socket",
            str(traced.bed.ctd.nri_socket),
            "--persist-dir",
            str(traced.results),
            "--server-path",
            SERVER,
            "--config",
            "/dev/null",
            "--quiet",
            "--cmd",
            command,
            "--mount",
            f"{barrier}:/barrier:ro",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("rounds", ROUNDS)
def test_the_daemon_and_profile_writing_one_image_at_once_leave_one_whole_set(
    make_containerd, flavour, tmp_path, workload_image, rounds: int
) -> None:
    # Two profile processes each trace their own container and save its list; the daemon traces both containers too
    # and saves each list (replace): four writes of one result from three processes, as the two containers end.
    traced = start_traced(make_containerd, flavour, tmp_path, workload_image, extra='on_repeat = "replace"\n')
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    with CpuHogs(2):
        for round_ in range(rounds):
            go = f"go-{round_}"
            lists = [files_of(round_, index) for index in range(2)]
            started = len(traced.log.matching(r"tracing pid"))
            profiles = [profile(traced, barrier, go, files) for files in lists]
            try:
                wait_until(lambda s=started: len(traced.log.matching(r"tracing pid")) == s + 2, 60, "both containers")
                (barrier / go).touch()
                outputs = [p.communicate(timeout=120) for p in profiles]
            finally:
                for p in profiles:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            for p, (out, err), files in zip(profiles, outputs, lists, strict=True):
                assert p.returncode == 0, err
                assert out.splitlines() == ["/bin/busybox", *files]
            traced.log.wait_for(r"[0-9a-f]{64} recorded ", count=2 * (round_ + 1), timeout=30)
            assert result_set(traced.result_path()) in (["/bin/busybox", *files] for files in lists), round_


def test_two_pods_of_one_image_with_different_labels_keep_two_lists(
    make_containerd, flavour, tmp_path, workload_image
) -> None:
    traced = start_traced(
        make_containerd, flavour, tmp_path, workload_image, extra=f'workload_key = "label:{WORKLOAD_LABEL}"\n'
    )
    reads = {"web": DATA_FILES[:3], "worker": DATA_FILES[10:12], "": DATA_FILES[20:21]}
    for workload, files in reads.items():
        labels = {WORKLOAD_LABEL: workload} if workload else {"tier": "backend"}
        traced.finish(traced.run(["/bin/cat", *files], labels=labels))
    again = traced.run(["/bin/cat", DATA_FILES[199]], labels={WORKLOAD_LABEL: "web"})
    traced.log.wait_for(rf"{again.container_id} not traced: {WORKLOAD_IMAGE} \(workload web\) is recorded already")
    odd = traced.run(["/bin/cat", DATA_FILES[198]], labels={WORKLOAD_LABEL: "-not a label value-"})
    traced.log.wait_for(rf"{odd.container_id} not traced: not a valid workload name")
    assert sorted(p.name for p in traced.results.iterdir() if not p.name.startswith(".")) == [
        RESULT,
        f"{RESULT}+web",
        f"{RESULT}+web.csv",
        f"{RESULT}+web.json",
        f"{RESULT}+worker",
        f"{RESULT}+worker.csv",
        f"{RESULT}+worker.json",
        f"{RESULT}.csv",
        f"{RESULT}.json",
    ]
    for workload, files in reads.items():
        where = default_list(str(traced.results), WORKLOAD_IMAGE, workload)  # where convert looks
        assert result_set(Path(where)) == ["/bin/busybox", *files], workload
