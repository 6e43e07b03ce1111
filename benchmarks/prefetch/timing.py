"""One repetition's clock, and its idea of "ready".

The seed's harness added ``total_seconds() + microseconds / 1e6`` and so counted every sub-second part twice.
Here every phase is the difference of two readings of one monotonic clock (perf_counter), each reading cut to
whole microseconds once: the phases then add up to the total exactly, in integers, and nothing is counted twice.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from benchmarks.prefetch.config import Ready
from nri_optimizer.cri.client import CriClient, read_log

POLL = 0.01  # readiness is seen at most this much (plus one check) after it happens
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the workload is on loopback


class PhaseTimer:
    def __init__(self, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self._clock = clock
        self._start = self._last = self._now()
        self.phases: dict[str, int] = {}  # name -> µs

    def _now(self) -> int:
        return self._clock() // 1000

    def lap(self, name: str) -> int:
        """End phase `name` now (it began when the previous one ended); its length in µs."""
        now = self._now()
        self.phases[name] = now - self._last
        self._last = now
        return self.phases[name]

    @property
    def total_us(self) -> int:
        total = self._last - self._start
        assert total == sum(self.phases.values()), (total, self.phases)
        return total


class NotReady(Exception):
    pass


def wait_ready(cri: CriClient, container_id: str, log_path: Path, ready: Ready, timeout: float) -> None:
    """Return once the container is ready as `ready` says; raise NotReady if it exits first or `timeout` passes."""
    if ready.kind == "start":
        return
    deadline = time.monotonic() + timeout
    while True:
        if _holds(ready, log_path):
            return
        status = cri.container_status(container_id)
        if status.state == "exited":
            if ready.kind == "exit":
                if status.exit_code == 0:
                    return
                raise NotReady(f"the container exited with {status.exit_code}, not 0")
            if _holds(ready, log_path):  # the line came just before the exit
                return
            raise NotReady(f"the container exited with {status.exit_code} before {ready.describe()}")
        if time.monotonic() >= deadline:
            raise NotReady(f"not ready after {timeout:g} s: {ready.describe()} did not happen")
        time.sleep(POLL)


def _holds(ready: Ready, log_path: Path) -> bool:
    if ready.kind == "url":
        return _answers(ready.value)
    if ready.kind == "line":
        try:
            return any(ready.value in line for line in read_log(log_path))
        except FileNotFoundError:
            return False
    return False


def _answers(url: str) -> bool:
    try:
        with _opener.open(url, timeout=1) as response:
            return bool(200 <= response.status < 400)
    except urllib.error.HTTPError as exc:
        return 300 <= exc.code < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False
