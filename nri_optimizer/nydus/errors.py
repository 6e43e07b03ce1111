"""The errors of nri_optimizer.nydus, under the project's root (nri_optimizer.errors.OptimizerError).

    NydusError              building or reading a nydus image failed; the message says why and what to do
    ├── TarOrderError           tarorder: a layer tar cannot be reordered (not a tar, a global pax header)
    ├── ToolError               tool, build, bootstrap: nydus-image is missing or failed, or printed what we do
    │                               not understand
    └── ImageError              image: an OCI image (layout, manifest, config) is not what a conversion needs
"""

from __future__ import annotations

from nri_optimizer.errors import OptimizerError


class NydusError(OptimizerError):
    """A nydus image could not be built or read; the message is meant for the user."""


class TarOrderError(NydusError):
    """A layer tar cannot be reordered."""


class ToolError(NydusError):
    """nydus-image is missing, failed, or printed what we do not understand."""


class ImageError(NydusError):
    """An OCI image is not what the conversion needs."""
