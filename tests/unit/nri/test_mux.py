import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nri_optimizer.nri import mux


def test_small_message_is_one_frame_with_big_endian_header():
    assert mux.encode_frames(1, b"abc") == b"\x00\x00\x00\x01\x00\x00\x00\x03abc"


def test_empty_message_is_one_empty_frame():
    assert mux.encode_frames(2, b"") == b"\x00\x00\x00\x02\x00\x00\x00\x00"


def test_frames_never_exceed_4096_bytes_of_payload():
    data = bytes(range(256)) * 40  # 10240 bytes
    encoded = mux.encode_frames(2, data)
    frames = mux.Demuxer().feed(encoded)
    assert [len(payload) for _, payload in frames] == [4096, 4096, 2048]
    assert b"".join(payload for _, payload in frames) == data
    assert {conn for conn, _ in frames} == {2}


def test_conn_zero_is_reserved():
    with pytest.raises(ValueError, match="conn 0 is reserved"):
        mux.encode_frames(0, b"x")


def test_partial_frames_wait_for_the_rest():
    demux = mux.Demuxer()
    encoded = mux.encode_frames(1, b"hello") + mux.encode_frames(2, b"world")
    assert demux.feed(encoded[:3]) == []
    assert demux.feed(encoded[3:14]) == [(1, b"hello")]
    assert demux.pending == 1
    assert demux.feed(encoded[14:]) == [(2, b"world")]
    assert demux.pending == 0


def test_several_frames_in_one_read():
    encoded = mux.encode_frames(1, b"a") + mux.encode_frames(2, b"bb") + mux.encode_frames(7, b"ccc")
    assert mux.Demuxer().feed(encoded) == [(1, b"a"), (2, b"bb"), (7, b"ccc")]


def test_oversized_frame_is_a_protocol_error_and_stays_one():
    demux = mux.Demuxer()
    header = mux.HEADER.pack(1, mux.MAX_RECEIVE_PAYLOAD + 1)
    with pytest.raises(mux.MuxError, match=f"announces {mux.MAX_RECEIVE_PAYLOAD + 1} bytes"):
        demux.feed(header)
    with pytest.raises(mux.MuxError):
        demux.feed(mux.encode_frames(1, b"ok"))


@given(st.lists(st.tuples(st.integers(1, 5), st.binary(max_size=9000)), max_size=8), st.data())
def test_any_split_of_the_byte_stream_gives_the_same_frames(messages, data):
    stream = b"".join(mux.encode_frames(conn, payload) for conn, payload in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    demux = mux.Demuxer()
    frames = []
    last = 0
    for cut in [*cuts, len(stream)]:
        frames += demux.feed(stream[last:cut])
        last = cut
    joined: dict[int, bytes] = {}
    for conn, payload in frames:
        assert len(payload) <= mux.MAX_SEND_PAYLOAD
        joined[conn] = joined.get(conn, b"") + payload
    expected: dict[int, bytes] = {}
    for conn, payload in messages:
        expected[conn] = expected.get(conn, b"") + payload
    assert joined == {c: p for c, p in expected.items()}
    assert demux.pending == 0


@given(st.binary(max_size=2000))
def test_garbage_never_crashes_the_demuxer(garbage):
    demux = mux.Demuxer()
    with contextlib.suppress(mux.MuxError):
        demux.feed(garbage)
