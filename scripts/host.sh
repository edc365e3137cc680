#!/usr/bin/env bash
# The Linux kernel settings a host running txpipe's PostgreSQL (and Kafka) wants.
#
#   scripts/host.sh check   print each setting, its value and the one wanted; exit 1 if one differs
#   scripts/host.sh apply   set them (needs root; sysctl -w, so until the next reboot)
#
# scripts/services.sh up runs `apply` when it runs as root (CI, a VM, a container
# with a writable /proc/sys) unless TXPIPE_HOST_TUNING is off (or 0, false, no), and `check` otherwise.
#
# Why (docs/deployment.md, "The host's writeback"): Linux starts writing dirty
# page-cache pages back only past vm.dirty_background_ratio of memory (10 %: 2.4 GB
# on 24 GB) or once they are vm.dirty_expire_centisecs old (30 s). Kafka's logs and
# PostgreSQL's data files then pile up for 30 s and go out in one burst that fills
# the disk's queue, and every COMMIT's WAL flush waits behind it: measured here,
# a statement or a COMMIT of 150-680 ms every ~30 s, the worst 10-s window's p99
# of the sustained run at 650-1 180 ms. With writeback starting at 64 MiB, it
# trickles out all the time: the same run's worst window was 70 ms. This is the
# setting PostgreSQL tuning guides give for hosts with much memory.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
log_prefix=host

# name=value: the settings wanted, in /proc/sys/vm terms.
WANTED=(
  "dirty_background_bytes=67108864"
)

current() { cat "/proc/sys/vm/$1" 2>/dev/null || echo "?"; }

cmd_check() {
  local rc=0 kv name want have
  [[ -d /proc/sys/vm ]] || { log "no /proc/sys/vm (not Linux): nothing to check"; return 0; }
  for kv in "${WANTED[@]}"; do
    name=${kv%%=*}; want=${kv#*=}; have=$(current "$name")
    if [[ "$have" == "$want" ]]; then
      log "vm.$name = $have (as wanted)"
    else
      log "vm.$name = $have, wanted $want: writeback comes in bursts that stall commits (docs/deployment.md); as root: scripts/host.sh apply"
      rc=1
    fi
  done
  return "$rc"
}

cmd_apply() {
  local kv name want was ratio
  [[ -d /proc/sys/vm ]] || { log "no /proc/sys/vm (not Linux): nothing to set"; return 0; }
  for kv in "${WANTED[@]}"; do
    name=${kv%%=*}; want=${kv#*=}; was=$(current "$name")
    if [[ "$was" == "$want" ]]; then
      continue
    fi
    # Setting the bytes zeroes the ratio: say how to go back to either.
    ratio=$(current dirty_background_ratio)
    if { echo "$want" > "/proc/sys/vm/$name"; } 2>/dev/null; then
      log "vm.$name set to $want until reboot (was $was, dirty_background_ratio $ratio; to restore: sysctl -w vm.dirty_background_ratio=$ratio, or vm.$name=$was; see docs/deployment.md)"
    else
      log "could not set vm.$name (read-only /proc/sys?): writeback stays bursty; see docs/deployment.md"
    fi
  done
}

case "${1:-}" in
  check) cmd_check ;;
  apply) cmd_apply ;;
  *) echo "usage: $0 check|apply" >&2; exit 2 ;;
esac
