"""`python -m kd_tui` is `kd-tui`."""

from kd_tui.app import main

raise SystemExit(main())
