"""Logging for a daemon whose stdout and stderr may be /dev/null (a pre-launched plugin's are).

One line per event, greppable: ``<time> <level> <message>``; messages about a container start with its id.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%S"

# Where a pre-launched plugin logs when its config names no log_file: containerd gives it no stderr.
PRELAUNCHED_LOG_FILE = "/var/log/nri-optimizer.log"

_HELD_CAPACITY = 10_000


def hold() -> None:
    """Keep records in memory until ``setup`` says where they go (a pre-launched plugin learns that from
    Configure, after it has started logging)."""
    root = logging.getLogger()
    root.addHandler(logging.handlers.MemoryHandler(_HELD_CAPACITY, flushLevel=logging.CRITICAL + 1))
    root.setLevel(logging.DEBUG)


def setup(level: int, log_file: str = "", *, stderr: bool = True) -> None:
    """(Re)configure the root logger: stderr and/or a file that logrotate may move (WatchedFileHandler).
    Records held by ``hold`` are written to the new handlers, if at or above ``level``."""
    handlers: list[logging.Handler] = []
    if stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_file:
        handlers.append(logging.handlers.WatchedFileHandler(log_file, encoding="utf-8"))
    formatter = logging.Formatter(FORMAT, DATEFMT)
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    held: list[logging.LogRecord] = []
    for old in list(root.handlers):
        if isinstance(old, logging.handlers.MemoryHandler):
            held.extend(old.buffer)
            old.buffer.clear()
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for record in held:
        if record.levelno >= level:
            for handler in handlers:
                handler.handle(record)
