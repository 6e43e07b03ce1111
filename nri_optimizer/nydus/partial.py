"""Which listed files nydusd should prefetch whole, and which to leave to on-demand reads.

nydusd 2.2 prefetches a listed file whole, while an on-demand read fetches only the chunks (1 MiB) it touches. A
file the start reads only in part (a 36 MiB OpenBLAS of which the start touches 2 MiB) then costs the link its
unread bytes when prefetched, and costs the start a round trip per chunk when it is not. The trade, per file of
size S of which the start read R bytes (the list's resident column: its bytes in the page cache when the trace
stopped, readahead included; nri_optimizer.results.formats):

- prefetched whole, it costs ``S - R`` bytes that the start did not need, at the link's rate: ``(S - R) / rate``;
- left on demand, it costs at least ``ceil(R / CHUNK)`` round trips in the start's path (one per chunk read;
  more where the reads are scattered).

So prefetching is worth it while ``S - R <= ceil(R / CHUNK) * rate * RTT``: the unread bytes fit in a
bandwidth-delay product per chunk read. The *budget* is that product: 125 KB at 100 Mbit/s and 10 ms, 100 KB at
20 Mbit/s and 40 ms, 500 KB at 100 Mbit/s and 40 ms; the default, 256 KiB, sits among them. Files the start read
entirely, files whose residency was not measured (the plugin measures files over 128 KiB only) and lists without
a resident column are prefetched as they are: nothing says they are read in part. A file with nothing resident
(opened, never read) has no chunk to save a round trip for and is left out unless it is empty.

The files left on demand stay in the plain list (upstream's, every file) and, in the blob, come right after the
prefetched ones, in list order: only the prefetch table leaves them out. Or (``last``) they stay in the table, after
every other file: prefetched whole, but only once the files the start reads entirely are in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nri_optimizer.errors import UsageError
from nri_optimizer.results.formats import Entry

CHUNK = 1 << 20  # nydus-image's default chunk size
DEFAULT_BUDGET = 256 << 10
READ_IN_PART = ("on-demand", "last")  # what becomes of the files read in part (arrange)
_SIZE = re.compile(r"(\d+)\s*(|k|kib|m|mib)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20}


def read_in_part(entries: Sequence[Entry], budget: int | None) -> list[str]:
    """The listed paths read in part under `budget` (bytes per chunk read; None: none, every listed file is
    prefetched whole as it comes), in list order: to leave on demand or to prefetch last (arrange)."""
    if budget is None:
        return []
    left = []
    for path, size, _, resident, _ in entries:
        if resident is None or resident >= size:
            continue
        chunks_read = -(-resident // CHUNK)
        if size - resident > chunks_read * budget:
            left.append(path.decode(errors="surrogateescape"))
    return left


def arrange(paths: Sequence[str], partial: Sequence[str], how: str) -> tuple[list[str], list[str]]:
    """(the list as the converter takes it, the files to leave on demand) for files read in part `partial` (of
    `paths`, in list order): ``on-demand`` leaves them out of the prefetch table, ``last`` moves them to its end."""
    if how == "on-demand":
        return list(paths), list(partial)
    moved = set(partial)
    return [path for path in paths if path not in moved] + list(partial), []


def parse_budget(text: str) -> int | None:
    """``256KiB``, ``1M``, ``0`` (bytes), or ``all`` (None: prefetch every listed file)."""
    if text.strip().lower() == "all":
        return None
    matched = _SIZE.fullmatch(text.strip())
    if matched is None:
        raise UsageError(f"--unread-budget {text}: expected a size (e.g. 256KiB, 1MiB, 0) or 'all'")
    return int(matched.group(1)) * _UNITS[matched.group(2).lower()]
