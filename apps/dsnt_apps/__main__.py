"""``python -m dsnt_core``: see :mod:`dsnt_core.cli`."""

from .cli import main

raise SystemExit(main())
