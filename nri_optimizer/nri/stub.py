"""The NRI plugin runtime: registration, configuration, synchronization, events and reconnection.

A plugin is any object. Its coroutine methods named after NRI events (``start_container``,
``stop_container``, ...) are its handlers, and the event subscription is derived from the ones it has.
Everything else here is the stub's business, not the plugin's:

* pre-launched mode: containerd started us with one end of a socketpair on the fd in NRI_PLUGIN_SOCKET;
  when it hangs up, we are done.
* external mode: we connect to the NRI socket; when containerd goes away we reconnect with backoff,
  register again and carry on.

Event handlers never make containerd wait beyond a bound and never fail its request: an observer that
answered StartContainer with an error would fail the user's container.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from nri_optimizer.errors import ConfigError, RpcError
from nri_optimizer.nri import connection, ttrpc
from nri_optimizer.nri.api import (
    EVENT_HANDLERS,
    EVENT_NAMES,
    PLUGIN_SERVICE,
    RUNTIME_SERVICE,
    Identity,
    event_mask,
)
from nri_optimizer.nri.proto import nri_pb2 as api

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

# NRI's defaults; Configure carries the runtime's real values from NRI v0.8 on.
DEFAULT_REGISTRATION_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 2.0

# Answer events with this much of the request timeout to spare, so that a slow handler is cut off and
# answered OK before containerd gives up on us (and, for a pre-launched plugin, kills us).
HANDLER_SHARE_OF_TIMEOUT = 0.75

RECONNECT_BACKOFF_FIRST = 0.05
RECONNECT_BACKOFF_MAX = 0.5


def tolerates_configure_errors(runtime_name: str, runtime_version: str) -> bool:
    """Whether the runtime survives a Configure error (it then drops the plugin and carries on).

    containerd 2.x does; containerd 1.7 treats a pre-launched plugin's failure as fatal to CRI. Runtimes
    we do not know are treated as the unsafe kind.
    """
    major = re.match(r"v?([0-9]+)\.", runtime_version)
    return runtime_name == "containerd" and major is not None and int(major.group(1)) >= 2


class Stub:
    def __init__(
        self,
        plugin: Any,
        identity: Identity,
        *,
        on_connect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._plugin = plugin
        self._identity = identity
        self._on_connect = on_connect
        self._request_timeout = DEFAULT_REQUEST_TIMEOUT
        self._registration_timeout = DEFAULT_REGISTRATION_TIMEOUT
        self._connection: connection.Connection | None = None
        self._inert = False  # configuration failed on a runtime that cannot be told so
        self.registered = asyncio.Event()

    # -- modes ------------------------------------------------------------------------------------------

    async def run_prelaunched(self, fd: int) -> None:
        """Serve the socketpair containerd gave us until it hangs up."""
        sock = socket.socket(fileno=fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        await self._serve(reader, writer)

    async def run_external(self, path: str) -> None:
        """Connect to the runtime's NRI socket, and reconnect whenever it goes away. Runs until cancelled."""
        backoff = RECONNECT_BACKOFF_FIRST
        down_logged = False
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(path)
            except OSError as exc:
                if not down_logged:
                    log.warning("cannot connect to NRI socket %s: %s; retrying", path, exc.strerror or exc)
                    down_logged = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX)
                continue
            log.info("connected to NRI socket %s", path)
            backoff, down_logged = RECONNECT_BACKOFF_FIRST, False
            await self._serve(reader, writer)
            log.warning("NRI connection to %s closed; reconnecting", path)

    # -- one connection ---------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.registered.clear()
        conn = connection.Connection(reader, writer, self._handle)
        self._connection = conn
        # conn 1 is served from here on; Configure may come before the RegisterPlugin reply does.
        serving = asyncio.create_task(conn.run())
        registering = asyncio.create_task(self._register(conn))
        try:
            await serving
        finally:
            registering.cancel()
            self._connection = None

    async def _register(self, connection: connection.Connection) -> None:
        request = api.RegisterPluginRequest(plugin_name=self._identity.name, plugin_idx=self._identity.idx)
        try:
            await connection.call(
                RUNTIME_SERVICE, "RegisterPlugin", request.SerializeToString(), self._registration_timeout
            )
        except RpcError as exc:
            log.error("registration as %s-%s failed: %s", self._identity.idx, self._identity.name, exc.message)
            await connection.close()
            return
        log.info("registered as %s-%s", self._identity.idx, self._identity.name)
        self.registered.set()
        if self._on_connect is not None:
            await self._on_connect()

    async def _handle(self, service: str, method: str, payload: bytes) -> bytes:
        if service != PLUGIN_SERVICE:
            raise connection.Unimplemented()
        if method == "Configure":
            return await self._configure(_parse(api.ConfigureRequest, payload))
        if method == "Synchronize":
            return await self._synchronize(_parse(api.SynchronizeRequest, payload))
        if method == "StateChange":
            event = _parse(api.StateChangeEvent, payload)
            if event.event in EVENT_HANDLERS:
                await self._event(event.event, event.pod, event.container)
            return b""
        if method in EVENT_NAMES:
            event_id = EVENT_NAMES[method]
            if not callable(getattr(self._plugin, EVENT_HANDLERS[event_id], None)):
                raise connection.Unimplemented()
            request = _parse(api.StartContainerRequest, payload)
            await self._event(event_id, request.pod, request.container)
            return b""
        if method == "Shutdown":
            log.info("runtime is shutting down")
            return b""
        raise connection.Unimplemented()

    async def _configure(self, request: api.ConfigureRequest) -> bytes:
        if request.registration_timeout > 0:
            self._registration_timeout = request.registration_timeout / 1000
        if request.request_timeout > 0:
            self._request_timeout = request.request_timeout / 1000
        log.info(
            "configured by %s %s (request timeout %.1f s)",
            request.runtime_name,
            request.runtime_version,
            self._request_timeout,
        )
        self._inert = False
        try:
            await self._plugin.configure(request.config, request.runtime_name, request.runtime_version)
            events = event_mask(self._plugin, getattr(self._plugin, "events", None))
        except (ConfigError, ValueError) as exc:
            log.error("configuration rejected: %s", exc)
            if tolerates_configure_errors(request.runtime_name, request.runtime_version):
                raise RpcError(ttrpc.Code.INVALID_ARGUMENT, str(exc)) from exc
            # containerd 1.7 stops its CRI service when a pre-launched plugin fails Configure: one bad config
            # file would take every workload on the node down. Stay connected and do nothing instead.
            log.error(
                "%s %s cannot survive a plugin's Configure error: staying registered but inert (no tracing) "
                "until the config is fixed and the plugin restarted",
                request.runtime_name,
                request.runtime_version,
            )
            self._inert = True
            events = event_mask(self._plugin)
        return api.ConfigureResponse(events=events).SerializeToString()

    async def _synchronize(self, request: api.SynchronizeRequest) -> bytes:
        handler = getattr(self._plugin, "synchronize", None)
        if handler is not None:
            try:
                await handler(list(request.pods), list(request.containers))
            except Exception:
                log.exception("synchronize handler failed")
        # Echo `more`: a runtime splitting a large state drops a plugin that does not.
        return api.SynchronizeResponse(more=request.more).SerializeToString()

    async def _event(self, event: int, pod: api.PodSandbox, container: api.Container) -> None:
        """Run a handler within its share of the request timeout; failures are logged, never returned."""
        handler = getattr(self._plugin, EVENT_HANDLERS[event], None)
        if handler is None or self._inert:
            return
        budget = self._request_timeout * HANDLER_SHARE_OF_TIMEOUT
        try:
            await asyncio.wait_for(handler(pod, container), budget)
        except TimeoutError:
            log.error(
                "%s %s: handler took longer than %.2f s; answered anyway", container.id, EVENT_HANDLERS[event], budget
            )
        except Exception:
            log.exception("%s %s: handler failed; answered anyway", container.id, EVENT_HANDLERS[event])

    @property
    def request_timeout(self) -> float:
        return self._request_timeout


def _parse(message_type: type[M], payload: bytes) -> M:
    message = message_type()
    try:
        message.ParseFromString(payload)
    except Exception as exc:
        raise RpcError(ttrpc.Code.INVALID_ARGUMENT, f"undecodable {message_type.__name__}: {exc}") from exc
    return message
