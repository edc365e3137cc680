#!/usr/bin/env bash
# Dedicated PostgreSQL cluster for txpipe dev/test, managed with Debian's postgresql-common tools.
#
#   scripts/postgres.sh start    create cluster/role/database if missing, start, wait (idempotent)
#   scripts/postgres.sh stop     pg_ctlcluster VERSION CLUSTER stop (fast mode)
#   scripts/postgres.sh status   exit 0 when it accepts connections, 3 otherwise
#   scripts/postgres.sh restart
#   scripts/postgres.sh crash-restart   stop -m immediate (as if it crashed), then start (fault tests)
#   scripts/postgres.sh reset-db drop and recreate database txpipe (server must be running)
#   scripts/postgres.sh replica-stop   stop the streaming replica alone (make bench: it would
#                                replay every write on the same cores); start brings it back
#   scripts/postgres.sh roles    print which port is the primary and which the standby
#   scripts/postgres.sh kill-primary    kill -9 every process of the primary at once (its
#                                machine is lost: nothing more reaches the standby)
#   scripts/postgres.sh promote  promote the standby (refused while another primary answers)
#   scripts/postgres.sh rebuild-standby make the lost node a standby of the new primary again
#                                (its data thrown away, pg_basebackup), synchronous if set
#   scripts/postgres.sh destroy  stop and drop both clusters (a failover test's own pair)
#
# TXPIPE_PG_SYNC=off|on|remote_apply makes the replica a synchronous standby: the primary
# gets synchronous_standby_names='*' and synchronous_commit=$TXPIPE_PG_SYNC (conf.d/sync.conf,
# written once the standby streams, removed while it is stopped: a synchronous primary
# cannot commit without it). docs/operations.md says what each setting guarantees and costs.
#
# start also runs a streaming replica of it, cluster "${PG_CLUSTER}_replica" on
# $PG_REPLICA_PORT (default 5434), made once with pg_basebackup: ingest's
# --read-database-url is tested against it. Role txpipe may pause and resume
# its replay (pg_wal_replay_pause), so a test can hold the replica behind.
#
# Result: postgres://txpipe:txpipe@127.0.0.1:$PG_PORT/txpipe?sslmode=disable
# (role txpipe: LOGIN CREATEDB, owner of database txpipe; scram-sha-256 over TCP from 127.0.0.1).
#
# Environment:
#   PG_PORT           default 5433 (the Debian default cluster "main" keeps 5432)
#   PG_CLUSTER        cluster name (default txpipe)
#   PG_VERSION        major version (default: newest installed under /usr/lib/postgresql, else 15)
#   PG_START_TIMEOUT  readiness wait in seconds (default 60)
#
# Data: /var/lib/postgresql/$PG_VERSION/$PG_CLUSTER, config: /etc/postgresql/$PG_VERSION/$PG_CLUSTER,
# log: /var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log. Server tools refuse to run as
# root; as root the Debian wrappers switch to the cluster owner (postgres) themselves, and psql is
# run through runuser. As another user, sudo is used.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
log_prefix=postgres

PG_HOST=127.0.0.1
PG_PORT="${PG_PORT:-5433}"
PG_CLUSTER="${PG_CLUSTER:-txpipe}"
PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"
PG_SHARED_BUFFERS="${TXPIPE_PG_SHARED_BUFFERS:-1GB}"
DB_USER=txpipe
DB_PASS=txpipe
TLS_USER=txpipe_tls # may connect only over TLS; its password is its name
DB_NAME=txpipe
REPL_USER=txpipe_repl # streaming replication; its password is its name
PG_REPLICA_PORT="${PG_REPLICA_PORT:-5434}"
REPLICA_CLUSTER="${PG_CLUSTER}_replica"

if [[ -z "${PG_VERSION:-}" ]]; then
  PG_VERSION="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1 || true)"
  PG_VERSION="${PG_VERSION:-15}"
fi
ETC="/etc/postgresql/$PG_VERSION/$PG_CLUSTER"
PGLOG="/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"
REPLICA_ETC="/etc/postgresql/$PG_VERSION/$REPLICA_CLUSTER"
REPLICA_DATA="/var/lib/postgresql/$PG_VERSION/$REPLICA_CLUSTER"
DATA="/var/lib/postgresql/$PG_VERSION/$PG_CLUSTER"
PG_SYNC="${TXPIPE_PG_SYNC:-off}"
case "$PG_SYNC" in
  off | on | remote_apply) ;;
  *) die "TXPIPE_PG_SYNC=$PG_SYNC: want off, on or remote_apply" ;;
esac

# --- helpers -----------------------------------------------------------------

# Run a command as root (the Debian cluster wrappers need root or the cluster owner).
as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

# Run a client command as the postgres OS user (peer auth over the Unix socket).
as_pg() {
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"
  elif [[ "$(id -un)" == postgres ]]; then "$@"
  else sudo -n -u postgres "$@"
  fi
}

# pgctl ACTION [ARGS]: pg_ctlcluster for our cluster, with inherited fds above 2 closed
# so the server does not hold on to a caller's pipes.
pgctl() {
  as_root bash -c "$TXPIPE_CLOSE_FDS"'; exec "$@"' _ pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" "$@"
}

admin_psql() {
  as_pg psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"
}

app_ok() {
  PGPASSWORD="$DB_PASS" PGCONNECT_TIMEOUT=3 psql -X -q -w -h "$PG_HOST" -p "$PG_PORT" \
    -U "$DB_USER" -d "$DB_NAME" -tAc 'select 1' >/dev/null 2>&1
}

is_running() {
  pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1
}

cluster_exists() { [[ -f "$ETC/postgresql.conf" ]]; }

cluster_online() {
  pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" \
    '$1==v && $2==c && $4 ~ /^online/ {found=1} END {exit !found}'
}

ensure_installed() {
  if command -v pg_createcluster >/dev/null 2>&1 && [[ -x "/usr/lib/postgresql/$PG_VERSION/bin/postgres" ]]; then
    return 0
  fi
  [[ $EUID -eq 0 ]] || die "PostgreSQL server is not installed; run as root: apt-get install -y postgresql"
  log "PostgreSQL not installed: apt-get install -y postgresql"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends postgresql >&2; then
    apt-get update >&2
    apt-get install -y --no-install-recommends postgresql >&2
  fi
  PG_VERSION="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)"
  ETC="/etc/postgresql/$PG_VERSION/$PG_CLUSTER"
  PGLOG="/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"
}

# Desired server settings (conf.d is included by Debian's postgresql.conf).
desired_conf() {
  cat <<EOF
# Managed by scripts/postgres.sh -- overwritten on start. Dev/test settings.
listen_addresses = '127.0.0.1'
max_connections = 300
password_encryption = 'scram-sha-256'
# TLS with a certificate of the cluster's own CA (ensure_tls); the role
# $TLS_USER may only connect over it (pg_hba below).
ssl = on
ssl_cert_file = '$ETC/server.crt'
ssl_key_file = '$ETC/server.key'
# Test box: no need to survive an OS crash (a killed server still recovers fine).
fsync = off
full_page_writes = off
# Sized as a server that holds a ledger would be rather than PostgreSQL's
# 128 MB default, which evicts the indexes of a database holding a million
# commands page by page (docs/benchmarks.md). TXPIPE_PG_SHARED_BUFFERS
# overrides it on a small machine.
shared_buffers = '$PG_SHARED_BUFFERS'
max_wal_size = '4GB'
# WAL segments are recycled rather than created, from the first checkpoint
# on: how many a checkpoint keeps follows the WAL written between the last
# ones, which a restarted server has not seen yet, and with 80 MB a commit
# that needed a new segment waited for 16 MB to be zero-filled
# (IO:WALInitWrite, 40-60 ms in a soak's first minutes, while every
# notifying commit queued behind it on Lock:object).
min_wal_size = '2GB'
# Autovacuum passes and analyzes that take a quarter of a second or more are
# logged, so that a soak's worst windows can be matched with them
# (docs/benchmarks.md); the hot tables' frequent small vacuums stay quiet.
log_autovacuum_min_duration = '250ms'
EOF
}

desired_hba() {
  cat <<EOF
# Managed by scripts/postgres.sh -- overwritten on start.
# TYPE     DATABASE  USER         ADDRESS        METHOD
local      all       postgres                    peer
local      all       all                         peer
hostnossl  all       $TLS_USER    127.0.0.1/32   reject
hostssl    all       $TLS_USER    127.0.0.1/32   scram-sha-256
host       all       all          127.0.0.1/32   scram-sha-256
host       replication $REPL_USER 127.0.0.1/32   scram-sha-256
EOF
}

# The replica's settings: max_connections must not be below the primary's.
replica_conf() {
  cat <<EOF
# Managed by scripts/postgres.sh -- overwritten on start. A streaming replica of $PG_CLUSTER.
listen_addresses = '127.0.0.1'
port = $PG_REPLICA_PORT
max_connections = 300
hot_standby = on
ssl = off
fsync = off
full_page_writes = off
EOF
}

replica_hba() {
  cat <<EOF
# Managed by scripts/postgres.sh -- overwritten on start.
local      all       all                         peer
host       all       all          127.0.0.1/32   scram-sha-256
host       replication $REPL_USER 127.0.0.1/32   scram-sha-256
EOF
}

replica_online() {
  pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$REPLICA_CLUSTER" \
    '$1==v && $2==c && $4 ~ /^online/ {found=1} END {exit !found}'
}

replica_ctl() {
  as_root bash -c "$TXPIPE_CLOSE_FDS"'; exec "$@"' _ pg_ctlcluster "$PG_VERSION" "$REPLICA_CLUSTER" "$@"
}

# ensure_tls: a CA and a server certificate for 127.0.0.1/localhost, made
# once per cluster with openssl. The CA's key is thrown away; clients verify
# with $ETC/txpipe-ca.crt (copied to the cache as postgres-ca.crt).
# Prints "restart" when it made them.
ensure_tls() {
  [[ -f "$ETC/server.crt" && -f "$ETC/server.key" && -f "$ETC/txpipe-ca.crt" ]] && return 0
  command -v openssl >/dev/null 2>&1 || die "openssl not found (apt-get install -y openssl)"
  log "making a CA and a server certificate for TLS"
  local d
  d="$(mktemp -d)"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=txpipe dev CA" \
    -keyout "$d/ca.key" -out "$d/ca.crt" >/dev/null 2>&1 || die "openssl: CA"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$d/server.key" -out "$d/server.csr" >/dev/null 2>&1 \
    || die "openssl: server key"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$d/ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 3650 \
    -extfile "$d/ext" -out "$d/server.crt" >/dev/null 2>&1 || die "openssl: sign"
  as_root install -o postgres -g postgres -m 0644 "$d/server.crt" "$ETC/server.crt"
  as_root install -o postgres -g postgres -m 0600 "$d/server.key" "$ETC/server.key"
  as_root install -o postgres -g postgres -m 0644 "$d/ca.crt" "$ETC/txpipe-ca.crt"
  rm -rf "$d"
  echo restart
}

# copy_ca: the CA certificate where clients of this checkout find it.
# Another cluster (a failover test's pair) has a CA of its own, under its name.
copy_ca() {
  [[ -f "$ETC/txpipe-ca.crt" ]] || return 0
  local dst="$TXPIPE_CACHE_DIR/postgres-ca.crt"
  [[ "$PG_CLUSTER" == txpipe ]] || dst="$TXPIPE_CACHE_DIR/postgres-ca-$PG_CLUSTER.crt"
  mkdir -p "$TXPIPE_CACHE_DIR"
  cmp -s "$ETC/txpipe-ca.crt" "$dst" 2>/dev/null || cp "$ETC/txpipe-ca.crt" "$dst"
}

# has_file PATH: test -f as root (data directories are 0700 postgres).
has_file() { as_root test -f "$1"; }

# promoted NAME: the node was promoted and has not been rebuilt since: it is
# the pair's primary, whatever its name, and nothing may drop it.
promoted() { has_file "/etc/postgresql/$PG_VERSION/$1/promoted"; }

# write_if_changed FILE: stdin -> FILE (owned by postgres) when different. Returns 0 if changed.
write_if_changed() {
  local f="$1" tmp
  tmp="$(mktemp)"
  cat >"$tmp"
  if [[ -f "$f" ]] && cmp -s "$tmp" "$f"; then
    rm -f "$tmp"
    return 1
  fi
  as_root install -o postgres -g postgres -m 0640 "$tmp" "$f"
  rm -f "$tmp"
  return 0
}

# Writes config; prints "restart", "reload" or nothing.
ensure_config() {
  local need=""
  as_root install -d -o postgres -g postgres "$ETC/conf.d"
  need="$(ensure_tls)"
  if desired_conf | write_if_changed "$ETC/conf.d/txpipe.conf"; then need=restart; fi
  copy_ca
  if desired_hba | write_if_changed "$ETC/pg_hba.conf"; then need="${need:-reload}"; fi
  if [[ "$(pg_conftool -s "$PG_VERSION" "$PG_CLUSTER" show port 2>/dev/null || true)" != "$PG_PORT" ]]; then
    log "setting port $PG_PORT"
    as_root pg_conftool "$PG_VERSION" "$PG_CLUSTER" set port "$PG_PORT" >&2
    need=restart
  fi
  echo "$need"
}

ensure_cluster() {
  cluster_exists && return 0
  log "creating cluster $PG_VERSION/$PG_CLUSTER on port $PG_PORT"
  as_root pg_createcluster "$PG_VERSION" "$PG_CLUSTER" --port "$PG_PORT" --start-conf=manual \
    -- --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >&2 9>&-
}

wait_ready() {
  local t0
  t0=$(now_ms)
  until is_running; do
    if (( $(now_ms) - t0 > PG_START_TIMEOUT * 1000 )); then
      [[ -f "$PGLOG" ]] && { echo "----- last 40 lines of $PGLOG -----" >&2; tail -n 40 "$PGLOG" >&2; }
      die "PostgreSQL not ready on $PG_HOST:$PG_PORT after ${PG_START_TIMEOUT} s"
    fi
    sleep 0.2
  done
}

ensure_role_and_db() {
  admin_psql -v u="$DB_USER" -v p="$DB_PASS" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'u', :'p')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'u') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'u', :'p') \gexec
SQL
  # A role that may connect only over TLS (pg_hba), with the app role's rights.
  admin_psql -v u="$TLS_USER" -v p="$TLS_USER" -v app="$DB_USER" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'u', :'p')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'u') \gexec
SELECT format('GRANT %I TO %I', :'app', :'u') \gexec
SQL
  admin_psql -v u="$DB_USER" -v d="$DB_NAME" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'d', :'u')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'d') \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'d', :'u') \gexec
SQL
}

# ensure_replica: a streaming replica of the cluster, made once with
# pg_basebackup (-R writes standby.signal and primary_conninfo), running on
# $PG_REPLICA_PORT. The primary must be up.
ensure_replica() {
  if promoted "$REPLICA_CLUSTER" && ! replica_online && [[ "$(node_role "$PG_PORT")" != primary ]]; then
    log "the replica is the pair's primary since a failover, and down: starting it"
    replica_ctl start >&2 || die "the promoted replica $REPLICA_CLUSTER did not start"
    local t0
    t0=$(now_ms)
    until [[ "$(node_role "$PG_REPLICA_PORT")" == primary ]]; do
      (( $(now_ms) - t0 < PG_START_TIMEOUT * 1000 )) || die "the promoted replica on $PG_REPLICA_PORT does not answer as a primary"
      sleep 0.2
    done
  fi
  if promoted "$REPLICA_CLUSTER" || [[ "$(node_role "$PG_REPLICA_PORT")" == primary ]]; then
    if [[ "$(node_role "$PG_PORT")" == standby ]]; then
      log "after a failover the roles are swapped: primary on $PG_REPLICA_PORT, its standby on $PG_PORT"
      return 0
    fi
    die "the replica on $PG_REPLICA_PORT was promoted (a failover) and $PG_CLUSTER on $PG_PORT is not its standby: stop $PG_CLUSTER if it answers as a primary (pg_ctlcluster $PG_VERSION $PG_CLUSTER stop -m immediate), then '$0 rebuild-standby' makes it the standby"
  fi
  # Functions' rights are per database: grant in template1, which every
  # database created afterwards (the tests' too) copies, and in $DB_NAME.
  local db
  for db in template1 "$DB_NAME"; do
    as_pg psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d "$db" \
      -c "GRANT EXECUTE ON FUNCTION pg_wal_replay_pause(), pg_wal_replay_resume() TO $DB_USER" >/dev/null
  done
  if has_file "$REPLICA_DATA/standby.signal" && pg_isready -q -h "$PG_HOST" -p "$PG_REPLICA_PORT" -t 2 >/dev/null 2>&1 \
     && replica_conf | cmp -s - "$REPLICA_ETC/conf.d/txpipe.conf"; then
    local sysid="SELECT system_identifier FROM pg_control_system()"
    if [[ "$(as_pg psql -X -tAq -p "$PG_PORT" -d postgres -c "$sysid")" \
          == "$(as_pg psql -X -tAq -p "$PG_REPLICA_PORT" -d postgres -c "$sysid")" ]]; then
      if ! replica_lost_wal; then
        # A test killed while it held replay paused must not leave it so.
        as_pg psql -X -q -p "$PG_REPLICA_PORT" -d postgres -c "SELECT pg_wal_replay_resume()" >/dev/null
        if [[ "$PG_SYNC" == off ]] || wait_streaming "$PG_PORT"; then
          ensure_sync "$ETC" "$PG_PORT" "$REPLICA_ETC"
        else
          log "the replica does not stream: the primary stays asynchronous (a synchronous one would stop committing)"
          drop_sync "$ETC" "$PG_PORT"
        fi
        return 0
      fi
      log "the primary recycled the WAL the replica needs (it was stopped too long); making it again"
    else
      log "the replica was made from another cluster; making it again"
    fi
    replica_ctl stop -m fast >&2 || true
    as_root rm -f "$REPLICA_DATA/standby.signal"
  fi
  admin_psql -v u="$REPL_USER" <<'SQL'
SELECT format('CREATE ROLE %I REPLICATION LOGIN PASSWORD %L', :'u', :'u')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'u') \gexec
SQL
  if ! has_file "$REPLICA_DATA/standby.signal"; then
    if [[ -f "$REPLICA_ETC/postgresql.conf" ]]; then
      log "dropping the unfinished replica cluster"
      as_root pg_dropcluster --stop "$PG_VERSION" "$REPLICA_CLUSTER" >&2 9>&- || true
    fi
    log "creating replica cluster $PG_VERSION/$REPLICA_CLUSTER on port $PG_REPLICA_PORT (pg_basebackup)"
    as_root pg_createcluster "$PG_VERSION" "$REPLICA_CLUSTER" --port "$PG_REPLICA_PORT" --start-conf=manual >&2 9>&-
    as_root find "$REPLICA_DATA" -mindepth 1 -delete
    as_pg env PGPASSWORD="$REPL_USER" pg_basebackup -h "$PG_HOST" -p "$PG_PORT" -U "$REPL_USER" \
      -D "$REPLICA_DATA" -R -X stream -c fast >&2 || die "pg_basebackup failed"
  fi
  as_root install -d -o postgres -g postgres "$REPLICA_ETC/conf.d"
  replica_conf | write_if_changed "$REPLICA_ETC/conf.d/txpipe.conf" || true
  replica_hba | write_if_changed "$REPLICA_ETC/pg_hba.conf" || true
  local rlog="/var/log/postgresql/postgresql-$PG_VERSION-$REPLICA_CLUSTER.log"
  if replica_online; then
    replica_ctl restart -m fast >&2
  else
    replica_ctl start >&2 || {
      [[ -f "$rlog" ]] && tail -n 40 "$rlog" >&2
      die "the replica did not start"
    }
  fi
  local t0
  t0=$(now_ms)
  until pg_isready -q -h "$PG_HOST" -p "$PG_REPLICA_PORT" -t 2 >/dev/null 2>&1; do
    if (( $(now_ms) - t0 > PG_START_TIMEOUT * 1000 )); then
      [[ -f "$rlog" ]] && tail -n 40 "$rlog" >&2
      die "replica not ready on $PG_HOST:$PG_REPLICA_PORT"
    fi
    sleep 0.2
  done
  if replica_lost_wal && [[ -z "${REPLICA_REMADE:-}" ]]; then
    # Stopped (make bench stops it) while the primary wrote more WAL than it
    # keeps: it would wait for that WAL for ever. Make it again, once.
    log "the primary recycled the WAL the replica needs (it was stopped too long); making it again"
    replica_ctl stop -m fast >&2 || true
    as_root rm -f "$REPLICA_DATA/standby.signal"
    REPLICA_REMADE=1 ensure_replica
    return
  fi
  log "replica ready on $PG_HOST:$PG_REPLICA_PORT"
  if [[ "$PG_SYNC" != off ]] && ! wait_streaming "$PG_PORT"; then
    log "the replica does not stream: the primary stays asynchronous (a synchronous one would stop committing)"
    drop_sync "$ETC" "$PG_PORT"
    return 0
  fi
  ensure_sync "$ETC" "$PG_PORT" "$REPLICA_ETC"
}

# wait_streaming PORT: true once the primary on PORT has a standby streaming.
wait_streaming() {
  local t0
  t0=$(now_ms)
  until [[ "$(as_pg psql -X -tAq -p "$1" -d postgres \
      -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" 2>/dev/null)" -gt 0 ]]; do
    (( $(now_ms) - t0 < PG_START_TIMEOUT * 1000 )) || return 1
    sleep 0.2
  done
}

# node_role PORT: primary, standby or down.
node_role() {
  local r
  r="$(as_pg env PGCONNECT_TIMEOUT=3 psql -X -tAq -p "$1" -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" || { echo down; return 0; }
  case "$r" in f) echo primary ;; t) echo standby ;; *) echo down ;; esac
}

# ensure_sync PRIMARY_ETC PRIMARY_PORT STANDBY_ETC: with TXPIPE_PG_SYNC, the
# primary waits for its standby at every commit (conf.d/sync.conf, reloaded);
# without it, or for the standby (which may one day be promoted alone), no
# such file.
ensure_sync() {
  local changed=""
  if [[ "$PG_SYNC" != off ]]; then
    # restart_after_crash off: a primary whose backend crashed must not come
    # back by itself, making visible the commits its standby never got.
    printf "# Managed by scripts/postgres.sh (TXPIPE_PG_SYNC=%s).\nsynchronous_standby_names = '*'\nsynchronous_commit = %s\nrestart_after_crash = off\n" \
      "$PG_SYNC" "$PG_SYNC" | write_if_changed "$1/conf.d/sync.conf" && changed=1
  elif [[ -f "$1/conf.d/sync.conf" ]]; then
    as_root rm -f "$1/conf.d/sync.conf"
    changed=1
  fi
  as_root rm -f "$3/conf.d/sync.conf"
  if [[ -n "$changed" ]]; then
    as_pg psql -X -q -p "$2" -d postgres -c 'SELECT pg_reload_conf()' >/dev/null
    log "synchronous commit on $2: $PG_SYNC"
  fi
}

# drop_sync ETC PORT: the primary at ETC commits alone again.
drop_sync() {
  [[ -f "$1/conf.d/sync.conf" ]] || return 0
  as_root rm -f "$1/conf.d/sync.conf"
  as_pg psql -X -q -p "$2" -d postgres -c 'SELECT pg_reload_conf()' >/dev/null 2>&1 || true
  log "the primary on $2 commits without its standby now (synchronous commit off until it is back)"
}

# replica_lost_wal: true when the primary no longer holds the WAL segment the
# running replica must stream next (no replication slot keeps it).
replica_lost_wal() {
  local lsn seg oldest
  lsn="$(as_pg psql -X -tAq -p "$PG_REPLICA_PORT" -d postgres \
    -c "SELECT coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())" 2>/dev/null)" || return 1
  [[ -n "$lsn" ]] || return 1
  seg="$(as_pg psql -X -tAq -p "$PG_PORT" -d postgres -c "SELECT pg_walfile_name('$lsn')")" || return 1
  oldest="$(as_pg psql -X -tAq -p "$PG_PORT" -d postgres \
    -c "SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}\$'")" || return 1
  [[ -n "$oldest" && "$seg" < "$oldest" ]]
}

# stop_replica [all]: with "all" (stop), the pair's other node whatever its
# role; otherwise (replica-stop) only a replica.
stop_replica() {
  [[ -f "$REPLICA_ETC/postgresql.conf" ]] || return 0
  if promoted "$REPLICA_CLUSTER" && [[ "${1:-}" != all ]]; then
    die "$REPLICA_CLUSTER is the pair's primary since a failover: stopping it is not stopping a replica (pg_ctlcluster $PG_VERSION $REPLICA_CLUSTER stop, if you mean it)"
  fi
  drop_sync "$ETC" "$PG_PORT"
  if replica_online; then
    log "stopping replica $PG_VERSION/$REPLICA_CLUSTER"
    replica_ctl stop -m fast >&2
  fi
}

# --- commands ----------------------------------------------------------------

cmd_start() {
  local t0 need
  t0=$(now_ms)
  # Fast path: already up, configured and the app login works.
  if cluster_exists && is_running \
     && desired_conf | cmp -s - "$ETC/conf.d/txpipe.conf" \
     && desired_hba | cmp -s - "$ETC/pg_hba.conf" \
     && [[ -f "$ETC/server.crt" ]] \
     && app_ok; then
    copy_ca
    log "already running on $PG_HOST:$PG_PORT (cluster $PG_VERSION/$PG_CLUSTER)"
    ensure_replica
    return 0
  fi

  if cluster_exists && ! cluster_online && ! has_file "$DATA/standby.signal" \
     && { promoted "$REPLICA_CLUSTER" || [[ "$(node_role "$PG_REPLICA_PORT")" == primary ]]; }; then
    die "the replica on $PG_REPLICA_PORT was promoted: starting $PG_CLUSTER as a primary too would split the ledger in two; start the promoted one (pg_ctlcluster $PG_VERSION $REPLICA_CLUSTER start), then '$0 rebuild-standby' makes $PG_CLUSTER its standby"
  fi

  # Serialize concurrent starts (the cluster is machine-wide, not per checkout).
  exec 9>"${TMPDIR:-/tmp}/txpipe-postgres-$PG_CLUSTER.lock"
  flock -w 300 9 || die "could not take the start lock"

  ensure_installed
  if ! cluster_exists && port_open "$PG_HOST" "$PG_PORT"; then
    die "$PG_HOST:$PG_PORT is already in use by another server (set PG_PORT)"
  fi
  ensure_cluster
  need="$(ensure_config)"
  if ! replica_online; then
    # Synchronous, with no standby to wait for: every commit would hang
    # until it is back. ensure_replica sets it again once it streams.
    drop_sync "$ETC" "$PG_PORT"
  fi

  if cluster_online; then
    case "$need" in
      restart) log "settings changed, restarting"; pgctl restart -m fast >&2 ;;
      reload) log "pg_hba.conf changed, reloading"; pgctl reload >&2 ;;
    esac
  else
    if port_open "$PG_HOST" "$PG_PORT"; then
      die "$PG_HOST:$PG_PORT is already in use by another server (set PG_PORT)"
    fi
    log "starting cluster $PG_VERSION/$PG_CLUSTER on $PG_HOST:$PG_PORT"
    pgctl start >&2 || {
      [[ -f "$PGLOG" ]] && { echo "----- last 40 lines of $PGLOG -----" >&2; tail -n 40 "$PGLOG" >&2; }
      die "pg_ctlcluster $PG_VERSION $PG_CLUSTER start failed"
    }
  fi
  wait_ready
  if has_file "$DATA/standby.signal"; then
    log "$PG_CLUSTER is a standby (rebuilt after a failover)"
    ensure_replica
    return 0
  fi
  ensure_role_and_db
  app_ok || die "cannot log in as $DB_USER to $DB_NAME on $PG_HOST:$PG_PORT with the password"
  log "ready on $PG_HOST:$PG_PORT ($(( ($(now_ms) - t0) / 1000 )) s)"
  ensure_replica
}

cmd_stop() {
  if ! cluster_exists; then
    log "cluster $PG_VERSION/$PG_CLUSTER does not exist"
    return 0
  fi
  if ! cluster_online; then
    log "not running"
    return 0
  fi
  stop_replica all
  log "stopping cluster $PG_VERSION/$PG_CLUSTER"
  pgctl stop -m fast >&2
  log "stopped"
}

cmd_status() {
  if cluster_exists && is_running; then
    log "running on $PG_HOST:$PG_PORT (cluster $PG_VERSION/$PG_CLUSTER)"
    return 0
  fi
  log "not running"
  return 3
}

cmd_reset_db() {
  is_running || die "not running; run: $0 start"
  log "dropping and recreating database $DB_NAME"
  admin_psql -v d="$DB_NAME" <<'SQL'
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', :'d') \gexec
SQL
  ensure_role_and_db
  app_ok || die "cannot log in as $DB_USER to $DB_NAME after reset"
}

# --- failover: $PG_CLUSTER on $PG_PORT and $REPLICA_CLUSTER on $PG_REPLICA_PORT, either the primary ---

# cluster_ctl NAME ACTION [ARGS]: pg_ctlcluster for either node.
cluster_ctl() {
  local name="$1"
  shift
  as_root bash -c "$TXPIPE_CLOSE_FDS"'; exec "$@"' _ pg_ctlcluster "$PG_VERSION" "$name" "$@"
}

# node_with ROLE: "NAME PORT" of the node that has ROLE (primary, standby, down).
node_with() {
  local i names=("$PG_CLUSTER" "$REPLICA_CLUSTER") ports=("$PG_PORT" "$PG_REPLICA_PORT")
  for i in 0 1; do
    if [[ "$(node_role "${ports[$i]}")" == "$1" ]]; then
      echo "${names[$i]} ${ports[$i]}"
      return 0
    fi
  done
  return 1
}

cmd_roles() {
  echo "primary=$(node_with primary | cut -d' ' -f2) standby=$(node_with standby | cut -d' ' -f2)"
}

cmd_kill_primary() {
  local name port pid kids t0
  read -r name port < <(node_with primary) || die "no primary answers"
  pid="$(as_root head -n1 "/var/lib/postgresql/$PG_VERSION/$name/postmaster.pid")"
  # Stopped first, the postmaster forks nothing while its children are
  # listed; then every process titled as the cluster's goes, until none is
  # left (the whole machine is lost at once, not one process after another).
  as_root kill -STOP "$pid"
  kids="$(pgrep -P "$pid" | tr '\n' ' ')"
  log "kill -9 of the primary $name on $port: postmaster $pid and its processes $kids"
  # shellcheck disable=SC2086 # the children's pids, one word each
  as_root kill -9 "$pid" $kids
  t0=$(now_ms)
  local left
  while left="$(pgrep -f "^postgres: $PG_VERSION/$name: " | tr '\n' ' ')"; [[ -n "${left// /}" ]] || kill -0 "$pid" 2>/dev/null; do
    # shellcheck disable=SC2086
    [[ -n "${left// /}" ]] && { as_root kill -9 $left 2>/dev/null || true; } # gone meanwhile
    (( $(now_ms) - t0 < 10000 )) || die "processes of the primary $name are still alive: $left"
    sleep 0.1
  done
  if pg_isready -q -h "$PG_HOST" -p "$port" -t 1 >/dev/null 2>&1; then
    die "something still answers on $port"
  fi
}

cmd_promote() {
  local name port t0
  if node_with primary >/dev/null; then
    die "a primary answers on $(node_with primary | cut -d' ' -f2): promoting the standby would make two"
  fi
  read -r name port < <(node_with standby) || die "no standby answers"
  log "promoting $name on $port"
  cluster_ctl "$name" promote >&2
  # The pair's primary from now on, whatever its name: start and
  # replica-stop treat it so, and nothing drops it until it is rebuilt.
  local other="$REPLICA_CLUSTER"
  [[ "$name" == "$REPLICA_CLUSTER" ]] && other="$PG_CLUSTER"
  as_root rm -f "/etc/postgresql/$PG_VERSION/$other/promoted"
  as_root touch "/etc/postgresql/$PG_VERSION/$name/promoted"
  t0=$(now_ms)
  until [[ "$(node_role "$port")" == primary ]]; do
    (( $(now_ms) - t0 < PG_START_TIMEOUT * 1000 )) || die "$name on $port is still not read-write"
    sleep 0.1
  done
  log "$name on $port is the primary"
}

cmd_rebuild_standby() {
  local pname pport name port data etc t0
  if [[ "$(node_role "$PG_PORT")" == primary && "$(node_role "$PG_REPLICA_PORT")" == primary ]]; then
    die "both $PG_PORT and $PG_REPLICA_PORT answer as primaries: stop the one that is not the promoted one (the lower timeline) first; rebuilding now could throw the wrong one away"
  fi
  read -r pname pport < <(node_with primary) || die "no primary answers"
  if [[ "$pname" == "$PG_CLUSTER" ]]; then name="$REPLICA_CLUSTER" port="$PG_REPLICA_PORT"; else name="$PG_CLUSTER" port="$PG_PORT"; fi
  if promoted "$name"; then
    # The promoted node is down or slow to answer, and the old primary is
    # up: rebuilding now would copy the old over the new.
    die "$name on $port is the promoted node, and $pname on $pport answers as a primary: stop $pname (pg_ctlcluster $PG_VERSION $pname stop -m immediate), start $name, then rebuild"
  fi
  data="/var/lib/postgresql/$PG_VERSION/$name" etc="/etc/postgresql/$PG_VERSION/$name"
  log "rebuilding $name on $port as a standby of $pname on $pport (its data is thrown away)"
  cluster_ctl "$name" stop -m immediate >/dev/null 2>&1 || true
  # A killed postmaster leaves its socket's lock file behind.
  as_root rm -f "/var/run/postgresql/.s.PGSQL.$port.lock"
  as_root find "$data" -mindepth 1 -delete
  as_pg env PGPASSWORD="$REPL_USER" pg_basebackup -h "$PG_HOST" -p "$pport" -U "$REPL_USER" \
    -D "$data" -R -X stream -c fast >&2 || die "pg_basebackup failed"
  as_root rm -f "$etc/conf.d/sync.conf" "$etc/promoted"
  cluster_ctl "$name" start >&2 || die "$name did not start"
  t0=$(now_ms)
  until [[ "$(node_role "$port")" == standby ]] && [[ "$(as_pg psql -X -tAq -p "$pport" -d postgres \
      -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" -gt 0 ]]; do
    (( $(now_ms) - t0 < PG_START_TIMEOUT * 1000 )) || die "$name on $port does not stream from $pport"
    sleep 0.2
  done
  ensure_sync "/etc/postgresql/$PG_VERSION/$pname" "$pport" "$etc"
  log "$name on $port streams from $pname on $pport"
}

cmd_destroy() {
  local name
  [[ "$PG_CLUSTER" != txpipe ]] || die "destroy drops both clusters of a pair; it refuses the development cluster txpipe (set PG_CLUSTER)"
  for name in "$REPLICA_CLUSTER" "$PG_CLUSTER"; do
    if [[ -f "/etc/postgresql/$PG_VERSION/$name/postgresql.conf" ]]; then
      log "dropping cluster $PG_VERSION/$name"
      cluster_ctl "$name" stop -m immediate >/dev/null 2>&1 || true
      as_root pg_dropcluster "$PG_VERSION" "$name" >&2
    fi
    # pg_dropcluster leaves the files it did not make (conf.d/).
    as_root rm -rf "/etc/postgresql/$PG_VERSION/$name"
  done
}

case "${1:-}" in
  start) cmd_start ;;
  reset-db) cmd_reset_db ;;
  stop) cmd_stop ;;
  restart) cmd_stop; cmd_start ;;
  crash-restart) log "stopping in immediate mode (a crash: no checkpoint, clients cut off)"; pgctl stop -m immediate >&2; cmd_start ;;
  status) cmd_status ;;
  replica-stop) stop_replica ;;
  roles) cmd_roles ;;
  kill-primary) cmd_kill_primary ;;
  promote) cmd_promote ;;
  rebuild-standby) cmd_rebuild_standby ;;
  destroy) cmd_destroy ;;
  *) echo "usage: $0 start|stop|restart|crash-restart|status|reset-db|replica-stop|roles|kill-primary|promote|rebuild-standby|destroy" >&2; exit 2 ;;
esac
