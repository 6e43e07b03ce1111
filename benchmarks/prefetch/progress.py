"""Progress on stderr: on a terminal one line rewritten in place per phase; otherwise (a log, CI) one line per
finished repetition."""

from __future__ import annotations

from typing import TextIO

from benchmarks.prefetch.report import seconds
from benchmarks.prefetch.runner import Sample
from benchmarks.progress_line import StatusLine
from nri_optimizer.results.formats import readable_size


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
            result = (
                f"pull {seconds(sample.pull_us)} s, create {seconds(sample.create_us)} s, "
                f"run {seconds(sample.run_us)} s, total {seconds(sample.total_us)} s"
            )
            if sample.bytes_fetched is not None and not sample.warm:
                result += f", fetched {readable_size(sample.bytes_fetched)} by ready"
            if sample.nydusd_bytes is not None:
                result += (
                    f" (nydusd {readable_size(sample.nydusd_bytes)}, {sample.ondemand_requests} on-demand "
                    f"requests, {sample.stalled_reads} stalled reads)"
                )
        else:
            result = f"{sample.status}: {sample.note}"
        label = f"{self.label} (warm start)" if sample.warm else self.label
        self.note(f"{self.done_count}/{self.total} {label}: {result}")
