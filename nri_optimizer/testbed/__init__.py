"""A real containerd for tests, demos and benchmarks: binaries from Debian, private config, OCI images.

Submodules: `debs` (fetch binaries into a cache), `images` (build OCI image tarballs), `containerd`
(run a private containerd and tear it down without leftovers).
"""


class TestbedError(RuntimeError):
    """Something the testbed needs is missing or failed; the message says what and what to do."""

    __test__ = False  # not a pytest test class, despite the name
