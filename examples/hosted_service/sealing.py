"""Keeping data only this exact program can read back: sealed by its host."""

from __future__ import annotations

from taonet.hosts import Tao


async def round_trip(tao: Tao, text: str) -> str:
    """Seal ``text`` to this program's name, unseal it again; what came back."""
    blob = await tao.seal(text.encode(), policy="self")
    data, policy = await tao.unseal(blob)
    return f"{data.decode()} (sealed to policy {policy!r}, {len(blob)} bytes)"
