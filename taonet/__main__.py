"""``python -m taonet`` is the ``taonet`` command.

``-m`` puts the current directory first on ``sys.path``. Unless this taonet was
itself imported from there (a source checkout), that entry only lets files in the
directory shadow the modules the command imports next (``trio``, ``attrs``, ...),
so it is dropped before anything else is imported. Prefer the ``taonet`` command,
or ``python -I -m taonet``, in a directory other users can write.
"""

import os
import sys


def _drop_current_directory() -> None:
    if sys.flags.safe_path or not sys.path:
        return  # -P, -I or PYTHONSAFEPATH: nothing was prepended
    first = sys.path[0] or os.curdir
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        prepended_cwd = os.path.samefile(first, os.getcwd())
        ours = os.path.samefile(first, here)
    except OSError:
        return
    if prepended_cwd and not ours:
        del sys.path[0]


if __name__ == "__main__":
    _drop_current_directory()

    from taonet.cli._main import _entry

    _entry()
