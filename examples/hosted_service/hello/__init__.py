"""The hosted service's replies (a package, to show one is measured and imported)."""
