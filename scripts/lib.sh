# shellcheck shell=bash
# Common helpers for the txpipe dev/test service scripts. Source it, don't run it.
#
# Every message goes to stderr: the only thing these scripts print on stdout is
# what `scripts/services.sh up|env` is meant to print (the export lines).

TXPIPE_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TXPIPE_REPO_DIR="$(cd "$TXPIPE_SCRIPTS_DIR/.." && pwd)"
TXPIPE_CACHE_DIR="${TXPIPE_CACHE_DIR:-$TXPIPE_REPO_DIR/.cache}"
[[ "$TXPIPE_CACHE_DIR" == /* ]] || TXPIPE_CACHE_DIR="$PWD/$TXPIPE_CACHE_DIR"

# log_prefix is set by each script, e.g. "kafka".
log() { printf '[%s] %s\n' "${log_prefix:-txpipe}" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "${log_prefix:-txpipe}" "$*" >&2; exit 1; }

# port_open HOST PORT: true if a TCP connect succeeds within 2 s.
port_open() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# now_ms: wall clock in milliseconds.
now_ms() { date +%s%3N; }

# Shell snippet that closes every file descriptor above 2 of the shell running it.
# Daemons are started through it so they don't keep pipes of whoever called us open
# (a caller reading our stderr through a pipe would otherwise never see EOF).
# shellcheck disable=SC2016
TXPIPE_CLOSE_FDS='for fd in /proc/$$/fd/*; do fd=${fd##*/}; if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi; done 2>/dev/null'
