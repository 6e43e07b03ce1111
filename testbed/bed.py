"""A started containerd with the test images in it, and a helper to run busybox workloads through CRI."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from testbed import TestbedError
from testbed.containerd import Containerd
from testbed.images import BUSYBOX_IMAGE

if TYPE_CHECKING:
    from nri_optimizer.cri.client import ContainerStatus, CriClient, Mount, Pod


@dataclass(frozen=True)
class Run:
    """One busybox workload: its pod, its container, where it logs, and how it ended (if waited for)."""

    pod: Pod
    container_id: str
    log_path: Path
    status: ContainerStatus | None

    def log_lines(self) -> list[str]:
        from nri_optimizer.cri.client import read_log

        return read_log(self.log_path)


class Testbed:
    """`ctd` (a started Containerd with the pause and busybox images imported) and its `cri` client."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, ctd: Containerd) -> None:
        self.ctd = ctd
        self._names = itertools.count(1)

    @property
    def cri(self) -> CriClient:
        return self.ctd.cri

    def run_busybox(
        self,
        command: Sequence[str],
        *,
        image: str = BUSYBOX_IMAGE,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[Mount] = (),
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> Run:
        """Run `command` in a new pod (host network, own pid namespace, our cgroup parent).

        With `wait`, return once the container has exited, with its final status.
        """
        name = f"bb-{next(self._names)}"
        log_dir = self.ctd.logs_dir / name
        log_dir.mkdir(parents=True)
        pod = self.cri.run_pod(
            name,
            cgroup_parent=self.ctd.cgroup_parent,
            log_directory=str(log_dir),
            annotations=annotations,
            labels=labels,
        )
        cid = self.cri.create_container(pod, name, image, command=command, env=env, mounts=mounts)
        self.cri.start_container(cid)
        status = self.wait_exited(cid, timeout) if wait else None
        return Run(pod, cid, log_dir / f"{name}.log", status)

    def wait_exited(self, container_id: str, timeout: float = 30.0) -> ContainerStatus:
        deadline = time.monotonic() + timeout
        while (status := self.cri.container_status(container_id)).state != "exited":
            if time.monotonic() > deadline:
                raise TestbedError(f"container {container_id} still {status.state} after {timeout}s")
            time.sleep(0.02)
        return status


class MakeContainerd(Protocol):
    """What tests and benchmarks are given to start a test bed (tests/e2e/conftest.py's fixture)."""

    def __call__(
        self,
        flavour: str,
        *,
        nri: bool = ...,
        nri_socket: Path | None = ...,
        plugin_path: Path | None = ...,
        plugin_config_path: Path | None = ...,
        snapshotter: str = ...,
    ) -> Testbed: ...
