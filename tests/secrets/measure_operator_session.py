"""What binding operator credentials to a store costs an operator (review F4).

Run: ``.venv/bin/python -m tests.secrets.measure_operator_session [ROUNDS]``

A real secret server (TLS on 127.0.0.1, SQLite) and an operator on an anonymous
channel, as ``taonet secret`` does. Alternating rounds, so both see the same machine:

* ``session_without_info``: what a session cost before: open the channel to the
  server and send one signed Read;
* ``session_with_info``: the same with the Info request first (what the CLI and the
  demo do now);
* ``info_call`` and ``signed_read``: one Info and one signed Read on an open channel.

Prints medians in milliseconds, then one JSON line with them and the ratio
``session_with_info / session_without_info``, and the credential's size.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from taonet.channel import ChannelIdentity
from taonet.crypto import KdfParams
from taonet.domain import Domain, DomainTemplate
from taonet.hosts import SoftHost
from taonet.secrets import (
    CreateRequest,
    InfoRequest,
    ReadRequest,
    ServerInfo,
    connect,
    sign_operator_request,
)
from tests.conftest import PASSWORD
from tests.secrets.test_operator_server import OWNER, server_principal
from tests.secrets.world import secret_world


def _factories(base: Path) -> tuple[Any, Any]:
    count = iter(range(100))

    def make_domain(**fields: Any) -> Domain:
        return Domain.create(
            base / f"domain{next(count)}",
            DomainTemplate(**fields),
            PASSWORD,
            kdf=KdfParams.for_tests(),
        )

    def make_host(domain: Domain) -> SoftHost:
        host = SoftHost.create(base / f"host{next(count)}", PASSWORD, kdf=KdfParams.for_tests())
        host.set_root_endorsement(
            domain.certify_host(domain.unlock(PASSWORD), host.public_key_der())
        )
        return host

    return make_domain, make_host


async def main(rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        make_domain, make_host = _factories(base)
        async with secret_world(base, make_domain, make_host, grants=OWNER) as world:
            signer = world.domain.unlock(PASSWORD)
            identity = ChannelIdentity.anonymous(world.domain.policy_cert)
            server = await server_principal(world, world.address)
            times: dict[str, list[float]] = {
                "session_without_info": [],
                "session_with_info": [],
                "info_call": [],
                "signed_read": [],
            }
            async with connect(world.address, identity, server=server) as store:
                info = await store.call(InfoRequest())
                assert isinstance(info, ServerInfo)
                store_id = info.store_id

                def signed(request: Any) -> Any:
                    return sign_operator_request(
                        request, signer, server=server, store=store_id, now_ns=time.time_ns()
                    )

                await store.call(signed(CreateRequest("/ops/x", b"v" * 32)))
                credential = signed(ReadRequest("/ops/x")).operator
                for _ in range(rounds):
                    start = time.perf_counter()
                    await store.call(InfoRequest())
                    times["info_call"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    await store.call(signed(ReadRequest("/ops/x")))
                    times["signed_read"].append(time.perf_counter() - start)
            for _ in range(rounds):
                for with_info in (False, True):
                    start = time.perf_counter()
                    async with connect(world.address, identity, server=server) as store:
                        if with_info:
                            answer = await store.call(InfoRequest())
                            assert isinstance(answer, ServerInfo)
                        await store.call(signed(ReadRequest("/ops/x")))
                    key = "session_with_info" if with_info else "session_without_info"
                    times[key].append(time.perf_counter() - start)
    medians = {k: round(statistics.median(v) * 1000, 3) for k, v in times.items()}
    return {
        "rounds": rounds,
        **{f"{k}_ms": v for k, v in medians.items()},
        "session_ratio_with_vs_without_info": round(
            medians["session_with_info"] / medians["session_without_info"], 3
        ),
        "credential_bytes": len(credential or b""),
        "credential_bytes_v1": len(credential or b"") - 16,
    }


if __name__ == "__main__":
    result = trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 50)
    for key, value in result.items():
        print(f"{key}: {value}")
    print(json.dumps(result))
