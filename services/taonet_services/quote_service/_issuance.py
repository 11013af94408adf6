"""How many quote-key certificates the quote service issues, per address and per TPM.

The service signs before the client has shown that it holds the TPM (that proof is
ActivateCredential, on the host), so anyone who has seen a TPM's public EK
certificate can have it sign certificates for keys no TPM holds. Each such
certificate is unusable (only that TPM can open the reply, and only for a key of that
name loaded in it: the audit row says so, :data:`ISSUED_REASON`), but each costs a
signature and an audit row. :class:`IssuanceLimiter` bounds them with the refusal
limiter's token buckets (:class:`~taonet_services.domain_service.RefusalLimits`,
reused): one per client address (IPv4 address or IPv6 /64,
:data:`ADDRESS_ISSUANCE_LIMITS`) and one per EK (the SHA-256 of its public key,
:data:`EK_ISSUANCE_LIMITS`), each table bounded in size like the refusal limiter's.

Pure: no I/O, no trio; the clock (monotonic seconds) is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from taonet_services.domain_service import RefusalLimits
from taonet_services.domain_service._limits import RefusalLimiter

__all__ = ["ADDRESS_ISSUANCE_LIMITS", "EK_ISSUANCE_LIMITS", "ISSUED_REASON", "IssuanceLimiter"]

#: Certificates issued per client address (IPv4 address or IPv6 /64): 20 at once, then
#: one every 30 seconds; to all addresses together 200, then one every 2 seconds.
ADDRESS_ISSUANCE_LIMITS: Final = RefusalLimits(
    client_burst=20, client_rate=1 / 30, total_burst=200, total_rate=0.5
)
#: Certificates issued per EK (the SHA-256 of its public key: one TPM): 4 at once, then one
#: every 5 minutes (a host is certified once, and again when its certificate expires).
EK_ISSUANCE_LIMITS: Final = RefusalLimits(
    client_burst=4, client_rate=1 / 300, total_burst=200, total_rate=0.5
)
#: The reason an issued quote-key certificate's audit row gives.
ISSUED_REASON: Final = (
    "issued before proof of possession: sealed by MakeCredential to the EK, the "
    "certificate is usable only by the TPM that activates it (ActivateCredential needs "
    "that EK and a loaded key of this name)"
)
_CODE: Final = "rate_limited"


class IssuanceLimiter:
    """Two token buckets a certificate must find a token in: its address's and its EK
    certificate's (see the module docstring)."""

    def __init__(
        self,
        by_address: RefusalLimits = ADDRESS_ISSUANCE_LIMITS,
        by_ek: RefusalLimits = EK_ISSUANCE_LIMITS,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.by_address: Final = RefusalLimiter(by_address, clock=clock)
        self.by_ek: Final = RefusalLimiter(by_ek, clock=clock)

    def admit(self, client: str, ek_key_sha256_hex: str) -> str | None:
        """Take a token for one more certificate to ``client`` (its address key) for
        the TPM whose EK public key (SPKI DER) hashes to ``ek_key_sha256_hex`` (the key,
        not the certificate's bytes: an ECDSA-signed certificate has a second valid
        encoding of its signature): None if both had one, else the reason of
        the refusal (which bucket, its limits). A token taken from the address's
        bucket stays taken when the EK's is empty: the attempt counts."""
        for limiter, key, what in (
            (self.by_address, client, "this address"),
            (self.by_ek, ek_key_sha256_hex, "this TPM's EK"),
        ):
            if not limiter.refused(key, _CODE):
                limits = limiter.limits
                return (
                    f"too many quote-key certificates issued to {what} for now (at most "
                    f"{limits.client_burst} at once, then one every "
                    f"{1 / limits.client_rate:.0f} s); try again later"
                )
        return None

    def prune(self) -> None:
        """Drop the entries whose buckets are full again (call now and then). What the
        limiters counted is dropped too: the refusals were recorded as such."""
        self.by_address.summaries(all_now=True)
        self.by_ek.summaries(all_now=True)
