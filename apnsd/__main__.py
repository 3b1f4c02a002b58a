"""`python -m apnsd`: the same as the `apnsd` command."""

from apnsd.cli.main import main

raise SystemExit(main())
