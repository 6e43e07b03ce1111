"""nydus-snapshotter (containerd-nydus-grpc) run privately beside the testbed's containerd, one per prefetch mode.

Each instance lives under its own directory (root, gRPC socket, system-controller socket, logs, blob cache) and
gets two generated files: its TOML config and the nydusd config template it hands every nydusd it starts. The
template is where prefetch is set (``fs_prefetch``): ``off`` (disabled), ``all`` (``prefetch_all``: the whole
image in the background) or ``list`` (only the image's own prefetch table, which ``nydusify convert
--prefetch-patterns`` builds from our recorded list). As the template is per snapshotter, each mode is its own
snapshotter, registered in containerd as proxy plugin and runtime handler ``nydus-<mode>``.

Only the snapshotter's fields that nydus-snapshotter 0.13 reads are written (its ``config/config.go`` and
``config/daemonconfig/fuse.go``); everything that would default to a system path (``/var/lib/containerd-nydus``,
``/run/containerd-nydus``, ``/etc/nydus/certs.d``) or open a TCP port (metrics) is pointed into our dir or off.

Bytes fetched: nydusd serves an HTTP API on ``<root>/socket/<daemon id>/api.sock``; ``GET /api/v1/metrics/backend``
gives ``read_amount_total``, the bytes it read from the registry (on demand and by prefetch). The daemon serving an
image is found through the snapshotter's system controller (``GET /api/v1/daemons``: ids and their instances' image
references).

``debian_snapshotter()`` fetches containerd-nydus-grpc from Debian (sid's nydus-snapshotter package) into the
testbed cache; Debian does not package nydusd.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from nri_optimizer.nydus import tool
from testbed import TestbedError, debs, host

PrefetchMode = Literal["off", "all", "list"]
PREFETCH_MODES: tuple[PrefetchMode, ...] = ("off", "all", "list")
SNAPSHOTTER_BINARY = "containerd-nydus-grpc"
NYDUSD_BINARY = "nydusd"
SNAPSHOTTER_SUITE = "sid"  # nydus-snapshotter 0.13.4 is packaged there only


def snapshotter_name(mode: PrefetchMode, *, access_pattern: bool = False, settings: str = "") -> str:
    """The proxy plugin's (and runtime handler's) name in containerd; `settings` tells apart snapshotters of one
    mode whose nydusd prefetches differently (FsPrefetch.label)."""
    return f"nydus-{mode}" + (f"-{settings}" if settings else "") + ("-pattern" if access_pattern else "")


@dataclass(frozen=True)
class Backend:
    """How nydusd reaches the registry: `scheme` http for a plain-HTTP registry, https (certificate not verified
    with `skip_verify`) otherwise. Host and repository are filled in by the snapshotter per image."""

    scheme: Literal["http", "https"]
    skip_verify: bool = False


@dataclass(frozen=True)
class FsPrefetch:
    """nydusd's ``fs_prefetch`` settings besides what to prefetch (nydus-api 0.2.2's FsPrefetchControl): worker
    threads, the largest merged request (below 128 KiB nydusd 2.2 takes 128 KiB), and the prefetch's rate limit
    (bytes/s; 0: none), which leaves the rest of the link to on-demand reads."""

    threads_count: int = 4
    merging_size: int = 0
    bandwidth_rate: int = 0

    def label(self) -> str:
        """For a name: empty for nydusd's settings as the testbed has them by default."""
        if self == FsPrefetch():
            return ""
        return f"t{self.threads_count}-m{self.merging_size >> 10}k-b{self.bandwidth_rate >> 10}k"


def nydusd_config(
    mode: PrefetchMode, backend: Backend, cache_dir: Path, *, prefetch: FsPrefetch = FsPrefetch()
) -> dict[str, Any]:
    """The nydusd (FUSE) config template for one prefetch mode."""
    registry: dict[str, Any] = {"scheme": backend.scheme, "timeout": 30, "connect_timeout": 10, "retry_limit": 2}
    if backend.skip_verify:
        registry["skip_verify"] = True
    return {
        "device": {
            "backend": {"type": "registry", "config": registry},
            "cache": {"type": "blobcache", "config": {"work_dir": str(cache_dir)}},
        },
        "mode": "direct",
        "digest_validate": False,
        "iostats_files": False,
        "enable_xattr": True,
        "fs_prefetch": {
            "enable": mode != "off",
            "prefetch_all": mode == "all",
            "threads_count": prefetch.threads_count,
            "merging_size": prefetch.merging_size,
            "bandwidth_rate": prefetch.bandwidth_rate,
        },
    }


@dataclass(frozen=True)
class Layout:
    """Where one snapshotter instance keeps its files."""

    base: Path

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def address(self) -> Path:
        return self.base / "grpc.sock"

    @property
    def system_address(self) -> Path:
        return self.base / "system.sock"

    @property
    def config(self) -> Path:
        return self.base / "config.toml"

    @property
    def nydusd_config(self) -> Path:
        return self.base / "nydusd-config.json"

    @property
    def cache(self) -> Path:
        return self.base / "cache"

    @property
    def log(self) -> Path:
        return self.base / "snapshotter.log"

    @property
    def nydusd_wrapper(self) -> Path:
        return self.base / "nydusd"


def nydusd_wrapper(nydusd: Path, *, access_pattern: bool = False) -> str:
    """The nydusd the snapshotter runs: the real one with ``--rlimit-nofile 0`` after the subcommand (``fuse``,
    ``singleton``). nydusd raises RLIMIT_NOFILE to 1,000,000 at start unless told not to, and exits with
    PermissionDenied where root lacks CAP_SYS_RESOURCE (some VMs); the snapshotter has no setting for it.

    With `access_pattern`, ``"access_pattern": true`` goes into the config nydusd is given (``--config``; the
    snapshotter writes it as one line of JSON): nydusd then records which files are read, and when first
    (``/api/v1/metrics/pattern``). The snapshotter re-serialises its template through a struct that has no such
    field, so the template cannot carry it."""
    patch = ""
    if access_pattern:
        patch = (
            'previous=\nfor arg in "$@"; do\n'
            '  [ "$previous" = --config ] && sed -i \'1s/^{/{"access_pattern":true,/\' "$arg"\n'
            '  previous="$arg"\ndone\n'
        )
    return (
        f'#!/bin/sh\nsubcommand="$1"\nshift\n{patch}'
        f'exec {shlex.quote(str(nydusd))} "$subcommand" --rlimit-nofile 0 "$@"\n'
    )


def snapshotter_config(layout: Layout, nydusd: Path, *, log_level: str = "info") -> str:
    """containerd-nydus-grpc's config (TOML, `version = 1`): dedicated nydusd per image, FUSE, nothing shared."""
    tables: dict[str, dict[str, str | bool | int]] = {
        "": {
            "version": 1,
            "root": str(layout.root),
            "address": str(layout.address),
            "daemon_mode": "dedicated",
            "cleanup_on_close": True,
        },
        "system": {"enable": True, "address": str(layout.system_address)},
        "daemon": {
            "nydusd_path": str(nydusd),
            "nydusd_config": str(layout.nydusd_config),
            "fs_driver": "fusedev",
            "recover_policy": "none",
            "threads_number": 0,
        },
        "log": {"log_to_stdout": True, "level": log_level},
        "metrics": {"address": ""},
        "remote": {"convert_vpc_registry": False},
        "remote.mirrors_config": {"dir": ""},
        "remote.auth": {"enable_kubeconfig_keychain": False, "enable_cri_keychain": False},
        "snapshot": {"enable_nydus_overlayfs": False, "sync_remove": True},
        "cache_manager": {"disable": False, "gc_period": "24h", "cache_dir": str(layout.cache)},
        "experimental": {"enable_stargz": False, "enable_referrer_detect": False},
    }
    lines: list[str] = []
    for name, table in tables.items():
        if name:
            lines += ["", f"[{name}]"]
        lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _toml(value: str | bool | int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # a JSON string is a TOML basic string for these ASCII paths


class NydusSnapshotter:
    """One containerd-nydus-grpc under its own temp dir, for prefetch mode `mode`.

    Construction writes both configs; `start()` launches it and waits for its gRPC and system sockets. `close()`
    stops it by its pid, then kills any nydusd it left (found by our dir in their arguments), unmounts whatever is
    mounted under the dir and removes it; it raises TestbedError naming anything that had to stay.
    """

    def __init__(
        self,
        binary: Path,
        nydusd: Path,
        mode: PrefetchMode,
        backend: Backend,
        *,
        prefetch: FsPrefetch = FsPrefetch(),
        start_timeout: float = 15.0,
        log_level: str = "info",
        access_pattern: bool = False,
    ) -> None:
        self.binary = binary
        self.nydusd = nydusd
        self.mode = mode
        self.prefetch = prefetch
        self.name = snapshotter_name(mode, access_pattern=access_pattern, settings=prefetch.label())
        self.start_timeout = start_timeout
        # /tmp keeps nydusd's API sockets (<root>/socket/<id>/api.sock) well under the 108-byte sun_path limit.
        self.dir = Path(tempfile.mkdtemp(prefix=f"nriopt-nydus-{mode}-", dir="/tmp"))
        self.layout = Layout(self.dir)
        self.layout.cache.mkdir()
        self.layout.nydusd_wrapper.write_text(nydusd_wrapper(nydusd, access_pattern=access_pattern))
        self.layout.nydusd_wrapper.chmod(0o755)
        self.layout.config.write_text(snapshotter_config(self.layout, self.layout.nydusd_wrapper, log_level=log_level))
        self.layout.nydusd_config.write_text(
            json.dumps(nydusd_config(mode, backend, self.layout.cache, prefetch=prefetch), indent=2) + "\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._closed = False

    @property
    def address(self) -> Path:
        return self.layout.address

    @property
    def system_address(self) -> Path:
        """Its system controller's socket (daemons, the runtime list's ``PUT /api/v1/prefetch``)."""
        return self.layout.system_address

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        if self._closed:
            raise TestbedError(f"nydus-snapshotter in {self.dir} is closed; make a new one")
        if self.pid is not None:
            return
        self._log = open(self.layout.log, "ab")  # noqa: SIM115 - held open for the snapshotter's lifetime
        try:
            self._proc = subprocess.Popen(
                [str(self.binary), "--config", str(self.layout.config)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self.stop()
            raise TestbedError(f"cannot run {self.binary}: {exc.strerror}") from None
        deadline = time.monotonic() + self.start_timeout
        while not (_listening(self.layout.address) and _listening(self.layout.system_address)):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                code = self._proc.poll()
                self.stop()
                what = f"exited with {code}" if code is not None else f"not listening after {self.start_timeout:g} s"
                raise TestbedError(f"{self.binary.name} ({self.name}) {what}:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the snapshotter we started (it stops its nydusd daemons itself), SIGKILL after `timeout`."""
        proc, self._proc = self._proc, None
        host.terminate(proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop()
        left = self._processes()
        for proc in left:
            proc.kill()
        host.wait_gone(left, 10.0)
        host.unmount_under(self.dir)
        if not host.mounts_under(self.dir):  # never rmtree through a mount
            shutil.rmtree(self.dir, ignore_errors=True)
        if problems := self.leftovers():
            raise TestbedError(f"nydus-snapshotter teardown left behind: {'; '.join(problems)}")

    def leftovers(self) -> list[str]:
        found = [f"process {p.pid} {' '.join(p.cmdline)!r}" for p in self._processes()]
        found += [f"mount {m}" for m in host.mounts_under(self.dir)]
        if self.dir.exists():
            found.append(f"directory {self.dir}")
        return found

    def __enter__(self) -> NydusSnapshotter:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.layout.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # --- nydusd ------------------------------------------------------------------------------------

    def daemons(self) -> list[dict[str, Any]]:
        """The snapshotter's nydusd daemons as its system controller lists them (id, pid, instances...)."""
        data = _get_json(self.layout.system_address, "/api/v1/daemons")
        if not isinstance(data, list):
            raise TestbedError(f"{self.name}: /api/v1/daemons answered {data!r}, not a list")
        return data

    def backend_bytes(self, reference: str) -> int | None:
        """Bytes the nydusd daemons serving `reference` read from the registry so far (`read_amount_total` of
        /api/v1/metrics/backend), None when no daemon serves it (not a nydus image, or nydusd is gone)."""
        answers = self.nydusd_api(reference, "/api/v1/metrics/backend")
        return sum(int(metrics["read_amount_total"]) for metrics in answers) if answers else None

    def nydusd_api(self, reference: str, path: str) -> list[Any]:
        """What each nydusd serving `reference` answers to GET `path` on its API socket (e.g.
        ``/api/v1/metrics/blobcache``: ``prefetch_data_amount``, ``prefetch_requests_count``); one answer per
        daemon (dedicated mode: one per image), none when no daemon serves it."""
        return [_get_json(socket, path) for socket in self.api_sockets(reference)]

    def api_sockets(self, reference: str) -> list[Path]:
        """The API sockets of the nydusd daemons serving `reference` (dedicated mode: one)."""
        sockets = []
        for daemon in self.daemons():
            images = {str(i.get("image_id", "")) for i in (daemon.get("instances") or {}).values()}
            if _same_image(reference, images):
                sockets.append(self.layout.root / "socket" / str(daemon["id"]) / "api.sock")
        return sockets

    def clear_cache(self) -> None:
        """Drop nydusd's blob cache, so the next repetition fetches from the registry again. The snapshotter may be
        removing a removed image's blobs at the same time: what is already gone is fine."""
        for entry in self.layout.cache.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, onerror=_gone_is_fine)
            else:
                entry.unlink(missing_ok=True)

    def _processes(self) -> list[host.Proc]:
        marker = str(self.dir) + "/"
        return [p for p in host.processes() if p.pid != os.getpid() and any(marker in a for a in p.cmdline)]


def _gone_is_fine(function: Any, path: str, error: tuple[type[BaseException], BaseException, Any]) -> None:
    if not isinstance(error[1], FileNotFoundError):
        raise error[1]


def _same_image(reference: str, images: set[str]) -> bool:
    """The snapshotter records the reference as CRI normalized it (docker.io/library/... for short names)."""
    return reference in images or any(image.endswith("/" + reference) for image in images)


def _listening(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def _get_json(path: Path, url: str, timeout: float = 5.0) -> Any:
    """GET `url` from an HTTP server on unix socket `path`; the decoded JSON body."""
    connection = _UnixConnection(path, timeout)
    try:
        connection.request("GET", url)
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        raise TestbedError(f"GET {url} on {path}: {exc}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise TestbedError(f"GET {url} on {path}: HTTP {response.status} {body[:200]!r}")
    try:
        return json.loads(body)
    except ValueError:
        raise TestbedError(f"GET {url} on {path}: not JSON: {body[:200]!r}") from None


# --- finding the tools -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    snapshotter: Path | None
    nydusd: Path | None
    problems: tuple[str, ...]  # why a tool is missing, one phrase each; empty when both were found

    @property
    def missing(self) -> str | None:
        """None when both are there, else the skip reason of every nydus variant."""
        return f"nydus not installed ({'; '.join(self.problems)})" if self.problems else None


def find_tools(snapshotter: str | None = None, nydusd: str | None = None) -> Tools:
    """containerd-nydus-grpc and nydusd: at the paths given (config or flags), else on PATH, else where `make nydus`
    put them (the cache; nothing is fetched here)."""
    installed = {
        SNAPSHOTTER_BINARY: debs.cached_package_file("nydus-snapshotter", SNAPSHOTTER_SUITE),
        NYDUSD_BINARY: tool.tools_bin() / NYDUSD_BINARY,
    }
    found: dict[str, Path | None] = {}
    missing: list[str] = []
    bad: list[str] = []
    for name, given in ((SNAPSHOTTER_BINARY, snapshotter), (NYDUSD_BINARY, nydusd)):
        if given is not None:
            path = Path(given)
            ok = path.is_file() and os.access(path, os.X_OK)
            found[name] = path.absolute() if ok else None
            if not ok:
                bad.append(f"{name}: {given} is not an executable file")
        elif which := shutil.which(name):
            found[name] = Path(which).absolute()
        elif (cached := installed[name]) is not None and cached.is_file() and os.access(cached, os.X_OK):
            found[name] = cached
        else:
            found[name] = None
            missing.append(name)
    problems: Sequence[str] = [f"{', '.join(missing)} not on PATH nor installed by make nydus"] if missing else []
    return Tools(found[SNAPSHOTTER_BINARY], found[NYDUSD_BINARY], (*problems, *bad))


def debian_snapshotter(*, cache: Path | None = None) -> Path:
    """containerd-nydus-grpc from Debian sid's nydus-snapshotter package, fetched into the testbed cache."""
    return debs.package_file("nydus-snapshotter", SNAPSHOTTER_SUITE, f"usr/bin/{SNAPSHOTTER_BINARY}", cache=cache)


def import_image(ctr: Path, address: str, tarball: Path, snapshotter: str, timeout: float = 30.0) -> None:
    """Import an image-layout tarball into CRI's namespace unpacked for `snapshotter` (a pod of a runtime handler
    runs its sandbox image from that handler's snapshotter, so the pause image must be unpacked there too)."""
    cmd = [
        str(ctr),
        "-a",
        address,
        "-n",
        "k8s.io",
        "images",
        "import",
        "--local",
        "--snapshotter",
        snapshotter,
        str(tarball),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise TestbedError(
            f"ctr images import --snapshotter {snapshotter} {tarball} failed: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
