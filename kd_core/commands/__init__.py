"""The `kd` subcommands behind kd_core/cli.py: the parser and the settings it resolves
(parser.py), distil (distill.py, launch.py for data-parallel runs), eval / status / demo
(report.py), event printers (printers.py), exit statuses (exits.py)."""
