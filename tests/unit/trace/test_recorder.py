"""The recorder: the server's file records into list entries, exec'd processes and deleted files left out."""

from __future__ import annotations

from nri_optimizer.results.formats import Entry
from nri_optimizer.trace.recorder import Recorder
from optimizer_server.fanotify import FAN_OPEN
from optimizer_server.protocol import DELETED, FOREIGN, UNKNOWN_RESIDENT, FileRecord

START = 1_000_000_000


def record(path: str, ino: int, *, at_us: int, flags: int = 0, size: int = 10) -> FileRecord:
    return FileRecord(FAN_OPEN | flags, 42, START + at_us * 1000, 2049, ino, size, path.encode())


BATCH = [
    record("/bin/sh", 1, at_us=5),
    record("/probe", 2, at_us=6, flags=FOREIGN),
    record("/tmp/made-and-removed", 3, at_us=7, flags=DELETED),
    record("/etc/passwd", 4, at_us=8, size=1234),
    record("/etc/passwd", 4, at_us=9, flags=FOREIGN),
]


def test_entries_keep_the_order_size_and_time_since_start_of_the_workloads_files() -> None:
    recorder = Recorder("c1", START)
    recorder(BATCH[:3])
    recorder(BATCH[3:])
    assert recorder.entries == [Entry(b"/bin/sh", 10, 5), Entry(b"/etc/passwd", 1234, 8)]
    assert (recorder.foreign, recorder.deleted) == (2, 1)


def test_with_include_exec_a_file_seen_by_both_is_listed_once_at_its_first_access() -> None:
    recorder = Recorder("c1", START, include_exec=True)
    recorder(BATCH)
    assert recorder.entries == [Entry(b"/bin/sh", 10, 5), Entry(b"/probe", 10, 6), Entry(b"/etc/passwd", 1234, 8)]
    assert (recorder.foreign, recorder.deleted) == (0, 1)


def test_an_event_read_before_the_start_counts_as_zero_elapsed() -> None:
    recorder = Recorder("c1", START + 5000)
    recorder([record("/bin/sh", 1, at_us=2)])
    assert recorder.entries == [Entry(b"/bin/sh", 10, 0)]


def test_residency_goes_to_the_entry_of_the_record_it_is_for() -> None:
    # One value per record the server sent (the foreign and deleted ones included), across batches.
    recorder = Recorder("c1", START)
    recorder(BATCH[:3])
    recorder(BATCH[3:])
    recorder.take_residency([UNKNOWN_RESIDENT, 7, 8, 1 << 20, 9])
    assert recorder.entries == [Entry(b"/bin/sh", 10, 5, None), Entry(b"/etc/passwd", 1234, 8, 1 << 20)]


def test_a_residency_report_cut_short_leaves_the_rest_unknown_and_none_leaves_all() -> None:
    recorder = Recorder("c1", START)
    recorder(BATCH)
    recorder.take_residency([4096])
    assert [entry.resident for entry in recorder.entries] == [4096, None]
    untouched = Recorder("c2", START)
    untouched(BATCH)
    untouched.take_residency([])
    assert [entry.resident for entry in untouched.entries] == [None, None]


def test_ranges_go_to_the_entry_of_the_record_they_are_for() -> None:
    # By record number, as the server counts them: those of a record left out (here the foreign /probe) go with it.
    recorder = Recorder("c1", START)
    recorder(BATCH[:3])
    recorder(BATCH[3:])
    recorder.take_residency([UNKNOWN_RESIDENT, 4096, 8, 8192, 9], {1: ((0, 4096),), 3: ((0, 4096), (8192, 4096))})
    assert recorder.entries == [
        Entry(b"/bin/sh", 10, 5, None, None),
        Entry(b"/etc/passwd", 1234, 8, 8192, ((0, 4096), (8192, 4096))),
    ]
