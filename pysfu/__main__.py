from pysfu.cli import main

raise SystemExit(main())
