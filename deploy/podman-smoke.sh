#!/usr/bin/env bash
# Smoke test of docker-compose.yml under podman-compose, on a machine with no Docker engine
# and no reachable container registry (facts: ../shared/notes/containers.md).  As root:
#
#   bash deploy/podman-smoke.sh            # set up what is missing, run the checks, tear down
#   KEEP=1 bash deploy/podman-smoke.sh     # leave the compose project running afterwards
#
# Steps (each timed): podman, runc, debootstrap from apt; /etc/containers/containers.conf
# (runc, ulimits within the machine's hard limits); a local base image made with debootstrap
# (python3, venv, redis-server, the host's extra CA certificates so pip can verify PyPI);
# podman-compose from PyPI in a venv; then, against the real docker-compose.yml:
#   1. build the cluster-risk image from deploy/Dockerfile on the local base image;
#   2. start the redis service;
#   3. in the built image, on the compose network: replay the example events through the
#      in-process engine and through Redis (RemoteEngine on the redis service) and require
#      the same non-empty output; then the same on the "cluster" profile's Redis Cluster;
#   4. only once the image has the `worker` command: start workers and the load generator,
#      and require events applied and actions counted in the workers' metrics.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/cluster-risk-smoke
BASE=${BASE_IMAGE:-localhost/debian-base:bookworm}
PROJECT=${PROJECT:-cluster-risk-smoke}
export REDIS_IMAGE=${REDIS_IMAGE:-$BASE} BASE_IMAGE=$BASE CLUSTER_RISK_IMAGE=localhost/cluster-risk:smoke
mkdir -p "$CACHE"

step_start=0
step() { step_start=$(date +%s.%N); printf '== %s\n' "$*"; }
done_step() { printf '   %.1f s\n' "$(echo "$(date +%s.%N) - $step_start" | bc)"; }
fail() { printf 'SMOKE FAILED: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- machine set-up (idempotent)
step "podman, runc, debootstrap"
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap bc >/dev/null
fi
done_step

step "/etc/containers/containers.conf"
conf=/etc/containers/containers.conf
if ! grep -q 'runtime *= *"runc"' "$conf" 2>/dev/null; then
    [ -e "$conf" ] && fail "$conf exists without runtime = \"runc\"; add it (crun fails on hybrid cgroups here)"
    mkdir -p /etc/containers
    cat >"$conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
fi
done_step

step "base image $BASE"
if ! podman image exists "$BASE"; then
    # The Debian mirror apt already uses (one-line or deb822 sources), else the public one.
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -oE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' | awk 'NR == 1 {print $2}' || true)
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,redis-server,ca-certificates \
        bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$CACHE/debootstrap.log" 2>&1 ||
        fail "debootstrap (log: $CACHE/debootstrap.log)"
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    tar -C "$rootfs" -c . | podman import - "$BASE" >/dev/null
    rm -rf "$rootfs"
fi
done_step

step "podman-compose"
if [ ! -x "$CACHE/venv/bin/podman-compose" ]; then
    python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install -q podman-compose
fi
compose() { "$CACHE/venv/bin/podman-compose" -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"; }
done_step

# ---------------------------------------------------------------- the compose file itself
cleanup() { [ "${KEEP:-0}" = 1 ] || compose --profile cluster down -v >/dev/null 2>&1 || true; }
trap cleanup EXIT
compose --profile cluster down -v >/dev/null 2>&1 || true  # a fresh Redis: the checks count actions from zero

step "1. build the image (deploy/Dockerfile, BASE_IMAGE=$BASE)"
compose build worker >"$CACHE/build.log" 2>&1 || fail "build (log: $CACHE/build.log)"
done_step

step "2. redis service"
compose up -d redis >"$CACHE/up.log" 2>&1 || fail "compose up redis (log: $CACHE/up.log)"
for _ in $(seq 100); do
    compose exec -T redis redis-cli ping 2>/dev/null | grep -q PONG && break
    sleep 0.2
done
compose exec -T redis redis-cli ping | grep -q PONG || fail "redis did not answer PING"
[ "$(compose exec -T redis redis-cli config get appendonly | tail -1 | tr -d '\r')" = yes ] ||
    fail "redis runs without the AOF of deploy/redis/redis.conf"
done_step

replay_check=$(
    cat <<'PY'
import json, sys
from cluster_risk import RiskEngine
from cluster_risk.config import load_config
from cluster_risk.remote import RemoteEngine, replay_batched
from cluster_risk.replay import replay_lines
from cluster_risk.state.redis import RedisStore

config = load_config("/etc/cluster-risk/config.json")
with open("/etc/cluster-risk/events.jsonl", "rb") as f:
    lines = f.read().splitlines()
local = list(replay_lines(RiskEngine.from_config(config), lines))
store = RedisStore.from_url(sys.argv[1])
remote = list(replay_batched(RemoteEngine.from_config(config, store), lines, 500))
actions = sum("type" in r for r in local)
same = local == remote
print(json.dumps({"cluster": store.is_cluster, "events": len(lines), "actions": actions, "same": same}))
sys.exit(0 if same and actions else 1)
PY
)
# The example events through the in-process engine and through Redis at $1, in the image.
replay_in_image() {
    compose run --rm --no-deps -T --entrypoint python3 worker -c "$replay_check" "$1" ||
        fail "in the image, the replay through $1 differs from the in-process replay"
}

step "3. replay in the image: in-process vs the redis service"
replay_in_image redis://redis:6379/0
done_step

step "3b. profile cluster: 3 masters joined by redis-cluster-init, same replay"
compose --profile cluster up -d redis-node-1 redis-node-2 redis-node-3 >>"$CACHE/up.log" 2>&1 ||
    fail "compose up cluster nodes (log: $CACHE/up.log)"
compose --profile cluster up --no-deps redis-cluster-init >"$CACHE/cluster-init.log" 2>&1 ||
    fail "redis-cluster-init (log: $CACHE/cluster-init.log)"
compose --profile cluster exec -T redis-node-1 redis-cli cluster info | grep -q 'cluster_state:ok' ||
    fail "the cluster is not ok (log: $CACHE/cluster-init.log)"
replay_in_image redis://redis-node-1:6379/0
done_step

step "4. workers and load generator"
if compose run --rm --no-deps -T worker worker --help >/dev/null 2>&1; then
    compose up -d worker >>"$CACHE/up.log" 2>&1 || fail "compose up worker (log: $CACHE/up.log)"
    compose up --no-deps loadgen >"$CACHE/loadgen.log" 2>&1 || fail "loadgen (log: $CACHE/loadgen.log)"
    scrape='import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9100/metrics").read().decode())'
    for _ in $(seq 60); do
        metrics=$(compose exec -T worker python3 -c "$scrape" 2>/dev/null || true)
        if grep -qE '^cluster_risk_actions_total\{.*\} [1-9]' <<<"$metrics"; then break; fi
        sleep 1
    done
    grep -E '^cluster_risk_(events_applied|actions)_total' <<<"$metrics" || true
    grep -qE '^cluster_risk_actions_total\{.*\} [1-9]' <<<"$metrics" || fail "no actions counted by the workers"
else
    echo "   skipped: the image has no 'worker' command yet (issue \"cluster\")"
fi
done_step

echo "SMOKE OK"
