"""Repetitions: pull, create and run an image through CRI, timed; then remove everything, so the next pull is real.

pull = PullImage; create = RunPodSandbox + CreateContainer; run = StartContainer until ready; total = their sum.
Between repetitions the container, the pod and the image go (RemoveImage: containerd then deletes the image's
content and snapshots, as no other image shares its layers), and the image must be gone before the next pull.

A nydus variant runs on its snapshotter's runtime handler (pull, pod and container). Once the image is ready, outside
the timed phases, the bytes nydusd read from the registry so far are asked from its API: they are the sample's
`nydusd_bytes`, and `bytes_fetched` is the pull's bytes plus them. After the cleanup nydusd's blob cache is dropped,
so the next repetition fetches again.
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

from benchmarks.prefetch.config import Image, Variant
from benchmarks.prefetch.handlers import HandlerCri
from benchmarks.prefetch.timing import NotReady, PhaseTimer, wait_ready
from nri_optimizer.cri.client import CriError, Pod
from nri_optimizer.errors import OptimizerError
from testbed import TestbedError
from testbed.nydus import NydusSnapshotter

Status = Literal["ok", "failed", "skipped"]
PHASES = ("pull", "create", "run")


class CleanupError(OptimizerError):
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
    bytes_fetched: int | None = None  # from the registry: the pull's, plus nydusd's for a nydus variant
    nydusd_bytes: int | None = None  # nydusd's read_amount_total once ready (nydus variants only)
    note: str = ""


class Runner:
    def __init__(self, cri: HandlerCri, *, cgroup_parent: str, logs_dir: Path, pull_timeout: float,
                 on_phase: Callable[[str], None] = lambda phase: None) -> None:
        self.cri = cri
        self.cgroup_parent = cgroup_parent
        self.logs_dir = logs_dir
        self.pull_timeout = pull_timeout
        self.on_phase = on_phase
        self._names = itertools.count(1)

    def repetition(self, image: Image, variant: Variant, reference: str, repetition: int,
                   bytes_fetched: int | None, nydus: NydusSnapshotter | None = None) -> Sample:
        """One timed pull, create and run of `reference`, then its cleanup. `bytes_fetched` is what the pull
        fetches (None: unknown); `nydus` the snapshotter of a nydus variant."""
        timestamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        name = f"bench-{next(self._names)}"
        log_dir = self.logs_dir / name
        log_dir.mkdir(parents=True)
        handler = nydus.name if nydus is not None else ""
        self._remove_image(reference)  # a leftover from an earlier, interrupted run would make the pull free
        pod: Pod | None = None
        container_id: str | None = None
        sample = Sample(image.name, variant, reference, repetition, timestamp, "failed", bytes_fetched=bytes_fetched)
        try:
            self.on_phase("pull")
            timer = PhaseTimer()
            self.cri.pull_image_on(handler, reference, timeout=self.pull_timeout)
            timer.lap("pull")
            self.on_phase("create")
            pod = self.cri.run_pod_on(handler, name, cgroup_parent=self.cgroup_parent, log_directory=str(log_dir))
            container_id = self.cri.create_container(pod, name, reference, env=image.env, log_path="workload.log")
            timer.lap("create")
            self.on_phase("run")
            self.cri.start_container(container_id)
            wait_ready(self.cri, container_id, log_dir / "workload.log", image.ready, image.timeout)
            timer.lap("run")
            p = timer.phases
            nydusd_bytes = total = None
            if nydus is not None:
                nydusd_bytes = nydus.backend_bytes(reference)
                if nydusd_bytes is None:
                    raise NotReady(f"no nydusd serves {reference}: not a nydus image? (convert it with "
                                   "bench-image convert)")
                total = None if bytes_fetched is None else bytes_fetched + nydusd_bytes
            return Sample(image.name, variant, reference, repetition, timestamp, "ok", p["pull"], p["create"],
                          p["run"], timer.total_us, total if nydus is not None else bytes_fetched, nydusd_bytes)
        except (CriError, NotReady, TestbedError) as exc:
            return dataclasses.replace(sample, bytes_fetched=None if nydus is not None else bytes_fetched,
                                       note=str(exc))
        finally:
            self.on_phase("cleanup")
            self._cleanup(pod, container_id, reference)
            if nydus is not None:
                nydus.clear_cache()
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
