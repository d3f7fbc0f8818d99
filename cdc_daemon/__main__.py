"""`python -m cdc_daemon` runs the command line."""

from cdc_daemon.cli import main

raise SystemExit(main())
