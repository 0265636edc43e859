"""``python -m bench [SCENARIO]``: see :mod:`bench.cli`."""

from bench.cli import main

main()
