"""Publishing recorded lists (config ``publish``): after a trace's list is written, ``nri-optimizer push-list``
attaches it to the image in the image's registry, from a child process, in the background.

- Off containerd's clock: a list is queued once it is written, after StopContainer was answered; no NRI handler ever
  waits for a registry.
- Never at the local list's expense: push-list only reads the result. A list that cannot be published stays where it
  is, and the log says how to publish it by hand.
- Bounded: one push at a time; a result queued again before its push starts is pushed once (push-list reads the list
  when it starts: the newest); at most MAX_PENDING results wait; each try is killed after TRY_TIMEOUT seconds;
  ``publish_attempts`` tries, FIRST_PAUSE seconds apart and doubling up to MAX_PAUSE. A list push-list refuses as
  wrong (its exit status 2: no list there, say) is not tried again.

Why a child process rather than the registry client in the daemon: the daemon keeps OpenSSL out of its memory
(cli/__init__.py); a registry that stalls a request cannot be interrupted in a thread, but a process can be killed;
and push-list is what an operator runs by hand: the same code and the same messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nri_optimizer.metrics import Metrics
from nri_optimizer.selection import Patterns

log = logging.getLogger(__name__)

# push-list resolves a tag, reads the referrers, uploads up to four small blobs and a manifest (and on a registry
# without the referrers API reads, writes and reads back an index): a dozen requests, each of which the registry
# client gives 60 s to make progress. A try that takes longer is stuck.
TRY_TIMEOUT = 300.0
FIRST_PAUSE = 2.0  # seconds before the second try; doubled before each next one
MAX_PAUSE = 60.0
MAX_PENDING = 1000  # results waiting to be published; more are dropped (and counted): the node's lists stay
EXIT_REFUSED = 2  # push-list's status for what it was given being wrong: trying again cannot help
_PREFIX = "nri-optimizer push-list: "


@dataclass(frozen=True)
class Job:
    container_id: str  # the trace that wrote the list last (for the log)
    image: str  # the image reference, as push-list takes it
    registry: str  # its registry (domain), to tell whether it is insecure
    list_path: str  # the result's plain list
    workload: str = ""


def push_list_command() -> list[str]:
    """This interpreter running ``nri-optimizer``, isolated if the daemon is (a pre-launched plugin is)."""
    return [sys.executable, *(["-I"] if sys.flags.isolated else []), "-m", "nri_optimizer"]


class Publisher:
    def __init__(
        self,
        patterns: Sequence[str],
        insecure: Sequence[str],
        attempts: int,
        *,
        metrics: Callable[[], Metrics],
        command: Sequence[str] | None = None,
        first_pause: float = FIRST_PAUSE,
        try_timeout: float = TRY_TIMEOUT,
    ) -> None:
        """``metrics`` gives the plugin's current Metrics (configure may replace it); ``command`` runs nri-optimizer
        (default: push_list_command())."""
        self._patterns = Patterns(patterns)
        self._insecure = frozenset(insecure)
        self._attempts = attempts
        self._metrics = metrics
        self._command = list(command) if command is not None else push_list_command()
        self._first_pause = first_pause
        self._try_timeout = try_timeout
        self._pending: dict[str, Job] = {}  # list path -> job, in the order queued
        self._worker: asyncio.Task[None] | None = None
        self._publishing: Job | None = None

    def wants(self, image: str) -> bool:
        """Whether lists of `image` (its full reference) are published."""
        return self._patterns.matches(image)

    def submit(self, job: Job) -> None:
        """Queue a list for publishing; returns at once."""
        if job.list_path not in self._pending and len(self._pending) >= MAX_PENDING:
            log.error(
                "%s not publishing the list of %s: %d lists wait already; it stays in %s",
                job.container_id,
                job.image,
                MAX_PENDING,
                job.list_path,
            )
            self._metrics().list_publish_failed("queue_full")
            return
        self._pending[job.list_path] = job  # queued already: once, with the latest trace's id
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    @property
    def idle(self) -> bool:
        return not self._pending and self._publishing is None

    async def close(self) -> None:
        """Stop: a push under way is killed; what waits is not published (said, and counted)."""
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        left = [*([self._publishing] if self._publishing is not None else []), *self._pending.values()]
        self._pending.clear()
        self._publishing = None
        for job in left:
            log.warning(
                "%s the list of %s is not published: the plugin is stopping; it stays in %s (nri-optimizer "
                "push-list %s --list %s publishes it)",
                job.container_id,
                job.image,
                job.list_path,
                job.image,
                job.list_path,
            )
            self._metrics().list_publish_failed("shutdown")

    async def _work(self) -> None:
        while self._pending:
            path = next(iter(self._pending))
            self._publishing = self._pending.pop(path)
            await self._publish(self._publishing)
            self._publishing = None

    async def _publish(self, job: Job) -> None:
        pause = self._first_pause
        for attempt in range(1, self._attempts + 1):
            status, said = await self._try(job)
            if status == 0:
                log.info("%s published the list of %s: %s", job.container_id, job.image, said)
                self._metrics().list_published()
                return
            if status == EXIT_REFUSED:
                log.error("%s cannot publish the list of %s: %s", job.container_id, job.image, said)
                self._metrics().list_publish_failed("refused")
                return
            if attempt == self._attempts:
                break
            log.warning(
                "%s publishing the list of %s failed (try %d of %d): %s; trying again in %g s",
                job.container_id,
                job.image,
                attempt,
                self._attempts,
                said,
                pause,
            )
            self._metrics().list_publish_retried()
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
        log.error(
            "%s gave up publishing the list of %s after %d tries: %s; it stays in %s (nri-optimizer push-list "
            "%s --list %s publishes it)",
            job.container_id,
            job.image,
            self._attempts,
            said,
            job.list_path,
            job.image,
            job.list_path,
        )
        self._metrics().list_publish_failed("attempts")

    async def _try(self, job: Job) -> tuple[int, str]:
        """One run of push-list: (its exit status, the last line it said, without its prefix)."""
        argv = [
            *self._command,
            "push-list",
            job.image,
            "--list",
            job.list_path,
            *(["--insecure"] if job.registry in self._insecure else []),
            *(["--workload", job.workload] if job.workload else []),
        ]
        try:
            child = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            return 1, f"cannot run {argv[0]}: {exc.strerror or exc}"
        try:
            async with asyncio.timeout(self._try_timeout):
                _, err = await child.communicate()
        except BaseException as exc:  # the timeout, or the plugin stopping: the child goes too
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
            if isinstance(exc, TimeoutError):
                return 1, f"push-list did not finish within {self._try_timeout:g} s and was killed"
            raise
        lines = err.decode("utf-8", "replace").splitlines()
        said = lines[-1].removeprefix(_PREFIX) if lines else f"push-list ended with status {child.returncode}"
        return child.returncode or 0, said
