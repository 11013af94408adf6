"""``taonet.loadtest``: a load generator for taonet's servers (``taonet loadtest``).

Open model (a target rate; latency from each send's intended time, so a stalled
server shows as latency: no coordinated omission) or closed model (a number of
clients), spread over worker processes whose HDR histograms are merged into one
report. The secret target can run on PostgreSQL (on this machine only) with several
secret-server replicas, and compare replica counts (``_replicas``). Needs the
``loadtest`` extra (hdrhistogram, rich): ``pip install 'taonet[loadtest]'``;
importing this package does not import them.
"""

from __future__ import annotations

from taonet.loadtest._config import LoadConfig, intended_time, loopback_address, offered_between
from taonet.loadtest._echo import EchoClient, make_echo_credentials, serve_echo
from taonet.loadtest._extras import MissingExtraError, require_extras
from taonet.loadtest._report import compare_reports, decode_histogram, machine_facts
from taonet.loadtest._run import Progress, WorkerHandle, run_load, run_series

__all__ = [
    "EchoClient",
    "LoadConfig",
    "MissingExtraError",
    "Progress",
    "WorkerHandle",
    "compare_reports",
    "decode_histogram",
    "intended_time",
    "loopback_address",
    "machine_facts",
    "make_echo_credentials",
    "offered_between",
    "require_extras",
    "run_load",
    "run_series",
    "serve_echo",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
