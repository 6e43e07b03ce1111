"""Progress on stderr: on a terminal one line rewritten in place per phase; otherwise (a log, CI) one line per
finished repetition."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .report import seconds
from .runner import Sample


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self.total = total  # repetitions to run
        self.done_count = 0
        self.label = ""
        self._t0 = time.monotonic()

    def _clock(self) -> str:
        elapsed = int(time.monotonic() - self._t0)
        return f"[{elapsed // 60:02d}:{elapsed % 60:02d}]"

    def note(self, text: str) -> None:
        """A line that stays (always shown, even when quiet)."""
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(f"{self._clock()} {text}\n")
        self.stream.flush()

    def start(self, label: str) -> None:
        self.label = label
        self.phase("starting")

    def phase(self, name: str) -> None:
        if self.tty and not self.quiet:
            line = f"{self._clock()} {self.done_count + 1}/{self.total} {self.label}: {name}"
            self.stream.write("\r\033[K" + line[:150])
            self.stream.flush()

    def finished(self, sample: Sample) -> None:
        self.done_count += 1
        if self.quiet:
            return
        if sample.status == "ok":
            result = (f"pull {seconds(sample.pull_us)} s, create {seconds(sample.create_us)} s, "
                      f"run {seconds(sample.run_us)} s, total {seconds(sample.total_us)} s")
        else:
            result = f"{sample.status}: {sample.note}"
        self.note(f"{self.done_count}/{self.total} {self.label}: {result}")
