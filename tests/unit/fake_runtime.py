"""A scripted NRI runtime for protocol corners a real containerd 2.1 cannot be made to produce
(split Synchronize, the v0.12 per-event RPCs and their fallback). It speaks the real wire format through
our own transport with the conns swapped: the runtime serves conn 2 and calls on conn 1."""

from __future__ import annotations

import asyncio

from nri_optimizer.nri import connection, mux
from nri_optimizer.nri.api import PLUGIN_SERVICE, RUNTIME_SERVICE
from nri_optimizer.nri.proto import nri_pb2 as api


class FakeRuntime:
    def __init__(self, *, register_delay: float = 0.0) -> None:
        self.registrations: list[api.RegisterPluginRequest] = []
        self.registered = asyncio.Event()
        self.register_delay = register_delay
        self.connection: connection.Connection | None = None
        self._run: asyncio.Task[None] | None = None

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connection = connection.Connection(
            reader,
            writer,
            self._handle,
            server_conn=mux.RUNTIME_SERVICE_CONN,
            client_conn=mux.PLUGIN_SERVICE_CONN,
        )
        self._run = asyncio.create_task(self.connection.run())

    async def _handle(self, service: str, method: str, payload: bytes) -> bytes:
        if (service, method) != (RUNTIME_SERVICE, "RegisterPlugin"):
            raise connection.Unimplemented()
        await asyncio.sleep(self.register_delay)
        request = api.RegisterPluginRequest()
        request.ParseFromString(payload)
        self.registrations.append(request)
        self.registered.set()
        return b""

    async def call(self, method: str, message: object, *, timeout: float = 2.0, service: str = PLUGIN_SERVICE) -> bytes:
        assert self.connection is not None
        return await self.connection.call(service, method, message.SerializeToString(), timeout)  # type: ignore[attr-defined]

    async def configure(self, config: str = "", request_timeout_ms: int = 2000) -> api.ConfigureResponse:
        request = api.ConfigureRequest(
            config=config, runtime_name="containerd", runtime_version="2.3.0", request_timeout=request_timeout_ms
        )
        response = api.ConfigureResponse()
        response.ParseFromString(await self.call("Configure", request))
        return response

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        if self._run is not None:
            await self._run
