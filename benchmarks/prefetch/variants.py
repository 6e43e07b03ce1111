"""Which variants can run here, and why the others cannot.

overlayfs is containerd's own. A nydus variant needs containerd-nydus-grpc (nydus-snapshotter) and nydusd, at the
paths the config's `nydus:` section or the flags give, else on PATH; with ``registry: local`` it also needs
nydus-image, since the local registry holds only what the harness pushed (OCI images) until the harness converts
them (``nri-optimizer convert``'s built-in converter; nydus-image from the config, else PATH, else the cache
``make nydus`` fills). A variant that cannot run is reported as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.prefetch.config import BenchConfig, Variant
from nri_optimizer.errors import OptimizerError
from nri_optimizer.nydus import tool
from testbed import nydus


@dataclass(frozen=True)
class Nydus:
    """What was found of nydus here."""

    tools: nydus.Tools
    nydus_image: Path | None
    nydus_image_problem: str | None  # why nydus-image is missing; None when found


def find(config: BenchConfig) -> Nydus:
    tools = nydus.find_tools(config.nydus.snapshotter, config.nydus.nydusd)
    try:
        return Nydus(tools, Path(tool.find("nydus-image", config.nydus.nydus_image)).absolute(), None)
    except OptimizerError as exc:  # nydus-image missing
        return Nydus(tools, None, str(exc))


def skip_reason(variant: Variant, found: Nydus, *, local: bool) -> str | None:
    """None if the variant can run here, else a line saying why not."""
    if variant.snapshotter != "nydus":
        return None
    if (missing := found.tools.missing) is not None:
        return missing
    if local and found.nydus_image_problem is not None:
        return (
            f"no nydus image to pull: registry: local gets its nydus images from nydus-image "
            f"({found.nydus_image_problem})"
        )
    return None
