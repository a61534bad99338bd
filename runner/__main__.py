"""`python -m runner`: the same as the `runner` command."""

from .cli import entry

raise SystemExit(entry())
