"""``python -m cluster_risk.cli``: the same as the ``cluster-risk`` console script."""

from cluster_risk.cli.app import main

raise SystemExit(main())
