#!/usr/bin/env bash
# Run python-docker-mcp itself in a container, serving streamable HTTP, with the Docker
# engine's socket mounted into that container (never into a sandbox).
#
#   scripts/server-container.sh build                  # release binary + image python-docker-mcp-server:latest
#   scripts/server-container.sh run TOKENS_FILE [PORT] # start it on 127.0.0.1:PORT (default 8002)
#   scripts/server-container.sh check TOKEN [PORT]     # /health, /ready, then one MCP tool call, with curl
#   scripts/server-container.sh stop                   # SIGTERM: drains, removes its sandboxes; then rm
#
# Environment: PDM_SERVER_IMAGE (python-docker-mcp-server:latest), PDM_SERVER_NAME
# (python-docker-mcp-server), DOCKER_SOCKET (/var/run/docker.sock), CARGO_TARGET_DIR.
# The sandbox image (python-docker-mcp:latest, scripts/build-image.sh) must exist on the
# same engine: the sandboxes are the engine's containers, siblings of the server's.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${PDM_SERVER_IMAGE:-python-docker-mcp-server:latest}
name=${PDM_SERVER_NAME:-python-docker-mcp-server}
socket=${DOCKER_SOCKET:-/var/run/docker.sock}

build() {
  cargo build --release --locked --bin python-docker-mcp
  local bin="${CARGO_TARGET_DIR:-target}/release/python-docker-mcp" base ctx
  if docker image inspect debian:bookworm-slim >/dev/null 2>&1 \
     || timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
    base=debian:bookworm-slim
  else
    echo "server-container: debian:bookworm-slim cannot be pulled here; using the local Debian base"
    scripts/build-image.sh --from debian >/dev/null   # makes python-docker-mcp-base:bookworm if missing
    base=python-docker-mcp-base:bookworm
  fi
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' RETURN
  cp "$bin" "$ctx/python-docker-mcp"
  cp docker/server.Dockerfile "$ctx/Dockerfile"
  docker build -q --build-arg "BASE_IMAGE=$base" -t "$image" "$ctx" >/dev/null
  echo "server-container: $image ready (base $base)"
}

run() {
  local tokens=${1:?usage: run TOKENS_FILE [PORT]} port=${2:-8002}
  tokens=$(realpath "$tokens")
  # --init: a real PID 1 that forwards signals and reaps. --stop-timeout: docker stop's
  # SIGKILL comes after the daemon's drain (server.drain_timeout, 30 s by default).
  # The port is published on the host's loopback only; publish it wider (e.g. -p 8002:8002)
  # behind TLS when the team reaches it over a network.
  docker run -d --name "$name" --init --stop-timeout 45 \
    -v "$socket:/var/run/docker.sock" \
    -v "$tokens:/etc/python-docker-mcp/tokens:ro" \
    -p "127.0.0.1:$port:8002" \
    "$image" >/dev/null
  echo "server-container: $name serving on http://127.0.0.1:$port/mcp"
}

check() {
  local token=${1:?usage: check TOKEN [PORT]} port=${2:-8002} base headers sid
  base="http://127.0.0.1:$port"
  for _ in $(seq 50); do curl -fsS "$base/health" >/dev/null 2>&1 && break; sleep 0.2; done
  echo "GET /health: $(curl -sS -o /dev/null -w '%{http_code}' "$base/health")"
  echo "GET /ready:  $(curl -sS "$base/ready")"
  headers=$(mktemp)
  trap 'rm -f "$headers"' RETURN
  local mcp=(curl -sS "$base/mcp" -H "Authorization: Bearer $token"
             -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream')
  "${mcp[@]}" -D "$headers" -o /dev/null -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}'
  sid=$(awk 'tolower($1) == "mcp-session-id:" {print $2}' "$headers" | tr -d '\r')
  [ -n "$sid" ] || { echo "server-container: no Mcp-Session-Id (wrong token?)" >&2; return 1; }
  "${mcp[@]}" -H "Mcp-Session-Id: $sid" -o /dev/null -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
  echo "tools/call execute-transient:"
  "${mcp[@]}" -H "Mcp-Session-Id: $sid" \
    -d '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"execute-transient","arguments":{"code":"import platform; print(6 * 7, platform.node())"}}}' \
    | sed -n 's/^data: //p'
  "${mcp[@]}" -X DELETE -H "Mcp-Session-Id: $sid" -o /dev/null
}

stop() {
  docker stop "$name" >/dev/null
  docker logs --tail 5 "$name" 2>&1 | sed 's/^/  /'
  docker rm "$name" >/dev/null
  echo "server-container: $name stopped and removed"
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  check) shift; check "$@" ;;
  stop) stop ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
