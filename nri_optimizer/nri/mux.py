"""NRI's socket multiplexer ("trunk"), as a codec without I/O.

One stream socket carries several logical byte streams. Each frame is an 8-byte header,
``conn_id: u32 BE | length: u32 BE``, then ``length`` bytes of payload for that conn.
NRI uses conn 1 (the plugin is the ttrpc server) and conn 2 (the plugin is the ttrpc client).
There are no open or close frames; frames for conns nobody listens on are dropped by the caller.
"""

from __future__ import annotations

import struct

from nri_optimizer.errors import MuxError as MuxError

HEADER = struct.Struct(">II")

PLUGIN_SERVICE_CONN = 1
RUNTIME_SERVICE_CONN = 2

# containerd's reader (nri pkg/net/multiplex) fails with ENOMEM and drops the whole connection when the first
# frame of a ttrpc message is longer than 4096 bytes, so we never send a frame longer than that.
MAX_SEND_PAYLOAD = 4096

# What we accept: a whole maximal ttrpc message (10-byte header + 4 MiB) in one frame. Anything longer is not
# something a runtime sends, and buffering it would let a peer make us hold arbitrary memory.
MAX_RECEIVE_PAYLOAD = 10 + (4 << 20)


def encode_frames(conn_id: int, data: bytes) -> bytes:
    """Frame ``data`` for ``conn_id``, in frames of at most MAX_SEND_PAYLOAD bytes.

    Callers pass exactly one ttrpc message, so every message starts in a frame of its own.
    """
    if not 0 < conn_id <= 0xFFFFFFFF:
        raise ValueError(f"conn id {conn_id} is out of range (conn 0 is reserved)")
    view = memoryview(data)
    out = bytearray()
    for start in range(0, max(len(view), 1), MAX_SEND_PAYLOAD):
        chunk = view[start : start + MAX_SEND_PAYLOAD]
        out += HEADER.pack(conn_id, len(chunk))
        out += chunk
    return bytes(out)


class Demuxer:
    """Splits the socket's byte stream back into ``(conn_id, payload)`` frames.

    Feed it whatever a read returned; it keeps partial frames until the rest arrives.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._failed: MuxError | None = None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._failed is not None:
            raise self._failed
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        offset = 0
        buffer = self._buffer
        while len(buffer) - offset >= HEADER.size:
            conn_id, length = HEADER.unpack_from(buffer, offset)
            if length > MAX_RECEIVE_PAYLOAD:
                self._failed = MuxError(
                    f"frame for conn {conn_id} announces {length} bytes, more than the {MAX_RECEIVE_PAYLOAD} allowed"
                )
                raise self._failed
            end = offset + HEADER.size + length
            if end > len(buffer):
                break
            frames.append((conn_id, bytes(buffer[offset + HEADER.size : end])))
            offset = end
        del buffer[:offset]
        return frames

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buffer)
