"""What the hosted service says."""

from __future__ import annotations


def greeting(whom: str) -> str:
    return f"hello from a hosted service, {whom}"
