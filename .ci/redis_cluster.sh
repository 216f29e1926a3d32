#!/usr/bin/env bash
# A 6-node Redis Cluster (3 primaries + 3 replicas) on loopback, for the cluster tests.
#
#   .ci/redis_cluster.sh start DIR [BASE_PORT]   start nodes BASE_PORT..BASE_PORT+5 (default 7000)
#                                                with their files in DIR, create the cluster, wait
#                                                until every node says cluster_state:ok
#   .ci/redis_cluster.sh stop DIR                stop the nodes started with DIR (their pid files)
#
# Then: export FEATURESTORE_TEST_REDIS_CLUSTER_URL=redis://127.0.0.1:BASE_PORT
# Nothing is persisted (--save "" --appendonly no); the cluster bus uses BASE_PORT+10000...
# Starting over a running cluster of the same DIR is a no-op once its state is ok.
set -euo pipefail

log() { printf '[redis-cluster] %s\n' "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

cmd=${1:-}
dir=${2:-}
base=${3:-7000}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|stop DIR [BASE_PORT]"
ports=()
for i in 0 1 2 3 4 5; do ports+=($((base + i))); done

cluster_ok() {  # every node says cluster_state:ok, and 3 replicas are in sync with a primary
  local port replicas=0
  for port in "${ports[@]}"; do
    redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
    if redis-cli -h 127.0.0.1 -p "$port" info replication 2>/dev/null | grep -q '^master_link_status:up'; then
      replicas=$((replicas + 1))
    fi
  done
  [ "$replicas" -eq 3 ]
}

stop() {
  local pidfile
  for pidfile in "$dir"/redis-*.pid; do
    [ -e "$pidfile" ] || continue
    # Only the processes this script started, by the pid each wrote.
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

start() {
  command -v redis-server >/dev/null || die "redis-server is not installed"
  command -v redis-cli >/dev/null || die "redis-cli is not installed"
  mkdir -p "$dir"
  if cluster_ok; then log "already running on ports ${ports[0]}..${ports[5]}"; return 0; fi
  local port
  for port in "${ports[@]}"; do
    if redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
      die "port $port is taken by a Redis that is not a healthy cluster; stop it or pick another BASE_PORT"
    fi
    rm -f "$dir/nodes-$port.conf"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 2000 \
      --save "" --appendonly no --daemonize yes --dir "$dir" \
      --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log" \
      || die "cannot start redis-server on port $port"
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 1 60); do
      redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
      sleep 0.25
    done
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 \
      || { tail -n 20 "$dir/redis-$port.log" >&2 || true; die "node $port did not come up"; }
  done
  local nodes=()
  for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
    || { tail -n 20 "$dir/create.log" >&2; die "redis-cli --cluster create failed"; }
  for _ in $(seq 1 120); do
    if cluster_ok; then log "up on ports ${ports[0]}..${ports[5]} (files in $dir)"; return 0; fi
    sleep 0.25
  done
  redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info >&2 || true
  die "the cluster did not reach cluster_state:ok within 30 s"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop DIR [BASE_PORT]" ;;
esac
