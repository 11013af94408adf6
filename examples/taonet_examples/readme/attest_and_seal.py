"""attest_and_seal: a soft Tao host in a few lines, its attestations and its sealing.

Run it with the domain and the file that holds the policy key's password:
python attest_and_seal.py DOMAIN_DIR POLICY_PASSWORD_FILE
"""

import sys
import tempfile
import time
from pathlib import Path

import trio

from taonet import TaoError, auth
from taonet.attestation import validate
from taonet.crypto import Signer
from taonet.domain import Domain
from taonet.hosts import SoftHost


async def main(domain_dir: Path, policy_password: bytes) -> None:
    domain = Domain.load(domain_dir)
    policy_key = domain.unlock(policy_password)
    with tempfile.TemporaryDirectory() as scratch:  # the host's keys live only this long
        host = SoftHost.create(Path(scratch) / "host", b"a host password")
        # The policy key certifies the host's key: the domain now trusts this host.
        host.set_root_endorsement(domain.certify_host(policy_key, host.public_key_der()))
        tao = host.tao_for()
        await tao.extend_tao_name(domain.policy_subprin)
        me = await tao.get_tao_name()
        print(f"my Tao name: {me}")

        # The host attests "key K speaks for me"; anyone with the policy
        # certificate can check that, through the host's certificate.
        key = Signer.generate()
        statement = auth.Speaksfor(auth.key_principal(key.public_key_der()), me)
        attestation = await tao.attest(statement)
        proven = validate(
            attestation.to_bytes(), now_ns=time.time_ns(), policy_cert=domain.policy_cert
        )
        print(f"validated:   {proven.speaker} says {proven.message}")

        # Sealed data opens only for the same program on the same host.
        sealed = await tao.seal(b"my secret", "self")
        data, policy = await tao.unseal(sealed)
        print(f"sealed {len(sealed)} bytes, unsealed {data!r} under policy {policy!r}")


if __name__ == "__main__":
    try:
        password = Path(sys.argv[2]).read_bytes().split(b"\n")[0]  # its first line
        trio.run(main, Path(sys.argv[1]), password)
    except (TaoError, OSError, IndexError) as error:
        sys.exit(f"attest_and_seal: error: {error}")
