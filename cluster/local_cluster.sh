#!/usr/bin/env bash
# A real multi-node Ray cluster on this one machine: one head and N worker nodes, each
# its own raylet, object store and temp dir, all joined over loopback with token
# authentication on.
#
#   cluster/local_cluster.sh start N   # head (node_0) + N workers (node_1..node_N)
#   cluster/local_cluster.sh status
#   cluster/local_cluster.sh stop
#
# After `start`, `source "$STATE_DIR/env"` gives a shell RAY_ADDRESS and RAY_AUTH_MODE;
# drivers then connect with `ray.init(address=...)` or `ray status`.
#
# Each node gets a custom resource {"node_k": 1}, so a test can pin work to one node,
# plus EMOTION_RAY_NODE_RESOURCES (a JSON object, e.g. '{"detect_slot": 1}') on every
# node: a stage asking for one detect_slot per actor then gets exactly one actor per node.
# Each node runs under its own `ray start --block`; `stop` ends exactly those processes
# (by PID, then by their process group), never other Ray instances on the machine.
#
# Settings (environment):
#   EMOTION_RAY_CLUSTER_DIR   state dir: pids, logs, ray temp dirs (default /tmp/emotion-ray-$UID)
#   EMOTION_RAY_PORT          GCS port of the head (default: a free port)
#   EMOTION_RAY_HEAD_CPUS     CPUs the head offers (default 1)
#   EMOTION_RAY_WORKER_CPUS   CPUs each worker node offers (default 1)
#   EMOTION_RAY_OBJECT_STORE_BYTES  object store per node (default 100 MB)
#   EMOTION_RAY_NODE_RESOURCES  extra custom resources of every node (JSON object)
#   EMOTION_RAY_DASHBOARD_PORT  if set, start the dashboard (and so the Jobs API for
#                             `ray job submit`) on 127.0.0.1:PORT; off by default
#   EMOTION_RAY_DRAIN_S       seconds a node drains on `stop` before shutting down its
#                             processes (Ray's RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S; default 2)
#   RAY_BIN                   the `ray` executable (default: .venv/bin/ray, else PATH)
#
# Token authentication (Ray >= 2.52; see docs/cluster.md). Every node and every client
# needs RAY_AUTH_MODE=token and the same token, taken in Ray's own order:
#   RAY_AUTH_TOKEN (the token itself) > RAY_AUTH_TOKEN_PATH (a file) > ~/.ray/auth_token.
# If none is set, ~/.ray/auth_token is created the way `ray get-auth-token --generate`
# does (Ray's default path, which a local `ray.init()` uses too). The token is never
# printed or logged.
#
# Anything the nodes' workers must see (AWS_ENDPOINT_URL_S3, AWS_* credentials, ...)
# must be in the environment of `start`: Ray workers inherit the raylet's environment.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${EMOTION_RAY_CLUSTER_DIR:-/tmp/emotion-ray-$(id -u)}"
HEAD_CPUS="${EMOTION_RAY_HEAD_CPUS:-1}"
WORKER_CPUS="${EMOTION_RAY_WORKER_CPUS:-1}"
OBJECT_STORE_BYTES="${EMOTION_RAY_OBJECT_STORE_BYTES:-100000000}"
DASHBOARD_PORT="${EMOTION_RAY_DASHBOARD_PORT:-}"
START_TIMEOUT_S="${EMOTION_RAY_START_TIMEOUT_S:-120}"
DRAIN_S="${EMOTION_RAY_DRAIN_S:-2}"

if [[ -n "${RAY_BIN:-}" ]]; then
  RAY="$RAY_BIN"
elif [[ -x "$REPO_ROOT/.venv/bin/ray" ]]; then
  RAY="$REPO_ROOT/.venv/bin/ray"
else
  RAY="$(command -v ray || true)"
fi
[[ -n "$RAY" && -x "$RAY" ]] || { echo "error: no 'ray' executable (set RAY_BIN)" >&2; exit 2; }
PYTHON="$(dirname "$RAY")/python"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"

export RAY_AUTH_MODE=token
export RAY_USAGE_STATS_ENABLED=0

die() { echo "error: $*" >&2; exit 1; }

# node_resources K: the --resources JSON of node K ({"node_K": 1} + EMOTION_RAY_NODE_RESOURCES).
node_resources() {
  "$PYTHON" - "$1" "${EMOTION_RAY_NODE_RESOURCES:-}" <<'PY'
import json, sys
extra = json.loads(sys.argv[2]) if sys.argv[2].strip() else {}
if not isinstance(extra, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in extra.values()):
    sys.exit(f"EMOTION_RAY_NODE_RESOURCES must be a JSON object of non-negative numbers, got {sys.argv[2]!r}")
print(json.dumps({f"node_{sys.argv[1]}": 1, **extra}))
PY
}

# free_ports N: N distinct TCP ports that are free on 127.0.0.1 right now.
free_ports() {
  "$PYTHON" - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# is_ours PID: that process is a `ray start` this script launched from STATE_DIR (a
# stale pid file must never make us signal an unrelated process that reused the PID).
is_ours() {
  [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "--temp-dir $STATE_DIR/node_"
}

alive() { [[ -f "$1" ]] && is_ours "$(cat "$1")"; }

ensure_token() {
  if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
    return
  elif [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    [[ -s "$RAY_AUTH_TOKEN_PATH" ]] || die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty"
  elif [[ ! -s "$HOME/.ray/auth_token" ]]; then
    # What `ray get-auth-token --generate` does (256 random bits, hex), but created
    # atomically: two clusters starting at once must not end up with different tokens.
    local tmp
    mkdir -p "$HOME/.ray"
    tmp="$(mktemp "$HOME/.ray/.auth_token.XXXXXX")"
    "$PYTHON" -c 'import secrets, sys; sys.stdout.write(secrets.token_hex(32))' >"$tmp"
    ln "$tmp" "$HOME/.ray/auth_token" 2>/dev/null || true   # loses to an existing file
    rm -f "$tmp"
  fi
}

# wait_started NODE: until that node's `ray start` reports success (or dies).
wait_started() {
  local node="$1" log="$STATE_DIR/$1.log" pidfile="$STATE_DIR/$1.pid" waited=0
  until grep -q "Ray runtime started" "$log" 2>/dev/null; do
    if ! alive "$pidfile"; then
      echo "error: $node failed to start; last lines of $log:" >&2
      tail -n 30 "$log" >&2 || true
      return 1
    fi
    (( waited++ < START_TIMEOUT_S * 5 )) || { echo "error: $node not up after ${START_TIMEOUT_S}s (see $log)" >&2; return 1; }
    sleep 0.2
  done
}

# start_node NODE AGENT_PORT ARGS...: one blocking `ray start` in its own session and
# process group. Every node on this machine needs its own dashboard-agent port (the
# default, 52365, would collide).
start_node() {
  local node="$1" agent_port="$2"; shift 2
  mkdir -p "$STATE_DIR/$node"
  # On SIGTERM a Ray 2.60 node first drains, waiting until no worker holds a lease
  # (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, 30 s by default). Ray Data's helper actors
  # are detached and never give theirs back, so after any Ray Data job the drain ran
  # past `stop`'s 10 s and the node was killed instead of shutting down.
  RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="$DRAIN_S" setsid "$RAY" start --block \
    --temp-dir "$STATE_DIR/$node" \
    --object-store-memory "$OBJECT_STORE_BYTES" \
    --dashboard-agent-listen-port "$agent_port" \
    --min-worker-port 0 --max-worker-port 0 \
    --disable-usage-stats \
    "$@" >"$STATE_DIR/$node.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/$node.pid"
}

cmd_start() {
  local workers="${1:-1}"
  [[ "$workers" =~ ^[0-9]+$ ]] || die "start takes the number of worker nodes, got '$workers'"
  if alive "$STATE_DIR/node_0.pid"; then
    die "a cluster is already running from $STATE_DIR (run: $0 stop)"
  fi
  if [[ ! -d "$STATE_DIR" ]]; then
    mkdir -p "$STATE_DIR"
    chmod 700 "$STATE_DIR"
  fi
  rm -rf "$STATE_DIR"/node_* "$STATE_DIR/address" "$STATE_DIR/env"
  ensure_token
  node_resources 0 >/dev/null || die "bad EMOTION_RAY_NODE_RESOURCES"

  # Ports: GCS, Ray client server, then one dashboard-agent port per node.
  local ports
  read -r -a ports <<<"$(free_ports $((workers + 3)))"
  local port="${EMOTION_RAY_PORT:-${ports[0]}}"
  local address="127.0.0.1:$port"
  local dashboard=(--include-dashboard false)
  if [[ -n "$DASHBOARD_PORT" ]]; then
    dashboard=(--include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT")
  fi

  start_node node_0 "${ports[2]}" --head --port "$port" --num-cpus "$HEAD_CPUS" \
    --ray-client-server-port "${ports[1]}" "${dashboard[@]}" \
    --resources "$(node_resources 0)"
  wait_started node_0 || { cmd_stop; exit 1; }

  local k
  for ((k = 1; k <= workers; k++)); do
    start_node "node_$k" "${ports[k + 2]}" --address "$address" --num-cpus "$WORKER_CPUS" \
      --resources "$(node_resources "$k")"
  done
  for ((k = 1; k <= workers; k++)); do
    wait_started "node_$k" || { cmd_stop; exit 1; }
  done

  echo "$address" >"$STATE_DIR/address"
  {
    echo "export RAY_ADDRESS=$address"
    echo "export RAY_AUTH_MODE=token"
    [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]] && echo "export RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
    [[ -n "$DASHBOARD_PORT" ]] && echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT"
    true
  } >"$STATE_DIR/env"
  echo "Ray cluster up: $((workers + 1)) nodes, address $address"
  echo "  source $STATE_DIR/env   # RAY_ADDRESS and RAY_AUTH_MODE for drivers and 'ray status'"
}

# stop_nodes PIDFILE...: TERM each blocking `ray start` (each tears down its own
# children), wait for all of them, then clear out their process groups if anything is
# left. Only processes this script started, found by the PIDs it recorded.
stop_nodes() {
  local pidfile pid pids=() waited=0
  for pidfile in "$@"; do
    [[ -f "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    is_ours "$pid" || continue
    pids+=("$pid")
    kill -TERM "$pid" 2>/dev/null || true
  done
  ((${#pids[@]})) || { rm -f "$@"; return 0; }
  for pid in "${pids[@]}"; do
    # Up to 10 s, then the group. is_ours, not kill -0: a node that has exited stays a
    # zombie where nothing reaps it (an init that does not, as in many containers), and
    # kill -0 succeeds on a zombie, so every stop waited the full 10 s.
    while is_ours "$pid" && ((waited++ < 50)); do sleep 0.2; done
  done
  # Leftovers in a group we created (setsid made each node its own group, id = pid).
  for pid in "${pids[@]}"; do
    if pgrep -g "$pid" -f "ray" >/dev/null 2>&1; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      sleep 1
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done
  rm -f "$@"
}

cmd_stop() {
  [[ -d "$STATE_DIR" ]] || { echo "no cluster state in $STATE_DIR"; return 0; }
  local f nodes=()
  for f in "$STATE_DIR"/node_*.pid; do
    [[ -f "$f" ]] && nodes+=("$f")
  done
  # All nodes at once: each `ray start --block` tears down its own processes without
  # needing the head's GCS, so there is no order to wait for.
  ((${#nodes[@]})) && stop_nodes "${nodes[@]}"
  rm -f "$STATE_DIR/address" "$STATE_DIR/env"
  echo "Ray cluster in $STATE_DIR stopped"
}

cmd_status() {
  local pidfile node any=0
  for pidfile in "$STATE_DIR"/node_*.pid; do
    [[ -f "$pidfile" ]] || continue
    any=1
    node="$(basename "$pidfile" .pid)"
    if alive "$pidfile"; then echo "$node: running (pid $(cat "$pidfile"))"; else echo "$node: dead"; fi
  done
  ((any)) || { echo "no cluster running from $STATE_DIR"; return 1; }
  [[ -f "$STATE_DIR/address" ]] && "$RAY" status --address "$(cat "$STATE_DIR/address")"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start N | stop | status" >&2; exit 2 ;;
esac
