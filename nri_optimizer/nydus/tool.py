"""Finding and running nydus-image (nydus-rs 2.2.0).

`make nydus` builds nydus-rs into the project's cache (``cargo install --locked nydus-rs --version 2.2.0``); a
nydus-image on PATH is taken first. The cache's location follows the test bed's rule (testbed.debs.cache_dir),
restated here because the daemon's package ships without the test bed.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from nri_optimizer.cache import cache_dir
from nri_optimizer.errors import ToolError

NYDUS_RS_VERSION = "2.2.0"  # the release every fact in this package was checked against
# The message is "install nydus-rs 2.2.0 with `HINT`": a user of the installed package has no Makefile.
INSTALL_HINT = "make nydus` (in a source checkout) or `cargo install --locked nydus-rs --version 2.2.0"
_STDERR_TAIL = 2000  # characters of a failed command's stderr kept in the error


def tools_bin() -> Path:
    """Where `make nydus` puts nydus-image, nydusd and nydusctl."""
    return cache_dir() / "tools" / f"nydus-rs-{NYDUS_RS_VERSION}" / "bin"


def find(name: str = "nydus-image", explicit: str | None = None) -> str:
    """The executable `explicit` (a path or a name on PATH), else `name` on PATH, else in tools_bin()."""
    if explicit:
        if found := shutil.which(explicit):
            return found
        raise ToolError(
            f"{explicit} is not an executable; install nydus-rs {NYDUS_RS_VERSION} with "
            f"`{INSTALL_HINT}` or name another"
        )
    if found := shutil.which(name) or shutil.which(name, path=str(tools_bin())):
        return found
    raise ToolError(
        f"{name} is not installed (not on PATH, not in {tools_bin()}); install nydus-rs "
        f"{NYDUS_RS_VERSION} with `{INSTALL_HINT}`"
    )


def run(argv: Sequence[str], *, stdin: bytes | None = None) -> str:
    """Run a nydus tool and return its stdout; a failure is a ToolError with the command and its stderr's tail.

    nydus-image logs to stderr (its own lines, colour codes and all) and prints results to stdout.
    """
    try:
        done = subprocess.run(list(argv), input=stdin if stdin is not None else b"", capture_output=True, check=False)
    except OSError as exc:
        raise ToolError(f"{shlex.join(argv)}: {exc}") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-_STDERR_TAIL:].strip()
        raise ToolError(f"{shlex.join(argv)} failed (exit status {done.returncode}):\n{tail}")
    return done.stdout.decode(errors="surrogateescape")
