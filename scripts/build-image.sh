#!/usr/bin/env bash
# Build the sandbox image (default tag python-docker-mcp:latest) from docker/Dockerfile, the
# same file the binary embeds for `python-docker-mcp image build` (one source).
#
#   scripts/build-image.sh                 # skip if the image exists and was built from this Dockerfile;
#                                          # else try python:3.12-slim, fall back to Debian
#   scripts/build-image.sh --from debian   # base built locally with debootstrap (no image registry needed)
#   scripts/build-image.sh --from python   # base python:3.12-slim (needs an image registry)
#   scripts/build-image.sh --force         # rebuild even if the image exists
#   scripts/build-image.sh --browser       # also the browser image (python-docker-mcp:browser) on top:
#                                          # docker/Dockerfile.browser, skipped when present and built
#                                          # from these files on this sandbox image
#
# The Debian route: debootstrap a bookworm rootfs with python3, pip and the scientific
# stack from Debian's packages, `docker import` it as python-docker-mcp-base:bookworm, then
# run the same Dockerfile on top so user and directory setup are identical. The mirror is
# read from this machine's apt sources, and this machine's extra CA certificates are copied
# in, so installs work behind the same TLS-intercepting proxy the host uses.
#
# The image carries the Dockerfile's SHA-256 in the label python-docker-mcp.dockerfile-sha256
# (`python-docker-mcp image build` sets the same): an image built from another version of the
# Dockerfile (say, one without uv) is rebuilt; the base is kept. The browser image carries the
# SHA-256 of its three files (python-docker-mcp.browser-dockerfile-sha256) the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${PYTHON_DOCKER_MCP_IMAGE:-python-docker-mcp:latest}
base_tag=python-docker-mcp-base:bookworm
from=auto
force=0
browser=0
browser_image=${PYTHON_DOCKER_MCP_BROWSER_IMAGE:-python-docker-mcp:browser}
while [ $# -gt 0 ]; do
  case "$1" in
    --from) from=$2; shift 2 ;;
    --from=*) from=${1#--from=}; shift ;;
    --force) force=1; shift ;;
    --browser) browser=1; shift ;;
    --image) image=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
done

dockerfile_sha=$(sha256sum docker/Dockerfile | cut -d' ' -f1)
# The same order as src/image.rs (BROWSER_CONTEXT).
browser_sha=$(cat docker/Dockerfile.browser docker/pdm-chromium docker/browser-paths.py | sha256sum | cut -d' ' -f1)

label() { docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }

# The browser layer on the sandbox image, unless present and built from these files on it.
build_browser() {
  [ "$browser" = 1 ] || return 0
  if [ "$force" = 0 ] && docker image inspect "$browser_image" >/dev/null 2>&1; then
    if [ "$(label "$browser_image" python-docker-mcp.browser-dockerfile-sha256)" = "$browser_sha" ] \
      && [ "$(label "$browser_image" python-docker-mcp.dockerfile-sha256)" = "$dockerfile_sha" ]; then
      echo "build-image: $browser_image already present, built from these files (use --force to rebuild)"
      return 0
    fi
    echo "build-image: $browser_image was built from other files; rebuilding"
  fi
  local started=$SECONDS
  echo "build-image: docker build -t $browser_image (Chromium, fonts, Playwright on $image; no browser download)"
  docker build -q -f docker/Dockerfile.browser --build-arg "SANDBOX_IMAGE=$image" \
    --build-arg "BROWSER_DOCKERFILE_SHA256=$browser_sha" -t "$browser_image" docker/ >/dev/null
  echo "build-image: $browser_image ready ($((SECONDS - started)) s)"
}

if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
  built_from=$(label "$image" python-docker-mcp.dockerfile-sha256)
  if [ "$built_from" = "$dockerfile_sha" ]; then
    echo "build-image: $image already present, built from this Dockerfile (use --force to rebuild)"
    build_browser
    exit 0
  fi
  echo "build-image: $image was built from another Dockerfile (${built_from:-no label}); rebuilding"
fi

apt_mirror() {
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || { echo "build-image: no Debian mirror found in /etc/apt/sources*" >&2; return 1; }
  echo "$uri"
}

build_debian_base() {
  if [ "$force" = 0 ] && docker image inspect "$base_tag" >/dev/null 2>&1; then
    echo "build-image: base $base_tag already present"
    return 0
  fi
  command -v debootstrap >/dev/null 2>&1 || {
    echo "build-image: installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  }
  local mirror rootfs
  mirror=$(apt_mirror)
  rootfs=$(mktemp -d /var/tmp/pdm-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' RETURN
  echo "build-image: debootstrap bookworm from $mirror into $rootfs (a few minutes)"
  debootstrap --variant=minbase \
    --include=python3,python3-pip,ca-certificates,passwd,python3-numpy,python3-pandas,python3-scipy,python3-matplotlib,python3-sklearn,python3-sympy \
    bookworm "$rootfs" "$mirror" >/var/tmp/pdm-debootstrap.log 2>&1 \
    || { tail -20 /var/tmp/pdm-debootstrap.log >&2; return 1; }
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 || true
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  echo "build-image: importing $base_tag"
  tar -C "$rootfs" -c . | docker import - "$base_tag" >/dev/null
}

build_from() {
  echo "build-image: docker build -t $image (BASE_IMAGE=$1)"
  docker build -q --build-arg "BASE_IMAGE=$1" --build-arg "DOCKERFILE_SHA256=$dockerfile_sha" \
    -t "$image" docker/ >/dev/null
  echo "build-image: $image ready"
}

case "$from" in
  python) build_from python:3.12-slim ;;
  debian) build_debian_base && build_from "$base_tag" ;;
  auto)
    if docker image inspect python:3.12-slim >/dev/null 2>&1 || timeout 60 docker pull -q python:3.12-slim >/dev/null 2>&1; then
      build_from python:3.12-slim
    else
      echo "build-image: python:3.12-slim cannot be pulled here; building the Debian equivalent"
      build_debian_base && build_from "$base_tag"
    fi ;;
  *) echo "build-image: --from takes python or debian, not $from" >&2; exit 2 ;;
esac
build_browser
