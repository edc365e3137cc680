#!/usr/bin/env bash
# A three-broker Apache Kafka cluster on loopback (KRaft, each node broker and
# controller, replication factor 3, min.insync.replicas=2), for the fault
# tests that kill a partition leader. It runs beside the single broker of
# scripts/kafka.sh, on other ports.
#
#   scripts/kafka-cluster.sh start        start the three nodes (idempotent)
#   scripts/kafka-cluster.sh stop         stop them
#   scripts/kafka-cluster.sh status       exit 0 when all three answer
#   scripts/kafka-cluster.sh kill N       kill -9 node N (1–3)
#   scripts/kafka-cluster.sh start-node N start node N again
#   scripts/kafka-cluster.sh brokers      print the bootstrap list
#   scripts/kafka-cluster.sh env          print export lines for the tests
#
# Node N listens on 127.0.0.1:1909N (clients) and 127.0.0.1:1919N
# (controllers); its files live in $TXPIPE_CACHE_DIR/kafka-cluster/nodeN.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
log_prefix=kafka-cluster

CDIR="$TXPIPE_CACHE_DIR/kafka-cluster"
NODES=(1 2 3)
VOTERS="1@127.0.0.1:19191,2@127.0.0.1:19192,3@127.0.0.1:19193"
BROKERS="127.0.0.1:19091,127.0.0.1:19092,127.0.0.1:19093"

cluster_id() {
  mkdir -p "$CDIR"
  if [[ ! -s "$CDIR/cluster.id" ]]; then
    local id
    while :; do
      id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
      [[ "$id" != -* && ${#id} -eq 22 ]] && break
    done
    echo "$id" >"$CDIR/cluster.id"
  fi
  cat "$CDIR/cluster.id"
}

node() {
  local n="$1"; shift
  KAFKA_DIR="$CDIR/node$n" KAFKA_NODE_ID="$n" KAFKA_SASL_PORT="" KAFKA_PORT="1909$n" KAFKA_CONTROLLER_PORT="1919$n" \
    KAFKA_VOTERS="$VOTERS" KAFKA_CLUSTER_ID="$(cluster_id)" KAFKA_REPLICATION=3 KAFKA_MIN_ISR=2 \
    KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}" \
    "$TXPIPE_SCRIPTS_DIR/kafka.sh" "$@"
}

check_node() {
  [[ "${1:-}" =~ ^[123]$ ]] || die "node must be 1, 2 or 3"
}

case "${1:-}" in
  start)
    "$TXPIPE_SCRIPTS_DIR/kafka.sh" libs
    cluster_id >/dev/null # once, before the nodes race to create it
    # A node is ready only once the quorum has formed: start all at once.
    pids=()
    for n in "${NODES[@]}"; do node "$n" start & pids+=($!); done
    rc=0
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    (( rc == 0 )) || die "a node did not start (logs in $CDIR/node*/logs)"
    log "cluster up: $BROKERS"
    ;;
  stop)
    # In parallel: a node waits for the others during a controlled shutdown.
    pids=()
    for n in "${NODES[@]}"; do KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-15}" node "$n" stop & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p" || true; done
    ;;
  status) rc=0; for n in "${NODES[@]}"; do node "$n" status || rc=3; done; exit $rc ;;
  kill)
    check_node "${2:-}"
    pid="$(cat "$CDIR/node$2/kafka.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || die "node $2 is not running"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$CDIR/node$2/kafka.pid"
    log "node $2 killed (pid $pid)"
    ;;
  start-node) check_node "${2:-}"; node "$2" start ;;
  brokers) echo "$BROKERS" ;;
  env) echo "export TXPIPE_KAFKA_CLUSTER_BROKERS=$BROKERS" ;;
  *) echo "usage: $0 start|stop|status|kill N|start-node N|brokers|env" >&2; exit 2 ;;
esac
