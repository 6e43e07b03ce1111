"""Which variants can run here, and why the others cannot.

overlayfs is containerd's own. A nydus variant needs containerd-nydus-grpc (nydus-snapshotter) and nydusd, at the
paths the config's `nydus:` section or the flags give, else on PATH; with ``registry: local`` it also needs
nydusify, since the local registry holds only what the harness pushed (OCI images) until nydusify converts them.
A variant that cannot run is reported as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks.prefetch.config import BenchConfig, Variant
from testbed import nydus


@dataclass(frozen=True)
class Nydus:
    """What was found of nydus here."""

    tools: nydus.Tools
    nydusify: Path | None
    nydusify_problem: str | None  # why nydusify is missing; None when found


def find(config: BenchConfig) -> Nydus:
    tools = nydus.find_tools(config.nydus.snapshotter, config.nydus.nydusd)
    given = config.nydus.nydusify
    if given is not None:
        path = Path(given)
        if path.is_file() and os.access(path, os.X_OK):
            return Nydus(tools, path.absolute(), None)
        return Nydus(tools, None, f"nydusify: {given} is not an executable file")
    which = shutil.which("nydusify")
    return Nydus(tools, Path(which).absolute() if which else None, None if which else "nydusify not on PATH")


def skip_reason(variant: Variant, found: Nydus, *, local: bool) -> str | None:
    """None if the variant can run here, else a line saying why not."""
    if variant.snapshotter != "nydus":
        return None
    if (missing := found.tools.missing) is not None:
        return missing
    if local and found.nydusify_problem is not None:
        return (f"no nydus image to pull: registry: local gets its nydus images from nydusify "
                f"({found.nydusify_problem})")
    return None
