"""``python -m taonet`` is the ``taonet`` command."""

from taonet.cli._main import _entry

_entry()
