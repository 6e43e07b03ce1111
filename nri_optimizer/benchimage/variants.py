"""Which variants can run here, and why the others cannot.

overlayfs is containerd's own. A nydus variant needs nydus-snapshotter (containerd-nydus-grpc) and nydusd, which
Debian does not package for this machine's suites; and even where they are installed, the harness's private
containerd is not yet wired to them (a proxy snapshotter and a runtime handler in its config). Either way the
variant is reported as skipped, with the reason, never silently dropped.
"""

from __future__ import annotations

import shutil

from .config import Variant

NYDUS_RUNTIME = ("containerd-nydus-grpc", "nydusd")


def skip_reason(variant: Variant) -> str | None:
    """None if the variant can run here, else a line saying why not."""
    if variant.snapshotter != "nydus":
        return None
    missing = [name for name in NYDUS_RUNTIME if shutil.which(name) is None]
    if missing:
        return f"nydus not installed ({', '.join(missing)} not on PATH)"
    return ("nydus is installed, but the harness's containerd has no nydus snapshotter configured "
            "(proxy plugin + runtime handler): not measured")
