"""The secret server's extensions, wired together: operator requests, grants, watch.

:func:`prepare_extras` creates their tables in the server's database and returns
an :class:`Extras` whose :meth:`~Extras.server_options` are the
:class:`~taonet_services.secret_server.SecretServer` hooks, and whose
:meth:`~Extras.run` runs their background tasks (the watch fan-out and PostgreSQL
listener, the grants' reload) next to the server.

* :class:`~taonet_services.secret_server._operator_auth.OperatorGate`: requests
  signed by the policy key (``taonet secret ...``), accepted once each, authorized
  for everything;
* :class:`~taonet_services.secret_server._grants.GrantBook`: ``SecretService.Grant``
  and the signed grants the authorization honours besides the guard;
* :class:`~taonet_services.secret_server._watch.WatchHub`: ``SecretService.Watch``
  and the event log written with each change;
* :func:`~taonet_services.secret_server._replica.release_master`: the master key
  for replicas the guard allows;
* Info: the store id (``_operator_auth.load_store_id``, read once here), which
  operators sign their requests for and grants' proofs must name.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
import trio

from taonet import auth
from taonet.crypto import Verifier
from taonet.protected import SecretObject
from taonet.secrets import Op, ServerInfo
from taonet_services.secret_server._grants import GrantBook
from taonet_services.secret_server._operator_auth import OperatorGate, load_store_id
from taonet_services.secret_server._replica import release_master
from taonet_services.secret_server._service import SecretServer
from taonet_services.secret_server._watch import WatchHub
from taonet_services.storage import Database

__all__ = ["Extras", "prepare_extras"]


@attrs.define
class Extras:
    gate: OperatorGate
    grants: GrantBook
    hub: WatchHub
    #: The id of the store this server serves (read at start, kept).
    store_id: bytes
    #: Whether the gate checks operator credentials (else another hook does).
    operators: bool = True

    def also_authorized(self, principal: auth.Prin, op: str, name: str) -> bool:
        """The policy key (a request the gate verified) and signed grants."""
        if self.operators and self.gate.also_authorized(principal, op, name):
            return True
        return self.grants.allows(principal, op, name)

    def also_reaches(self, principal: auth.Prin, op: str, prefix: str) -> bool:
        """Whether the policy key or a grant could give ``op`` under ``prefix``."""
        if self.operators and self.gate.also_authorized(principal, op, prefix):
            return True
        return self.grants.reaches(principal, op, prefix)

    def server_options(self) -> dict[str, Any]:
        """Keyword arguments of SecretServer for these extensions."""
        options: dict[str, Any] = {"authenticate_operator": self.gate} if self.operators else {}
        return options | {
            "on_change": self.hub.on_change,
            "change_in": self.hub.change_in,
            "also_authorized": self.also_authorized,
            "also_reaches": self.also_reaches,
            "refresh_also": self.grants.current,
            "release_master": functools.partial(
                release_master, operator_principal=self.gate.policy_principal
            ),
            "extensions": {Op.WATCH: self.hub.serve, Op.GRANT: self.grants.serve},
            "info": ServerInfo(self.store_id),
        }

    async def run(
        self, server: SecretServer, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The background tasks (until cancelled); started once the grants are loaded."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.hub.run)
            await nursery.start(functools.partial(self.grants.run, audit=server.audit))
            task_status.started()


async def prepare_extras(
    db: Database,
    *,
    policy_key: Verifier,
    principal: auth.Prin,
    master: SecretObject,
    db_url: str | None = None,
    operators: bool = True,
) -> Extras:
    """Create the extensions' tables; the extensions of server ``principal`` in a domain
    whose policy key is ``policy_key``, over the database whose master key is
    ``master`` (it vouches for the store id: ``_operator_auth``) (``db_url``: for
    PostgreSQL's LISTEN;
    ``operators`` False: operator credentials are another hook's to check)."""
    store_id = await load_store_id(db, master)
    gate = OperatorGate(db, policy_key=policy_key, server=principal, store_id=store_id)
    grants = GrantBook(db, policy_key=policy_key, store_id=store_id)
    listen_url = db_url if db_url is not None and db_url.startswith("postgres") else None
    hub = WatchHub(db, listen_url=listen_url)
    await gate.create_tables()
    await grants.create_tables()
    await hub.create_tables()
    return Extras(gate, grants, hub, store_id, operators)
