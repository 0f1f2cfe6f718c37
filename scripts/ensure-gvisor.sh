#!/usr/bin/env bash
# Make sure Docker can run sandboxes under gVisor, for the gVisor test (tests/gvisor.rs),
# doing only what is missing. As root on Debian, no terminal needed:
#   1. Debian's runsc package when runsc is missing;
#   2. runsc registered with dockerd under the name `runsc`, merged into the daemon's
#      config file (the --config-file dockerd runs with, else /etc/docker/daemon.json;
#      other keys are kept), with `--network=none`: sandboxes have no network, and this
#      runsc refuses Docker's `--network none` namespace otherwise ("cannot run with
#      network enabled in root network namespace");
#   3. dockerd told to reload its config with SIGHUP: runtimes are reloadable, so running
#      containers and other clients are not disturbed (never a restart);
#   4. a check that `docker info` lists runsc, and a one-shot sandbox run under runsc that
#      must see gVisor's kernel, not the host's: a host that cannot run runsc fails here.
#
#   PYTHON_DOCKER_MCP_IMAGE   the image for the check run (default python-docker-mcp:latest)
set -euo pipefail

image=${PYTHON_DOCKER_MCP_IMAGE:-python-docker-mcp:latest}
runtime=runsc

say() { echo "ensure-gvisor: $*"; }
fail() { echo "ensure-gvisor: $*" >&2; exit 1; }

runtimes() { docker info --format '{{json .Runtimes}}' 2>/dev/null || true; }
registered() { runtimes | python3 -c 'import json,sys; sys.exit(0 if sys.argv[1] in json.load(sys.stdin) else 1)' "$runtime"; }

# One sandbox-like run under runsc. Prints the kernel release it saw, or the engine's error.
check_run() {
  docker run --rm --runtime "$runtime" --network none --user 1000:1000 --cap-drop ALL \
    --security-opt no-new-privileges --entrypoint python3 "$image" \
    -c 'import platform; print(platform.release())' 2>&1
}

docker info >/dev/null 2>&1 || fail "no Docker engine answers; run scripts/ensure-docker.sh first"
docker image inspect "$image" >/dev/null 2>&1 ||
  fail "Docker has no $image for the check run; build it first (scripts/build-image.sh)"

if ! command -v runsc >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || fail "runsc is missing and this is not root; install Debian's runsc package (or gVisor's release binary)"
  say "installing Debian's runsc"
  export DEBIAN_FRONTEND=noninteractive
  export NEEDRESTART_SUSPEND=1
  apt_log=$(mktemp)
  if ! { apt-get update -qq && apt-get install -y -qq runsc; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    fail "apt-get could not install runsc (output above); install Debian's runsc package by hand"
  fi
  rm -f "$apt_log"
fi
runsc_path=$(command -v runsc)

if ! registered; then
  [ "$(id -u)" = 0 ] || fail "runsc is not registered with Docker and this is not root; see the README, \"gVisor\""
  # The live dockerd (a zombie can linger until reaped) and the config file it reads.
  pid=""
  for p in $(pgrep -x dockerd 2>/dev/null); do
    state=$(ps -o stat= -p "$p" 2>/dev/null | cut -c1)
    if [ -n "$state" ] && [ "$state" != Z ]; then pid=$p; break; fi
  done
  [ -n "$pid" ] || fail "Docker answers but no dockerd runs here (a remote engine?): register runsc with that engine by hand (README, \"gVisor\")"
  config=$(tr '\0' '\n' <"/proc/$pid/cmdline" | awk '
    prev == "--config-file" { print; exit }
    /^--config-file=/ { sub(/^--config-file=/, ""); print; exit }
    { prev = $0 }')
  config=${config:-/etc/docker/daemon.json}
  say "registering $runsc_path as runtime '$runtime' in $config"
  mkdir -p "$(dirname "$config")"
  python3 - "$config" "$runtime" "$runsc_path" <<'EOF' || fail "could not merge runsc into $config; fix the file's JSON and run again"
import json, os, sys
path, name, binary = sys.argv[1:]
try:
    with open(path) as f:
        text = f.read()
    config = json.loads(text) if text.strip() else {}
except FileNotFoundError:
    config = {}
except ValueError as e:
    sys.exit(f"ensure-gvisor: {path} is not valid JSON ({e})")
config.setdefault("runtimes", {})[name] = {"path": binary, "runtimeArgs": ["--network=none"]}
tmp = path + ".pdm-tmp"
with open(tmp, "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(tmp, path)
EOF
  say "reloading dockerd (pid $pid) with SIGHUP"
  kill -HUP "$pid"
  for _ in $(seq 1 20); do
    registered && break
    sleep 0.5
  done
  registered || fail "dockerd (pid $pid) did not list runsc after SIGHUP within 10 s (runtimes: $(runtimes)); its log says why a reload failed (ensure-docker.sh writes /var/log/dockerd.log)"
fi

host_kernel=$(cat /proc/sys/kernel/osrelease)
if ! seen=$(check_run); then
  fail "Docker lists runsc but a sandbox cannot run under it, so this host cannot run gVisor: $seen"
fi
[ "$seen" != "$host_kernel" ] || fail "a container run with --runtime runsc saw the host's kernel ($seen): the runtime named runsc is not gVisor"
say "gVisor ($(runsc --version | head -n1)) is registered with Docker as '$runtime'; a sandbox under it sees kernel $seen, not the host's $host_kernel"
