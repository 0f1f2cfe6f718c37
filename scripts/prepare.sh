#!/usr/bin/env bash
# What both README commands need first, installed only when missing: a Rust toolchain,
# a Docker engine, the sandbox image. Source it: it also puts cargo on the PATH.
scripts/ensure-rust.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
scripts/ensure-docker.sh
scripts/build-image.sh
