"""The nydus-snapshotter a nydus variant runs on, as the benchmark uses it: the private one of the test bed
(testbed.nydus.NydusSnapshotter, one per prefetch mode) or a node's own (`ExistingSnapshotter`, with
``bench-image run --runtime-endpoint ... --snapshotter NAME``).

What the benchmark asks of it (`Handler`): its runtime handler's name, what the nydusd serving an image answers on
its API (metrics), the runtime list handed over before the container is created, and its blob cache emptied between
repetitions.

- **Runtime list**: ``PUT /api/v1/prefetch`` on the snapshotter's system socket with ``[{"image": REF, "prefetch":
  FILE}]``; the next nydusd it starts for exactly REF (the reference as CRI pulled it) gets ``--prefetch-files FILE``
  and the entry is consumed (nydus-snapshotter 0.13.4, dedicated mode; NYDUS.md). It must arrive before
  CreateContainer, which is when the snapshotter starts nydusd.
- **nydusd's counters** once the workload is ready (`Counters`): bytes and requests from the registry
  (``/api/v1/metrics/backend``), what prefetch asked for (``/api/v1/metrics/blobcache``), and the FUSE reads that
  waited on something (``/api/v1/metrics``' ``read_latency_dist`` beyond 1 ms: a chunk fetched on demand, or one still
  in flight in a prefetch). On-demand requests are the registry requests prefetch did not make: ``read_count -
  prefetch_requests_count`` (the blob's chunk table, read once at mount, counts as one).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nri_optimizer.errors import DaemonError, OptimizerError
from nri_optimizer.nydus import daemon

# read_latency_dist's buckets (nydus-utils 0.4.1 metrics.rs): <=200 us, <=1 ms, <=20 ms, ...: reads past the
# second waited on more than the blob cache (a fetch from the registry takes a round trip at least).
FAST_READ_BUCKETS = 2


class SnapshotterError(OptimizerError):
    """nydus-snapshotter refused a request or cannot be reached."""


class Handler(Protocol):
    """A nydus-snapshotter as the runner uses it."""

    @property
    def name(self) -> str:
        """Its runtime handler (and snapshotter) in containerd."""
        ...

    @property
    def system_address(self) -> Path: ...

    def nydusd_api(self, reference: str, path: str) -> list[Any]: ...

    def api_sockets(self, reference: str) -> list[Path]: ...

    def clear_cache(self) -> None: ...


@dataclass(frozen=True)
class Counters:
    """What the nydusd daemons serving an image report, summed."""

    backend_bytes: int  # read from the registry
    backend_requests: int
    prefetch_bytes: int  # what prefetch asked the registry for
    prefetch_requests: int
    stalled_reads: int  # FUSE reads that took more than 1 ms

    @property
    def ondemand_requests(self) -> int:
        return max(0, self.backend_requests - self.prefetch_requests)


def counters(handler: Handler, reference: str) -> Counters | None:
    """nydusd's counters for `reference`; None when no nydusd serves it (not a nydus image, or nydusd is gone)."""
    backends = handler.nydusd_api(reference, "/api/v1/metrics/backend")
    if not backends:
        return None
    caches = handler.nydusd_api(reference, "/api/v1/metrics/blobcache")
    filesystems = handler.nydusd_api(reference, "/api/v1/metrics")
    try:
        return Counters(
            sum(int(b["read_amount_total"]) for b in backends),
            sum(int(b["read_count"]) for b in backends),
            sum(int(c["prefetch_data_amount"]) for c in caches),
            sum(int(c["prefetch_requests_count"]) for c in caches),
            sum(sum(int(n) for n in f["read_latency_dist"][FAST_READ_BUCKETS:]) for f in filesystems),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotterError(f"nydusd's metrics for {reference} are not what 2.2.0 answers ({exc!r})") from None


def hand_over_list(handler: Handler, reference: str, list_file: Path) -> None:
    """The runtime list: the next nydusd started for `reference` prefetches the files of `list_file`."""
    body = json.dumps([{"image": reference, "prefetch": str(list_file)}]).encode()
    connection = daemon.UnixHTTPConnection(handler.system_address, daemon.API_TIMEOUT)
    try:
        connection.request("PUT", "/api/v1/prefetch", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read(4096)
    except OSError as exc:
        raise SnapshotterError(f"{handler.name}: PUT /api/v1/prefetch on {handler.system_address}: {exc}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise SnapshotterError(
            f"{handler.name}: PUT /api/v1/prefetch answered HTTP {response.status} "
            f"{answer.decode(errors='replace')[:200]} (nydus-snapshotter 0.13.4 or newer has it)"
        )


class ExistingSnapshotter:
    """A node's own nydus-snapshotter: runtime handler `name`, its system socket, the root under which nydusd's API
    sockets are (``<root>/socket/<daemon id>/api.sock``) and its blob cache (``cache_manager.cache_dir``). Its
    blob cache is shared with the node's workloads: only the blobs of the benchmark's images (`blobs`, their
    sha256 hex digests) are removed from it."""

    def __init__(self, name: str, *, root: Path, system_address: Path, cache_dir: Path | None = None) -> None:
        self._name = name
        self.root = root
        self._system_address = system_address
        self.cache_dir = cache_dir or root / "cache"
        self.blobs: set[str] = set()

    @property
    def name(self) -> str:
        return self._name

    @property
    def system_address(self) -> Path:
        return self._system_address

    def daemons(self) -> list[dict[str, Any]]:
        try:
            found = daemon.get(self.system_address, "/api/v1/daemons")
        except DaemonError as exc:
            raise SnapshotterError(f"{self.name}: its system socket: {exc} (give --nydus-system-socket)") from None
        if not isinstance(found, list):
            raise SnapshotterError(f"{self.name}: /api/v1/daemons answered {found!r}, not a list")
        return found

    def nydusd_api(self, reference: str, path: str) -> list[Any]:
        return [daemon.get(socket, path) for socket in self.api_sockets(reference)]

    def api_sockets(self, reference: str) -> list[Path]:
        sockets = []
        for entry in self.daemons():
            images = {str(i.get("image_id", "")) for i in (entry.get("instances") or {}).values()}
            if reference in images or any(image.endswith("/" + reference) for image in images):
                sockets.append(self.root / "socket" / str(entry["id"]) / "api.sock")
        return sockets

    def clear_cache(self) -> None:
        """Remove the benchmark's blobs from the cache (a blob's files all start with its digest)."""
        for entry in _ours(self.cache_dir, self.blobs):  # (the snapshotter may be removing them too)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _ours(cache_dir: Path, blobs: Iterable[str]) -> list[Path]:
    digests = tuple(blobs)
    if not digests or not cache_dir.is_dir():
        return []
    return [entry for entry in cache_dir.iterdir() if entry.name.startswith(digests)]
