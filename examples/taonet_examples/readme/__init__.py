"""The programs of the README's tour, shown there whole (``tests/test_readme.py`` checks
that README.md and these files agree, and runs them as the README says)."""
