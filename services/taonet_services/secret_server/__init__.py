"""The secret server: keys and secrets behind the domain's guard, over Tao channels.

* :func:`run_secret_server`: the server as a Tao program (provisioned, master key
  sealed by its Tao, serving); what ``taonet secret-server`` runs.
* :class:`SecretServer`: the protocol, authorization, audit and hooks (``on_change``,
  ``authenticate_operator``, ``extensions``); see ``_service``.
* :class:`SecretTables`: the objects in a database, in a key chain from the master
  key, with integrity checks against edited, swapped and rolled-back rows; see ``_store``.
"""

from __future__ import annotations

from taonet_services.secret_server._anonymous import AnonymousLimits
from taonet_services.secret_server._program import (
    CERT_FILE,
    DB_FILE,
    PROGRAM_FILE,
    STATE_FILE,
    Running,
    default_db_url,
    load_or_make_master,
    program_name,
    run_secret_server,
)
from taonet_services.secret_server._service import (
    MAX_IN_FLIGHT,
    AuthorizeHook,
    Call,
    ChangeHook,
    ChangeInHook,
    Extension,
    OperatorAuthenticator,
    SecretServer,
    covering_names,
)
from taonet_services.secret_server._store import (
    MASTER_ID,
    MAX_LIST_SCAN,
    RESERVED_PREFIX,
    SecretTables,
    new_master_key,
)

__all__ = [
    "CERT_FILE",
    "DB_FILE",
    "MASTER_ID",
    "MAX_IN_FLIGHT",
    "MAX_LIST_SCAN",
    "PROGRAM_FILE",
    "RESERVED_PREFIX",
    "STATE_FILE",
    "AnonymousLimits",
    "AuthorizeHook",
    "Call",
    "ChangeHook",
    "ChangeInHook",
    "Extension",
    "OperatorAuthenticator",
    "Running",
    "SecretServer",
    "SecretTables",
    "covering_names",
    "default_db_url",
    "load_or_make_master",
    "new_master_key",
    "program_name",
    "run_secret_server",
]
