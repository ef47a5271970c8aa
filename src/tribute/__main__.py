"""``python -m tribute``: the same command line as the ``tribute`` script."""

from .cli import main

raise SystemExit(main())
