"""A private containerd: own config, sockets, state and cgroup parent, torn down without leftovers."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING

from testbed import TestbedError, config, debs, host
from testbed.images import PAUSE_IMAGE, image_names

if TYPE_CHECKING:
    from nri_optimizer.cri.client import CriClient

NAMESPACE = "k8s.io"  # CRI's containerd namespace
# Shims listen on /run/containerd/s/<sha256(address/namespace/id)> whatever the config says.
SHIM_SOCKET_DIR = Path("/run/containerd/s")
_SHIM_SOCKET = re.compile(r"/run/containerd/s/([0-9a-f]{64})")


class Containerd:
    """One containerd instance living under its own temp dir.

    Construction only writes the config; `start()` launches it. `close()` (or leaving the `with`
    block) removes everything the instance made: pods, processes, mounts, shim sockets, cgroups,
    and the temp dir.
    """

    def __init__(
        self,
        runtime: debs.Runtime,
        *,
        nri: bool = True,
        nri_socket: Path | None = None,
        nri_plugin_path: Path | None = None,
        nri_plugin_config_path: Path | None = None,
        sandbox_image: str = PAUSE_IMAGE,
        start_timeout: float = 15.0,
        log_level: str = "info",
        registry_config_dir: Path | None = None,
        snapshotters: Mapping[str, Path] | None = None,
        snapshotter: str = "overlayfs",
        pod_network: bool = False,
    ) -> None:
        self.runtime = runtime
        self.snapshotter = snapshotter  # CRI's (testbed.config.render)
        self.start_timeout = start_timeout
        # /tmp keeps socket paths well under the 108-byte sun_path limit.
        self.dir = Path(tempfile.mkdtemp(prefix="nriopt-ctd-", dir="/tmp"))
        self._layout = config.Layout(self.dir)
        # cgroupfs driver: pods go to /<parent>/<id> in every hierarchy; unique so teardown can find ours.
        self.cgroup_parent = f"/nri-optimizer-test-{secrets.token_hex(4)}"
        self.nri = config.Nri(
            enabled=nri,
            socket=nri_socket or self.dir / "nri" / "nri.sock",
            plugin_path=nri_plugin_path or self.dir / "nri" / "plugins",
            plugin_config_path=nri_plugin_config_path or self.dir / "nri" / "conf.d",
        )
        for directory in (self.nri.plugin_path, self.nri.plugin_config_path, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        cni_bin_dir = None
        if pod_network:  # pods off the host's network, as a plain pod spec (crictl's, kubelet's) asks
            cni_bin_dir = debs.cni_plugins()
            (self.dir / "cni").mkdir()
            (self.dir / "cni" / "10-testbed.conflist").write_text(json.dumps(config.POD_NETWORK))
        self._layout.config.write_text(
            config.render(
                runtime.major,
                self._layout,
                nri=self.nri,
                sandbox_image=sandbox_image,
                runc=runtime.bin_dir / "runc",
                log_level=log_level,
                registry_config_dir=registry_config_dir,
                snapshotters=snapshotters,
                snapshotter=snapshotter,
                cni_bin_dir=cni_bin_dir,
            )
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._cri: CriClient | None = None
        self._started_at = time.time()
        self._closed = False
        self._known_shim_sockets: set[Path] = set()

    # --- identity ----------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The CRI / containerd gRPC socket."""
        return str(self._layout.address)

    @property
    def nri_socket(self) -> Path:
        return self.nri.socket

    @property
    def log_path(self) -> Path:
        return self._layout.log

    @property
    def config_path(self) -> Path:
        return self._layout.config

    @property
    def logs_dir(self) -> Path:
        """A place for pod log directories (CRI `log_directory`)."""
        return self.dir / "pod-logs"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def cri(self) -> CriClient:
        if self._cri is None:
            from nri_optimizer.cri.client import CriClient  # grpc only when CRI is used

            self._cri = CriClient(self.address)
        return self._cri

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Launch containerd and wait until CRI answers; on failure, raise with the log's tail."""
        if self._closed:
            raise TestbedError(f"containerd in {self.dir} is closed; make a new one")
        if self.pid is not None:
            return
        env = dict(os.environ, PATH=f"{self.runtime.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - held open for containerd's lifetime
        self._proc = subprocess.Popen(
            [str(self.runtime.bin_dir / "containerd"), "--config", str(self.config_path)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C meant for pytest must not take containerd down mid-teardown.
            start_new_session=True,
        )
        self._wait_ready()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the containerd we started, SIGKILL after `timeout`. Shims and pods keep running."""
        proc, self._proc = self._proc, None
        host.terminate(proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def import_image(self, tarball: Path, timeout: float = 30.0) -> list[str]:
        """Import an OCI image-layout tarball into CRI's namespace; return once CRI sees every image."""
        cmd = [str(self.runtime.bin_dir / "ctr"), "-a", self.address, "-n", NAMESPACE, "images", "import", str(tarball)]
        if self.snapshotter != "overlayfs":  # unpacked for it; the transfer service unpacks for overlayfs only
            cmd[-1:-1] = ["--local", "--snapshotter", self.snapshotter]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise TestbedError(f"ctr images import {tarball} failed: {result.stderr.strip() or result.stdout.strip()}")
        names = image_names(tarball)
        # CRI learns about images from containerd's event stream, so it may lag the import a little.
        deadline = time.monotonic() + timeout
        while not all(self.cri.image_status(name) for name in names):
            if time.monotonic() > deadline:
                raise TestbedError(f"CRI does not see {names} {timeout}s after importing {tarball}")
            time.sleep(0.05)
        return names

    def __enter__(self) -> Containerd:
        try:
            self.start()
        except BaseException:
            self.close()  # __exit__ will not run, and the temp dir exists since __init__
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove everything this instance made; raise TestbedError naming whatever had to stay."""
        if self._closed:
            return
        self._closed = True
        if self.pid is not None:
            self._remove_pods()
            plugins = [p for p in host.processes() if p.ppid == self.pid]  # pre-launched NRI plugins
        else:
            plugins = []
        self.stop()
        if self._cri is not None:
            self._cri.close()
        shims = self._shims()
        # Container processes first (they live in our cgroup), then the shims that watch them.
        doomed = [p for pid in host.cgroup_pids(self.cgroup_parent) if (p := host.Proc.read(pid))]
        doomed += shims + plugins + self._processes_in_dir()
        for proc in doomed:
            proc.kill()
        host.wait_gone(doomed, 10.0)
        self._remove_shim_sockets(shims)
        host.unmount_under(self.dir)
        host.remove_cgroup(self.cgroup_parent)
        if not host.mounts_under(self.dir):  # never rmtree through a mount into someone else's files
            shutil.rmtree(self.dir, ignore_errors=True)
        if problems := self.leftovers():
            raise TestbedError(f"containerd teardown left behind: {'; '.join(problems)}")

    def leftovers(self) -> list[str]:
        """What of this instance is still on the host: empty after a clean `close()`."""
        found = [f"process {p.pid} {' '.join(p.cmdline)!r}" for p in self._shims() + self._processes_in_dir()]
        found += [f"process {pid} in cgroup {self.cgroup_parent}" for pid in host.cgroup_pids(self.cgroup_parent)]
        found += [f"mount {m}" for m in host.mounts_under(self.dir)]
        found += [f"cgroup {d}" for d in host.cgroup_dirs(self.cgroup_parent)]
        found += [f"shim socket {s}" for s in sorted(self._shim_sockets(self._shims())) if s.exists()]
        if self.dir.exists():
            found.append(f"directory {self.dir}")
        return found

    # --- internals ---------------------------------------------------------------------------------

    def _wait_ready(self) -> None:
        from nri_optimizer.cri.client import CriError

        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                self.stop()
                raise TestbedError(f"containerd exited with {code} at start:\n{self._log_tail()}")
            try:
                self.cri.version()
                return
            except CriError as error:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TestbedError(
                        f"containerd CRI not ready after {self.start_timeout}s ({error}):\n{self._log_tail()}"
                    ) from None
            time.sleep(0.02)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _remove_pods(self) -> None:
        """Stop and remove every pod through CRI, so containerd cleans up what it can itself."""
        from nri_optimizer.cri.client import CriError

        try:
            pods = self.cri.list_pods()
        except CriError:
            return
        for pod in pods:
            # The pod's shim is named after it: remember its socket in case the shim has to be killed.
            self._known_shim_sockets.add(SHIM_SOCKET_DIR / shim_socket_name(self.address, NAMESPACE, pod.id))
            try:
                self.cri.stop_pod(pod.id)
                self.cri.remove_pod(pod.id)
            except CriError:
                continue  # whatever is left is killed and unmounted below

    def _shims(self) -> list[host.Proc]:
        """Shim processes serving our containerd: they carry `-address <our socket>`."""
        found = []
        for proc in host.processes():
            args = proc.cmdline
            if any(a == "-address" and b == self.address for a, b in itertools.pairwise(args)):
                found.append(proc)
        return found

    def _processes_in_dir(self) -> list[host.Proc]:
        """Anything else still running from or on our dir (e.g. a shim whose args we did not parse)."""
        marker = str(self.dir) + "/"
        return [p for p in host.processes() if p.pid != os.getpid() and any(marker in a for a in p.cmdline)]

    def _remove_shim_sockets(self, shims: list[host.Proc]) -> None:
        for path in self._shim_sockets(shims):
            with contextlib.suppress(FileNotFoundError):
                # Created during our run, as a last guard against ever removing a stranger's socket.
                if path.lstat().st_mtime >= self._started_at - 1:
                    path.unlink()

    def _shim_sockets(self, shims: list[host.Proc]) -> set[Path]:
        """Shim sockets of this instance (remembered, as the log they come from goes with our dir).

        A shim socket's name is sha256 of `<containerd address>/<namespace>/<id>`; since our address
        is unique, every such name is ours. We learn them from pod ids, the shims' arguments and
        containerd 2.x's log (which names the socket of every shim it connected to, including shims
        that died since without removing theirs; a shim that exits normally removes its own).
        """
        for shim in shims:
            args = dict(itertools.pairwise(shim.cmdline))
            if "-id" in args:
                name = shim_socket_name(self.address, args.get("-namespace", NAMESPACE), args["-id"])
                self._known_shim_sockets.add(SHIM_SOCKET_DIR / name)
        if self.log_path.exists():
            names = _SHIM_SOCKET.findall(self.log_path.read_text(errors="replace"))
            self._known_shim_sockets.update(SHIM_SOCKET_DIR / name for name in names)
        return self._known_shim_sockets


def shim_socket_name(address: str, namespace: str, task_id: str) -> str:
    """The file name containerd's shim manager gives the socket of shim `task_id`."""
    return hashlib.sha256(f"{address}/{namespace}/{task_id}".encode()).hexdigest()
