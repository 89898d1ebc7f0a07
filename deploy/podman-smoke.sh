#!/usr/bin/env bash
# Smoke test of docker-compose.yml under podman-compose, on a machine with no Docker engine
# and no reachable container registry (facts: ../shared/notes/containers.md).  As root:
#
#   bash deploy/podman-smoke.sh                 # set up what is missing, run the checks, tear down
#   WORKERS=2 bash deploy/podman-smoke.sh       # workers per pass (default 3)
#   SMOKE_CLUSTER=0 bash deploy/podman-smoke.sh # skip the "cluster" profile pass
#   KEEP=1 bash deploy/podman-smoke.sh          # leave the compose project running afterwards
#
# Machine set-up (idempotent, each step timed): podman, runc, debootstrap from apt;
# /etc/containers/containers.conf (runc, ulimits within the machine's hard limits); a local
# base image made with debootstrap (python3, venv, redis-server, the host's extra CA
# certificates so pip can verify PyPI); a Prometheus image from Debian's package on that base
# (deploy/prometheus/Dockerfile); podman-compose from PyPI in a venv.  Then, against the real
# docker-compose.yml:
#   1. build the cluster-risk image from deploy/Dockerfile on the local base image;
#   2. start the redis service (AOF on, from deploy/redis/redis.conf);
#   3. in the image: the example events through the in-process engine and through Redis
#      (RemoteEngine) give the same non-empty output, on the redis service and on the cluster
#      profile's 3-master Redis Cluster (joined by redis-cluster-init);
#   4. pass "standalone": N workers and Prometheus up, the load generator publishes the events
#      (`publish --rate`), and once `cluster-risk status` shows no lag: `cluster-risk actions`
#      equals an in-process `cluster-risk replay` of the same file per (rule, scope) (workers
#      run with WORKER_TICK_MS=0: wall-clock ticks would lift pauses a file replay does not),
#      the rejected lines equal the replay's errors, Prometheus' /api/v1/targets lists N
#      worker targets all "up", its query of cluster_risk_events_applied_total is > 0 and
#      cluster_risk_shard_lag has one series per shard (all 0);
#   5. pass "cluster": the same with the workers and the load generator on the Redis Cluster;
#   6. tear down: containers, network and volumes of the project are gone.
# Any failure prints "SMOKE FAILED: <what>" with the log to read, and exits 1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/cluster-risk-smoke
BASE=${BASE_IMAGE:-localhost/debian-base:bookworm}
PROJECT=${PROJECT:-cluster-risk-smoke}
WORKERS=${WORKERS:-3}
export BASE_IMAGE=$BASE
export REDIS_IMAGE=${REDIS_IMAGE:-$BASE}
export PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-localhost/prometheus:debian}
export CLUSTER_RISK_IMAGE=${CLUSTER_RISK_IMAGE:-localhost/cluster-risk:smoke}
export WORKER_TICK_MS=0 LOAD_RATE=${LOAD_RATE:-2000}
mkdir -p "$CACHE"
LOGS=$CACHE/logs
rm -rf "$LOGS" && mkdir -p "$LOGS"

t0=$(date +%s.%N)
step_start=0
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }
step() { step_start=$(date +%s.%N); printf '== %s\n' "$*"; }
done_step() { printf '   %s s\n' "$(elapsed "$step_start")"; }
mark() { printf '   %6s s  %s\n' "$(elapsed "$step_start")" "$*"; } # progress inside a long step
# fail MESSAGE [LOG]: say what failed (and the end of its log: CI keeps no files), exit 1.
fail() {
    printf 'SMOKE FAILED: %s\n' "$1" >&2
    if [ -n "${2:-}" ] && [ -s "$2" ]; then
        printf -- '--- last lines of %s\n' "$2" >&2
        tail -n 30 "$2" | quiet >&2
    fi
    exit 1
}
# podman without systemd logs an error per container for healthcheck timers: not ours.
quiet() { grep -v 'unable to get systemd connection\|Removing timer for container' || true; }

# ---------------------------------------------------------------- machine set-up (idempotent)
step "podman, runc, debootstrap"
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
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
        bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$LOGS/debootstrap.log" 2>&1 ||
        fail "debootstrap" "$LOGS/debootstrap.log"
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    tar -C "$rootfs" -c . | podman import - "$BASE" >/dev/null
    rm -rf "$rootfs"
fi
done_step

step "prometheus image $PROMETHEUS_IMAGE"
if ! podman image exists "$PROMETHEUS_IMAGE"; then
    podman build -f deploy/prometheus/Dockerfile --build-arg BASE_IMAGE="$BASE" -t "$PROMETHEUS_IMAGE" \
        deploy/prometheus >"$LOGS/prometheus-build.log" 2>&1 ||
        fail "prometheus image" "$LOGS/prometheus-build.log"
fi
done_step

step "podman-compose"
if [ ! -x "$CACHE/venv/bin/podman-compose" ]; then
    python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install -q podman-compose 2>&1 | grep -v "^WARNING: Location" || true
    [ -x "$CACHE/venv/bin/podman-compose" ] || fail "pip install podman-compose"
fi
compose() { "$CACHE/venv/bin/podman-compose" -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"; }
# One-off cluster-risk commands in the built image, on the compose network.  The loadgen
# service, not worker: a one-off "worker" container would answer the worker DNS name that
# Prometheus scrapes.
cli() { { compose run --rm --no-deps -T loadgen "$@" 2>&1 1>&3 3>&- | quiet >&2; } 3>&1; }
cli_python() { { compose run --rm --no-deps -T --entrypoint python3 loadgen "$@" 2>&1 1>&3 3>&- | quiet >&2; } 3>&1; }
done_step

# ---------------------------------------------------------------- the compose file itself
teardown() {
    local ids
    # Workers first, while Redis is up: on SIGTERM a worker releases its leases (against a
    # Redis already gone it would wait for connection timeouts instead).
    ids=$(podman ps -q --filter "label=io.podman.compose.project=$PROJECT" --filter "label=io.podman.compose.service=worker")
    # shellcheck disable=SC2086
    [ -z "$ids" ] || podman stop -t 10 $ids >"$LOGS/down.log" 2>&1 || true
    compose --profile cluster down -v -t 10 >>"$LOGS/down.log" 2>&1 || true
    # podman-compose's down leaves the replicas of --scale and whatever they depend on.
    for _ in 1 2 3; do
        ids=$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT")
        [ -z "$ids" ] && break
        # shellcheck disable=SC2086
        podman rm -f -t 10 --depend $ids >>"$LOGS/down.log" 2>&1 || true
    done
    podman network rm -f "${PROJECT}_default" >>"$LOGS/down.log" 2>&1 || true
    ids=$(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT")
    # shellcheck disable=SC2086
    [ -z "$ids" ] || podman volume rm -f $ids >>"$LOGS/down.log" 2>&1 || true
}
on_exit() {
    local rc=$? c
    if [ "$rc" != 0 ]; then # what each container said last: CI keeps no files
        for c in $(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null); do
            printf -- '--- podman logs --tail 15 %s\n' "$(podman inspect -f '{{.Name}}' "$c")" >&2
            podman logs --tail 15 "$c" 2>&1 | quiet >&2
        done
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "KEEP=1: project $PROJECT left running (Prometheus on 127.0.0.1:$PROMETHEUS_PORT)"
    else
        teardown
    fi
    [ "$rc" = 0 ] || echo "logs: $LOGS" >&2
}
trap on_exit EXIT
teardown # a fresh Redis: the checks count actions from zero

PROMETHEUS_PORT=${PROMETHEUS_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export PROMETHEUS_PORT

step "1. build the image (deploy/Dockerfile, BASE_IMAGE=$BASE)"
compose build worker >"$LOGS/build.log" 2>&1 || fail "build" "$LOGS/build.log"
done_step

step "2. redis service"
compose up -d redis >"$LOGS/up.log" 2>&1 || fail "compose up redis" "$LOGS/up.log"
for _ in $(seq 100); do
    compose exec -T redis redis-cli ping 2>/dev/null | grep -q PONG && break
    sleep 0.2
done
compose exec -T redis redis-cli ping 2>/dev/null | grep -q PONG || fail "redis did not answer PING"
[ "$(compose exec -T redis redis-cli config get appendonly 2>/dev/null | tail -1 | tr -d '\r')" = yes ] ||
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
store = RedisStore.from_url(sys.argv[1], prefix="smoke")  # not the workers' prefix
remote = list(replay_batched(RemoteEngine.from_config(config, store), lines, 500))
actions = sum("type" in r for r in local)
same = local == remote
print(json.dumps({"cluster": store.is_cluster, "events": len(lines), "actions": actions, "same": same}))
sys.exit(0 if same and actions else 1)
PY
)
# The example events through the in-process engine and through Redis at $1, in the image.
replay_in_image() {
    cli_python -c "$replay_check" "$1" ||
        fail "in the image, the replay through $1 differs from the in-process replay"
}

step "3. replay in the image: in-process vs the redis service"
replay_in_image redis://redis:6379/0
done_step

step "3b. profile cluster: 3 masters joined by redis-cluster-init, same replay"
compose --profile cluster up -d redis-node-1 redis-node-2 redis-node-3 >>"$LOGS/up.log" 2>&1 ||
    fail "compose up cluster nodes" "$LOGS/up.log"
compose --profile cluster up --no-deps redis-cluster-init >"$LOGS/cluster-init.log" 2>&1 ||
    fail "redis-cluster-init" "$LOGS/cluster-init.log"
for _ in $(seq 50); do # the nodes agree on the slots a moment after --cluster create returns
    compose --profile cluster exec -T redis-node-1 redis-cli cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
    sleep 0.2
done
compose --profile cluster exec -T redis-node-1 redis-cli cluster info 2>/dev/null | grep -q 'cluster_state:ok' ||
    fail "the cluster is not ok" "$LOGS/cluster-init.log"
replay_in_image redis://redis-node-1:6379/0
done_step

step "expected output: cluster-risk replay (in-process) of the load generator's file"
cli replay -q --config /etc/cluster-risk/config.json /data/events.jsonl >"$LOGS/replay.jsonl" ||
    fail "cluster-risk replay in the image"
grep -q '"type"' "$LOGS/replay.jsonl" || fail "the replay emitted no action: nothing to compare"
done_step

# Compare the fleet's output with the replay: per (rule, scope) the same actions in the same
# order (shards interleave, so only the global order may differ), the same total; the lines the
# publisher rejected plus the dead letters are exactly the replay's errors.
compare=$(
    cat <<'PY'
import collections, json, sys

def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

replay, fleet, rejected = records(sys.argv[1]), records(sys.argv[2]), records(sys.argv[3])
dead = int(sys.argv[4])
def by_scope(actions):
    out = collections.defaultdict(list)
    for a in actions:
        out[(a["rule"], json.dumps(a["scope"], sort_keys=True))].append(a)
    return out
want = [r for r in replay if "type" in r]
errors = sorted((r["error"], r["field"], r["index"]) for r in replay if "error" in r)
got_errors = sorted((r["error"], r["field"], r["index"]) for r in rejected)
problems = []
if by_scope(fleet) != by_scope(want):
    for key in sorted(set(by_scope(fleet)) | set(by_scope(want))):
        if by_scope(fleet).get(key) != by_scope(want).get(key):
            problems.append(f"{key}: fleet {by_scope(fleet).get(key)} != replay {by_scope(want).get(key)}")
if len(fleet) != len(want):
    problems.append(f"{len(fleet)} actions from the fleet, {len(want)} from the replay")
if len(got_errors) + dead != len(errors) or any(e not in errors for e in got_errors):
    problems.append(f"errors: publisher {got_errors} + {dead} dead letters != replay {errors}")
kinds = collections.Counter(a["type"] for a in fleet)
print(f"   {len(fleet)} actions {dict(kinds)} = replay; {len(got_errors)} lines rejected + {dead} dead letters = replay's {len(errors)} errors")
for p in problems[:20]:
    print("   " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
)

prometheus_check=$(
    cat <<'PY'
import json, sys, time, urllib.parse, urllib.request

base, want, shards = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def get(path):
    with urllib.request.urlopen(base + path, timeout=5) as r:
        return json.load(r)["data"]
def value(query):
    result = get("/api/v1/query?query=" + urllib.parse.quote(query))["result"]
    return float(result[0]["value"][1]) if result else None
deadline = time.monotonic() + 60
while True:
    try:
        targets = [t for t in get("/api/v1/targets")["activeTargets"] if t["labels"]["job"] == "cluster-risk-workers"]
        up = [t for t in targets if t["health"] == "up"]
        applied = value("sum(cluster_risk_events_applied_total)") or 0.0
        # each shard's lag exactly once across the fleet (a worker reports the shards it holds)
        lags = (value("count(cluster_risk_shard_lag)"), value("sum(cluster_risk_shard_lag)"))
        q = urllib.parse.quote("sum by (type) (cluster_risk_actions_total)")
        actions = {r["metric"].get("type"): float(r["value"][1]) for r in get(f"/api/v1/query?query={q}")["result"]}
    except OSError as exc:
        targets, up, applied, lags, actions = [], [], 0.0, (None, None), {exc}
    if len(targets) == want and len(up) == want and applied > 0 and lags == (shards, 0):
        print(f"   {len(up)}/{want} worker targets up; sum(cluster_risk_events_applied_total) = {applied:.0f}; "
              f"cluster_risk_shard_lag: {shards} series, sum 0; actions {actions}")
        sys.exit(0)
    if time.monotonic() > deadline:
        print(f"   targets {[(t['scrapeUrl'], t['health'], t['lastError']) for t in targets]}; applied {applied}; "
              f"shard lag series, sum: {lags}", file=sys.stderr)
        sys.exit(1)
    time.sleep(1)
PY
)

# One pass: workers on Redis at $2, load, lag 0, actions vs replay, Prometheus.
fleet_pass() {
    local name=$1 url=$2 host=$3
    step "$4. pass $name: $WORKERS workers + prometheus up, load generator (publish --rate $LOAD_RATE) on $url"
    REDIS_URL=$url compose up -d --no-deps --force-recreate --scale worker="$WORKERS" worker prometheus \
        >"$LOGS/up-$name.log" 2>&1 || fail "compose up worker prometheus" "$LOGS/up-$name.log"
    mark "workers and prometheus started"
    REDIS_URL=$url cli >"$LOGS/loadgen-$name.jsonl" 2>"$LOGS/loadgen-$name.err" ||
        fail "the load generator failed" "$LOGS/loadgen-$name.err"
    mark "load generator done"
    local status lag=unknown workers=0
    for _ in $(seq 60); do
        status=$(cli status --json --redis-url "$url" 2>>"$LOGS/status-$name.err") || status='{}'
        read -r lag workers < <(python3 -c 'import json, sys; s = json.loads(sys.argv[1] or "{}")
print(s.get("lag", "unknown"), len(s.get("workers", [])))' "$status")
        printf '%s lag %s workers %s\n' "$(elapsed "$step_start")" "$lag" "$workers" >>"$LOGS/status-$name.trace"
        [ "$lag" = 0 ] && [ "$workers" = "$WORKERS" ] && break
        sleep 1
    done
    printf '%s\n' "$status" >"$LOGS/status-$name.json"
    { [ "$lag" = 0 ] && [ "$workers" = "$WORKERS" ]; } ||
        fail "pass $name: lag $lag with $workers workers after 60 s" "$LOGS/status-$name.json"
    mark "status: lag 0, $workers workers"
    cli actions --redis-url "$url" >"$LOGS/actions-$name.jsonl" || fail "cluster-risk actions"
    local shards dead
    shards=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["deployment"]["shards"])' "$LOGS/status-$name.json")
    # shellcheck disable=SC2016
    dead=$(compose exec -T redis sh -c 'n=0; for s in $(seq 0 $(($1 - 1))); do
        n=$((n + $(redis-cli -c -h "$2" XLEN "risk:{s$s}:dead"))); done; echo $n' sh "$shards" "$host" 2>/dev/null) ||
        fail "counting dead letters with redis-cli on $host"
    python3 -c "$compare" "$LOGS/replay.jsonl" "$LOGS/actions-$name.jsonl" "$LOGS/loadgen-$name.jsonl" "${dead:-0}" ||
        fail "pass $name: the fleet's actions differ from the in-process replay (files in $LOGS)"
    mark "actions compared"
    python3 -c "$prometheus_check" "http://127.0.0.1:$PROMETHEUS_PORT" "$WORKERS" "$shards" ||
        fail "pass $name: Prometheus does not scrape $WORKERS healthy workers with events applied"
    done_step
}

fleet_pass standalone redis://redis:6379/0 redis 4
if [ "${SMOKE_CLUSTER:-1}" = 1 ]; then
    fleet_pass cluster redis://redis-node-1:6379/0 redis-node-1 5
fi

if [ "${KEEP:-0}" != 1 ]; then
    step "6. tear down"
    teardown
    left=$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT")
    [ -z "$left" ] || fail "containers left after teardown: $left" "$LOGS/down.log"
    done_step
fi

echo "SMOKE OK in $(elapsed "$t0") s"
