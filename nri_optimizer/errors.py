"""Every error nri-optimizer raises on purpose, rooted in one class.

    OptimizerError                  the CLI prints "prog: <message>" for any of these, never a traceback
    ├── ConfigError                 a setting is wrong: the message names the source, the key and the fix
    ├── ProtocolError               a peer broke a wire protocol; the connection cannot go on
    │   ├── MuxError                    nri.mux: a frame header or size
    │   └── TtrpcError                  nri.ttrpc: a ttrpc frame
    ├── RpcError                    nri.connection: a ttrpc call was answered with an error status
    ├── TraceError                  trace.client: the trace server could not be started or talked to
    ├── ResultError                 results: a list could not be written or read
    │   ├── PersistError                results.store: persist_dir is unusable, a write failed
    │   ├── MergeInputError             results.merge: an input list is unreadable or malformed
    │   └── ReferenceError              results.reference, results.key: an image reference (or a workload name)
    │                                       does not make a result name
    ├── CriError                    cri.client: the container runtime refused a request or is unreachable
    ├── RegistryError               oci.registry: a registry refused a request, or sent what we cannot use
    │   ├── RegistryUnreachable         no answer at all (connection refused, DNS, TLS, timeout)
    │   └── ListArtifactError           oci.artifacts: an artifact of our list type is not a list we can read
    ├── NydusError                  nydus: building or reading a nydus image failed
    │   ├── TarOrderError               nydus.tarorder: a layer tar cannot be reordered (not a tar, a global pax header)
    │   ├── ToolError                   nydus.tool/build/bootstrap: nydus-image is missing or failed, or printed what
    │   │                               we do not understand
    │   ├── ImageError                  nydus.image: an OCI image is not what a conversion needs
    │   └── DaemonError                 nydus.daemon: a running nydusd cannot be asked, or answered what we do not
    │                                   understand
    └── CommandError                cli: a command cannot do what it was asked (profile, convert)
        └── UsageError                  its arguments are wrong (exit status 2, as argparse)

Each layer raises its own subclass; the CLI maps them to exit statuses in one place (cli.run_command).
The test bed and the benchmarks, which are not part of the daemon, root theirs here too.
"""

from __future__ import annotations

from typing import Any


class OptimizerError(Exception):
    """The root: an error with a message meant for the user."""


class ConfigError(OptimizerError):
    """One line naming the source, the key and the fix."""


class ProtocolError(OptimizerError):
    """A peer broke a wire protocol."""


class MuxError(ProtocolError):
    """A malformed or oversized multiplexer frame."""


class TtrpcError(ProtocolError):
    """A malformed ttrpc frame."""


class RpcError(OptimizerError):
    """A ttrpc call answered with a non-OK status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class TraceError(OptimizerError):
    """The trace server could not be started, or a trace could not be set up."""


class ResultError(OptimizerError):
    """A recorded list could not be written or read."""


class PersistError(ResultError):
    """persist_dir is unusable, or a result could not be written."""


class MergeInputError(ResultError):
    """A list given to merge cannot be read."""


class ReferenceError(ResultError, ValueError):
    """An image reference does not parse, or with a workload name makes no result name; a ValueError too, as a bad
    argument is."""


class CriError(OptimizerError):
    """A CRI call failed; ``code`` is the gRPC status (a grpc.StatusCode: UNAVAILABLE when the runtime is not
    listening)."""

    def __init__(self, method: str, code: Any, message: str) -> None:
        super().__init__(f"CRI {method}: {code.name}: {message}")
        self.method = method
        self.code = code
        self.message = message


class RegistryError(OptimizerError):
    """A registry refused a request or sent what we cannot use; ``status`` is the HTTP status, if it answered."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RegistryUnreachable(RegistryError):
    """A registry did not answer at all."""


class ListArtifactError(RegistryError):
    """An artifact attached to an image as a recorded list is not one we can read (its type, subject, layers or
    lines)."""


class NydusError(OptimizerError):
    """A nydus image could not be built or read."""


class TarOrderError(NydusError):
    """A layer tar cannot be reordered."""


class ToolError(NydusError):
    """nydus-image is missing, failed, or printed what we do not understand."""


class ImageError(NydusError):
    """An OCI image is not what the conversion needs."""


class DaemonError(NydusError):
    """A running nydusd cannot be asked (its API socket), or answered what we do not understand."""


class CommandError(OptimizerError):
    """A command cannot do what it was asked."""


class UsageError(CommandError):
    """A command's arguments are wrong (exit status 2, as for bad flags)."""
