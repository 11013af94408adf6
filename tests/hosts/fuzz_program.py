"""A hosted program that sends its Tao host random and mutated RPC requests.

The tests copy this file (with a ``#!`` line for the test interpreter) and start it
through a real Linux host: ``fuzz_program SEED COUNT ENDING``. It sends COUNT
requests, pipelined (up to WINDOW unanswered): valid requests of every method,
valid envelopes with mutated bodies, random method names, arbitrary sequence
numbers, fields of the wrong size or sign. It checks that each answer names the
request it answers (method and sequence number, in order) and counts the answers.
Then it ends the channel with ENDING, something that breaks the framing
(see ENDINGS), and checks that the host closes the channel instead of answering.
It prints one JSON line with its counts.
"""

from __future__ import annotations

import collections
import json
import random
import sys
from typing import Any

import trio

from taonet import CodecError, auth
from taonet.hosts import MessageStream, open_host_channel
from taonet.wire import MAX_FRAME_CEILING, message_class, parse, serialize

WINDOW = 32
OPS = [
    "Tao.GetTaoName",
    "Tao.ExtendTaoName",
    "Tao.GetRandomBytes",
    "Tao.GetSharedSecret",
    "Tao.Attest",
    "Tao.Seal",
    "Tao.Unseal",
]
# Each successful counter change is a synced write of the host's counter table:
# they are sent, but rarely.
COUNTER_OPS = [
    "Tao.InitCounter",
    "Tao.GetCounter",
    "Tao.RollbackProtectedSeal",
    "Tao.RollbackProtectedUnseal",
]
ENDINGS = [
    "truncated",  # part of a frame, then the write side closed
    "oversized",  # a length far over any limit
    "big-header",  # a header frame over 4 KiB
    "big-body",  # a GetTaoName body over its method's limit
    "bad-header",  # a whole frame that is not an RPCHeader
    "eof-after-header",  # a header, then the write side closed
    "stall",  # a header and part of a body, then silence (the host's timeout)
]
RPCHeader = message_class("RPCHeader")
RPCRequest = message_class("RPCRequest")


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sealed: list[bytes] = [b"\x00"]
        self.rp_sealed: list[bytes] = [b"\x00"]
        self.labels = ["a", "b", "c"]

    # -- requests ---------------------------------------------------------------------

    def small_int(self) -> int:
        rng = self.rng
        return rng.choice([0, 1, 2, 31, 32, 33, 255, 1024, rng.randrange(4096)])

    def any_int(self, bits: int) -> int:
        rng = self.rng
        return rng.choice(  # type: ignore[no-any-return]
            [0, -1, 1, 2 ** (bits - 1) - 1, -(2 ** (bits - 1)), rng.randrange(-(2**20), 2**20)]
        )

    def policy(self) -> str:
        rng = self.rng
        return rng.choice(["self", "few", "any", "self", "", "SELF", "none", "\u00e9"])

    def form(self) -> auth.Form:
        rng = self.rng
        args: tuple[auth.Term, ...] = tuple(
            rng.choice(  # type: ignore[misc]
                [
                    auth.Int(self.any_int(64)),
                    auth.Str("s" * rng.randrange(40)),
                    auth.Bytes(rng.randbytes(rng.randrange(40))),
                ]
            )
            for _ in range(rng.randrange(4))
        )
        pred = auth.Pred(rng.choice(["P", "Q", "Fuzz"]), args)
        if rng.random() < 0.2:
            return auth.Not(pred)
        return pred

    def valid_fields(self, op: str) -> dict[str, Any]:
        rng = self.rng
        if op == "Tao.GetTaoName":
            return {}
        if op == "Tao.ExtendTaoName":
            ext = auth.PrinExt(rng.choice(["F", "Fuzz"]), (auth.Int(rng.randrange(100)),))
            return {"data": auth.encode(auth.SubPrin((ext,)))}
        if op in ("Tao.GetRandomBytes", "Tao.GetSharedSecret"):
            fields: dict[str, Any] = {"size": self.small_int()}
            if op == "Tao.GetSharedSecret" and rng.random() < 0.7:
                fields["policy"] = self.policy()
            return fields
        if op == "Tao.Attest":
            fields = {"data": auth.encode(self.form())}
            if rng.random() < 0.2:
                fields["time"] = self.any_int(64)
            if rng.random() < 0.2:
                fields["expiration"] = self.any_int(64)
            if rng.random() < 0.1:
                issuer = auth.Prin("key", auth.Bytes(rng.randbytes(32)), auth.SubPrin(()))
                fields["issuer"] = auth.encode(issuer)
            return fields
        if op == "Tao.Seal":
            return {"data": rng.randbytes(rng.randrange(200)), "policy": self.policy()}
        if op == "Tao.Unseal":
            return {"data": rng.choice(self.sealed)}
        if op == "Tao.InitCounter":
            return {"label": rng.choice(self.labels), "counter": self.any_int(64)}
        if op == "Tao.GetCounter":
            return {"label": rng.choice([*self.labels, "", "x" * 300])}
        if op == "Tao.RollbackProtectedSeal":
            return {
                "label": rng.choice(self.labels),
                "data": rng.randbytes(rng.randrange(100)),
                "policy": self.policy(),
            }
        assert op == "Tao.RollbackProtectedUnseal"
        return {"data": rng.choice(self.rp_sealed)}

    def mutate(self, body: bytes) -> tuple[str, bytes]:
        rng = self.rng
        how = rng.choice(["flip", "truncate", "insert", "random", "twice", "unknown", "drop"])
        data = bytearray(body)
        if how == "flip" and data:
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == "truncate" and data:
            del data[rng.randrange(len(data)) :]
        elif how == "insert":
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif how == "random":
            data = bytearray(rng.randbytes(rng.randrange(64)))
        elif how == "twice":
            data += body
        elif how == "unknown":  # a field the schema does not have
            number = rng.randint(9, 2000)
            data += bytes([(number << 3 | 2) & 0x7F | 0x80, number >> 4]) + b"\x03abc"
        elif how == "drop":
            data = bytearray()
        return how, bytes(data)

    def wrong_fields(self, op: str) -> dict[str, Any]:
        """The right fields with values of the wrong size, sign or kind."""
        rng = self.rng
        fields: dict[str, Any] = {}
        for name in rng.sample(
            ["data", "size", "policy", "time", "expiration", "issuer", "label", "counter"],
            rng.randint(1, 4),
        ):
            if name in ("data", "issuer"):
                fields[name] = rng.randbytes(rng.randrange(300))
            elif name == "size":
                fields[name] = self.any_int(32)
            elif name in ("time", "expiration", "counter"):
                fields[name] = self.any_int(64)
            elif name == "label":
                fields[name] = rng.choice(["", "l" * 257, "\u00e9" * 200, "ok"])
            else:
                fields[name] = self.policy()
        return fields

    def request(self, seq: int) -> tuple[str, str, bytes, bytes]:
        """(kind, op, header frame, body frame)."""
        rng = self.rng
        op = rng.choice(OPS) if rng.random() > 0.01 else rng.choice(COUNTER_OPS)
        roll = rng.random()
        if roll < 0.3:
            kind, body = "valid", serialize(RPCRequest(**self.valid_fields(op)))
        elif roll < 0.7:
            kind, body = self.mutate(serialize(RPCRequest(**self.valid_fields(op))))
        elif roll < 0.85:
            kind, body = "wrong", serialize(RPCRequest(**self.wrong_fields(op)))
        else:
            kind = "method"
            op = rng.choice(
                [
                    "",
                    "Tao.",
                    op + " ",
                    op.lower(),
                    op + "X",
                    "Tao.Nope",
                    "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(60))),
                    "m" * rng.randrange(100, 3000),
                ]
            )
            body = serialize(RPCRequest(**self.valid_fields("Tao.Seal")))[:1000]
        header = RPCHeader(op=op, seq=seq)
        if rng.random() < 0.05:
            header.error = "a request does not carry an error"
        return kind, op, serialize(header), body

    def seq(self, i: int) -> int:
        rng = self.rng
        roll = rng.random()
        if roll < 0.8:
            return i
        return rng.choice([0, 2**64 - 1, 2**63, i, i - 1 if i else 0, rng.randrange(2**64)])

    def note_answer(self, op: str, body: bytes) -> None:
        if op not in ("Tao.Seal", "Tao.RollbackProtectedSeal"):
            return
        data = parse("RPCResponse", body).data
        pool = self.sealed if op == "Tao.Seal" else self.rp_sealed
        if len(pool) < 50:
            pool.append(bytes(data))
        # Mutated copies of real blobs reach deeper than random bytes.
        if len(pool) < 60 and data:
            copy = bytearray(data)
            copy[self.rng.randrange(len(copy))] ^= 1
            pool.append(bytes(copy))


async def end_channel(stream: trio.StapledStream[Any, Any], ending: str) -> None:
    header = serialize(RPCHeader(op="Tao.GetTaoName", seq=1))

    def frame(payload: bytes) -> bytes:
        return len(payload).to_bytes(4, "big") + payload

    if ending == "truncated":
        await stream.send_all((100).to_bytes(4, "big") + b"x" * 10)
        await stream.send_stream.aclose()
    elif ending == "oversized":
        await stream.send_all(b"\x7f\xff\xff\xff")
    elif ending == "big-header":
        await stream.send_all(frame(header + b"\x00" * 5000))
    elif ending == "big-body":
        await stream.send_all(frame(header) + frame(b"\x00" * 2000))
    elif ending == "bad-header":
        await stream.send_all(frame(b"\xff\xff\xff") + frame(b""))
    elif ending == "eof-after-header":
        await stream.send_all(frame(header))
        await stream.send_stream.aclose()
    elif ending == "stall":
        await stream.send_all(frame(header) + (10).to_bytes(4, "big") + b"x")
    else:
        raise SystemExit(f"unknown ending {ending}")


async def main(seed: int, count: int, ending: str) -> dict[str, Any]:
    fuzzer = Fuzzer(seed)
    stream = await open_host_channel()
    assert isinstance(stream, trio.StapledStream)
    messages = MessageStream(stream, max_frame=MAX_FRAME_CEILING)
    expected: collections.deque[tuple[int, str, str]] = collections.deque()
    window = trio.Semaphore(WINDOW)
    counts: collections.Counter[str] = collections.Counter()
    internal: list[str] = []

    async def send() -> None:
        for i in range(count):
            await window.acquire()
            seq = fuzzer.seq(i)
            kind, op, header, body = fuzzer.request(seq)
            expected.append((seq, op, kind))
            counts["sent"] += 1
            counts[f"kind:{kind}"] += 1
            await messages.send_messages(header, body)

    async def receive() -> None:
        for _ in range(count):
            header = parse("RPCHeader", await messages.receive_message())
            body = await messages.receive_message()
            seq, op, kind = expected.popleft()
            if (header.seq, header.op) != (seq, op):
                raise SystemExit(f"answer {header.seq} {header.op!r} for {seq} {op!r}")
            if header.HasField("error"):
                counts["error"] += 1
                if body:
                    raise SystemExit("an error answer with a body")
                if "internal error" in header.error:
                    internal.append(f"{op} ({kind}): {header.error}")
            else:
                counts["ok"] += 1
                counts[f"ok:{op}"] += 1
                fuzzer.note_answer(op, body)
            window.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(receive)
    # Everything answered; now break the framing: the host must close the channel.
    await end_channel(stream, ending)
    failure_answered = False
    if ending == "big-body":
        # Its header was read: the host says why that call failed, under its op and seq.
        with trio.fail_after(30):
            header = parse("RPCHeader", await messages.receive_message())
            body = await messages.receive_message()
        if (header.op, header.seq, body) != ("Tao.GetTaoName", 1, b"") or not (
            header.error.startswith("CodecError: ")
        ):
            raise SystemExit(f"the big body was answered {header} {body!r}")
        failure_answered = True
    try:
        with trio.fail_after(30):
            data = await stream.receive_some(100)
        closed = not data
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        closed = True
    except CodecError:
        closed = False
    return {
        "seed": seed,
        "ending": ending,
        "closed": closed,
        "failure_answered": failure_answered,
        "internal": internal[:10],
        **dict(counts),
    }


if __name__ == "__main__":
    print(json.dumps(trio.run(main, int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])), flush=True)
