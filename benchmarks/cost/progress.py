"""Progress on the terminal (stderr): one rewritten line on a tty, one line per step otherwise."""

from __future__ import annotations

from typing import TextIO

from benchmarks.progress_line import StatusLine


class Progress(StatusLine):
    def __init__(self, total_scenarios: int, stream: TextIO | None = None, quiet: bool = False) -> None:
        super().__init__(stream, quiet=quiet)
        self.total = total_scenarios
        self.index = 0
        self.name = ""

    def scenario(self, name: str) -> None:
        self.index += 1
        self.name = name
        self.note(f"scenario {self.index}/{self.total}: {name}")

    def step(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            self.rewrite(f"{self.name}: {text}", width=160)
        else:
            self.stream.write(f"{self.clock()} {self.name}: {text}\n")
            self.stream.flush()

    def done(self, name: str, seconds: float) -> None:
        self.note(f"scenario {name} done in {seconds:.0f} s")
