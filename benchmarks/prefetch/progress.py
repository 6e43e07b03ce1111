"""Progress on stderr: on a terminal one line rewritten in place per phase; otherwise (a log, CI) one line per
finished repetition."""

from __future__ import annotations

from typing import TextIO

from benchmarks.prefetch.report import seconds
from benchmarks.prefetch.runner import Sample
from benchmarks.progress_line import StatusLine


class Progress(StatusLine):
    def __init__(self, total: int, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        super().__init__(stream, quiet=quiet)
        self.total = total  # repetitions to run
        self.done_count = 0
        self.label = ""

    def start(self, label: str) -> None:
        self.label = label
        self.phase("starting")

    def phase(self, name: str) -> None:
        self.rewrite(f"{self.done_count + 1}/{self.total} {self.label}: {name}")

    def finished(self, sample: Sample) -> None:
        self.done_count += 1
        if self.quiet:
            return
        if sample.status == "ok":
            result = (f"pull {seconds(sample.pull_us)} s, create {seconds(sample.create_us)} s, "
                      f"run {seconds(sample.run_us)} s, total {seconds(sample.total_us)} s")
            if sample.nydusd_bytes is not None:
                result += f", nydusd read {sample.nydusd_bytes} B"
        else:
            result = f"{sample.status}: {sample.note}"
        self.note(f"{self.done_count}/{self.total} {self.label}: {result}")
