#!/usr/bin/env bash
# Set up the original Python python-docker-mcp 0.2.5 for the end-to-end benchmark
# (benches/e2e/), so both servers can be driven by the same MCP client side by side.
#
#   scripts/bench-original.sh            # venv in target/bench-original/venv, derived image
#   scripts/bench-original.sh --force    # recreate the venv
#
# Two things are set up:
#
# 1. A virtualenv with the original from PyPI and the dependency pins it still runs with
#    (newer mcp, setuptools and pydantic releases break its imports).
#
# 2. A tiny image derived from the sandbox image, python-docker-mcp-orig-bench:latest. The
#    original runs `python` (not `python3`) inside its containers and our Debian-based
#    sandbox image only has `python3`, so the derived image adds a `python` symlink and
#    nothing else. It is also tagged :0.2.3 (the version 0.2.5 reports as __version__)
#    because the original's start-up otherwise tries to *build* `<image>:0.2.3` from its
#    own Dockerfile, which needs a registry and would re-tag `<image>:latest` on success.
#    A separate image also means every container the original leaves behind can be found
#    by `--filter ancestor=python-docker-mcp-orig-bench:latest` without touching anyone
#    else's containers. Built from local layers only: no registry access.
#
# Remove it all with:
#   rm -rf target/bench-original
#   docker rmi python-docker-mcp-orig-bench:latest python-docker-mcp-orig-bench:0.2.3
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${PDM_BENCH_ORIGINAL_VENV:-target/bench-original/venv}
base=${PYTHON_DOCKER_MCP_IMAGE:-python-docker-mcp:latest}
image=python-docker-mcp-orig-bench
python=${PYTHON:-python3}
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "bench-original: unknown argument $arg" >&2; exit 2 ;;
  esac
done

if [ "$force" = 1 ]; then
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python-docker-mcp" ]; then
  echo "bench-original: creating $venv with python-docker-mcp==0.2.5" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "python-docker-mcp==0.2.5" "mcp<1.20" "setuptools<80" "pydantic<2.12"
fi
"$venv/bin/python" -c 'import importlib.util as u, mcp, docker, yaml, pkg_resources; assert u.find_spec("python_docker_mcp")' 2>/dev/null \
  || { echo "bench-original: $venv is broken; rerun with --force" >&2; exit 1; }

if ! docker image inspect "$base" >/dev/null 2>&1; then
  echo "bench-original: sandbox image $base is missing; run scripts/build-image.sh first" >&2
  exit 1
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cat >"$ctx/Dockerfile" <<EOF
FROM $base
USER 0:0
RUN command -v python >/dev/null || ln -s "\$(command -v python3)" /usr/local/bin/python
USER 1000:1000
EOF
# Cached after the first build; rebuilt only when the sandbox image changed.
if ! out=$(docker build --quiet -t "$image:latest" -t "$image:0.2.3" "$ctx" 2>&1); then
  echo "$out" >&2
  exit 1
fi
echo "bench-original: ready: $venv/bin/python-docker-mcp, image $image:latest" >&2
