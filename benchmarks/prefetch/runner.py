"""Repetitions: pull, create and run an image through CRI, timed; then remove everything, so the next pull is real.

pull = PullImage; create = RunPodSandbox + CreateContainer (for a runtime-list variant, the list handed to
nydus-snapshotter first); run = StartContainer until ready; total = their sum, on one monotonic clock. Between
repetitions the container, the pod and the image go (RemoveImage: containerd then deletes the image's content and
snapshots, as no other image shares its layers), the image must be gone before the next pull, nydusd's blob cache is
emptied and the kernel's page cache dropped (where permitted), so that every repetition starts cold.

Bytes, read outside the timed phases: `bytes_fetched` is what came from the registry up to ready, `bytes_total` what
came by the end of the repetition, once nydusd has stopped fetching (still for `STILL` seconds) or `settle` seconds
after ready. Through the local registry's link they are counted by the delay line (everything any client fetched);
from another registry they are the pull's bytes (from the manifests) plus nydusd's. A nydus variant's sample also
has nydusd's own counters at ready (snapshotter.Counters): its bytes, what prefetch asked for, its on-demand
requests, its reads that waited.

The warm start (`warm=True`, an overlayfs variant): once the cold start is measured, its container and pod go, the
image and every cache stay, and the image is started again, timed the same way: the start with all its data local,
one of the two figures the bound is made of (bounds.py). Its sample is the variant's with ``-warm`` appended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from benchmarks.prefetch.config import Image, Variant
from benchmarks.prefetch.handlers import HandlerCri
from benchmarks.prefetch.snapshotter import Counters, Handler, counters, hand_over_list
from benchmarks.prefetch.timing import NotReady, PhaseTimer, wait_ready
from nri_optimizer.cri.client import CriError, Pod
from nri_optimizer.errors import OptimizerError
from testbed import TestbedError

Status = Literal["ok", "failed", "skipped"]
PHASES = ("pull", "create", "run")
WARM = "-warm"  # the warm start's variant name: the cold one's with this appended
STILL = 1.0  # seconds without a byte from the registry after which fetching is over
SETTLE_POLL = 0.25
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


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
    bytes_fetched: int | None = None  # from the registry up to ready
    nydusd_bytes: int | None = None  # nydusd's read_amount_total at ready (nydus variants only)
    note: str = ""
    link: str = ""  # the registry's link setting (shaping.Link), "" when not shaped
    bytes_total: int | None = None  # from the registry by the end of the repetition
    settled: bool = True  # False: fetching went on past `settle` seconds after ready, bytes_total is a floor
    prefetch_bytes: int | None = None  # nydusd: what prefetch asked the registry for, by ready
    ondemand_requests: int | None = None  # nydusd: registry requests prefetch did not make, by ready
    stalled_reads: int | None = None  # nydusd: FUSE reads that took more than 1 ms, by ready

    @property
    def warm(self) -> bool:
        return self.variant.name.endswith(WARM)


def warm_variant(variant: Variant) -> Variant:
    return dataclasses.replace(variant, name=variant.name + WARM)


class Runner:
    def __init__(
        self,
        cri: HandlerCri,
        *,
        cgroup_parent: str,
        logs_dir: Path,
        pull_timeout: float,
        on_phase: Callable[[str], None] = lambda phase: None,
        settle: float = 20.0,
        link_bytes: Callable[[], int] | None = None,
        link: str = "",
        drop_caches: bool = True,
    ) -> None:
        self.cri = cri
        self.cgroup_parent = cgroup_parent
        self.logs_dir = logs_dir
        self.pull_timeout = pull_timeout
        self.on_phase = on_phase
        self.settle = settle
        self.link_bytes = link_bytes  # bytes the registry sent through its link so far (the delay line's count)
        self.link = link
        self.drop_caches = drop_caches
        self.dropped: bool | None = None  # whether the page cache could be dropped (None: not tried yet)
        self._names = itertools.count(1)

    def repetition(
        self,
        image: Image,
        variant: Variant,
        reference: str,
        repetition: int,
        bytes_fetched: int | None,
        nydus: Handler | None = None,
        *,
        runtime_list: Path | None = None,
        warm: bool = False,
    ) -> list[Sample]:
        """One timed pull, create and run of `reference` (and, with `warm`, a second start from local data), then
        the cleanup. `bytes_fetched` is what the pull fetches (None: unknown), for a registry without a counted
        link; `nydus` the snapshotter of a nydus variant; `runtime_list` the list to hand it before the start."""
        timestamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._remove_image(reference)  # a leftover from an earlier, interrupted run would make the pull free
        handler = nydus.name if nydus is not None else ""
        started = self.link_bytes() if self.link_bytes else 0
        sample = Sample(image.name, variant, reference, repetition, timestamp, "failed", link=self.link)
        samples = []
        pod: Pod | None = None
        container_id: str | None = None
        log_dir = self._log_dir()
        try:
            self.on_phase("pull")
            timer = PhaseTimer()
            self.cri.pull_image_on(handler, reference, timeout=self.pull_timeout)
            timer.lap("pull")
            self.on_phase("create")
            if runtime_list is not None and nydus is not None:
                hand_over_list(nydus, reference, runtime_list)
            pod, container_id = self._create(handler, image, reference, log_dir)
            timer.lap("create")
            self.on_phase("run")
            self.cri.start_container(container_id)
            wait_ready(self.cri, container_id, log_dir / "workload.log", image.ready, image.timeout)
            timer.lap("run")
            sample = self._measured(sample, timer, nydus, bytes_fetched, started)
            samples.append(sample)
            if warm:
                self.on_phase("warm start")
                self._remove_pod(pod, container_id)
                pod = container_id = None
                samples.append(self._warm(image, variant, reference, repetition))
        except (CriError, NotReady, TestbedError, OptimizerError) as exc:
            if isinstance(exc, CleanupError):
                raise
            samples.append(
                dataclasses.replace(
                    sample, status="failed", note=str(exc), pull_us=None, create_us=None, run_us=None, total_us=None
                )
            )
        finally:
            self.on_phase("cleanup")
            self._remove_pod(pod, container_id)
            self._remove_image(reference)
            if nydus is not None:
                nydus.clear_cache()
            self._drop_page_cache()
            shutil.rmtree(self.logs_dir, ignore_errors=True)
        return samples

    def _log_dir(self) -> Path:
        log_dir = self.logs_dir / f"bench-{next(self._names)}"
        log_dir.mkdir(parents=True)
        return log_dir

    def _create(self, handler: str, image: Image, reference: str, log_dir: Path) -> tuple[Pod, str]:
        pod = self.cri.run_pod_on(handler, log_dir.name, cgroup_parent=self.cgroup_parent, log_directory=str(log_dir))
        try:
            return pod, self.cri.create_container(pod, log_dir.name, reference, env=image.env, log_path="workload.log")
        except CriError:
            self._remove_pod(pod, None)
            raise

    def _measured(
        self, sample: Sample, timer: PhaseTimer, nydus: Handler | None, pulled: int | None, started: int
    ) -> Sample:
        """The sample of a start that became ready: its times, then what it fetched by ready and in all."""
        p = timer.phases
        sample = dataclasses.replace(
            sample, status="ok", pull_us=p["pull"], create_us=p["create"], run_us=p["run"], total_us=timer.total_us
        )
        link_ready = self.link_bytes() - started if self.link_bytes is not None else None
        if nydus is None:  # the pull fetched everything
            fetched = link_ready if link_ready is not None else pulled
            return dataclasses.replace(sample, bytes_fetched=fetched, bytes_total=fetched)
        ready = counters(nydus, sample.reference)
        if ready is None:
            raise NotReady(
                f"no nydusd serves {sample.reference}: not a nydus image? (convert it with bench-image convert)"
            )
        settled = self._wait_still(lambda: self._fetched(nydus, sample.reference, started))  # prefetch goes on
        at_ready: int | None
        total: int | None
        if link_ready is not None:
            at_ready, total = link_ready, self._fetched(nydus, sample.reference, started)
        else:  # no counted link: the pull's bytes and nydusd's
            at_ready = None if pulled is None else pulled + ready.backend_bytes
            total = None if pulled is None else pulled + self._fetched(nydus, sample.reference, started)
        return dataclasses.replace(
            sample,
            bytes_fetched=at_ready,
            bytes_total=total,
            settled=settled,
            nydusd_bytes=ready.backend_bytes,
            prefetch_bytes=ready.prefetch_bytes,
            ondemand_requests=ready.ondemand_requests,
            stalled_reads=ready.stalled_reads,
        )

    def _fetched(self, nydus: Handler, reference: str, started: int) -> int:
        """Bytes from the registry so far: through the link since the repetition began, else nydusd's."""
        if self.link_bytes is not None:
            return self.link_bytes() - started
        now: Counters | None = counters(nydus, reference)
        return now.backend_bytes if now is not None else 0

    def _wait_still(self, fetched: Callable[[], int]) -> bool:
        """Wait until `fetched` has not moved for STILL seconds (True) or `settle` seconds have passed (False)."""
        deadline = time.monotonic() + self.settle
        last, still_since = fetched(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(SETTLE_POLL)
            current = fetched()
            if current != last:
                last, still_since = current, time.monotonic()
            elif time.monotonic() - still_since >= STILL:
                return True
        return False

    def _warm(self, image: Image, variant: Variant, reference: str, repetition: int) -> Sample:
        """The start again with everything local: image present, page cache warm. It fetches nothing."""
        timestamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        sample = Sample(image.name, warm_variant(variant), reference, repetition, timestamp, "failed", link=self.link)
        log_dir = self._log_dir()
        pod: Pod | None = None
        container_id: str | None = None
        try:
            timer = PhaseTimer()
            self.cri.pull_image_on("", reference, timeout=self.pull_timeout)  # present: resolves locally
            timer.lap("pull")
            pod, container_id = self._create("", image, reference, log_dir)
            timer.lap("create")
            self.cri.start_container(container_id)
            wait_ready(self.cri, container_id, log_dir / "workload.log", image.ready, image.timeout)
            timer.lap("run")
        except (CriError, NotReady) as exc:
            return dataclasses.replace(sample, note=str(exc))
        finally:
            self._remove_pod(pod, container_id)
        p = timer.phases
        return dataclasses.replace(
            sample,
            status="ok",
            pull_us=p["pull"],
            create_us=p["create"],
            run_us=p["run"],
            total_us=timer.total_us,
            bytes_fetched=0,
            bytes_total=0,
        )

    def _remove_pod(self, pod: Pod | None, container_id: str | None) -> None:
        try:
            if container_id is not None:
                self.cri.stop_container(container_id, 0)
                self.cri.remove_container(container_id)
            if pod is not None:
                self.cri.stop_pod(pod.id)
                self.cri.remove_pod(pod.id)
        except CriError as exc:
            raise CleanupError(f"cannot remove the repetition's container or pod: {exc}") from None

    def _remove_image(self, reference: str) -> None:
        try:
            if self.cri.image_status(reference):
                self.cri.remove_image(reference)
            if self.cri.image_status(reference):
                raise CleanupError(f"{reference} is still present after RemoveImage")
        except CriError as exc:
            raise CleanupError(f"cannot remove {reference}: {exc}") from None

    def _drop_page_cache(self) -> None:
        if not self.drop_caches or self.dropped is False:
            return
        self.dropped = drop_page_cache()  # False: say so in the results


@contextlib.contextmanager
def readahead(path: Path | None, kib: int) -> Iterator[None]:
    """Meanwhile, the block device that holds `path` reads ahead `kib` KiB (its setting is put back after); nothing
    where `path` is None or the device has no such setting."""
    knob = _readahead_knob(path) if path is not None else None
    try:
        before = knob.read_text() if knob is not None else None
        if knob is not None:
            knob.write_text(f"{kib}\n")
    except OSError:
        knob = None
    try:
        yield
    finally:
        if knob is not None and before is not None:
            knob.write_text(before)


def _readahead_knob(path: Path) -> Path | None:
    device = os.stat(path).st_dev
    number = f"{os.major(device)}:{os.minor(device)}"
    block = Path("/sys/dev/block", number).resolve()
    for bdi in (block / "bdi", block.parent / "bdi", Path("/sys/class/bdi", number)):  # a disk, a partition, other
        if (bdi / "read_ahead_kb").is_file():
            return bdi / "read_ahead_kb"
    return None


def drop_page_cache() -> bool:
    """Write out dirty pages, then drop the page cache, dentries and inodes: the next start reads from disk. False
    where that is not permitted (not root, or a container without /proc/sys write access)."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True
