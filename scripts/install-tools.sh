#!/usr/bin/env bash
# Installs, with Debian's apt, what txpipe's tests need and the machine lacks:
# PostgreSQL, kcat, promtool (prometheus), chromium (the /status page test),
# Maven and a JDK (Kafka's jars), make, openssl (TLS certificates).
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

((${#missing[@]})) || exit 0

if [[ $EUID -ne 0 ]]; then
  log "missing, and not root to install them (sudo $0):"
  for w in "${why[@]}"; do log "  $w"; done
  if [[ "$require" == true ]]; then
    die "install them first"
  fi
  log "the tests that need them will skip"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "missing, and no apt-get to install them with (the script knows Debian's package names):"
  for w in "${why[@]}"; do log "  $w"; done
  [[ "$require" == true ]] && die "install them first"
  log "the tests that need them will skip"
  exit 0
fi
log "apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
