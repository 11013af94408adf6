"""The domain service: turns attestations into program certificates."""
