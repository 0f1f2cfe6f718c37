#!/usr/bin/env bash
# Make sure a Docker engine answers. On a machine without one (Debian, root), install
# Debian's docker.io and start dockerd in the background (there is no systemd here).
# Skips everything when `docker info` already answers.
set -euo pipefail

if docker info >/dev/null 2>&1; then
  echo "ensure-docker: engine already answering"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-docker: no Docker engine and not root; install docker.io (or Docker Engine) and start it" >&2
    exit 1
  fi
  echo "ensure-docker: installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

# A dockerd that just exited can linger as a zombie until something reaps it; pgrep
# would still list it. Only a live one counts.
dockerd_running() {
  local pid state
  for pid in $(pgrep -x dockerd 2>/dev/null); do
    state=$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)
    if [ -n "$state" ] && [ "$state" != Z ]; then
      return 0
    fi
  done
  return 1
}

if ! dockerd_running; then
  log=${DOCKERD_LOG:-/var/log/dockerd.log}
  echo "ensure-docker: starting dockerd (log: $log)"
  nohup dockerd >"$log" 2>&1 </dev/null &
fi

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "ensure-docker: engine is up ($(docker version --format '{{.Server.Version}}'))"
    exit 0
  fi
  sleep 1
done
echo "ensure-docker: dockerd did not answer within 60 s; see ${DOCKERD_LOG:-/var/log/dockerd.log}" >&2
exit 1
