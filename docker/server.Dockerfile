# The server itself in a container: python-docker-mcp serving streamable HTTP, driving the
# host's Docker engine through the engine's socket, which the operator mounts into THIS
# container (never into a sandbox). The sandboxes it starts are the engine's containers,
# siblings of this one, not children. See README, "The server in a container".
#
#   scripts/server-container.sh build     # release binary + this image
#
# The binary is built on the host (glibc) and copied in, so the base must be a glibc
# distribution at least as new as the build machine's: Debian 12 (bookworm) here.
# BASE_IMAGE defaults to debian:bookworm-slim; on machines that cannot pull images the
# script passes the locally built python-docker-mcp-base:bookworm instead
# (scripts/build-image.sh --from debian makes it).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

COPY python-docker-mcp /usr/local/bin/python-docker-mcp

# Every interface of the container; off loopback the daemon refuses to start without a
# tokens file, so mount one here (or point PYTHON_DOCKER_MCP_TOKENS_FILE elsewhere).
ENV PYTHON_DOCKER_MCP_HTTP=0.0.0.0:8002 \
    PYTHON_DOCKER_MCP_TOKENS_FILE=/etc/python-docker-mcp/tokens \
    HOME=/var/lib/python-docker-mcp
RUN mkdir -p /etc/python-docker-mcp /var/lib/python-docker-mcp
EXPOSE 8002
# SIGTERM (docker stop) drains and removes every sandbox; give it time with
# `docker run --stop-timeout` longer than server.drain_timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python-docker-mcp"]
CMD ["serve"]
