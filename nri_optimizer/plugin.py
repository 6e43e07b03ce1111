"""What the plugin does: on StartContainer, begin a trace session for the container and wait until it is
watching; on StopContainer (or after ``timeout`` seconds), finish it and persist the list.

Sessions are keyed by container id, results by image. Every failure is logged and the event answered OK:
a profiler must never stand between a user and their container.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from nri_optimizer import config as cfg
from nri_optimizer import logs
from nri_optimizer.errors import ResultError, TraceError
from nri_optimizer.metrics import Metrics, PrometheusMetrics
from nri_optimizer.nri.proto import nri_pb2 as api
from nri_optimizer.publish import Job, Publisher
from nri_optimizer.results import reference, runs
from nri_optimizer.results.journal import Journal
from nri_optimizer.results.key import ResultKey, result_key, split_name
from nri_optimizer.selection import Selection
from nri_optimizer.trace.client import Session, TraceClient
from nri_optimizer.trace.recorder import Recorder
from nri_optimizer.trace.upper import UpperLayer

log = logging.getLogger(__name__)

IMAGE_NAME_ANNOTATION = "io.kubernetes.cri.image-name"

# How long StartContainer waits for the server to place its mark. containerd waits for us (2 s by default,
# and the stub answers at 75 % of that whatever happens); the mark normally takes about a millisecond, a
# first start of the server a few hundred.
READY_TIMEOUT = 1.0
# How long the server may take to drain a stopped container's queue.
DRAIN_TIMEOUT = 30.0


@functools.lru_cache(maxsize=1)
def selection(config: cfg.Config) -> Selection:
    """The config's selection rules, compiled once per config."""
    return Selection(
        config.mode,
        namespace_include=config.namespace_include,
        namespace_exclude=config.namespace_exclude,
        image_include=config.image_include,
        image_exclude=config.image_exclude,
    )


def image_name(container: api.Container) -> str:
    """Container.image (NRI >= v0.12.2), else the CRI annotation every released containerd sets."""
    return container.image.name or container.annotations.get(IMAGE_NAME_ANNOTATION, "")


def describe(pod: api.PodSandbox, container: api.Container) -> str:
    return (
        f"name={container.name} pid={container.pid} image={image_name(container) or '-'} pod={pod.namespace}/{pod.name}"
    )


@dataclass
class ContainerTrace:
    container_id: str
    image: reference.Reference
    result: ResultKey
    session: Session
    recorder: Recorder
    upper: UpperLayer | None
    timer: asyncio.TimerHandle | None = field(default=None)
    noted: asyncio.Task[None] | None = field(default=None)  # the journal note being written
    unnoted: bool = field(default=False)  # the journal note has been removed

    def release(self) -> None:
        """Let go of what the trace holds open (the container's upper layer)."""
        if self.upper is not None:
            self.upper.close()


class Plugin:
    """The NRI plugin object: its handler methods are found by the stub."""

    def __init__(
        self,
        config: cfg.Config,
        *,
        prelaunched: bool,
        select: Callable[[api.PodSandbox, api.Container], bool] | None = None,
        on_done: Callable[[str, runs.Recorded | None], None] | None = None,
        journal: bool = True,
    ) -> None:
        """``select`` narrows tracing to some containers (``profile`` traces only its own); ``on_done`` is
        told (container id, what was recorded or None) when a trace has been written or given up; ``journal``
        notes running traces in persist_dir so that a successor can log those a crash lost (the daemon's
        business, not a one-off profile's)."""
        self.config = config
        self._prelaunched = prelaunched
        self._select = select
        self._on_done = on_done
        self._journal = journal
        self._reported_lost = False
        self.configured = False
        self.metrics = Metrics()  # counts nothing until configure() finds metrics_address
        self._metrics_server: asyncio.Server | None = None
        self._tracer: TraceClient | None = None
        self._traces: dict[str, ContainerTrace] = {}
        self._finishing: set[asyncio.Task[None]] = set()  # background work to wait for at shutdown
        self._writing: weakref.WeakValueDictionary[ResultKey, asyncio.Lock] = weakref.WeakValueDictionary()
        self._publisher: Publisher | None = None  # made at the first list to publish

    @property
    def events(self) -> tuple[str, ...]:
        return self.config.events

    async def configure(self, text: str, runtime: str, version: str) -> None:
        # A pre-launched plugin has no file or flags: its whole configuration is the drop-in file's text,
        # which containerd hands over here. An external plugin gets "" and keeps what it read at start.
        if self._prelaunched:
            self._configure_from_text(text)
        if self.config.metrics_address and self._metrics_server is None:
            await self._serve_metrics(self.config.metrics_address)
        if self._journal and not self._reported_lost:
            # Once: Configure comes again on every reconnect, when the notes are our own running traces.
            self._reported_lost = True
            Journal(self.config.persist_dir).report_lost()
        # Start the trace server now, so that the first StartContainer does not pay for it.
        self._background(self._get_tracer().start()).add_done_callback(_log_start_failure)

    def _configure_from_text(self, text: str) -> None:
        try:
            config = cfg.build(cfg.parse_toml(text, "Configure"), {})
            cfg.validate_paths(config, "Configure")
        except cfg.ConfigError:
            self._setup_prelaunched_logging(cfg.build({"log_file": cfg.salvage_log_file(text)}, {}))
            raise
        self._setup_prelaunched_logging(config)
        self.config = config
        self.configured = True

    async def _serve_metrics(self, address: str) -> None:
        metrics = PrometheusMetrics(in_flight=lambda: len(self._traces))
        try:
            self._metrics_server = await metrics.serve(address)
        except OSError as exc:  # metrics must not stop tracing: said, and traced without them
            log.error("cannot serve metrics on %s: %s; running without metrics", address, exc.strerror or exc)
            return
        self.metrics = metrics

    def _setup_prelaunched_logging(self, config: cfg.Config) -> None:
        logs.setup(cfg.log_level(config), config.log_file or logs.PRELAUNCHED_LOG_FILE, stderr=False)

    # -- events -----------------------------------------------------------------------------------------

    async def start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        started_ns = time.monotonic_ns()
        if self._select is not None and not self._select(pod, container):
            return
        try:
            await self._start_container(pod, container, started_ns)
        finally:
            self.metrics.start_container_handled((time.monotonic_ns() - started_ns) / 1e9)

    async def _start_container(self, pod: api.PodSandbox, container: api.Container, started_ns: int) -> None:
        cid = container.id
        log.info("%s StartContainer %s", cid, describe(pod, container))
        if cid in self._traces:
            log.warning("%s is traced already; ignoring a second StartContainer", cid)
            return
        try:
            image = reference.parse(image_name(container))
        except reference.ReferenceError as exc:
            log.warning("%s not traced: %s", cid, exc)
            self.metrics.not_traced("unusable")
            return
        config = self.config
        skip = selection(config).skip(pod.namespace, pod.annotations, container.name, str(image))
        if skip is not None:
            log.info("%s not traced: %s", cid, skip.message)
            self.metrics.not_traced(skip.rule)
            return
        workload = workload_of(config.workload_key, pod, container)
        try:
            result = result_key(image, timeout=config.timeout, workload=workload)
        except reference.ReferenceError as exc:
            log.warning("%s not traced: %s", cid, exc)
            self.metrics.not_traced("unusable")
            return
        if config.on_repeat == "keep" and _complete_result(config.persist_dir, result):
            log.info("%s not traced: %s is recorded already (on_repeat = keep)", cid, _subject(image, workload))
            self.metrics.not_traced("recorded")
            return
        if container.pid <= 0:
            log.warning("%s not traced: the runtime gave no pid", cid)
            self.metrics.not_traced("unusable")
            return
        checked_ns = time.monotonic_ns()
        upper = UpperLayer.of_process(container.pid)
        recorder = Recorder(cid, started_ns, include_exec=config.include_exec)
        upper_ns = time.monotonic_ns()
        try:
            session = await self._start_session(container.pid, recorder)
        except (TraceError, asyncio.CancelledError) as exc:
            if upper is not None:
                upper.close()
            if isinstance(exc, asyncio.CancelledError):  # the stub's deadline: it logs that
                raise
            log.error("%s not traced: %s", cid, exc)
            self.metrics.not_traced("trace_failed")
            return
        ready_ns = time.monotonic_ns()
        trace = ContainerTrace(cid, image, result, session, recorder, upper)
        self._traces[cid] = trace
        self.metrics.trace_started()
        if self._journal:
            # Off the event loop: containerd serializes plugin events, so a slow disk here would delay
            # every other container's start.
            trace.noted = self._background(asyncio.to_thread(Journal(config.persist_dir).begin, cid, str(image)))
        if config.timeout:
            trace.timer = asyncio.get_running_loop().call_later(config.timeout, self.finish, cid, "timeout")
        log.info(
            "%s tracing pid %d for %s (watching after %.1f ms, %s events)",
            cid,
            container.pid,
            image,
            (time.monotonic_ns() - started_ns) / 1e6,
            session.mode,
        )
        log.debug(
            "%s StartContainer steps: checks %.2f ms, upper layer %.2f ms, trace server (TRACE to READY) %.2f ms",
            cid,
            (checked_ns - started_ns) / 1e6,
            (upper_ns - checked_ns) / 1e6,
            (ready_ns - upper_ns) / 1e6,
        )

    async def stop_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        if self._select is not None and not self._select(pod, container):
            return
        log.info("%s StopContainer %s", container.id, describe(pod, container))
        self.finish(container.id, "stopped")

    async def synchronize(self, pods: list[api.PodSandbox], containers: list[api.Container]) -> None:
        """After a reconnect: containers that stopped while we were away will send no StopContainer."""
        alive = {c.id for c in containers if c.state != api.CONTAINER_STOPPED}
        for cid in [cid for cid in self._traces if cid not in alive]:
            self.finish(cid, "gone while disconnected")

    # -- sessions ---------------------------------------------------------------------------------------

    def _get_tracer(self) -> TraceClient:
        if self._tracer is None:
            # The server's log is relayed into ours: at our level, so that profile and a quiet daemon stay quiet.
            level = logging.getLevelName(max(logging.getLogger().getEffectiveLevel(), logging.DEBUG))
            queue = [] if self.config.unlimited_queue else ["--bounded-queue"]
            self._tracer = TraceClient(
                [self.config.server_path, "--log-level", level, *queue],
                on_exit=lambda status: self.metrics.server_restarted(),
                stall_timeout=self.config.stall_timeout,
                on_stall=self._server_stalled,
            )
        return self._tracer

    def _server_stalled(self) -> None:
        self.metrics.server_stalled()
        # It was working before: start the next one now, so that the next container does not wait for it.
        self._background(self._get_tracer().start()).add_done_callback(_log_start_failure)

    async def _start_session(self, pid: int, recorder: Recorder) -> Session:
        # The stub may cancel us at its deadline; a session that becomes ready after that must not live on.
        task = asyncio.ensure_future(
            self._get_tracer().trace(pid, recorder, timeout=READY_TIMEOUT, mode=self.config.event_mode, residency=True)
        )
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_stop_orphan)
            raise

    def _take(self, cid: str) -> ContainerTrace | None:
        """Stop following a container: its trace leaves the table and its timeout is called off."""
        trace = self._traces.pop(cid, None)
        if trace is not None and trace.timer is not None:
            trace.timer.cancel()
        return trace

    def finish(self, cid: str, why: str) -> None:
        """End a container's trace now; the list is written in the background (on_done tells when)."""
        trace = self._take(cid)
        if trace is None:
            return
        # StopContainer is answered now; draining and writing happen after, off containerd's clock.
        self._background(self._complete(trace, why))

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run work after the answer; shutdown waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return task

    async def tracer_started(self) -> None:
        """Wait until the trace server runs. ``profile`` does before it starts its container, so that its one trace
        does not pay for the server's start within containerd's request timeout. Raises TraceError."""
        await self._get_tracer().start()

    def recorded(self, cid: str) -> int | None:
        """Files recorded so far for a container being traced."""
        trace = self._traces.get(cid)
        return len(trace.recorder.entries) if trace is not None else None

    async def _complete(self, trace: ContainerTrace, why: str) -> None:
        cid = trace.container_id
        done: runs.Recorded | None = None
        try:
            outcome = await trace.session.stop(timeout=DRAIN_TIMEOUT)
            if outcome.incomplete:
                log.error("%s trace lost (%s): nothing written, earlier results kept", cid, outcome.incomplete)
                self.metrics.trace_lost("trace_server")
                return
            self.metrics.kernel(outcome.events, outcome.overflowed, outcome.lost)
            trace.recorder.take_residency(outcome.resident, outcome.ranges)
            incomplete = _incompleteness(outcome.overflowed, outcome.lost)
            if incomplete:
                log.warning("%s list is incomplete: %s", cid, incomplete)
            # One write of a result at a time in this process (the store's lock orders processes): writes of one
            # image that finish together then wait here, not in the thread pool that journal notes need too.
            writing = self._writing.setdefault(trace.result, asyncio.Lock())
            try:
                async with writing:
                    recorded, written = await asyncio.to_thread(self._write, trace, incomplete)
            except (ResultError, OSError) as exc:
                log.error("%s cannot write the result for %s: %s; earlier results kept", cid, trace.image, exc)
                self.metrics.write_failed()
                return
            await self._end_note(trace)  # before the result is logged: whoever reads the log sees results only
            if recorded.unwritten is not None:
                workload = split_name(trace.result.name)[1]
                log.info("%s done; %s %s", cid, _subject(trace.image, workload), recorded.unwritten)
                return
            done = recorded
            self.metrics.trace_completed(recorded.listed)
            log.info(
                "%s recorded %d files (%s; %d events, %d files reported, %d written by the container, "
                "%d unlistable, %d files of exec'd processes) in %s%s",
                cid,
                recorded.listed,
                why,
                outcome.events,
                outcome.files,
                written,
                len(trace.recorder.entries) - written - recorded.listed,
                trace.recorder.foreign,
                recorded.path,
                f"; merged with {recorded.runs - 1} earlier runs: {recorded.result_listed} files"
                if self.config.on_repeat == "merge"
                else "",
            )
            self._queue_publish(trace, recorded.path)
        finally:
            trace.release()
            await self._end_note(trace)
            if self._on_done is not None:
                self._on_done(cid, done)

    async def _end_note(self, trace: ContainerTrace) -> None:
        """Remove the trace's journal note, once: the trace has ended, whatever the ending."""
        if not self._journal or trace.unnoted:
            return
        trace.unnoted = True
        if trace.noted is not None:
            await trace.noted  # or the note could be written after it was removed
        await asyncio.to_thread(Journal(self.config.persist_dir).end, trace.container_id)

    def _queue_publish(self, trace: ContainerTrace, list_path: str) -> None:
        """With ``publish``, the result goes to the image's registry too, in the background (nri_optimizer/publish)."""
        config = self.config
        if not config.publish:
            return
        if self._publisher is None:
            self._publisher = Publisher(
                config.publish, config.publish_insecure, config.publish_attempts, metrics=lambda: self.metrics
            )
        image = str(trace.image)
        if self._publisher.wants(image):
            self._publisher.submit(
                Job(trace.container_id, image, trace.image.domain, list_path, split_name(trace.result.name)[1])
            )

    def _write(self, trace: ContainerTrace, incomplete: str | None) -> tuple[runs.Recorded, int]:
        """In a worker thread: leave out what the container wrote, then put the list into its result as on_repeat
        says. Returns what was recorded and the number of written files left out."""
        entries = trace.recorder.entries
        if trace.upper is not None:
            entries = trace.upper.without_written(entries)
            if trace.upper.unreadable:
                log.warning(
                    "%s could not look up %d paths in the container's upper layer (permissions?): "
                    "they are listed even if the container wrote them",
                    trace.container_id,
                    trace.upper.unreadable,
                )
        config = self.config
        recorded = runs.record(
            config.persist_dir,
            trace.result,
            entries,
            readable=config.readable,
            on_repeat=config.on_repeat,  # type: ignore[arg-type]  # checked by config
            window=config.merge_window,
            incomplete=incomplete,
        )
        return recorded, len(trace.recorder.entries) - len(entries)

    async def shutdown(self) -> None:
        """The daemon is going away: finished traces are written, running ones are lost (and said so)."""
        for cid in list(self._traces):
            trace = self._take(cid)
            assert trace is not None
            log.error("%s trace lost: the plugin is shutting down while the container runs", cid)
            self.metrics.trace_lost("shutdown")
            trace.release()
            await self._end_note(trace)
        if self._finishing:
            await asyncio.wait(self._finishing, timeout=DRAIN_TIMEOUT)
        if self._publisher is not None:
            await self._publisher.close()
        if self._tracer is not None:
            await self._tracer.close()
        if self._metrics_server is not None:
            self._metrics_server.close()


def workload_of(workload_key: str, pod: api.PodSandbox, container: api.Container) -> str:
    """The workload whose own result a container's list goes to, as workload_key says; "" for the image's."""
    if workload_key == cfg.WORKLOAD_BY_CONTAINER_NAME:
        return container.name
    if workload_key.startswith(cfg.WORKLOAD_LABEL_PREFIX):
        return pod.labels.get(workload_key[len(cfg.WORKLOAD_LABEL_PREFIX) :], "")
    return ""


def _subject(image: reference.Reference, workload: str) -> str:
    """How logs name a result: the image, and its workload when it has one."""
    return f"{image} (workload {workload})" if workload else str(image)


def _complete_result(persist_dir: str, result: ResultKey) -> bool:
    try:
        return runs.complete_result(persist_dir, result)
    except (OSError, ResultError):
        return False  # trace it: writing the list will say what is wrong with persist_dir


def _incompleteness(overflowed: bool, lost: int) -> str | None:
    reasons = ["the kernel's event queue overflowed"] if overflowed else []
    if lost:
        reasons.append(f"the kernel dropped {lost} events")
    return "; ".join(reasons) + ", files are missing" if reasons else None


def _log_start_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cannot start the trace server: %s; will retry at the next container", task.exception())


def _stop_orphan(task: asyncio.Future[Session]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    session = task.result()
    log.warning("trace session %d became ready after its StartContainer was answered; dropping it", session.id)
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop().create_task(session.stop(timeout=DRAIN_TIMEOUT))
