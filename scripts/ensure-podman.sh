#!/usr/bin/env bash
# Make sure Podman serves the Docker API for the Podman tests (tests/podman.rs), installing
# and starting only what is missing. As root on Debian, no terminal needed:
#   1. Debian's podman and catatonit (Podman's init for `init: true`) when missing;
#   2. on a host where root lacks CAP_SYS_RESOURCE (some CI machines), a containers.conf
#      drop-in that caps Podman's default container ulimits at the service's own hard
#      limits: Podman's defaults (nofile 1048576, nproc 4194304) cannot be raised to there
#      and every container start fails with "error setting rlimit ... operation not permitted";
#   3. `podman system service --time=0 unix://SOCKET` in the background (log in /var/log/);
#   4. the sandbox image, copied from Docker with `docker save | podman load` when Podman
#      lacks it or holds an older build (image ids differ; a rebuilt image is reloaded).
#
#   PDM_PODMAN_SOCK   the socket (default /run/pdm-podman.sock); tests use DOCKER_HOST=unix://$PDM_PODMAN_SOCK
#   PYTHON_DOCKER_MCP_IMAGE   the image (default python-docker-mcp:latest)
set -euo pipefail

sock=${PDM_PODMAN_SOCK:-/run/pdm-podman.sock}
image=${PYTHON_DOCKER_MCP_IMAGE:-python-docker-mcp:latest}
log=${PDM_PODMAN_LOG:-/var/log/pdm-podman.log}
limits_conf=/etc/containers/containers.conf.d/pdm-ulimits.conf
service_cmd="podman system service --time=0 unix://$sock"

say() { echo "ensure-podman: $*"; }

if ! command -v podman >/dev/null 2>&1 || [ ! -x /usr/libexec/podman/catatonit ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-podman: podman or catatonit is missing and this is not root; install Debian's podman and catatonit" >&2
    exit 1
  fi
  say "installing Debian's podman and catatonit"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq podman catatonit >/dev/null
fi

service_pid() { pgrep -f -x "$service_cmd" | head -n1 || true; }
answers() { podman --url "unix://$sock" version >/dev/null 2>&1; }

start_service() {
  say "starting '$service_cmd' (log: $log)"
  nohup $service_cmd >>"$log" 2>&1 </dev/null &
  for _ in $(seq 1 30); do
    answers && return 0
    sleep 1
  done
  echo "ensure-podman: the Podman service did not answer at $sock within 30 s; see $log" >&2
  exit 1
}

stop_service() {
  local pid
  pid=$(service_pid)
  [ -n "$pid" ] || return 0
  say "restarting the Podman service (pid $pid) to read $limits_conf"
  kill "$pid"
  for _ in $(seq 1 50); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  rm -f "$sock"
}

answers || { stop_service; start_service; }

# CAP_SYS_RESOURCE is bit 24 of the effective set.
cap_eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
if (( (16#$cap_eff >> 24) & 1 )); then
  [ ! -f "$limits_conf" ] || { rm -f "$limits_conf"; stop_service; start_service; }
elif [ -z "$(service_pid)" ]; then
  say "WARNING: a Podman service not started by this script answers at $sock; not checking its ulimits"
else
  pid=$(service_pid)
  hard() { awk -v what="$1" '$0 ~ what {print $(NF-1)}' "/proc/$pid/limits"; }
  nofile=$(hard "Max open files")
  nproc=$(hard "Max processes")
  want=$(printf '# Written by python-docker-mcp scripts/ensure-podman.sh: root here lacks CAP_SYS_RESOURCE,\n# so containers cannot get more than the Podman service has.\n[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n' \
    "$nofile" "$nofile" "$nproc" "$nproc")
  if [ "$(cat "$limits_conf" 2>/dev/null || true)" != "$want" ]; then
    mkdir -p "$(dirname "$limits_conf")"
    echo "$want" >"$limits_conf"
    stop_service
    start_service
  fi
fi
say "Podman $(podman --url "unix://$sock" version --format '{{.Server.Version}}') answers at unix://$sock"

docker_id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
docker_id=${docker_id#sha256:}
podman_id=$(podman image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
if [ -z "$docker_id" ]; then
  echo "ensure-podman: Docker has no $image to copy; build it first (scripts/build-image.sh)" >&2
  exit 1
fi
if [ "$docker_id" = "$podman_id" ]; then
  say "$image already in Podman (${docker_id:0:12})"
else
  say "loading $image (${docker_id:0:12}) into Podman with docker save | podman load (a minute or two)"
  docker save "$image" | podman load -q >/dev/null
  loaded=$(podman image inspect -f '{{.Id}}' "$image")
  if [ "$loaded" != "$docker_id" ]; then
    echo "ensure-podman: Podman holds $image as ${loaded:0:12}, Docker as ${docker_id:0:12}" >&2
    exit 1
  fi
  # The previous build, if any, is now untagged; drop it unless a container still uses it.
  [ -z "$podman_id" ] || podman rmi "$podman_id" >/dev/null 2>&1 || true
fi
