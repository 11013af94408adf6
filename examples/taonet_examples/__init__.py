"""Example applications built on taonet."""
