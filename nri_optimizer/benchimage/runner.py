"""Repetitions: pull, create and run an image through CRI, timed; then remove everything, so the next pull is real.

pull = PullImage; create = RunPodSandbox + CreateContainer; run = StartContainer until ready; total = their sum.
Between repetitions the container, the pod and the image go (RemoveImage: containerd then deletes the image's
content and snapshots, as no other image shares its layers), and the image must be gone before the next pull.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..cri import CriClient, CriError, Pod
from .config import Image, Variant
from .timing import NotReady, PhaseTimer, wait_ready

Status = Literal["ok", "failed", "skipped"]
PHASES = ("pull", "create", "run")


class CleanupError(Exception):
    """The runtime kept something a later repetition would reuse: measuring on would be wrong."""


@dataclass(frozen=True)
class Sample:
    image: str  # repository:tag as configured
    variant: Variant
    reference: str  # what CRI pulled
    repetition: int  # 1-based; 0 for a skipped variant
    timestamp: str  # wall-clock start, UTC (a label: no arithmetic is done with it)
    status: Status
    pull_us: int | None = None
    create_us: int | None = None
    run_us: int | None = None
    total_us: int | None = None
    bytes_fetched: int | None = None
    note: str = ""


class Runner:
    def __init__(self, cri: CriClient, *, cgroup_parent: str, logs_dir: Path, pull_timeout: float,
                 on_phase: Callable[[str], None] = lambda phase: None) -> None:
        self.cri = cri
        self.cgroup_parent = cgroup_parent
        self.logs_dir = logs_dir
        self.pull_timeout = pull_timeout
        self.on_phase = on_phase
        self._names = itertools.count(1)

    def repetition(self, image: Image, variant: Variant, reference: str, repetition: int,
                   bytes_fetched: int | None) -> Sample:
        timestamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        name = f"bench-{next(self._names)}"
        log_dir = self.logs_dir / name
        log_dir.mkdir(parents=True)
        self._remove_image(reference)  # a leftover from an earlier, interrupted run would make the pull free
        pod: Pod | None = None
        container_id: str | None = None
        sample = Sample(image.name, variant, reference, repetition, timestamp, "failed", bytes_fetched=bytes_fetched)
        try:
            self.on_phase("pull")
            timer = PhaseTimer()
            self.cri.pull_image(reference, timeout=self.pull_timeout)
            timer.lap("pull")
            self.on_phase("create")
            pod = self.cri.run_pod(name, cgroup_parent=self.cgroup_parent, log_directory=str(log_dir))
            container_id = self.cri.create_container(pod, name, reference, env=image.env, log_path="workload.log")
            timer.lap("create")
            self.on_phase("run")
            self.cri.start_container(container_id)
            wait_ready(self.cri, container_id, log_dir / "workload.log", image.ready, image.timeout)
            timer.lap("run")
            p = timer.phases
            return Sample(image.name, variant, reference, repetition, timestamp, "ok", p["pull"], p["create"],
                          p["run"], timer.total_us, bytes_fetched)
        except (CriError, NotReady) as exc:
            return dataclasses.replace(sample, note=str(exc))
        finally:
            self.on_phase("cleanup")
            self._cleanup(pod, container_id, reference)
            shutil.rmtree(log_dir, ignore_errors=True)

    def _cleanup(self, pod: Pod | None, container_id: str | None, reference: str) -> None:
        try:
            if container_id is not None:
                self.cri.stop_container(container_id, 0)
                self.cri.remove_container(container_id)
            if pod is not None:
                self.cri.stop_pod(pod.id)
                self.cri.remove_pod(pod.id)
        except CriError as exc:
            raise CleanupError(f"cannot remove the repetition's container or pod: {exc}") from None
        self._remove_image(reference)

    def _remove_image(self, reference: str) -> None:
        try:
            if self.cri.image_status(reference):
                self.cri.remove_image(reference)
            if self.cri.image_status(reference):
                raise CleanupError(f"{reference} is still present after RemoveImage")
        except CriError as exc:
            raise CleanupError(f"cannot remove {reference}: {exc}") from None
