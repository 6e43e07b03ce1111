"""``nri-optimizer profile IMAGE``: run an image through CRI, trace it, stop on a condition, print the list.

It brings its own tracing: for the run it registers with containerd as an external NRI plugin that traces
only the container it starts, so it works whether or not the plugin daemon is installed. The list is saved
where the daemon would save it (replacing an earlier one: asking for a profile is asking for a new one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shlex
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nri_optimizer import config as cfg
from nri_optimizer.errors import CommandError, TraceError, UsageError
from nri_optimizer.nri.api import Identity
from nri_optimizer.nri.proto import nri_pb2 as api
from nri_optimizer.nri.stub import Stub
from nri_optimizer.plugin import Plugin
from nri_optimizer.results import reference
from nri_optimizer.results.runs import Recorded

log = logging.getLogger(__name__)

DEFAULT_RUNTIME_ENDPOINT = "unix:///run/containerd/containerd.sock"
REGISTER_TIMEOUT = 5.0
POLL = 0.1


@dataclass(frozen=True)
class StopCondition:
    period: float | None = None
    line: str | None = None
    url: str | None = None
    deadline: float = 600.0  # give up waiting for the condition after this many seconds

    def describe(self) -> str:
        parts = [f"{self.period:g} s passed"] if self.period is not None else []
        if self.line is not None:
            parts.append(f"the output has a line containing {self.line!r}")
        if self.url is not None:
            parts.append(f"{self.url} answers 2xx/3xx")
        return " or ".join(parts) or "the container exits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image reference, as CRI knows it (it must be present)")
    parser.add_argument(
        "--runtime-endpoint", default=DEFAULT_RUNTIME_ENDPOINT, help="CRI socket (default: %(default)s)"
    )
    parser.add_argument("--nri-socket", default=cfg.Config.socket, help="NRI socket (default: %(default)s)")
    stop = parser.add_argument_group("when to stop (default: when the container exits; any that is met first)")
    stop.add_argument("--period", type=float, metavar="SECONDS", help="trace this long after the start")
    stop.add_argument("--wait-on-line", metavar="TEXT", help="until the container prints a line containing TEXT")
    stop.add_argument("--wait-on-url", metavar="URL", help="until URL answers 2xx or 3xx (pods use the host network)")
    stop.add_argument(
        "--deadline",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="stop anyway after this long (default: %(default)s)",
    )
    workload = parser.add_argument_group("the container")
    workload.add_argument(
        "--cmd",
        type=shlex.split,
        metavar="COMMAND",
        help="command line, replacing the image's entrypoint (split like a shell would)",
    )
    workload.add_argument(
        "--args",
        type=shlex.split,
        metavar="ARGS",
        help="arguments, replacing the image's cmd (split like a shell would)",
    )
    workload.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable")
    workload.add_argument(
        "--cgroup-parent",
        default="",
        metavar="PATH",
        help="pod cgroup parent (default: the runtime's; with the systemd driver, a slice)",
    )
    workload.add_argument("--mount", action="append", default=[], metavar="HOST:CONTAINER[:ro]", help="bind mount")
    results = parser.add_argument_group("results (defaults from the config file, as the daemon)")
    results.add_argument("--config", help=f"TOML config file (default: {cfg.DEFAULT_CONFIG_FILE} if it exists)")
    results.add_argument("--persist-dir", dest="persist_dir", default=argparse.SUPPRESS)
    results.add_argument("--server-path", dest="server_path", default=argparse.SUPPRESS)
    results.add_argument("--quiet", action="store_true", help="no progress line")


def run(args: argparse.Namespace, config: cfg.Config) -> int:
    condition = StopCondition(args.period, args.wait_on_line, args.wait_on_url, args.deadline)
    env = dict(_split(item, "=", "--env", "KEY=VALUE") for item in args.env)
    mounts = [_mount(item) for item in args.mount]
    reference.parse(args.image)
    # The list must be the container's own and the image's own (a profile is no workload's), whatever the config
    # says about keeping or merging runs or about which containers the daemon traces; and the daemon's metrics
    # endpoint stays the daemon's.
    config = dataclasses.replace(
        config,
        on_repeat="replace",
        overwrite=True,
        timeout=0,
        workload_key="",
        metrics_address="",
        mode="all",
        namespace_include=(),
        namespace_exclude=(),
        image_include=(),
        image_exclude=(),
    )
    profiler = Profiler(args, config, condition, env, mounts)
    entries, path = asyncio.run(profiler.run())
    for line in entries:
        print(line)
    print(f"nri-optimizer profile: {len(entries)} files, saved to {path}", file=sys.stderr)
    return 0


def _split(text: str, separator: str, flag: str, shape: str) -> tuple[str, str]:
    key, found, value = text.partition(separator)
    if not found or not key:
        raise UsageError(f"{flag} {text!r}: expected {shape}")
    return key, value


def _mount(text: str) -> Any:
    from nri_optimizer.cri.client import Mount

    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise UsageError(f"--mount {text!r}: expected HOST:CONTAINER or HOST:CONTAINER:ro")
    if not (os.path.isabs(parts[0]) and os.path.isabs(parts[1])):
        raise UsageError(f"--mount {text!r}: both paths must be absolute")
    return Mount(parts[0], parts[1], readonly=len(parts) == 3 and parts[2] == "ro")


class Profiler:
    def __init__(
        self,
        args: argparse.Namespace,
        config: cfg.Config,
        condition: StopCondition,
        env: dict[str, str],
        mounts: list[Any],
    ) -> None:
        self.args = args
        self.config = config
        self.condition = condition
        self.env = env
        self.mounts = mounts
        self.pod_id = ""
        self.done: asyncio.Future[Recorded | None] | None = None
        self.progress = sys.stderr.isatty() and not args.quiet

    def _ours(self, pod: api.PodSandbox, container: api.Container) -> bool:
        return bool(self.pod_id) and container.pod_sandbox_id == self.pod_id

    def _on_done(self, cid: str, recorded: Recorded | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(recorded)

    async def run(self) -> tuple[list[str], str]:
        from nri_optimizer.cri.client import CriClient, CriError

        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        cri = CriClient(self.args.runtime_endpoint)
        try:
            await asyncio.to_thread(cri.version)
        except CriError as exc:
            raise CommandError(
                f"cannot reach the container runtime at {self.args.runtime_endpoint}: "
                f"{exc.message or exc.code.name}; is containerd running? (--runtime-endpoint)"
            ) from None
        if not await asyncio.to_thread(cri.image_status, self.args.image):
            raise CommandError(
                f"image {self.args.image} is not present; pull it first "
                f"(e.g. ctr -n k8s.io images pull {self.args.image})"
            )
        optimizer = Plugin(self.config, prelaunched=False, select=self._ours, on_done=self._on_done, journal=False)
        stub = Stub(optimizer, Identity(f"nri-optimizer-profile-{os.getpid()}", "99"))
        await self._check_nri_socket()
        nri = loop.create_task(stub.run_external(self.args.nri_socket))
        pod = None
        try:
            try:
                await asyncio.wait_for(stub.registered.wait(), REGISTER_TIMEOUT)
            except TimeoutError:
                raise CommandError(
                    f"containerd did not register us as an NRI plugin within {REGISTER_TIMEOUT:g} s "
                    f"on {self.args.nri_socket}"
                ) from None
            try:
                await optimizer.tracer_started()
            except (TraceError, OSError) as exc:
                raise CommandError(
                    f"cannot start the trace server {self.config.server_path}: {getattr(exc, 'strerror', None) or exc}"
                ) from None
            with tempfile.TemporaryDirectory(prefix="nri-optimizer-profile-") as logs:
                pod, cid = await self._start(cri, Path(logs))
                why = await self._wait(cri, cid, Path(logs) / "workload.log", optimizer)
                optimizer.finish(cid, why)
                await asyncio.to_thread(cri.stop_container, cid, 0)
                try:
                    recorded = await asyncio.wait_for(self.done, 60)
                except TimeoutError:
                    recorded = None
        except CriError as exc:
            raise CommandError(str(exc)) from None
        finally:
            if pod is not None:
                with contextlib.suppress(CriError):
                    await asyncio.to_thread(cri.stop_pod, pod.id)
                    await asyncio.to_thread(cri.remove_pod, pod.id)
            nri.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await nri
            await optimizer.shutdown()
            cri.close()
        if recorded is None:
            raise CommandError("the trace was lost (see the messages above); nothing was saved")
        # Its own list: another writer of the image (the daemon, another profile) may have replaced the saved one.
        return recorded.run_list.decode().splitlines(), recorded.path

    async def _check_nri_socket(self) -> None:
        try:
            _, writer = await asyncio.open_unix_connection(self.args.nri_socket)
        except OSError as exc:
            raise CommandError(
                f"cannot connect to the NRI socket {self.args.nri_socket}: {exc.strerror or exc}; enable NRI and "
                'external plugins in containerd\'s config ([plugins."io.containerd.nri.v1.nri"] disable = false, '
                "disable_connections = false) or pass --nri-socket"
            ) from None
        writer.close()

    async def _start(self, cri: Any, logs: Path) -> tuple[Any, str]:
        name = f"nri-optimizer-profile-{secrets.token_hex(4)}"
        pod = await asyncio.to_thread(cri.run_pod, name, log_directory=str(logs), cgroup_parent=self.args.cgroup_parent)
        self.pod_id = pod.id
        cid = await asyncio.to_thread(
            cri.create_container,
            pod,
            "workload",
            self.args.image,
            command=self.args.cmd,
            args=self.args.args,
            env=self.env,
            mounts=self.mounts,
            log_path="workload.log",
        )
        await asyncio.to_thread(cri.start_container, cid)
        return pod, cid

    async def _wait(self, cri: Any, cid: str, log_file: Path, optimizer: Plugin) -> str:
        """Until the stop condition holds; returns which one did."""
        from nri_optimizer.cri.client import read_log

        condition = self.condition
        started = time.monotonic()
        try:
            while True:
                elapsed = time.monotonic() - started
                if self.progress:
                    print(f"\r{optimizer.recorded(cid) or 0} files recorded, {elapsed:.1f} s", end="", file=sys.stderr)
                if condition.period is not None and elapsed >= condition.period:
                    return "period"
                if (
                    condition.line is not None
                    and log_file.exists()
                    and any(condition.line in line for line in read_log(log_file))
                ):
                    return "line seen"
                if condition.url is not None and await asyncio.to_thread(_answers, condition.url):
                    return "url answered"
                if (await asyncio.to_thread(cri.container_status, cid)).state == "exited":
                    return "exited"
                if elapsed >= condition.deadline:
                    log.warning("stopping after %g s without %s", condition.deadline, condition.describe())
                    return "deadline"
                await asyncio.sleep(POLL)
        finally:
            if self.progress:
                print(file=sys.stderr)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return 200 <= int(response.status) < 400
    except urllib.error.HTTPError as exc:
        return 300 <= exc.code < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="nri-optimizer profile", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="nri-optimizer profile: %(message)s", stream=sys.stderr)
    flags = {key: value for key, value in vars(args).items() if key in ("config", "persist_dir", "server_path")}
    return run(args, cfg.load_config(flags))
