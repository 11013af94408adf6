"""The TPM 2.0 host (an optional extra: ``pip install 'taonet[tpm2]'``).

Importing this package imports tpm2-pytss, which is built against the system's TSS
(libtss2). When it is missing, the import raises :class:`Tpm2SupportMissing` (an
:class:`ImportError` and a :class:`~taonet.ConfigError`) whose message says what to
install: ``apt-get install libtss2-dev pkg-config && pip install 'taonet[tpm2]'``.
Nothing else in taonet imports this package unless asked for TPM 2.0 work.

``TSS2_LOG`` is set to ``all+NONE`` before tpm2-pytss is imported (unless the user set
it): otherwise libtss2 prints ``ERROR:esys:...`` lines for failures that taonet
expects and turns into :class:`~taonet.HostError` (with the TPM's response code).

* :class:`Swtpm`: a throwaway software TPM (swtpm) with EK certificates from a private
  manufacturer CA, for tests and ``taonet demo --tpm2``.
* :func:`parse_tcti`: the TCTI strings taonet accepts (``swtpm:host=H,port=N``,
  ``swtpm:port=N``, ``device:/dev/tpmrm0``).
"""

from __future__ import annotations

import os

from taonet._errors import ConfigError

#: What to install for TPM 2.0 support (the message of :class:`Tpm2SupportMissing`).
INSTALL_HINT = (
    "TPM 2.0 support needs: apt-get install libtss2-dev pkg-config && pip install 'taonet[tpm2]'"
)


class Tpm2SupportMissing(ConfigError, ImportError):
    """tpm2-pytss (or the libtss2 it is built against) is not installed."""


os.environ.setdefault("TSS2_LOG", "all+NONE")
try:
    import tpm2_pytss  # noqa: F401
except ImportError as exc:  # also OSError-free: a missing libtss2 shows as ImportError
    raise Tpm2SupportMissing(f"{INSTALL_HINT} ({exc})") from exc

# ---- H3: the swtpm fixture and the one-time tpm2-pytss setup work -------------------
from taonet.hosts.tpm2._setup import parse_tcti  # noqa: E402
from taonet.hosts.tpm2._swtpm import Swtpm  # noqa: E402

__all__ = ["INSTALL_HINT", "Swtpm", "Tpm2SupportMissing", "parse_tcti"]
for _public in (Swtpm, Tpm2SupportMissing, parse_tcti):
    _public.__module__ = __name__
del _public
# ---- end H3 ---------------------------------------------------------------------------

# ---- H4: the TPM 2.0 key core and host ------------------------------------------------
from taonet.hosts.tpm2._core import Tpm2Core  # noqa: E402
from taonet.hosts.tpm2._host import Tpm2Host  # noqa: E402
from taonet.hosts.tpm2._nvcounters import Tpm2Counters  # noqa: E402

__all__ += ["Tpm2Core", "Tpm2Counters", "Tpm2Host"]
for _h4_public in (Tpm2Core, Tpm2Counters, Tpm2Host):
    _h4_public.__module__ = __name__
del _h4_public
# ---- end H4 ---------------------------------------------------------------------------
