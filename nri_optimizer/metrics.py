"""What the daemon counts, and the Prometheus endpoint that shows it (``metrics_address``; off by default).

The plugin calls a `Metrics` object at each step of a trace. Without ``metrics_address`` that object counts nothing
and ``prometheus-client`` is never imported; with it, `serve()` counts with the library's own metric types in a
registry of its own and answers scrapes (``GET /metrics``) on a unix socket or an IP:PORT, in the event loop (no
thread). prometheus-client comes with the ``[metrics]`` extra, which ``make install-optimizer`` and the DaemonSet's
image install.

    nri_optimizer_traces_started_total                  containers whose trace began (the mark is on)
    nri_optimizer_traces_completed_total                traces whose list was written
    nri_optimizer_traces_lost_total{reason}             traces that ended without a list: trace_server (it died,
                                                        stalled or never finished draining), shutdown (the plugin
                                                        stopped while the container ran)
    nri_optimizer_containers_not_traced_total{reason}   annotation, namespace, image, opt-in (the selection rules),
                                                        recorded (overwrite = false), unusable (no image name, no
                                                        pid), trace_failed (the server could not start a trace)
    nri_optimizer_files_recorded_total                  paths written into lists
    nri_optimizer_kernel_events_total                   events the trace server read from the kernel
    nri_optimizer_queue_overflows_total                 traces whose kernel queue overflowed
    nri_optimizer_kernel_dropped_events_total           events the kernel dropped
    nri_optimizer_trace_server_stalls_total             servers declared stalled (stall_timeout) and killed
    nri_optimizer_trace_server_restarts_total           servers that ended without being asked to
    nri_optimizer_result_write_failures_total           lists that could not be written
    nri_optimizer_lists_published_total                 lists attached to their image in its registry (publish), or
                                                        found there already
    nri_optimizer_list_publish_retries_total            publish tries that failed and were followed by another
    nri_optimizer_list_publish_failures_total{reason}   lists not published: attempts (publish_attempts failed),
                                                        refused (push-list said its input is wrong), shutdown
                                                        (the daemon stopped first), queue_full
    nri_optimizer_start_container_seconds               StartContainer handling time (histogram)
    nri_optimizer_traces_in_flight                      containers being traced now
    process_*                                           the daemon's own CPU, memory and open fds
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import logging
import os
import stat
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

PACKAGE = "prometheus_client"
# StartContainer is answered within 75 % of containerd's 2 s request timeout; the mark takes about a millisecond.
START_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0)
# A scrape request is one line and a few headers; anything longer or slower is not a scraper.
MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 5.0
SOCKET_MODE = 0o600  # the daemon is root's; so is what it shows


class Metrics:
    """What the plugin counts. This one counts nothing: the daemon without metrics_address."""

    def not_traced(self, reason: str) -> None:
        pass

    def trace_started(self) -> None:
        pass

    def trace_completed(self, files: int) -> None:
        pass

    def trace_lost(self, reason: str) -> None:
        pass

    def kernel(self, events: int, overflowed: bool, dropped: int) -> None:
        """What the trace server reported when a trace ended (DONE)."""

    def server_stalled(self) -> None:
        pass

    def server_restarted(self) -> None:
        pass

    def write_failed(self) -> None:
        pass

    def list_published(self) -> None:
        pass

    def list_publish_retried(self) -> None:
        pass

    def list_publish_failed(self, reason: str) -> None:
        pass

    def start_container_handled(self, seconds: float) -> None:
        pass


def _prometheus() -> Any:
    # The daemon keeps OpenSSL out of its memory (cli/__init__.py), but prometheus_client's exposition module
    # imports ssl unconditionally (for an HTTPS server we do not use): a daemon with metrics on pays for it.
    if PACKAGE not in sys.modules and "ssl" in sys.modules and sys.modules["ssl"] is None:
        del sys.modules["ssl"]
    return importlib.import_module(PACKAGE)


class PrometheusMetrics(Metrics):
    """Counts into prometheus-client metrics, in a registry of their own (only ours and the process's)."""

    def __init__(self, in_flight: Callable[[], int]) -> None:
        prom = _prometheus()
        prom.disable_created_metrics()  # a *_created series beside every counter doubles a scrape for nothing
        self.registry = registry = prom.CollectorRegistry(auto_describe=True)
        prom.ProcessCollector(registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return prom.Counter(f"nri_optimizer_{name}", doc, labels, registry=registry)

        self._started = counter("traces_started", "Containers whose trace began (the mark is on).")
        self._completed = counter("traces_completed", "Traces whose list was written.")
        self._lost = counter("traces_lost", "Traces that ended without a list, by reason.", ("reason",))
        self._not_traced = counter("containers_not_traced", "Containers not traced, by reason.", ("reason",))
        self._files = counter("files_recorded", "Paths written into lists.")
        self._events = counter("kernel_events", "Events the trace server read from the kernel.")
        self._overflows = counter("queue_overflows", "Traces whose kernel event queue overflowed.")
        self._dropped = counter("kernel_dropped_events", "Events the kernel dropped.")
        self._stalls = counter("trace_server_stalls", "Trace servers declared stalled and killed.")
        self._restarts = counter("trace_server_restarts", "Trace servers that ended without being asked to.")
        self._write_failures = counter("result_write_failures", "Lists that could not be written.")
        self._published = counter("lists_published", "Lists attached to their image in its registry.")
        self._publish_retries = counter("list_publish_retries", "Publish tries that failed and were tried again.")
        self._publish_failures = counter("list_publish_failures", "Lists not published, by reason.", ("reason",))
        self._start = prom.Histogram(
            "nri_optimizer_start_container_seconds",
            "StartContainer handling time.",
            buckets=START_BUCKETS,
            registry=registry,
        )
        prom.Gauge("nri_optimizer_traces_in_flight", "Containers being traced now.", registry=registry).set_function(
            in_flight
        )
        self._choose_encoder = prom.exposition.choose_encoder

    def not_traced(self, reason: str) -> None:
        self._not_traced.labels(reason).inc()

    def trace_started(self) -> None:
        self._started.inc()

    def trace_completed(self, files: int) -> None:
        self._completed.inc()
        self._files.inc(files)

    def trace_lost(self, reason: str) -> None:
        self._lost.labels(reason).inc()

    def kernel(self, events: int, overflowed: bool, dropped: int) -> None:
        self._events.inc(events)
        if overflowed:
            self._overflows.inc()
        self._dropped.inc(dropped)

    def server_stalled(self) -> None:
        self._stalls.inc()

    def server_restarted(self) -> None:
        self._restarts.inc()

    def write_failed(self) -> None:
        self._write_failures.inc()

    def list_published(self) -> None:
        self._published.inc()

    def list_publish_retried(self) -> None:
        self._publish_retries.inc()

    def list_publish_failed(self, reason: str) -> None:
        self._publish_failures.labels(reason).inc()

    def start_container_handled(self, seconds: float) -> None:
        self._start.observe(seconds)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The registry in the format the scraper asked for (the library's negotiation): (body, content type)."""
        encode, content_type = self._choose_encoder(accept)
        return encode(self.registry), content_type

    async def serve(self, address: str) -> asyncio.Server:
        """Answer scrapes on ``address`` (config.metrics_address) until the returned server is closed."""
        if os.path.isabs(address):
            _remove_stale_socket(address)
            old_umask = os.umask(0o777 & ~SOCKET_MODE)  # never a moment with a wider mode
            try:
                server = await asyncio.start_unix_server(self._answer, address, limit=MAX_REQUEST_HEAD)
            finally:
                os.umask(old_umask)
        else:
            host, _, port = address.rpartition(":")
            server = await asyncio.start_server(self._answer, host.strip("[]"), int(port), limit=MAX_REQUEST_HEAD)
        log.info("metrics on %s (GET /metrics)", address)
        return server

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, content_type = self._respond(head)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # not a scraper (too slow, too long), or gone: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, head: bytes) -> tuple[str, bytes, str]:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, _, rest = request_line.partition(" ")
        target = rest.partition(" ")[0].partition("?")[0]
        if target not in ("/metrics", "/"):
            return "404 Not Found", b"not found: scrape /metrics\n", "text/plain"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"", "text/plain"
        headers = dict(line.partition(":")[::2] for line in header_lines if ":" in line)
        accept = next((v.strip() for k, v in headers.items() if k.strip().lower() == "accept"), "")
        body, content_type = self.exposition(accept)
        return "200 OK", b"" if method == "HEAD" else body, content_type


def _remove_stale_socket(path: str) -> None:
    """A socket left by an earlier daemon is replaced; anything else at the path is the operator's: refuse."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "it exists and is not a socket", path)
    os.unlink(path)
