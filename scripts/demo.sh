#!/usr/bin/env bash
# From a fresh Debian machine to a running server answering real calls: installs what is
# missing (Rust, Docker engine, sandbox image), builds the release binary, then runs
# `python-docker-mcp demo`, which starts the server and drives it with a real MCP client.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prepare.sh
cargo build --release --locked
exec target/release/python-docker-mcp demo
