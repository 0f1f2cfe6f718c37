#!/usr/bin/env bash
# The whole test suite. On a fresh Debian machine (as root) it first installs what is
# missing: a Rust toolchain, the Docker engine, the sandbox image. Then: formatting, lints,
# unit tests and the end-to-end tests that drive the real binary through a real MCP client
# against the real engine. Nothing is skipped for want of Docker.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/prepare.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
# Each end-to-end test starts its own daemon and containers; the machines have 2 cores.
cargo test --all-targets --locked -- --test-threads "${PDM_TEST_THREADS:-4}"

# Nothing may be left behind by the suite's daemons (they have all exited by now).
left=$(docker ps -aq --filter label=python-docker-mcp.managed=true --filter label=python-docker-mcp.host="$(cat /proc/sys/kernel/hostname)")
alive=""
for id in $left; do
  pid=$(docker inspect -f '{{index .Config.Labels "python-docker-mcp.pid"}}' "$id" 2>/dev/null || true)
  if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then continue; fi
  alive="$alive $id"
done
if [ -n "$alive" ]; then
  echo "test.sh: containers left behind by exited daemons:$alive" >&2
  docker ps -a --filter label=python-docker-mcp.managed=true >&2
  exit 1
fi
echo "== all tests passed"
