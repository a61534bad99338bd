"""`python -m runner`: the same as the `runner` command."""

from .cli import main

raise SystemExit(main())
