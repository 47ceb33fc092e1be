"""`python -m kd_core ...` is `kd distill ...` (the seed's command line)."""

from kd_core.cli import main

raise SystemExit(main(default_command="distill"))
