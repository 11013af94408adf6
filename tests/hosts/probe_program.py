"""A hosted program for Linux host tests: runs Tao calls named on its command line.

The tests copy this file (with a ``#!`` line for the test interpreter) and start it
through a real Linux host. Each argument is one step; each step prints one JSON line:

    name                   {"name": text}
    whoami                 {"uid", "gid", "groups", "pgid", "pid"}
    seal FILE [POLICY]     seal b"probe secret" and write the blob to FILE
    seal-big N             seal N bytes, then unseal the blob {"sealed_big": N}
    unseal FILE            {"data"} or {"error"}
    attest                 {"attestation": hex}
    extend TEXT            extend the name with a SubPrin given in text
    rpseal LABEL FILE      rollback-protected seal of b"rp secret"
    rpunseal FILE          {"data"} or {"error"}
    counter LABEL          {"counter"} or {"error"}
    env                    {"env": the environment}
    attest-at-end-of-time  attest with time = the largest int64
    extend-many N          extend the name N times
    extend-big             extend the name with a 4000-byte argument
    wait-stdin             block until a line arrives on stdin
    garbage                write a malformed frame to the host, then read
    oversized              write a 2 GiB frame length to the host, then read
    die-mid-call           send part of a request header, then exit at once
    die-after-request      send a whole 1 MiB Seal request, exit before the answer
    stall HEADER BODY      a header frame of HEADER zero bytes (0: a real Seal header), then
                           a body frame announcing BODY bytes with its last byte missing;
                           then silence until the host closes the channel {"stall"}
    ignore-term            ignore SIGTERM from now on
    sleep SECONDS
"""

from __future__ import annotations

import json
import os
import signal
import sys

import trio

from taonet import TaoError, auth
from taonet.hosts import RPCTao, open_host_channel


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def stall(header_size: int, body_size: int) -> None:
    """Make the host hold as much as it will of a request that never completes."""
    from taonet.wire import message_class, serialize

    stream = await open_host_channel()
    header = (
        bytes(header_size)
        if header_size
        else serialize(message_class("RPCHeader")(op="Tao.Seal", seq=1))
    )
    try:
        await stream.send_all(len(header).to_bytes(4, "big") + header)
        await stream.send_all(body_size.to_bytes(4, "big"))
        chunk = bytes(1 << 20)
        left = body_size - 1
        while left > 0:
            await stream.send_all(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        emit(stalled=True)
        data = await stream.receive_some(100)  # until the host gives up on us
        emit(stall="closed" if not data else "answered")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        emit(stall="broken", error=str(exc))


async def main(argv: list[str]) -> None:
    steps = list(argv)
    if steps and steps[0] in ("garbage", "oversized"):
        stream = await open_host_channel()
        if steps[0] == "garbage":
            await stream.send_all(b"\x00\x00\x00\x05hello\x00\x00\x00\x03abc")
        else:  # a length over the 20 MiB ceiling
            await stream.send_all(b"\x7f\xff\xff\xff")
        try:
            with trio.fail_after(10):
                data = await stream.receive_some(100)
            emit(garbage="closed" if not data else "answered")
        except (trio.BrokenResourceError, OSError) as exc:
            emit(garbage="broken", error=str(exc))
        return
    if steps and steps[0] == "stall":
        await stall(int(steps[1]), int(steps[2]))
        return
    if steps and steps[0] == "die-after-request":
        # A whole Seal request of 1 MiB, then gone before the answer comes.
        from taonet.wire import message_class, serialize

        stream = await open_host_channel()
        header = serialize(message_class("RPCHeader")(op="Tao.Seal", seq=1))
        body = serialize(message_class("RPCRequest")(data=b"x" * (1 << 20), policy="self"))
        frames = b"".join(len(f).to_bytes(4, "big") + f for f in (header, body))
        await stream.send_all(frames)
        os._exit(4)
    if steps and steps[0] == "die-mid-call":
        stream = await open_host_channel()
        await stream.send_all(b"\x00\x00\x00\x10\x0a\x0cTao.GetTaoNa")
        os._exit(3)
    async with RPCTao.connect(await open_host_channel()) as tao:
        while steps:
            step = steps.pop(0)
            try:
                if step == "name":
                    emit(name=str(await tao.get_tao_name()))
                elif step == "whoami":
                    emit(
                        uid=os.getuid(),
                        gid=os.getgid(),
                        groups=sorted(os.getgroups()),
                        pgid=os.getpgid(0),
                        pid=os.getpid(),
                    )
                elif step == "seal":
                    path = steps.pop(0)
                    policy = steps.pop(0) if steps and steps[0] in ("self", "any") else "self"
                    write(path, await tao.seal(b"probe secret", policy))
                    emit(sealed=path)
                elif step == "seal-big":
                    size = int(steps.pop(0))
                    blob = await tao.seal(bytes(size))
                    data, _ = await tao.unseal(blob)
                    emit(sealed_big=len(data))
                elif step == "unseal":
                    data, policy = await tao.unseal(read(steps.pop(0)))
                    emit(data=data.decode(), policy=policy)
                elif step == "attest":
                    att = await tao.attest(auth.Pred("Probe", ()))
                    emit(attestation=att.to_bytes().hex())
                elif step == "extend":
                    await tao.extend_tao_name(auth.parse_subprin(steps.pop(0)))
                    emit(extended=True)
                elif step == "rpseal":
                    label, path = steps.pop(0), steps.pop(0)
                    blob = await tao.rollback_protected_seal(label, b"rp secret")
                    write(path, blob)
                    emit(rpsealed=path, counter=await tao.get_counter(label))
                elif step == "rpunseal":
                    data, policy = await tao.rollback_protected_unseal(read(steps.pop(0)))
                    emit(data=data.decode(), policy=policy)
                elif step == "counter":
                    emit(counter=await tao.get_counter(steps.pop(0)))
                elif step == "env":
                    emit(env=dict(os.environ))
                elif step == "attest-at-end-of-time":
                    await tao.attest(auth.Pred("Probe", ()), time=2**63 - 1)
                    emit(attested=True)
                elif step == "extend-many":
                    for i in range(int(steps.pop(0))):
                        await tao.extend_tao_name(
                            auth.SubPrin((auth.PrinExt("E", (auth.Int(i),)),))
                        )
                    emit(extended=True)
                elif step == "extend-big":
                    big = auth.SubPrin((auth.PrinExt("Big", (auth.Bytes(b"x" * 4000),)),))
                    await tao.extend_tao_name(big)
                    emit(extended=True)
                elif step == "wait-stdin":
                    await trio.to_thread.run_sync(sys.stdin.readline)
                    emit(resumed=True)
                elif step == "ignore-term":
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    emit(ignoring=True)
                elif step == "sleep":
                    await trio.sleep(float(steps.pop(0)))
                else:
                    emit(error=f"unknown step {step}")
            except TaoError as exc:
                emit(error=str(exc), kind=type(exc).__name__)


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
