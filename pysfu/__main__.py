"""``python -m pysfu``: the command line of pysfu.cli."""

from pysfu.cli import main

raise SystemExit(main())
