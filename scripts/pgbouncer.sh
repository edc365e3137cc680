#!/usr/bin/env bash
# PgBouncer (Debian's package) in transaction pooling mode in front of the
# PostgreSQL of scripts/postgres.sh, as production runs it; started on request.
#
#   scripts/pgbouncer.sh start    install if missing (root), write its config, start, wait (idempotent)
#   scripts/pgbouncer.sh stop
#   scripts/pgbouncer.sh status   exit 0 when it accepts connections, 3 otherwise
#   scripts/pgbouncer.sh env      print the export line of the URL through it
#
# Every database of the server is reachable through it under its own name
# (`* =` in [databases]), as user txpipe; pool_mode = transaction, so a server
# connection serves one client for one transaction. PgBouncer 1.18 (Debian 12)
# keeps no prepared statement across transactions: txpipe's URL through it sets
# default_query_exec_mode=cache_describe, and the relay LISTENs on PostgreSQL
# itself (--relay-listen-url). docs/scaling.md has the pool sizes.
#
# Environment:
#   PGBOUNCER_PORT        default 6432
#   PGBOUNCER_POOL_SIZE   server connections per database and user (default 20)
#   PG_PORT               the PostgreSQL behind it (default 5433)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
log_prefix=pgbouncer

HOST=127.0.0.1
PORT="${PGBOUNCER_PORT:-6432}"
POOL_SIZE="${PGBOUNCER_POOL_SIZE:-20}"
PG_PORT="${PG_PORT:-5433}"
# PgBouncer refuses to run as root: it runs as postgres, from a directory of its own.
DIR="/var/lib/postgresql/txpipe-pgbouncer-$PORT"
BIN=/usr/sbin/pgbouncer

as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

url() {
  echo "postgres://txpipe:txpipe@$HOST:$PORT/txpipe?sslmode=disable&default_query_exec_mode=cache_describe"
}

desired_ini() {
  cat <<EOF
; Managed by scripts/pgbouncer.sh -- overwritten on start.
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = $HOST
listen_port = $PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $DIR/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 2000
max_db_connections = 0
; pgx sends these at connect; PgBouncer would refuse an unknown one.
ignore_startup_parameters = extra_float_digits,statement_timeout
server_lifetime = 3600
server_idle_timeout = 60
; a failed server (restart, failover) is dropped, not reused
server_check_delay = 5
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
admin_users = txpipe
EOF
}

# ours: the pgbouncer of our pidfile is alive (Debian's own service may hold
# the same port: that is not ours).
ours() {
  local pid
  pid="$(as_root cat "$DIR/pgbouncer.pid" 2>/dev/null || true)"
  [[ -n "$pid" ]] && as_root kill -0 "$pid" 2>/dev/null
}

running() { ours && port_open "$HOST" "$PORT"; }

ensure_installed() {
  [[ -x "$BIN" ]] && return 0
  [[ $EUID -eq 0 ]] || die "pgbouncer is not installed; as root: apt-get install -y pgbouncer (or scripts/install-tools.sh)"
  log "apt-get install pgbouncer"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends pgbouncer >&2 || { apt-get update -q >&2; apt-get install -y -q --no-install-recommends pgbouncer >&2; }
  # Debian's own instance (port 6432, /etc/pgbouncer) is not ours.
  as_root service pgbouncer stop >/dev/null 2>&1 || true
}

cmd_start() {
  ensure_installed
  local tmp changed=""
  as_root install -d -o postgres -g postgres -m 0700 "$DIR"
  tmp="$(mktemp)"
  desired_ini >"$tmp"
  if ! as_root cmp -s "$tmp" "$DIR/pgbouncer.ini"; then
    as_root install -o postgres -g postgres -m 0600 "$tmp" "$DIR/pgbouncer.ini"
    changed=1
  fi
  printf '"txpipe" "txpipe"\n' >"$tmp"
  as_root install -o postgres -g postgres -m 0600 "$tmp" "$DIR/userlist.txt"
  rm -f "$tmp"
  if running; then
    if [[ -z "$changed" ]]; then
      log "already running on $HOST:$PORT"
      return 0
    fi
    cmd_stop
  fi
  if port_open "$HOST" "$PORT"; then
    die "$HOST:$PORT is taken by another server (Debian's pgbouncer service? service pgbouncer stop), or set PGBOUNCER_PORT"
  fi
  log "starting on $HOST:$PORT (transaction pooling, $POOL_SIZE server connections per database) in front of $HOST:$PG_PORT"
  as_root runuser -u postgres -- bash -c "$TXPIPE_CLOSE_FDS"'; exec "$@"' _ "$BIN" -d -q "$DIR/pgbouncer.ini" \
    || { as_root tail -n 20 "$DIR/pgbouncer.log" >&2; die "pgbouncer did not start"; }
  local t0
  t0=$(now_ms)
  until running; do
    (( $(now_ms) - t0 < 10000 )) || { as_root tail -n 20 "$DIR/pgbouncer.log" >&2; die "pgbouncer not listening on $PORT"; }
    sleep 0.1
  done
  log "ready: $(url)"
}

cmd_stop() {
  local pid
  if ! ours; then
    log "not running"
    return 0
  fi
  pid="$(as_root cat "$DIR/pgbouncer.pid")"
  log "stopping (pid $pid)"
  as_root kill -INT "$pid"
  while as_root kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) if running; then log "running on $HOST:$PORT"; else log "not running"; exit 3; fi ;;
  env) echo "export TXPIPE_DATABASE_PGBOUNCER_URL='$(url)'" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
