"""`cluster-risk status | head` and `actions | head` end quietly (exit 0, nothing on stderr),
not with "cluster-risk: [Errno 32] Broken pipe"."""

from __future__ import annotations

import subprocess
import sys

from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.shards import Keys
from tests.cluster.conftest import connect


def test_status_and_actions_into_a_closed_pipe(server: RedisProcess) -> None:
    client = connect(server.url)
    keys = Keys("risk", 16)
    client.hset(keys.deployment, "shards", "16")
    for shard in range(16):  # enough output to outrun the pipe's buffer
        client.xadd(keys.actions(shard), {"a": '{"type":"PAUSE_ORDER","reason":"' + "x" * 5000 + '"}'})
    for command in ("status", "actions"):
        cli = f"{sys.executable} -m cluster_risk.cli {command} --redis-url {server.url}"
        done = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {cli} | head -c 1 >/dev/null"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, ""), command
