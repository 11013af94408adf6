"""The protorpc envelope machine, without trio: round trips in any chunking, limits
per frame and per method, end of stream and truncation decided by the machine, and
error kinds that come back as the class the server raised."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import taonet
from taonet import (
    AuthenticationError,
    AuthorizationError,
    CodecError,
    ConfigError,
    HostError,
    NotSupportedError,
    ProtocolError,
    TaoError,
)
from taonet.wire import (
    END_OF_STREAM,
    ERROR_KINDS,
    MAX_ERROR_MESSAGE,
    NEED_DATA,
    Envelope,
    Request,
    Response,
    Role,
    decode_error,
    encode_error,
    encode_frame,
    message_class,
    serialize,
)
from taonet.wire._framing import LARGE_FRAME

LIMITS = {"Small": 16, "Large": 100_000}


def server(**options: object) -> Envelope:
    return Envelope(Role.SERVER, body_limit=lambda op: LIMITS.get(op, 8), **options)  # type: ignore[arg-type]


def client(**options: object) -> Envelope:
    return Envelope(Role.CLIENT, body_limit=1_000_000, **options)  # type: ignore[arg-type]


def request_bytes(op: str, seq: int, body: bytes) -> bytes:
    return b"".join(client().request(op, seq, body))


def header(op: object, seq: int, error: str | None = None) -> bytes:
    msg = message_class("RPCHeader")(op=op, seq=seq)
    if error is not None:
        msg.error = error
    return encode_frame(serialize(msg))


def events(machine: Envelope) -> list[object]:
    out: list[object] = []
    while (event := machine.next_event()) is not NEED_DATA:
        out.append(event)
        if event is END_OF_STREAM:
            break
    return out


# -- round trips ---------------------------------------------------------------------------


@given(
    st.lists(
        st.tuples(st.sampled_from(["Small", "Large", "X"]), st.integers(0, 2**64 - 1), st.binary()),
        max_size=6,
    ),
    st.integers(1, 40),
)
def test_requests_round_trip_in_any_chunking(
    calls: list[tuple[str, int, bytes]], step: int
) -> None:
    calls = [(op, seq, body[: LIMITS.get(op, 8)]) for op, seq, body in calls]
    data = b"".join(request_bytes(*call) for call in calls)
    machine = server()
    got: list[object] = []
    for i in range(0, len(data), step):
        machine.receive_data(data[i : i + step])
        got += events(machine)
    machine.receive_data(b"")
    got += events(machine)
    assert got == [Request(*call) for call in calls] + [END_OF_STREAM]
    assert not machine.in_message


def test_a_large_body_is_handed_over_without_a_copy_of_the_header() -> None:
    body = bytes(range(256)) * 300  # over LARGE_FRAME: written as its own chunk
    assert len(body) > LARGE_FRAME
    chunks = client().request("Large", 7, body[:100_000])
    assert len(chunks) == 2
    assert chunks[1] == body[:100_000]
    machine = server()
    machine.receive_data(b"".join(chunks))
    assert machine.next_event() == Request("Large", 7, body[:100_000])


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (NotSupportedError("not supported by this host"), NotSupportedError),
        (HostError("sealed data failed its integrity check"), HostError),
        (CodecError("bad subprincipal"), CodecError),
        (AuthenticationError("expired"), AuthenticationError),
        (AuthorizationError("the guard refused"), AuthorizationError),
        (ConfigError("no domain"), ConfigError),
        (ProtocolError("unknown method"), ProtocolError),
        (TaoError("root"), TaoError),
    ],
)
def test_each_error_kind_comes_back_as_its_class(error: TaoError, kind: type[TaoError]) -> None:
    machine = server()
    machine.receive_data(request_bytes("Small", 3, b"x"))
    request = machine.next_event()
    assert isinstance(request, Request)
    answer = b"".join(machine.response(request.op, request.seq, b"ignored", error=error))
    other = client()
    other.request("Small", 3, b"x")
    other.receive_data(answer)
    response = other.next_event()
    assert isinstance(response, Response)
    assert (response.op, response.seq, response.body) == ("Small", 3, b"")
    assert type(response.error) is kind
    assert str(response.error) == str(error)


def test_error_kinds_are_the_tree_by_name() -> None:
    assert set(ERROR_KINDS) == {
        "TaoError",
        "CodecError",
        "AuthenticationError",
        "AuthorizationError",
        "HostError",
        "NotSupportedError",
        "ConfigError",
        "ProtocolError",
    }
    for name, cls in ERROR_KINDS.items():
        assert getattr(taonet, name) is cls
    assert issubclass(NotSupportedError, HostError)


class _PrivateRefusal(AuthorizationError):
    pass


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        # The original CloudProxy's own errors carry no kind: the default class.
        ("tao: unknown method", HostError, "tao: unknown method"),
        ("", HostError, ""),
        # A name outside the tree is not looked up anywhere.
        ("ValueError: boom", HostError, "ValueError: boom"),
        ("Mystery: x", HostError, "Mystery: x"),
        ("__class__: boom", HostError, "__class__: boom"),
        ("NotSupportedError:no space", HostError, "NotSupportedError:no space"),
        ("NotSupportedError: a: b", NotSupportedError, "a: b"),
        (b"HostError: \xff", HostError, "\ufffd"),
    ],
)
def test_decode_error_table(text: str | bytes, kind: type[TaoError], message: str) -> None:
    error = decode_error(text)
    assert type(error) is kind
    assert str(error) == message


def test_encode_error_names_the_nearest_kind_and_cuts_long_messages() -> None:
    assert encode_error(_PrivateRefusal("no")) == "AuthorizationError: no"
    assert encode_error(NotSupportedError("x")) == "NotSupportedError: x"
    assert encode_error(HostError("")) == "HostError: HostError"
    long = encode_error(HostError("y" * (MAX_ERROR_MESSAGE + 10)))
    assert long == "HostError: " + "y" * MAX_ERROR_MESSAGE + "..."
    # A message that looks like another kind keeps its own.
    assert type(decode_error(encode_error(HostError("CodecError: no")))) is HostError
    assert decode_error("TaoError: x", default=ProtocolError).__class__ is TaoError
    assert type(decode_error("plain", default=ProtocolError)) is ProtocolError


# -- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        # A header frame over the 4 KiB header limit: refused from its length alone.
        ((5000).to_bytes(4, "big"), CodecError, "over the 4096-byte limit"),
        # A body over its method's limit, refused once its length is in.
        (header("Small", 1) + (17).to_bytes(4, "big"), CodecError, "over the 16-byte limit"),
        # An unknown method gets the protocol's limit for unknown methods.
        (header("Nope", 1) + (9).to_bytes(4, "big"), CodecError, "over the 8-byte limit"),
        # A header that does not decode.
        (encode_frame(b"\xff\xff") + encode_frame(b""), CodecError, "header"),
        # A header without its required sequence number.
        (encode_frame(b"\x0a\x01A") + encode_frame(b""), CodecError, "missing required field"),
    ],
)
def test_limits_and_bad_headers(data: bytes, error: type[TaoError], match: str) -> None:
    machine = server()
    machine.receive_data(data)
    with pytest.raises(error, match=match):
        machine.next_event()
    assert machine.broken
    # Broken for good, whatever comes next.
    with pytest.raises(error):
        machine.next_event()
    with pytest.raises(error):
        machine.body_length()


def test_body_length_is_announced_before_the_body_arrives() -> None:
    machine = server()
    machine.receive_data(header("Large", 4))
    assert machine.next_event() is NEED_DATA
    assert machine.in_message  # a header alone is part of a message
    assert machine.body_length() is None
    machine.receive_data((90_000).to_bytes(4, "big"))
    assert machine.body_length() == 90_000
    assert machine.next_event() is NEED_DATA
    assert machine.in_message
    machine.receive_data(b"z" * 90_000)
    assert machine.next_event() == Request("Large", 4, b"z" * 90_000)
    assert machine.body_length() is None
    assert not machine.in_message
    # An announced length over the method's limit fails here too.
    machine.receive_data(header("Large", 5))
    assert machine.next_event() is NEED_DATA
    machine.receive_data((100_001).to_bytes(4, "big"))
    with pytest.raises(CodecError, match="over the 100000-byte limit"):
        machine.body_length()


def test_the_client_gets_a_larger_header_for_error_messages() -> None:
    text = "HostError: " + "e" * 10_000
    machine = client()
    machine.request("Op", 1, b"")
    machine.receive_data(header("Op", 1, text) + encode_frame(b""))
    response = machine.next_event()
    # Taken whole, and cut to MAX_ERROR_MESSAGE before it is kept.
    assert isinstance(response, Response)
    assert str(response.error) == "e" * MAX_ERROR_MESSAGE + "..."
    tight = client(header_limit=64)
    tight.request("Op", 1, b"")
    tight.receive_data(header("Op", 1, text))
    with pytest.raises(CodecError, match="over the 64-byte limit"):
        tight.next_event()


# -- end of stream and truncation ---------------------------------------------------------------

WHOLE = header("Small", 9) + encode_frame(b"abc")


@pytest.mark.parametrize("cut", range(1, len(WHOLE)))
def test_every_truncation_is_an_error_of_the_machine(cut: int) -> None:
    machine = server()
    machine.receive_data(WHOLE[:cut])
    assert machine.next_event() is NEED_DATA
    machine.receive_data(b"")
    with pytest.raises(ProtocolError, match="the peer closed"):
        machine.next_event()
    assert machine.broken


def test_the_end_between_messages_is_the_end_of_the_stream() -> None:
    machine = server()
    machine.receive_data(b"")
    assert machine.next_event() is END_OF_STREAM
    assert machine.next_event() is END_OF_STREAM
    with pytest.raises(RuntimeError):
        machine.receive_data(b"more")
    whole = server()
    whole.receive_data(WHOLE)
    whole.receive_data(b"")
    assert events(whole) == [Request("Small", 9, b"abc"), END_OF_STREAM]


# -- roles and sending -------------------------------------------------------------------------


def test_roles_send_only_their_side() -> None:
    with pytest.raises(RuntimeError):
        server().request("Small", 1, b"")
    with pytest.raises(RuntimeError):
        client().response("Small", 1, b"")
    with pytest.raises(ValueError, match="uint64"):
        client().request("Small", -1, b"")
    with pytest.raises(ValueError, match="uint64"):
        client().request("Small", 2**64, b"")
    with pytest.raises(ValueError, match="over the 10-byte limit"):
        client(max_frame=10).request("Small", 1, b"x" * 11)
    with pytest.raises(TypeError):
        Envelope("server", body_limit=1)  # type: ignore[arg-type]


def test_a_server_reads_a_response_header_field_it_ignores() -> None:
    # A request header with an error field set (the original ignores it): still a request.
    machine = server()
    machine.receive_data(header("Small", 2, "HostError: odd") + encode_frame(b"q"))
    assert machine.next_event() == Request("Small", 2, b"q")


def test_an_op_that_is_not_utf8_is_kept_printable() -> None:
    raw = encode_frame(b"\x0a\x02\xff\xfe\x10\x01") + encode_frame(b"")
    machine = server()
    machine.receive_data(raw)
    event = machine.next_event()
    assert isinstance(event, Request)
    assert event.seq == 1
    assert event.op == repr(b"\xff\xfe")


# -- every answer names the call it ends -------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "named", "match"),
    [
        # A body over its method's limit: the header was read, the call is named.
        (header("Small", 11) + (17).to_bytes(4, "big"), ("Small", 11), "over the 16-byte limit"),
        (header("Nope", 2**64 - 1) + (9).to_bytes(4, "big"), ("Nope", 2**64 - 1), "8-byte"),
        # After a request that was whole, the failure names the second one.
        (
            request_bytes("Small", 1, b"ok") + header("Large", 2) + (100_001).to_bytes(4, "big"),
            ("Large", 2),
            "over the 100000-byte limit",
        ),
        # No header read: no call to name, no answer.
        ((5000).to_bytes(4, "big"), None, "over the 4096-byte limit"),
        (encode_frame(b"\xff\xff") + encode_frame(b""), None, "header"),
        (encode_frame(b"\x0a\x01A") + encode_frame(b""), None, "missing required field"),
    ],
    ids=[
        "body_over_limit",
        "unknown_method_body_over_limit",
        "second_request_over_limit",
        "header_over_limit",
        "header_garbage",
        "header_without_seq",
    ],
)
def test_a_failed_request_is_answered_under_its_own_op_and_seq(
    data: bytes, named: tuple[str, int] | None, match: str
) -> None:
    machine = server()
    machine.receive_data(data)
    with pytest.raises(CodecError, match=match):
        events(machine)
    answer = machine.answer_failure()
    assert machine.broken  # the stream cannot continue after a frame-level failure
    assert machine.answer_failure() == []  # once
    if named is None:
        assert answer == []
        return
    # The client that made that call gets the failure, with its kind, for that call.
    other = client()
    other.request(named[0], named[1], b"")
    other.receive_data(b"".join(answer))
    other.receive_data(b"")
    response = other.next_event()
    assert isinstance(response, Response)
    assert (response.op, response.seq, response.body) == (*named, b"")
    assert type(response.error) is CodecError
    assert match in str(response.error)
    assert other.awaiting == 0
    assert other.next_event() is END_OF_STREAM


def test_a_body_refused_on_its_announced_length_is_answered_too() -> None:
    machine = server()
    machine.receive_data(header("Large", 6))
    assert machine.next_event() is NEED_DATA
    machine.receive_data((100_001).to_bytes(4, "big"))
    with pytest.raises(CodecError, match="over the 100000-byte limit"):
        machine.body_length()  # what a driver asks before reserving the body's memory
    other = client()
    other.request("Large", 6, b"")
    other.receive_data(b"".join(machine.answer_failure()))
    response = other.next_event()
    assert isinstance(response, Response)
    assert (response.op, response.seq, type(response.error)) == ("Large", 6, CodecError)


@pytest.mark.parametrize(
    "data",
    [
        header("Small", 9),  # the header, then the end
        header("Small", 9) + encode_frame(b"abc")[:5],  # inside the body
    ],
    ids=["after_header", "inside_body"],
)
def test_a_request_the_peer_cut_short_gets_no_answer(data: bytes) -> None:
    machine = server()
    machine.receive_data(data)
    assert machine.next_event() is NEED_DATA
    machine.receive_data(b"")
    with pytest.raises(ProtocolError, match="the peer closed"):
        machine.next_event()
    assert machine.answer_failure() == []  # nobody reads it


def test_answer_failure_is_nothing_without_a_failure_and_a_server_only_call() -> None:
    machine = server()
    assert machine.answer_failure() == []
    machine.receive_data(WHOLE)
    assert machine.next_event() == Request("Small", 9, b"abc")
    assert machine.answer_failure() == []
    assert not machine.broken
    with pytest.raises(RuntimeError):
        client().answer_failure()


def test_an_error_for_a_whole_request_leaves_the_stream_usable() -> None:
    # An unknown method or a body the protocol cannot decode: the frames are intact.
    machine = server()
    peer = client()
    wire = b"".join(peer.request("Nope", 1, b"\xff") + peer.request("Small", 2, b"ok"))
    machine.receive_data(wire)
    first = machine.next_event()
    assert first == Request("Nope", 1, b"\xff")
    answers = machine.response("Nope", 1, error=ProtocolError("unknown method 'Nope'"))
    second = machine.next_event()
    assert second == Request("Small", 2, b"ok")
    answers += machine.response("Small", 2, b"fine")
    assert not machine.broken
    peer.receive_data(b"".join(answers))
    failed = peer.next_event()
    assert isinstance(failed, Response)
    assert (failed.op, failed.seq, type(failed.error)) == ("Nope", 1, ProtocolError)
    assert peer.next_event() == Response("Small", 2, b"fine", None)
    assert peer.awaiting == 0
    assert not peer.broken


def _answer(op: str, seq: int, body: bytes = b"", error: str | None = None) -> bytes:
    return header(op, seq, error) + encode_frame(body)


@pytest.mark.parametrize(
    ("sent", "received", "match"),
    [
        # An answer to a call nobody made (one call awaited: it is named).
        ([("A", 1)], _answer("A", 2), r"answered call 1 \(A\) as call 2 \('A'\), which nobody"),
        ([("A", 1), ("B", 2)], _answer("A", 3), r"call 3 \('A'\), which nobody made"),
        ([], _answer("A", 1, error="HostError: x"), "which nobody made"),
        # The right seq under another op.
        ([("A", 1)], _answer("B", 1), r"answered call 1 \(A\) as 'B'"),
        ([("A", 1)], _answer("B", 1, error="NotSupportedError: x"), r"as 'B'"),
        # The same call answered twice.
        ([("A", 1)], _answer("A", 1) + _answer("A", 1), "which nobody made"),
        # Checked on the header alone: the announced 1 MB body is never awaited.
        ([("A", 1)], header("A", 7) + (1_000_000).to_bytes(4, "big"), "as call 7"),
    ],
    ids=[
        "wrong_seq",
        "wrong_seq_two_awaited",
        "nothing_awaited",
        "wrong_op",
        "wrong_op_error",
        "answered_twice",
        "wrong_seq_on_header_alone",
    ],
)
def test_an_answer_to_another_call_breaks_the_client(
    sent: list[tuple[str, int]], received: bytes, match: str
) -> None:
    machine = client()
    for op, seq in sent:
        machine.request(op, seq, b"")
    machine.receive_data(received)
    with pytest.raises(ProtocolError, match=match):
        events(machine)
    assert machine.broken
    with pytest.raises(ProtocolError):
        machine.next_event()


def test_calls_in_flight_are_answered_in_any_order() -> None:
    machine = client()
    for seq, op in ((1, "A"), (2, "B"), (3, "C")):
        machine.request(op, seq, b"")
    assert machine.awaiting == 3
    machine.receive_data(
        _answer("B", 2, b"b") + _answer("C", 3, error="AuthorizationError: no") + _answer("A", 1)
    )
    assert machine.next_event() == Response("B", 2, b"b", None)
    failed = machine.next_event()
    assert isinstance(failed, Response)
    assert (failed.seq, type(failed.error), str(failed.error)) == (3, AuthorizationError, "no")
    assert machine.next_event() == Response("A", 1, b"", None)
    assert machine.awaiting == 0
    assert machine.next_event() is NEED_DATA
    assert not machine.broken


def test_a_seq_awaiting_its_answer_is_not_sent_again() -> None:
    machine = client()
    machine.request("A", 5, b"")
    with pytest.raises(ValueError, match="still awaiting"):
        machine.request("B", 5, b"")
    with pytest.raises(ValueError, match="over the 10-byte limit"):
        client(max_frame=10).request("A", 6, b"x" * 11)  # nothing sent, nothing awaited
    machine.receive_data(_answer("A", 5))
    assert machine.next_event() == Response("A", 5, b"", None)
    machine.request("B", 5, b"")  # answered: the number is free again
    assert machine.awaiting == 1
