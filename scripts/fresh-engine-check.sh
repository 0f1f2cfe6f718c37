#!/usr/bin/env bash
# Rehearse the suite on a freshly started Docker engine, as a new machine would run it:
# stop dockerd, set its state directory aside, start it empty, run scripts/test.sh, then
# stop it and put the old state back, even when the run fails or is interrupted.
#
# NOT part of CI, and never run it on an engine others are using: it stops the engine,
# and while it runs every image, container, volume and network the engine had is gone
# from view (test.sh rebuilds the sandbox image on the empty engine, which takes minutes).
#
# "Aside" is an empty directory mounted over the state directory (default /var/lib/docker,
# or DOCKER_STATE_DIR), not a rename: the state directory is often a mount point of its
# own, which cannot be renamed, and a mount leaves the old state untouched until a single
# unmount brings it back. The empty directory lives inside the state directory (the same
# filesystem, so the storage driver works as it did) and is deleted afterwards.
#
#   sudo scripts/fresh-engine-check.sh      # exit status: test.sh's
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${DOCKER_STATE_DIR:-/var/lib/docker}
PIDFILE=/var/run/docker.pid
FRESH="$STATE/.fresh-engine-check"
# A file only the fresh directory has: seen at $STATE, the fresh state is mounted there.
MARKER=.pdm-fresh-engine-check

say() { echo "fresh-engine-check: $*"; }
die() { echo "fresh-engine-check: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it stops dockerd and mounts over $STATE"
command -v dockerd >/dev/null || die "no dockerd here (scripts/ensure-docker.sh installs it)"
[ -d "$STATE" ] || die "$STATE does not exist: nothing to set aside (DOCKER_STATE_DIR names another)"
[ ! -e "$STATE/$MARKER" ] || die "a fresh state is still mounted over $STATE (an earlier run did not finish): stop dockerd, run \`umount $STATE\`, start it with scripts/ensure-docker.sh"
[ ! -e "$FRESH" ] || die "$FRESH exists (an earlier run did not finish): if nothing is mounted from it, remove it"

# The live dockerd's pid: from its pid file, not a zombie (one can linger until reaped).
dockerd_pid() {
  local pid state
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  [ -n "$pid" ] || return 1
  state=$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)
  [ -n "$state" ] && [ "$state" != Z ] && echo "$pid"
}

# SIGTERM dockerd and wait until it is gone (it stops its containers first, up to 15 s
# each by default). Whoever started it (ensure-docker.sh, a test), its pid file names it.
stop_engine() {
  local pid
  pid=$(dockerd_pid) || { say "dockerd is not running"; return 0; }
  say "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 120); do
    dockerd_pid >/dev/null || return 0
    sleep 1
  done
  echo "fresh-engine-check: dockerd (pid $pid) did not stop within 120 s" >&2
  return 1
}

# Unmount what dockerd left mounted under the state directory (deepest first): nothing
# normally, as dockerd unmounts on shutdown.
unmount_below() {
  local m
  for m in $(awk -v p="$STATE/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

mounted=""
restore() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  say "restoring the engine's state (test.sh exited with $rc)"
  stop_engine || rc=1
  if [ -n "$mounted" ]; then
    unmount_below
    # Only the fresh state's mount, never the state directory's own: check the marker.
    for _ in 1 2 3; do
      [ -e "$STATE/$MARKER" ] || break
      umount "$STATE" 2>/dev/null || umount -l "$STATE"
    done
    if [ -e "$STATE/$MARKER" ]; then
      echo "fresh-engine-check: cannot unmount the fresh state from $STATE; the old state is under it" >&2
      exit 1
    fi
  fi
  if [ -d "$FRESH" ]; then
    if awk -v p="$FRESH/" 'index($2, p) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
      echo "fresh-engine-check: something is still mounted under $FRESH; remove it by hand" >&2
    else
      rm -rf --one-file-system "$FRESH"
    fi
  fi
  say "starting dockerd on the old state"
  scripts/ensure-docker.sh || rc=1
  exit "$rc"
}
trap restore EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop_engine
unmount_below
mkdir "$FRESH"
touch "$FRESH/$MARKER"
mount --bind "$FRESH" "$STATE"
mounted=yes
[ -e "$STATE/$MARKER" ] || die "the fresh state did not show at $STATE"
# A fresh machine has no default bridge yet; the engine makes it anew.
ip link delete docker0 2>/dev/null || true

say "starting dockerd on an empty state"
DOCKERD_LOG=/var/log/dockerd-fresh-check.log scripts/ensure-docker.sh
say "running scripts/test.sh"
scripts/test.sh </dev/null
say "scripts/test.sh passed on a fresh engine"
