"""`python -m tpde`: the tpde command line (see tpde.cli)."""

from .cli import main

raise SystemExit(main())
