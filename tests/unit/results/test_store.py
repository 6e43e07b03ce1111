"""A result set is one unit: what a reader finds at upstream's names (list, CSV, JSON) is always one write's, whole,
whatever writers of the same result do at the same time (threads or processes), and whenever one of them dies."""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nri_optimizer.errors import PersistError
from nri_optimizer.results.formats import Entry, render
from nri_optimizer.results.key import ResultKey
from nri_optimizer.results.merge import Run, merge
from nri_optimizer.results.runs import OnRepeat, Recorded, record
from nri_optimizer.results.store import ResultSet, read_result
from testbed.tracing import result_set

NAME = "app:1"
X = ["/x/1", "/x/2", "/x/3"]  # what was there before
A = ["/a/1", "/a/2", "/a/3", "/a/4"]  # the first writer's
B = ["/b/1", "/b/2"]  # the second writer's
# The file-system calls a write is made of; a writer is paused, or killed, right after one of them.
STEPS = ("rename", "symlink", "link", "mkdir", "fsync", "unlink")
FORK = multiprocessing.get_context("fork")


def entries(paths: list[str]) -> list[Entry]:
    return [Entry(p.encode(), 10 * i, 100 * i) for i, p in enumerate(paths, 1)]


def write(
    persist_dir: Path,
    paths: list[str],
    on_repeat: OnRepeat = "replace",
    *,
    name: str = NAME,
    directory: str = "",
    window: int = 5,
    incomplete: str | None = None,
) -> Recorded:
    return record(
        str(persist_dir),
        ResultKey(directory, name),
        entries(paths),
        readable=False,
        on_repeat=on_repeat,
        window=window,
        incomplete=incomplete,
    )


def snapshot(directory: Path, name: str = NAME) -> list[str] | None:
    """What a reader that knows nothing of sets finds at upstream's names, checked whole (testbed.tracing)."""
    return result_set(directory / name)


def merged(*runs: list[str]) -> list[str]:
    return [e.path.decode() for e in merge([Run(entries(r)) for r in runs]).entries]


def upstream_result(directory: Path, paths: list[str], name: str = NAME) -> None:
    """A result as upstream (or an earlier version of ours) leaves it: three regular files."""
    plain, table, prefetch, _ = render(entries(paths), readable=False)
    directory.mkdir(parents=True, exist_ok=True)
    for suffix, data in (("", plain), (".csv", table), (".json", prefetch)):
        (directory / f"{name}{suffix}").write_bytes(data)


def install_steps(after_step: Callable[[], None], steps: int, applies: Callable[[], bool]) -> Callable[[], None]:
    """Make ``after_step`` run right after the ``steps``-th file-system step of the calls ``applies`` to; returns
    what undoes it."""
    counter = itertools.count(1)
    originals = {name: getattr(os, name) for name in STEPS}

    def wrapped(real: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            if applies() and next(counter) == steps:
                after_step()
            return result

        return step

    for name, real in originals.items():
        setattr(os, name, wrapped(real))

    def undo() -> None:
        for name, real in originals.items():
            setattr(os, name, real)

    return undo


def waiting_for_lock(pid: int) -> bool:
    """Whether process ``pid`` waits for a flock (the kernel's own account, /proc/locks)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "->" and fields[2] == "FLOCK" and fields[5] == str(pid):
            return True
    return False


def until(done: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


# -- the layout -------------------------------------------------------------------------------------------


def test_upstreams_names_are_links_through_one_current_set(tmp_path: Path) -> None:
    recorded = write(tmp_path, ["/x"], name="nginx:latest", directory="library")
    assert (recorded.path, recorded.listed) == (f"{tmp_path}/library/nginx:latest", 1)
    library = tmp_path / "library"
    assert sorted(os.listdir(library)) == [".nginx:latest", "nginx:latest", "nginx:latest.csv", "nginx:latest.json"]
    for suffix in ("", ".csv", ".json"):
        assert os.readlink(library / f"nginx:latest{suffix}") == f".nginx:latest/current/list{suffix}"
    (current,) = [n for n in os.listdir(library / ".nginx:latest") if n.startswith("set.")]
    assert os.readlink(library / ".nginx:latest/current") == current
    assert (library / "nginx:latest").read_bytes() == b"/x\n"
    for name in os.listdir(library / ".nginx:latest" / current):
        assert stat.S_IMODE(os.stat(library / ".nginx:latest" / current / name).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(library).st_mode) == 0o755


def test_replace_leaves_one_set_and_no_stale_tail_or_debris(tmp_path: Path) -> None:
    write(tmp_path, ["/1", "/2", "/3"])
    write(tmp_path, ["/9"])
    assert (tmp_path / NAME).read_bytes() == b"/9\n"
    assert (tmp_path / f"{NAME}.csv").read_bytes() == b"path,size,elapsed\n/9,10,100\n"
    assert sorted(os.listdir(tmp_path / f".{NAME}"))[0] == "current"
    assert len(os.listdir(tmp_path / f".{NAME}")) == 2  # current and the one set it names


def test_keep_leaves_the_earlier_result_untouched(tmp_path: Path) -> None:
    write(tmp_path, ["/first"], "keep")
    before = os.stat(tmp_path / NAME).st_ino
    recorded = write(tmp_path, ["/second"], "keep")
    assert recorded.unwritten == "was recorded meanwhile and is kept (on_repeat = keep)"
    assert snapshot(tmp_path) == ["/first"]
    assert os.stat(tmp_path / NAME).st_ino == before


def test_a_file_added_to_a_set_gets_upstreams_kind_of_name_too(tmp_path: Path) -> None:
    with ResultSet(str(tmp_path), "", NAME) as result:
        result.commit({"list": b"/a\n", "list.ranges": b"ranges\n", "runs/1": b"/a\n"})
    assert (tmp_path / f"{NAME}.ranges").read_bytes() == b"ranges\n"
    assert not (tmp_path / f"{NAME}.csv").exists()
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == [NAME, f"{NAME}.ranges"]


def test_a_symlinked_directory_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    results = tmp_path / "results"
    results.mkdir()
    (results / "library").symlink_to(outside)
    with pytest.raises(PersistError, match="library: not a directory we can use"):
        write(results, ["/x"], directory="library")
    assert os.listdir(outside) == []


@pytest.mark.parametrize("planted", ["", ".csv", f"/../.{NAME}/current"])
def test_a_symlink_at_a_name_is_replaced_never_followed(tmp_path: Path, planted: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "r").mkdir()
    if planted.startswith("/"):  # the set's own pointer, planted beside a list
        (tmp_path / "r" / f".{NAME}").mkdir()
        (tmp_path / "r" / f".{NAME}" / "current").symlink_to(victim)
        (tmp_path / "r" / NAME).symlink_to(f".{NAME}/current/list")
        with pytest.raises(PersistError, match=r"points to .*, which is not a set"):
            write(tmp_path / "r", ["/x"])
    else:
        (tmp_path / "r" / f"{NAME}{planted}").symlink_to(victim)
        write(tmp_path / "r", ["/x"])
        assert snapshot(tmp_path / "r") == ["/x"]
    assert victim.read_text() == "keep"


def test_a_directory_at_a_name_fails_cleanly_and_changes_nothing(tmp_path: Path) -> None:
    write(tmp_path, X)
    os.unlink(tmp_path / f"{NAME}.json")
    (tmp_path / f"{NAME}.json").mkdir()
    with pytest.raises(PersistError, match=rf"{NAME}.json: Is a directory"):
        write(tmp_path, ["/x"])
    assert (tmp_path / NAME).read_text().splitlines() == X
    assert [n for n in os.listdir(tmp_path / f".{NAME}") if n.startswith("set.")] == [
        os.readlink(tmp_path / f".{NAME}" / "current")
    ]
    assert not [n for n in os.listdir(tmp_path / f".{NAME}") if n.endswith(".tmp")]


def test_an_upstream_result_is_read_as_it_is_and_adopted_by_the_first_write(tmp_path: Path) -> None:
    upstream_result(tmp_path, X)
    assert read_result(str(tmp_path / NAME), ("",)) == {"": "".join(f"{p}\n" for p in X).encode()}
    assert write(tmp_path, A, "keep").unwritten is not None  # kept: its files stay as they are
    assert stat.S_ISREG(os.lstat(tmp_path / NAME).st_mode)
    write(tmp_path, A)
    assert os.path.islink(tmp_path / NAME)
    assert snapshot(tmp_path) == A


# -- writers at the same time ----------------------------------------------------------------------------


def _paused_first_writer(tmp_path: Path, on_repeat: OnRepeat, steps: int, processes: bool) -> bool:
    """Writer A stops right after its ``steps``-th file-system step; while it is stopped, a reader looks, and writer
    B runs: to the end if A stopped before it took the result's lock, else until it waits for A. Then A goes on.
    False when A has fewer steps (it ran to the end: nothing more to check)."""
    if on_repeat != "keep":
        write(tmp_path, X, on_repeat)
    runs = {"A": A, "B": B}

    def state(*writers: str) -> list[str] | None:
        """What the result must be after these writers, in this order, wrote it."""
        if on_repeat == "merge":
            return merged(X, *(runs[w] for w in writers))
        if not writers:
            return None if on_repeat == "keep" else X
        return runs[writers[0] if on_repeat == "keep" else writers[-1]]

    paused, resume = FORK.Event(), FORK.Event()
    outcomes = FORK.Queue()
    writer_a = threading.local()

    def run(label: str) -> None:
        outcomes.put((label, write(tmp_path, runs[label], on_repeat)))

    def first_writer() -> None:
        writer_a.active = True
        if processes:
            install_steps(lambda: (paused.set(), resume.wait(30)), steps, lambda: True)
        run("A")

    undo = (
        None
        if processes
        else install_steps(lambda: (paused.set(), resume.wait(30)), steps, lambda: getattr(writer_a, "active", False))
    )
    try:
        make: Any = FORK.Process if processes else threading.Thread
        first = make(target=first_writer)
        first.start()
        until(lambda: paused.is_set() or not first.is_alive())
        if not paused.is_set():
            assert snapshot(tmp_path) == state("A")
            return False
        assert snapshot(tmp_path) in (state(), state("A"))
        second = make(target=run, args=("B",))
        second.start()
        pid = second.pid if processes else os.getpid()
        until(lambda: not second.is_alive() or waiting_for_lock(pid))
        order = ("B", "A") if not second.is_alive() else ("A", "B")
        if order[0] == "B":  # A stopped before it took the lock: B is the first writer
            assert snapshot(tmp_path) == state("B")
        else:
            assert snapshot(tmp_path) in (state(), state("A")), "B got in while A held the lock"
        resume.set()
        first.join(30)
        second.join(30)
    finally:
        resume.set()
        if undo is not None:
            undo()
    results = dict(outcomes.get(timeout=10) for _ in range(2))
    assert snapshot(tmp_path) == state(*order)
    if on_repeat == "keep":
        assert results[order[0]].unwritten is None
        assert results[order[1]].unwritten == "was recorded meanwhile and is kept (on_repeat = keep)"
    elif on_repeat == "merge":
        assert (results[order[0]].runs, results[order[1]].runs) == (2, 3)
    assert not [n for n in os.listdir(tmp_path / f".{NAME}") if n.endswith(".tmp")]
    assert len([n for n in os.listdir(tmp_path / f".{NAME}") if n.startswith("set.")]) == 1
    return True


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
@pytest.mark.parametrize("on_repeat", ["keep", "replace", "merge"])
def test_two_writers_one_paused_after_any_step_never_tear_the_set(
    tmp_path: Path, on_repeat: OnRepeat, processes: bool
) -> None:
    """Two writers of one result (threads, or processes as the daemon and profile are), the first stopped after
    each of its steps in turn: between its files, before and after it takes the lock, mid-switch."""
    steps = 1
    while _paused_first_writer(tmp_path / str(steps), on_repeat, steps, processes):
        steps += 1
    assert steps > 8  # a write is that many steps: each was a place to stop


def _at_once(tmp_path: Path, on_repeat: OnRepeat, n: int) -> list[tuple[int, Recorded]]:
    """n threads and n processes write n + n different lists of one result, released together."""
    barrier = FORK.Barrier(2 * n)
    outcomes = FORK.Queue()

    def writer(index: int) -> None:
        barrier.wait()
        outcomes.put(
            (index, write(tmp_path, [f"/w{index}/{k}" for k in range(index % 3 + 1)], on_repeat, window=2 * n))
        )

    # Processes first: forked while this process has no other thread.
    workers: list[Any] = [FORK.Process(target=writer, args=(n + i,)) for i in range(n)]
    workers += [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    return [outcomes.get(timeout=10) for _ in range(2 * n)]


def test_keep_lets_exactly_one_of_many_writers_at_once_write(tmp_path: Path) -> None:
    outcomes = _at_once(tmp_path, "keep", 8)
    (winner,) = [index for index, recorded in outcomes if recorded.unwritten is None]
    assert snapshot(tmp_path) == [f"/w{winner}/{k}" for k in range(winner % 3 + 1)]


def test_merge_takes_every_one_of_many_writers_at_once(tmp_path: Path) -> None:
    outcomes = _at_once(tmp_path, "merge", 4)
    assert sorted(recorded.runs for _, recorded in outcomes) == list(range(1, 9))
    stored = sorted(os.listdir(tmp_path / f".{NAME}" / "current" / "runs"), key=lambda n: (int(n.split(".")[0]), n))
    assert stored == [f"{n}{suffix}" for n in range(1, 9) for suffix in ("", ".csv")]
    runs = [(tmp_path / f".{NAME}" / "current" / "runs" / str(n)).read_text().splitlines() for n in range(1, 9)]
    assert sorted(runs) == sorted([f"/w{i}/{k}" for k in range(i % 3 + 1)] for i in range(8))
    assert snapshot(tmp_path) == merged(*runs)


def test_a_reader_never_finds_a_torn_set_while_writers_replace_it(tmp_path: Path) -> None:
    write(tmp_path, X)
    stop = threading.Event()

    def writer(prefix: str) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            write(tmp_path, [f"/{prefix}{i}/{k}" for k in range(i % 5 + 1)])

    writers = [threading.Thread(target=writer, args=(p,)) for p in "pq"]
    for w in writers:
        w.start()
    reads = 0
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            files = read_result(str(tmp_path / NAME))
            paths = files[""].decode().splitlines()
            assert [row.split(",")[0] for row in files[".csv"].decode().splitlines()[1:]] == paths
            assert [f["path"] for f in json.loads(files[".json"])["files"]] == paths
            reads += 1
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert reads > 100


# -- writers that die --------------------------------------------------------------------------------------


@contextlib.contextmanager
def forked(child: Callable[[], None]) -> Iterator[int]:
    """Run ``child`` in a forked process; yields its wait status once it has ended."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            child()
        finally:
            os._exit(0)
    yield os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("before", ["nothing", "a set", "upstream's files"])
@pytest.mark.parametrize("on_repeat", ["replace", "merge"])
def test_a_writer_killed_after_any_step_leaves_the_previous_set_or_its_own_whole(
    tmp_path: Path, before: str, on_repeat: OnRepeat
) -> None:
    killed = 0
    for steps in itertools.count(1):
        directory = tmp_path / str(steps)
        if before == "a set":
            write(directory, X, on_repeat)
        elif before == "upstream's files":
            upstream_result(directory, X)
        expected_before = None if before == "nothing" else X
        expected_after = A if on_repeat == "replace" or before == "nothing" else merged(X, A)

        def die() -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        def child(directory: Path = directory, steps: int = steps) -> None:
            install_steps(die, steps, lambda: True)
            write(directory, A, on_repeat)

        with forked(child) as status:
            pass
        found = snapshot(directory)
        assert found in (expected_before, expected_after), (steps, found)
        if not os.WIFSIGNALED(status):
            assert found == expected_after
            break
        killed += 1
        # What the dead writer left does not stand in the way of the next one, which clears it away.
        write(directory, B)
        assert snapshot(directory) == B
        assert len(os.listdir(directory / f".{NAME}")) == 2, os.listdir(directory / f".{NAME}")
    assert killed >= 8  # a write is that many steps: each was a place to die


def test_no_file_descriptor_is_left_open(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    upstream_result(tmp_path, X)
    write(tmp_path, A, "keep")
    write(tmp_path, A, "merge")  # adopts upstream's files first
    read_result(str(tmp_path / NAME))
    os.unlink(tmp_path / f"{NAME}.csv")
    (tmp_path / f"{NAME}.csv").mkdir()
    with pytest.raises(PersistError):
        write(tmp_path, B)
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("on_repeat", ["keep", "merge"])
def test_deleting_the_list_forgets_the_result(tmp_path: Path, on_repeat: OnRepeat) -> None:
    write(tmp_path, X, on_repeat)
    for suffix in ("", ".csv", ".json"):
        os.unlink(tmp_path / f"{NAME}{suffix}")  # rm app:1*: the set beside is left
    assert read_result(str(tmp_path / NAME)) == {}
    recorded = write(tmp_path, A, on_repeat)
    assert (recorded.unwritten, recorded.runs) == (None, 1)  # written afresh: no earlier run merged
    assert snapshot(tmp_path) == A
    assert len([n for n in os.listdir(tmp_path / f".{NAME}") if n.startswith("set.")]) == 1
