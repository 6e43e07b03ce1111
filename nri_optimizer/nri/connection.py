"""The thin asyncio layer over the mux and ttrpc codecs: one NRI socket, a ttrpc server and a ttrpc client.

It knows nothing of NRI's services; it moves requests to a handler and responses back to callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError

from nri_optimizer.errors import RpcError as RpcError
from nri_optimizer.nri import mux, ttrpc

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024


class Unimplemented(Exception):
    """Raised by a handler for a service or method it does not serve: answered with code 12."""


# (service, method, request payload) -> response payload. Raise Unimplemented or RpcError to fail the call.
Handler = Callable[[str, str, bytes], Awaitable[bytes]]


class Connection:
    """One multiplexed connection to the runtime.

    Requests arriving on ``server_conn`` go to ``handler``, each in its own task so that a slow one never
    holds back the next; ``call`` sends requests on ``client_conn``. ``run`` returns when the peer hangs up
    or breaks the protocol; pending calls then fail with RpcError(UNAVAILABLE).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler,
        *,
        server_conn: int = mux.PLUGIN_SERVICE_CONN,
        client_conn: int = mux.RUNTIME_SERVICE_CONN,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._server_conn = server_conn
        self._client_conn = client_conn
        self._demux = mux.Demuxer()
        self._decoders = {server_conn: ttrpc.Decoder(), client_conn: ttrpc.Decoder()}
        self._stream_ids = ttrpc.StreamIds()
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def run(self) -> None:
        try:
            while not self._closed:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    log.debug("runtime closed the connection")
                    return
                for conn_id, payload in self._demux.feed(data):
                    decoder = self._decoders.get(conn_id)
                    if decoder is None:
                        continue  # the multiplexer drops frames for conns nobody serves
                    for message in decoder.feed(payload):
                        self._dispatch(conn_id, message)
        except (mux.MuxError, ttrpc.TtrpcError) as exc:
            log.error("closing the NRI connection: protocol error: %s", exc)
        except (ConnectionError, OSError) as exc:
            log.debug("NRI connection lost: %s", exc)
        finally:
            await self.close()

    def _dispatch(self, conn_id: int, message: ttrpc.Message | ttrpc.Oversized) -> None:
        if conn_id == self._server_conn:
            if message.type != ttrpc.MessageType.REQUEST:
                log.warning("ignoring ttrpc message of type %d on the server conn", message.type)
                return
            if isinstance(message, ttrpc.Oversized):
                self._send(
                    self._server_conn,
                    ttrpc.encode_response(
                        message.stream_id,
                        code=ttrpc.Code.RESOURCE_EXHAUSTED,
                        message=f"message length {message.length} exceeds the maximum of {ttrpc.MAX_MESSAGE_PAYLOAD}",
                    ),
                )
                return
            task = asyncio.create_task(self._serve(message, time.monotonic_ns()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            future = self._pending.pop(message.stream_id, None)
            if future is None or future.done():
                log.warning("ignoring a response for unknown stream %d", message.stream_id)
                return
            if isinstance(message, ttrpc.Oversized):
                future.set_exception(RpcError(ttrpc.Code.RESOURCE_EXHAUSTED, "oversized response"))
                return
            try:
                response = ttrpc.decode_response(message.payload)
            except DecodeError as exc:
                future.set_exception(RpcError(ttrpc.Code.UNKNOWN, f"undecodable response: {exc}"))
                return
            if response.status.code != ttrpc.Code.OK:
                future.set_exception(RpcError(response.status.code, response.status.message))
            else:
                future.set_result(response.payload)

    async def _serve(self, message: ttrpc.Message, arrived_ns: int) -> None:
        """Answer one request; the debug log says how long it waited for the loop and how long the handler took."""
        started_ns = time.monotonic_ns()
        try:
            request = ttrpc.decode_request(message.payload)
        except DecodeError as exc:
            reply = ttrpc.encode_response(
                message.stream_id, code=ttrpc.Code.INVALID_ARGUMENT, message=f"undecodable request: {exc}"
            )
        else:
            try:
                payload = await self._handler(request.service, request.method, request.payload)
            except Unimplemented:
                reply = ttrpc.encode_response(
                    message.stream_id,
                    code=ttrpc.Code.UNIMPLEMENTED,
                    message=f"{request.service}/{request.method} is not implemented",
                )
            except RpcError as exc:
                reply = ttrpc.encode_response(message.stream_id, code=exc.code, message=exc.message)
            except Exception as exc:  # a handler bug must not take the connection down
                log.exception("handler for %s/%s failed", request.service, request.method)
                reply = ttrpc.encode_response(message.stream_id, code=ttrpc.Code.UNKNOWN, message=str(exc))
            else:
                reply = ttrpc.encode_response(message.stream_id, payload)
            log.debug(
                "%s/%s (stream %d): waited %.2f ms for the loop, answered in %.2f ms",
                request.service,
                request.method,
                message.stream_id,
                (started_ns - arrived_ns) / 1e6,
                (time.monotonic_ns() - started_ns) / 1e6,
            )
        self._send(self._server_conn, reply)

    def _send(self, conn_id: int, message: bytes) -> None:
        # One write() per ttrpc message: asyncio writes are not interleaved, so a message's frames stay
        # together and every message starts in a frame of its own.
        if not self._closed:
            self._writer.write(mux.encode_frames(conn_id, message))

    async def call(self, service: str, method: str, payload: bytes, timeout: float) -> bytes:
        if self._closed:
            raise RpcError(ttrpc.Code.UNAVAILABLE, "connection is closed")
        stream_id = self._stream_ids.next()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        self._send(
            self._client_conn,
            ttrpc.encode_request(stream_id, service, method, payload, timeout_ns=int(timeout * 1e9)),
        )
        try:
            await self._writer.drain()
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RpcError(ttrpc.Code.DEADLINE_EXCEEDED, f"{service}/{method} got no answer in {timeout} s") from None
        except ConnectionError as exc:
            raise RpcError(ttrpc.Code.UNAVAILABLE, f"connection lost: {exc}") from exc
        finally:
            self._pending.pop(stream_id, None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RpcError(ttrpc.Code.UNAVAILABLE, "connection closed"))
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    @property
    def closed(self) -> bool:
        return self._closed
