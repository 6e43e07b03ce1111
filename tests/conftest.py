"""Settings of the whole suite, before any test module is imported."""

import os

# The suite forks its own process (tests/unit/results/test_store.py's crash tests), which by then holds gRPC's
# threads (the e2e tests' CRI clients). gRPC's fork handlers would restart those threads in the child, where one
# aborting kills the child by SIGABRT (seen, in a core dump, for a fork before exec). The children use no gRPC:
# no handlers. grpc reads this when it initializes; set by the environment, it stays as given.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
