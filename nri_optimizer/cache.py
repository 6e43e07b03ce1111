"""Where nri-optimizer keeps what it downloads and builds (the nydus tool chain, the test bed's binaries)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$NRI_OPTIMIZER_CACHE, else $XDG_CACHE_HOME/nri-optimizer, else ~/.cache/nri-optimizer."""
    if explicit := os.environ.get("NRI_OPTIMIZER_CACHE"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nri-optimizer"
