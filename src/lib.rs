//! python-docker-mcp: an MCP server that gives AI agents a Python sandbox in a container.
//!
//! The sandboxes run on any of its runtime backends ([`runtime`]): Docker, Podman (through
//! its Docker-compatible API), either of them with gVisor's `runsc` as the OCI runtime
//! (`docker.runtime`), or Kubernetes Pods (experimental: tested against a mocked API, never
//! a live cluster).
//!
//! Eleven tools run Python, and move its files, in locked-down containers: no network
//! (or, per call, only the hosts an operator's allow-list permits, through a filtering
//! proxy: [`egress`]), non-root, no capabilities, memory/CPU/pids limits, read-only root,
//! under a named sandbox profile (a browser image among them: [`profile`]). The original's four
//! (`execute-transient`, `execute-persistent`, `install-package`, `cleanup-session`) keep
//! their names and arguments; `reset-session`, `list-variables`, `list-packages` and
//! `list-sessions` (sessions survive a restart, see [`durable`]) are additions, as are
//! `upload-file`, `download-file` and `list-files` (files in and out, see [`files`]). A small Python helper inside each container speaks JSON lines over the
//! container's attached stdin/stdout.
//!
//! A tool that ran and failed (a Python exception, a time-out, a lost sandbox, Docker
//! unreachable) answers with an `isError` result whose text says what to do. Arguments that
//! do not fit a tool's input schema are refused by rmcp before any tool code runs, also as an
//! `isError` result saying what does not fit (a missing field by name, a wrong type by what
//! was expected), so the model can correct itself. Only an unknown tool or a malformed
//! JSON-RPC message is a protocol (JSON-RPC) error.
//!
//! # Layout
//! - [`config`]: settings, layered defaults < file < environment < flags, validated once.
//! - [`sandbox`]: the security profile every container gets, as a runtime-neutral
//!   `SandboxSpec`; the one place isolation lives.
//! - [`runtime`]: the runtime seam. A `Backend` enum takes a `SandboxSpec` and runs it;
//!   its variants are the engines: `runtime::docker` (the Docker API, served by Docker or
//!   Podman, with the engine's default OCI runtime or gVisor's `runsc`; the only module
//!   that uses bollard), `runtime::kubernetes` (experimental; the only module that uses
//!   kube) and, in unit tests only, `runtime::fake` (host processes). Nothing else talks to
//!   an engine.
//! - [`repl`]: the wire protocol with the helper (`repl/helper.py`) and one live REPL; it
//!   trusts nothing the sandbox sends (capped frames, strict ids, bounded queues).
//! - [`pool`]: warm sandboxes, the creation semaphore, max age, single-use checkout; in
//!   durable mode the host pool ([`pool::host`]) that every daemon of the host shares.
//! - [`profile`]: sandbox profiles (`profiles` in the config): a name per call resolves to
//!   the settings its sandboxes run with; one warm pool per profile.
//! - [`session`]: the registry of persistent sessions; a session is `Live` or `Ended`.
//! - [`durable`]: sessions that outlive their daemon: the container name that says who owns
//!   and who holds a session and until when it may live, and the holder's liveness.
//! - [`egress`]: egress allow-lists: host patterns and lists, pure ([`egress::policy`]), and
//!   the filtering proxy the `egress-proxy` subcommand runs in the proxy container
//!   ([`egress::proxy`]).
//! - [`install`]: requirement validation and the installer command.
//! - [`engine`]: the core: the operations behind the tools (named by [`calls::Operation`],
//!   never by MCP tool names), sessions and their adoption, installs, files, start-up,
//!   drain and shutdown.
//! - [`files`]: files in and out of a sandbox (`upload-file`, `download-file`, `list-files`,
//!   `resources/read` on `sandbox://sessions/{id}/files/{path}`): the path rule, resource
//!   URIs, mime types. The bytes move through the helper's protocol in chunks.
//! - [`calls`]: the operations in flight, admission, and the drain that waits for them.
//! - [`client`]: who is calling: the `Client` every operation acts for, and the tokens file.
//! - [`mcp`]: the thin MCP tool layer (rmcp): each tool parses its arguments and delegates
//!   to the engine; results become MCP content.
//! - [`order`]: arrival order of calls to one session (turns handed out by the stdio and legacy SSE transports).
//! - [`stdio`]: the stdio transport, whose size limit answers instead of dropping.
//! - [`sse`]: MCP's older HTTP+SSE transport (2024-11-05) at `/sse` and `/messages`, a thin
//!   adapter over the same tool layer, behind the same layers as `/mcp`.
//! - [`tasks`]: long runs as MCP tasks (`tasks/get`, `tasks/cancel`): owners, output so far,
//!   results kept `server.task_ttl`.
//! - [`http`]: streamable HTTP at `/mcp` behind bearer tokens, `/health`, `/ready` and
//!   `/metrics` (which reads the engine's gauges at scrape time).
//! - [`metrics`]: Prometheus metrics: names, recording helpers, rendering; it knows nothing
//!   above it (the engine's results report through its `RunReport` trait).
//! - [`text`]: user input echoed in messages, clipped.
//! - [`demo`]: a real MCP client session against this binary, for the README's first command.
//! - [`doctor`]: `python-docker-mcp doctor`, the host's checks with verdicts and fixes.
//! - [`image`]: `python-docker-mcp image build`, the sandbox image built from the Dockerfile
//!   embedded in the binary (the one `scripts/build-image.sh` builds too); `--browser`, the
//!   browser image (Chromium and Playwright) on top of it.
#![forbid(unsafe_code)]

pub mod calls;
pub mod client;
pub mod config;
pub mod demo;
pub mod doctor;
pub mod durable;
pub mod egress;
pub mod engine;
pub mod files;
pub mod http;
pub mod image;
pub mod install;
pub mod mcp;
pub mod metrics;
pub mod order;
pub mod pool;
pub mod profile;
pub mod repl;
pub mod runtime;
pub mod sandbox;
pub mod session;
pub mod sse;
pub mod stdio;
pub mod tasks;
pub mod text;

pub use config::Config;
pub use engine::Engine;
pub use mcp::Server;
