"""``python -m cluster_risk.benchmark``: see :mod:`cluster_risk.benchmark.commands`."""

from cluster_risk.benchmark.commands import main

raise SystemExit(main())
