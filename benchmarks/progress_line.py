"""A status line on stderr: on a terminal one line rewritten in place, and lines that stay; elapsed time first."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class StatusLine:
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self._t0 = time.monotonic()

    def clock(self) -> str:
        elapsed = int(time.monotonic() - self._t0)
        return f"[{elapsed // 60:02d}:{elapsed % 60:02d}]"

    def note(self, text: str) -> None:
        """A line that stays (always shown, even when quiet)."""
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(f"{self.clock()} {text}\n")
        self.stream.flush()

    def rewrite(self, text: str, width: int = 150) -> None:
        """The transient line on a terminal (nothing elsewhere, nothing when quiet)."""
        if self.tty and not self.quiet:
            self.stream.write("\r\033[K" + f"{self.clock()} {text}"[:width])
            self.stream.flush()
