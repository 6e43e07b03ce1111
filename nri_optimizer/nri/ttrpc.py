"""ttrpc framing and envelopes, as a codec without I/O.

A ttrpc message is a 10-byte header, ``length: u32 BE | stream_id: u32 BE | type: u8 | flags: u8``, then
``length`` bytes of payload: a protobuf ``ttrpc.Request`` or ``ttrpc.Response``. NRI calls are unary.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from nri_optimizer.errors import TtrpcError as TtrpcError
from nri_optimizer.nri.proto import ttrpc_pb2

HEADER = struct.Struct(">IIBB")

# containerd/ttrpc's messageLengthMax: a peer refuses anything longer, and so do we.
MAX_MESSAGE_PAYLOAD = 4 << 20


class MessageType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3  # streaming only; NRI never sends it


class Code(enum.IntEnum):
    """gRPC status codes that we send (google.rpc.Code)."""

    OK = 0
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12  # NRI v0.12 falls back to StateChange only on this code
    UNAVAILABLE = 14


@dataclass(frozen=True, slots=True)
class Message:
    stream_id: int
    type: int
    flags: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Oversized:
    """A message longer than MAX_MESSAGE_PAYLOAD; its payload was skipped, the stream is still in sync."""

    stream_id: int
    type: int
    length: int


def encode_message(stream_id: int, type_: MessageType, payload: bytes, flags: int = 0) -> bytes:
    if len(payload) > MAX_MESSAGE_PAYLOAD:
        raise ValueError(f"ttrpc payload of {len(payload)} bytes exceeds the {MAX_MESSAGE_PAYLOAD}-byte limit")
    return HEADER.pack(len(payload), stream_id, type_, flags) + payload


class Decoder:
    """Reassembles ttrpc messages from a conn's byte stream, whatever the frame boundaries were."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._skip = 0  # payload bytes of an oversized message still to throw away

    def feed(self, data: bytes) -> list[Message | Oversized]:
        self._buffer += data
        out: list[Message | Oversized] = []
        buffer = self._buffer
        offset = 0
        while True:
            if self._skip:
                dropped = min(self._skip, len(buffer) - offset)
                self._skip -= dropped
                offset += dropped
                if self._skip:
                    break
            if len(buffer) - offset < HEADER.size:
                break
            length, stream_id, type_, flags = HEADER.unpack_from(buffer, offset)
            if length > MAX_MESSAGE_PAYLOAD:
                # Like containerd/ttrpc: discard the payload, keep the connection, answer with an error.
                out.append(Oversized(stream_id, type_, length))
                offset += HEADER.size
                self._skip = length
                continue
            end = offset + HEADER.size + length
            if end > len(buffer):
                break
            out.append(Message(stream_id, type_, flags, bytes(buffer[offset + HEADER.size : end])))
            offset = end
        del buffer[:offset]
        return out


def encode_request(stream_id: int, service: str, method: str, payload: bytes, timeout_ns: int = 0) -> bytes:
    request = ttrpc_pb2.Request(service=service, method=method, payload=payload, timeout_nano=timeout_ns)
    return encode_message(stream_id, MessageType.REQUEST, request.SerializeToString())


def encode_response(stream_id: int, payload: bytes = b"", code: int = Code.OK, message: str = "") -> bytes:
    """A success with an empty result is a bare header: proto3 omits every default field."""
    response = ttrpc_pb2.Response(payload=payload)
    if code != Code.OK:
        response.status.code = code
        response.status.message = message
    return encode_message(stream_id, MessageType.RESPONSE, response.SerializeToString())


def decode_request(payload: bytes) -> ttrpc_pb2.Request:
    request = ttrpc_pb2.Request()
    request.ParseFromString(payload)
    return request


def decode_response(payload: bytes) -> ttrpc_pb2.Response:
    response = ttrpc_pb2.Response()
    response.ParseFromString(payload)
    return response


class StreamIds:
    """Client stream ids: odd, starting at 1 on every connection, strictly increasing by 2."""

    def __init__(self) -> None:
        self._next = 1

    def next(self) -> int:
        stream_id = self._next
        if stream_id > 0xFFFFFFFF:
            raise TtrpcError("client stream ids are exhausted on this connection")
        self._next += 2
        return stream_id
