"""``nri-optimizer import-pattern``: the list nydusd itself saw, as a list of ours.

nydusd records, when its RAFS config has ``"access_pattern": true``, which files were read and when each was first
read (``/api/v1/metrics/pattern`` on its API socket; nri_optimizer.nydus.daemon). This command turns that into a
list in the plugin's format (one path a line, in the order of first reads), which ``convert --list`` takes, so that
it can be compared with the one the plugin recorded (the seed's way of getting a list, from its ``metrics.py``).

The record has inode numbers; their paths come from the image's bootstrap (``nydus-image check``): by default the
one nydusd was started with (its ``--bootstrap``), else ``--bootstrap``. What nydusd cannot see is not in the list:
files opened but never read, and reads served by the kernel's page cache after the first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from nri_optimizer.errors import CommandError
from nri_optimizer.nydus import bootstrap, daemon, tool

PROG = "nri-optimizer import-pattern"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write the files a running nydusd saw read, in the order it first saw each, as a list "
        "(one path a line) that convert --list takes.",
    )
    parser.add_argument(
        "--api-sock",
        required=True,
        type=Path,
        metavar="SOCKET",
        help="nydusd's API socket (its --apisock; nydus-snapshotter: <root>/socket/<id>/api.sock)",
    )
    parser.add_argument(
        "--bootstrap",
        type=Path,
        help="the image's bootstrap, for the inodes' paths (default: the one nydusd serves, from its command line)",
    )
    parser.add_argument(
        "--nydus-image", help=f"nydus-image to read the bootstrap with (default: from PATH, else {tool.tools_bin()})"
    )
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the list here (default: stdout)")
    args = parser.parse_args(argv)
    listed, unknown = import_pattern(args.api_sock, bootstrap_path=args.bootstrap, nydus_image=args.nydus_image)
    text = "".join(f"{path}\n" for path in listed)
    if args.output is None:
        sys.stdout.write(text)
    else:
        _write_atomically(args.output, text)
    note = f"{len(listed)} files in the order nydusd first saw them read"
    if unknown:
        note += f"; {len(unknown)} inodes not in the bootstrap left out (first: {unknown[0]})"
    print(f"{PROG}: {note}", file=sys.stderr)
    return 0


def import_pattern(
    api_socket: Path, *, bootstrap_path: Path | None = None, nydus_image: str | None = None
) -> tuple[list[str], list[int]]:
    """(the list, inode numbers the bootstrap has no path for) of the nydusd on `api_socket`."""
    pattern = daemon.access_pattern(api_socket)
    boot = bootstrap_path or daemon.serving_bootstrap(api_socket)
    if not boot.is_file():
        raise CommandError(f"the bootstrap {boot} is not a file")
    inodes = bootstrap.inodes(boot, nydus_image=tool.find("nydus-image", nydus_image))
    return daemon.pattern_list(pattern, daemon.paths_by_inode((path, node.ino) for path, node in inodes.items()))


def _write_atomically(path: Path, text: str) -> None:
    """A reader of `path` sees the old list or the new one, never a part."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        os.unlink(temporary)
        raise CommandError(f"cannot write {path}: {exc.strerror}") from None
