"""A real containerd for tests, demos and benchmarks: binaries from Debian, private config, OCI images.

Submodules: `debs` (fetch binaries into a cache), `images` (build OCI image tarballs), `containerd`
(run a private containerd and tear it down without leftovers), `bed` (a containerd with pods through CRI),
`plugin` (our plugin installed pre-launched or run external), `tracing` (workloads whose reads are known),
`nydus` (private nydus-snapshotters), `host` (mounts, cgroups, processes), `demo` (make demo).
Not part of the daemon's wheel: tests and benchmarks import it from a source checkout.
"""

from nri_optimizer.errors import OptimizerError


class TestbedError(OptimizerError):
    """Something the testbed needs is missing or failed; the message says what and what to do."""

    __test__ = False  # not a pytest test class, despite the name
