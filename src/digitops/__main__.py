"""``python -m digitops`` is the ``digitops`` command."""

from digitops.cli import main

main()
