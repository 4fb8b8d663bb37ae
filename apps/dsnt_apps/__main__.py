"""``python -m dsnt_apps``: see :mod:`dsnt_apps.cli`."""

from .cli import main

raise SystemExit(main())
