"""The three result formats, from one list of entries: the plain list (one path a line, upstream's and
nydus-image's ``--prefetch-patterns`` input), the CSV (path, size, elapsed) and the nydus JSON prefetch file.

The CSV has a fourth column, resident, when the trace measured any file's bytes in the page cache when it
stopped (files larger than 128 KiB; the cell is empty for the others): after upstream's three, so that a
reader of those is unaffected. For a file of which only part was in the page cache, the nydus JSON says which
part: ``"ranges": [[offset, size], ...]`` (newer nydus prefetches only those; without ranges, the whole file).

The odd-name rule: the plain list is one path per line and nydus-image trims each line, so a path that
contains a line break (``\\n``, ``\\r``), begins or ends with white space, or is not valid UTF-8 cannot be
carried. Such a path is left out of all three files, and the number left out is logged.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii as encode_json_string
from typing import NamedTuple

INCOMPLETE_MARK = "# incomplete: "  # the first line of a list the kernel lost events of (see render)


class Entry(NamedTuple):  # a tuple: one is made per file, and a frozen dataclass costs three times as much
    path: bytes  # as the kernel gave it: container-absolute, not necessarily UTF-8
    size: int  # bytes
    elapsed_us: int  # from StartContainer to the first access
    resident: int | None = None  # bytes in the page cache when the trace stopped; None: not measured
    # Where those bytes lie, (offset, length) ascending, for a file cached in part; None: the whole file, as far
    # as anyone knows (nydus's prefetch file without ranges).
    ranges: tuple[tuple[int, int], ...] | None = None


def listable(path: bytes) -> str | None:
    """The path as list text, or None if the list format cannot carry it (the module's odd-name rule)."""
    if not path.startswith(b"/") or b"\n" in path or b"\r" in path:  # begins with "/": no leading white space
        return None
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if text[-1].isspace() else text


def readable_size(size: int) -> str:
    """Upstream's ByteToReadableIEC: "999 B", "1.2 KiB", "3.0 GiB"."""
    if size < 1024:
        return f"{size} B"
    div, exp = 1024, 0
    n = size // 1024
    while n >= 1024:
        div *= 1024
        exp += 1
        n //= 1024
    return f"{size / div:.1f} {'KMGTPE'[exp]}iB"


def readable_elapsed(us: int) -> str:
    """Upstream's MicroSecondToReadable: "850 us", "1.500 ms", "2.000 s"."""
    if us < 1000:
        return f"{us} us"
    if us < 1000_000:
        return f"{us / 1000:.3f} ms"
    return f"{us / 1000_000:.3f} s"


def render(
    entries: Sequence[Entry], *, readable: bool, incomplete: str | None = None
) -> tuple[bytes, bytes, bytes, int]:
    """(plain list, CSV, nydus JSON, number of paths left out by the odd-name rule).

    An ``incomplete`` list (the kernel lost events) says so in its first line, ``# incomplete: <why>``:
    not a path, so nydus-image skips it (it takes absolute paths only), and every path line starts with "/".
    """
    lines: list[str] = [f"{INCOMPLETE_MARK}{incomplete}"] if incomplete else []
    first = len(lines)  # the first path line
    ranged: dict[int, tuple[tuple[int, int], ...]] = {}  # path number -> its ranges, for the few that have any
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    with_resident = any(entry.resident is not None for entry in entries)
    writer.writerow(["path", "size", "elapsed", "resident"] if with_resident else ["path", "size", "elapsed"])
    left_out = 0
    for path, size, elapsed, resident, ranges in entries:  # unpacked: an attribute of a NamedTuple costs a call
        text = listable(path)
        if text is None:
            left_out += 1
            continue
        if ranges:
            ranged[len(lines) - first] = ranges
        lines.append(text)
        if readable:
            row = [text, readable_size(size), readable_elapsed(elapsed)]
            if with_resident:
                row.append("" if resident is None else readable_size(resident))
            writer.writerow(row)
        elif not _CSV_PLAIN(text):
            writer.writerow([text, size, elapsed, "" if resident is None else resident][: 4 if with_resident else 3])
        # What the writer would write, at a third the cost.
        elif not with_resident:
            table.write(f"{text},{size},{elapsed}\n")
        elif resident is None:
            table.write(f"{text},{size},{elapsed},\n")
        else:
            table.write(f"{text},{size},{elapsed},{resident}\n")
    plain = "".join(f"{line}\n" for line in lines)
    paths = lines[first:]
    # What json.dumps({"version": "v1", "files": [{"path": path}, ...]}) writes, at a fifth of the cost: one
    # dict per file is most of the work of persisting a long list.
    if ranged:  # the few files cached in part say which part; the rest as below
        files = ", ".join(
            [
                '{"path": ' + encode_json_string(path) + (_json_ranges(ranged[at]) if at in ranged else "") + "}"
                for at, path in enumerate(paths)
            ]
        )
    else:
        files = ", ".join(['{"path": ' + encode_json_string(path) + "}" for path in paths])
    prefetch = f'{{"version": "v1", "files": [{files}]}}\n'
    return plain.encode(), table.getvalue().encode(), prefetch.encode(), left_out


def _json_ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    """What json.dumps writes for a file's "ranges" key, after its "path"."""
    return ', "ranges": [' + ", ".join([f"[{offset}, {length}]" for offset, length in ranges]) + "]"


def incompleteness(plain: bytes) -> str | None:
    """Why a plain list is incomplete, from its first line; None for a complete list."""
    first = plain.partition(b"\n")[0]
    if not first.startswith(INCOMPLETE_MARK.encode()):
        return None
    return first[len(INCOMPLETE_MARK) :].decode("utf-8", "replace")


# A field the csv module writes as it is (QUOTE_MINIMAL quotes one holding the delimiter, the quote character
# or a line break; listable paths hold no line break).
_CSV_PLAIN = re.compile(r'[^,"]*\Z').match
