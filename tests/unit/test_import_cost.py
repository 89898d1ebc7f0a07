"""The in-process engine does not pay for the Redis client: ``import cluster_risk`` (RiskEngine,
the events, the config) loads no module of redis-py.  A fresh interpreter, so that no other
test's imports count."""

from __future__ import annotations

import subprocess
import sys


def test_import_cluster_risk_loads_no_redis_client() -> None:
    probe = "import sys, cluster_risk; print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
