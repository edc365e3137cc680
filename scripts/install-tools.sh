#!/usr/bin/env bash
# Installs, with Debian's apt, what txpipe's tests need and the machine lacks:
# PostgreSQL, kcat, promtool (prometheus), chromium (the /status page test),
# Maven and a JDK (Kafka's jars), make, openssl (TLS certificates), pgbouncer.
#
#   scripts/install-tools.sh            as root: install what is missing;
#                                       otherwise: say what is missing and which
#                                       tests will skip for it, and go on
#   scripts/install-tools.sh --require  as above, but fail when something is
#                                       missing and cannot be installed (CI)
#
# make test and .ci/run both call it, so a newcomer's green run runs the same
# tests as CI's. Nothing is installed when nothing is missing (no apt-get
# update either).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
log_prefix=install-tools

require=false
[[ "${1:-}" == --require ]] && require=true

missing=()
why=()
need() { # need PACKAGE WHAT-NEEDS-IT
  missing+=("$1")
  why+=("$1: $2")
}
{ command -v pg_createcluster >/dev/null 2>&1 && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; } \
  || need postgresql "every database test"
command -v psql >/dev/null 2>&1 || need postgresql-client "scripts/postgres.sh"
command -v kcat >/dev/null 2>&1 || need kcat "the third-party client tests"
command -v promtool >/dev/null 2>&1 || need prometheus "the alert rule tests (promtool) and the real-Prometheus test"
command -v chromium >/dev/null 2>&1 || need chromium "the /status page test in a real browser"
command -v mvn >/dev/null 2>&1 || need maven "fetching Kafka's jars"
command -v java >/dev/null 2>&1 || need openjdk-17-jdk-headless "running Kafka"
command -v make >/dev/null 2>&1 || need make "the Makefile"
command -v openssl >/dev/null 2>&1 || need openssl "PostgreSQL's and Kafka's TLS certificates"
[[ -x /usr/sbin/pgbouncer ]] || need pgbouncer "the test through PgBouncer (scripts/pgbouncer.sh)"
command -v python3 >/dev/null 2>&1 || need python3 "the analyst example (examples/analyst)"
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need python3-venv "the analyst example's virtualenv"

# The analyst example's virtualenv (confluent-kafka, DuckDB from PyPI), in
# the cache; made again when its requirements change. Needs no root.
analyst_env() {
  local venv="$TXPIPE_CACHE_DIR/analyst-venv" req="$TXPIPE_REPO_DIR/examples/analyst/requirements.txt"
  command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || return 0
  if [[ -x "$venv/bin/python" ]] && cmp -s "$req" "$venv/requirements.txt" \
    && "$venv/bin/python" -c 'import confluent_kafka, duckdb' >/dev/null 2>&1; then
    return 0
  fi
  log "analyst example: python3 -m venv $venv; pip install -r examples/analyst/requirements.txt"
  rm -rf "$venv"
  # Wheels only: a source build of DuckDB would take hours on a small machine.
  if python3 -m venv "$venv" >&2 && "$venv/bin/pip" install -q --only-binary=:all: -r "$req" >&2; then
    cp "$req" "$venv/requirements.txt"
  else
    rm -rf "$venv"
    [[ "$require" == true ]] && die "could not install the analyst example's packages"
    log "the analyst example's test will skip"
  fi
}

if ! ((${#missing[@]})); then
  analyst_env
  exit 0
fi

if [[ $EUID -ne 0 ]]; then
  log "missing, and not root to install them (sudo $0):"
  for w in "${why[@]}"; do log "  $w"; done
  if [[ "$require" == true ]]; then
    die "install them first"
  fi
  log "the tests that need them will skip"
  analyst_env
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "missing, and no apt-get to install them with (the script knows Debian's package names):"
  for w in "${why[@]}"; do log "  $w"; done
  [[ "$require" == true ]] && die "install them first"
  log "the tests that need them will skip"
  analyst_env
  exit 0
fi
log "apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
analyst_env
