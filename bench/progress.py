"""Progress on the terminal (stderr): one rewritten line on a tty, one line per step otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total_scenarios: int, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self.total = total_scenarios
        self.index = 0
        self.name = ""
        self.t0 = time.monotonic()

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self.t0)
        return f"{seconds // 60:2d}:{seconds % 60:02d}"

    def note(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(f"[{self._elapsed()}] {text}\n")
        self.stream.flush()

    def scenario(self, name: str) -> None:
        self.index += 1
        self.name = name
        self.note(f"scenario {self.index}/{self.total}: {name}")

    def step(self, text: str) -> None:
        if self.quiet:
            return
        line = f"[{self._elapsed()}] {self.name}: {text}"
        if self.tty:
            self.stream.write("\r\033[K" + line[: 160])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self, name: str, seconds: float) -> None:
        self.note(f"scenario {name} done in {seconds:.0f} s")
