"""``python -m fragile``: the command line (:func:`fragile.cli.main`); its return value is the exit code."""

from fragile.cli import main

raise SystemExit(main())
