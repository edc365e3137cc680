#!/usr/bin/env bash
# Start/stop the services txpipe's tests need: Kafka (scripts/kafka.sh) and PostgreSQL
# (scripts/postgres.sh).
#
#   eval "$(scripts/services.sh up)"   start both (in parallel), print the export lines
#   scripts/services.sh env            print the export lines only
#   scripts/services.sh down           stop both
#   scripts/services.sh status         exit 0 when both are up
#
# stdout carries ONLY the export lines (up, env); all progress goes to stderr:
#   export TXPIPE_KAFKA_BROKERS=127.0.0.1:9092
#   export TXPIPE_DATABASE_URL=postgres://txpipe:txpipe@127.0.0.1:5433/txpipe?sslmode=disable
#
# up also sets the host's writeback (scripts/host.sh apply) when run as root, unless
# TXPIPE_HOST_TUNING is off (or 0, false, no); otherwise it says what differs (scripts/host.sh check).
#
# Ports follow KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093) and PG_PORT (5433);
# see scripts/kafka.sh and scripts/postgres.sh for the rest.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
log_prefix=services

KAFKA_PORT="${KAFKA_PORT:-9092}"
PG_PORT="${PG_PORT:-5433}"
export KAFKA_PORT PG_PORT

print_env() {
  echo "export TXPIPE_KAFKA_BROKERS=127.0.0.1:${KAFKA_PORT}"
  echo "export TXPIPE_DATABASE_URL=postgres://txpipe:txpipe@127.0.0.1:${PG_PORT}/txpipe?sslmode=disable"
  # The broker's SASL_SSL listener (SCRAM-SHA-512 over TLS) and its CA.
  echo "export TXPIPE_KAFKA_SASL_BROKERS=127.0.0.1:${KAFKA_SASL_PORT:-9094}"
  echo "export TXPIPE_KAFKA_CA=${TXPIPE_CACHE_DIR}/kafka-ca.crt"
  # The same database over verified TLS, as a role refused without it.
  echo "export TXPIPE_DATABASE_TLS_URL='postgres://txpipe_tls:txpipe_tls@127.0.0.1:${PG_PORT}/txpipe?sslmode=verify-full&sslrootcert=${TXPIPE_CACHE_DIR}/postgres-ca.crt'"
  # Its streaming replica (scripts/postgres.sh), for --read-database-url.
  echo "export TXPIPE_DATABASE_REPLICA_URL=postgres://txpipe:txpipe@127.0.0.1:${PG_REPLICA_PORT:-5434}/txpipe?sslmode=disable"
}

cmd_up() {
  local t0 kpid ppid krc=0 prc=0
  t0=$(now_ms)
  # The kernel's writeback (scripts/host.sh): set when we may, else said.
  case "${TXPIPE_HOST_TUNING:-on}" in off|0|false|no) local tuning=off ;; *) local tuning=on ;; esac
  if [[ "$tuning" == on && "$(id -u)" == 0 ]]; then
    "$TXPIPE_SCRIPTS_DIR/host.sh" apply || true
  else
    "$TXPIPE_SCRIPTS_DIR/host.sh" check || true
  fi
  "$TXPIPE_SCRIPTS_DIR/kafka.sh" start >&2 &
  kpid=$!
  "$TXPIPE_SCRIPTS_DIR/postgres.sh" start >&2 &
  ppid=$!
  wait "$kpid" || krc=$?
  wait "$ppid" || prc=$?
  if (( krc != 0 || prc != 0 )); then
    (( krc != 0 )) && log "kafka failed to start (exit $krc)"
    (( prc != 0 )) && log "postgres failed to start (exit $prc)"
    exit 1
  fi
  log "services up ($(( ($(now_ms) - t0) / 1000 )) s)"
  print_env
}

cmd_down() {
  local rc=0
  "$TXPIPE_SCRIPTS_DIR/kafka.sh" stop >&2 || rc=1
  "$TXPIPE_SCRIPTS_DIR/postgres.sh" stop >&2 || rc=1
  return "$rc"
}

cmd_status() {
  local rc=0
  "$TXPIPE_SCRIPTS_DIR/kafka.sh" status >&2 || rc=3
  "$TXPIPE_SCRIPTS_DIR/postgres.sh" status >&2 || rc=3
  return "$rc"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) print_env ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
