import pytest
from hypothesis import given
from hypothesis import strategies as st

from nri_optimizer.nri import ttrpc


def test_request_header_is_length_stream_type_flags_big_endian():
    encoded = ttrpc.encode_request(5, "svc", "M", b"\x01\x02")
    length, stream_id, type_, flags = ttrpc.HEADER.unpack_from(encoded)
    assert (stream_id, type_, flags) == (5, 1, 0)
    assert length == len(encoded) - 10
    request = ttrpc.decode_request(encoded[10:])
    assert (request.service, request.method, request.payload) == ("svc", "M", b"\x01\x02")


def test_empty_success_response_is_a_bare_header():
    assert ttrpc.encode_response(3) == b"\x00\x00\x00\x00\x00\x00\x00\x03\x02\x00"


def test_error_response_carries_status_code_and_message():
    encoded = ttrpc.encode_response(7, code=ttrpc.Code.UNIMPLEMENTED, message="nope")
    response = ttrpc.decode_response(encoded[10:])
    assert (response.status.code, response.status.message, response.payload) == (12, "nope", b"")


def test_client_stream_ids_are_odd_and_strictly_increasing():
    ids = ttrpc.StreamIds()
    assert [ids.next() for _ in range(4)] == [1, 3, 5, 7]
    assert ttrpc.StreamIds().next() == 1  # a new connection starts again at 1


def test_message_split_over_many_feeds():
    encoded = ttrpc.encode_request(1, "s", "m", b"x" * 10000)
    decoder = ttrpc.Decoder()
    out = []
    for i in range(0, len(encoded), 4096):
        out += decoder.feed(encoded[i : i + 4096])
    assert len(out) == 1
    assert ttrpc.decode_request(out[0].payload).payload == b"x" * 10000


def test_several_messages_in_one_feed():
    encoded = ttrpc.encode_response(1) + ttrpc.encode_response(3, b"p") + ttrpc.encode_response(5)
    assert [(m.stream_id, m.type) for m in ttrpc.Decoder().feed(encoded)] == [(1, 2), (3, 2), (5, 2)]


def test_payload_over_4_mib_cannot_be_encoded():
    with pytest.raises(ValueError, match="exceeds the 4194304-byte limit"):
        ttrpc.encode_message(1, ttrpc.MessageType.REQUEST, b"\0" * (ttrpc.MAX_MESSAGE_PAYLOAD + 1))


def test_4_mib_payload_is_accepted():
    encoded = ttrpc.encode_message(1, ttrpc.MessageType.REQUEST, b"\0" * ttrpc.MAX_MESSAGE_PAYLOAD)
    (message,) = ttrpc.Decoder().feed(encoded)
    assert len(message.payload) == ttrpc.MAX_MESSAGE_PAYLOAD


def test_oversized_message_is_skipped_and_the_stream_stays_in_sync():
    length = ttrpc.MAX_MESSAGE_PAYLOAD + 5
    stream = ttrpc.HEADER.pack(length, 9, 1, 0) + b"\xaa" * length + ttrpc.encode_response(11)
    decoder = ttrpc.Decoder()
    out = []
    for i in range(0, len(stream), 1 << 20):
        out += decoder.feed(stream[i : i + (1 << 20)])
    assert out == [ttrpc.Oversized(9, 1, length), ttrpc.Message(11, 2, 0, b"")]


@given(st.binary(max_size=4000))
def test_garbage_never_crashes_the_decoder(garbage):
    ttrpc.Decoder().feed(garbage)
