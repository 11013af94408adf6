"""``taonet.loadtest``: a load generator for taonet's servers (``taonet loadtest``).

Open model (a target rate; latency from each send's intended time, so a stalled
server shows as latency: no coordinated omission) or closed model (a number of
clients), spread over worker processes whose HDR histograms are merged into one
report; the secret and domain targets' servers are scraped (Prometheus) during the
run for their own figures. The secret target can run on PostgreSQL (on this machine
only) with several secret-server replicas, and compare replica counts
(``_replicas``). Needs the ``loadtest`` extra (hdrhistogram, rich):
``pip install 'taonet[loadtest]'``; importing this package does not import them.
The PNG plots of a report (:func:`write_plots`, from the pure :func:`latency_series`
and :func:`throughput_series`) need the ``plots`` extra (matplotlib), imported only
when drawing. :func:`run_quick` runs every target briefly into one report (its
layout, ``schema`` 1, is documented in :mod:`taonet.loadtest._quick`).
"""

from __future__ import annotations

from taonet.loadtest._config import (
    TARGETS,
    LoadConfig,
    intended_time,
    loopback_address,
    offered_between,
)
from taonet.loadtest._echo import EchoClient, make_echo_credentials, serve_echo
from taonet.loadtest._extras import MissingExtraError, require_extras
from taonet.loadtest._plotdata import latency_series, throughput_series
from taonet.loadtest._plots import figures, plot_names, require_plots, write_plots
from taonet.loadtest._quick import (
    REQUIREMENTS,
    compare_runs,
    is_quick_report,
    quick_configs,
    run_quick,
    target_reports,
)
from taonet.loadtest._report import compare_reports, decode_histogram, machine_facts
from taonet.loadtest._run import Progress, WorkerHandle, run_load, run_series

__all__ = [
    "REQUIREMENTS",
    "TARGETS",
    "EchoClient",
    "LoadConfig",
    "MissingExtraError",
    "Progress",
    "WorkerHandle",
    "compare_reports",
    "compare_runs",
    "decode_histogram",
    "figures",
    "intended_time",
    "is_quick_report",
    "latency_series",
    "loopback_address",
    "machine_facts",
    "make_echo_credentials",
    "offered_between",
    "plot_names",
    "quick_configs",
    "require_extras",
    "require_plots",
    "run_load",
    "run_quick",
    "run_series",
    "serve_echo",
    "target_reports",
    "throughput_series",
    "write_plots",
]

for _name in __all__:
    if callable(globals()[_name]):  # TARGETS and REQUIREMENTS: no __module__ of their own
        globals()[_name].__module__ = __name__
del _name
