//! Prometheus metrics: every metric's name, the helpers that record them, and the rendering
//! that `GET /metrics` serves.
//!
//! The `metrics` facade records; `metrics-exporter-prometheus` (without its own HTTP listener
//! or push gateway) keeps the values and renders the Prometheus text format, which the HTTP
//! service serves at `/metrics` (its route lives in `http.rs`, which reads the engine; this
//! module knows nothing above it). Nothing here formats the text by hand.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `pdm_pool_sandboxes` | gauge | `state`: `warm`, `creating` | sandboxes ready to hand out, and being created now |
//! | `pdm_pool_waiting` | gauge | | calls waiting for a sandbox because none is ready |
//! | `pdm_sandbox_creations_total` | counter | `outcome`: `ok`, `failed` | sandbox creations that finished (pool refills, sessions, on demand) |
//! | `pdm_sandbox_creation_seconds` | histogram | | how long a creation took, container start to helper ready |
//! | `pdm_sessions` | gauge | `client` | live persistent sessions per client |
//! | `pdm_executions_total` | counter | `tool`, `outcome` | tool calls that reached the engine, when they finish (see [`Outcome`]) |
//! | `pdm_execution_seconds` | histogram | `tool` | how long a tool call took, end to end (waiting for a sandbox included) |
//! | `pdm_output_bytes_total` | counter | `stream`: `stdout`, `stderr` | bytes of the code's output returned to clients by the execute tools |
//! | `pdm_egress_connections_total` | counter | `client`, `verdict`: `allowed`, `denied` | connections the egress proxy decided for runs with a `network` list (`network.allow`) |
//!
//! **Bounded labels.** `tool` is one of the tool names (or `resources/read`), `outcome` one of [`Outcome`]'s
//! words, `client` a name from the tokens file (or `local`): never a token, never a
//! session id.
//!
//! **State gauges are read, not tracked.** `pdm_pool_sandboxes`, `pdm_pool_waiting` and
//! `pdm_sessions` are set from the engine's own counters (`Engine::pool_stats`,
//! `Engine::sessions_per_client`) when `/metrics` is scraped ([`render`]), so they cannot
//! drift from the truth. Every client of the tokens file is listed, with 0 when it has no
//! session.
//!
//! **One recorder per process.** [`install`], called when the HTTP router is built, installs it the first time (the HTTP service
//! is the only way to read it). A stdio daemon never installs one: the recording helpers
//! then go to the facade's no-op recorder and cost next to nothing. Histogram samples are
//! folded into their buckets as they are recorded (the exporter's upkeep), so memory stays
//! bounded however long nobody scrapes, with no background task to own.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::client::Client;

pub const POOL_SANDBOXES: &str = "pdm_pool_sandboxes";
pub const POOL_WAITING: &str = "pdm_pool_waiting";
pub const SANDBOX_CREATIONS: &str = "pdm_sandbox_creations_total";
pub const SANDBOX_CREATION_SECONDS: &str = "pdm_sandbox_creation_seconds";
pub const SESSIONS: &str = "pdm_sessions";
pub const EXECUTIONS: &str = "pdm_executions_total";
pub const EXECUTION_SECONDS: &str = "pdm_execution_seconds";
pub const OUTPUT_BYTES: &str = "pdm_output_bytes_total";
pub const EGRESS_CONNECTIONS: &str = "pdm_egress_connections_total";

/// Upper bounds of `pdm_sandbox_creation_seconds`' buckets: a start takes about 0.3 s on
/// an idle host, several seconds on a loaded one or with heavy `warm_imports`.
const CREATION_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Upper bounds of `pdm_execution_seconds`' buckets: a warm call takes milliseconds, the
/// time-out (30 s by default) bounds a run, installs may take a minute or more.
const EXECUTION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The process's recorder, installed by the first [`install`].
static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// How a tool call ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and finished normally.
    Ok,
    /// The code raised an exception.
    Error,
    /// The code ran past the time-out and was interrupted.
    Timeout,
    /// The client cancelled the call.
    Cancelled,
    /// The sandbox died (killed, out of memory) during the call.
    SandboxLost,
    /// The call could not do its work: no sandbox, an unknown session, a limit reached, a
    /// failed install; for tools other than the execute tools, any error result.
    Failed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::SandboxLost => "sandbox_lost",
            Outcome::Failed => "failed",
        }
    }
}

/// What an execute tool's result tells the metrics: how it ended and how much output it
/// returned. The engine's result implements it, so this module need not know the engine.
pub trait RunReport {
    /// How the run ended.
    fn outcome(&self) -> Outcome;
    /// Bytes of stdout and of stderr returned to the client.
    fn output_bytes(&self) -> (usize, usize);
}

/// Install the process's recorder (the first call does it) and return its handle.
pub fn install() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(SANDBOX_CREATION_SECONDS.into()),
                CREATION_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(EXECUTION_SECONDS.into()), EXECUTION_BUCKETS)
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will stay empty");
        }
        describe();
        // Series that exist from the start, so a rate over them is defined before the
        // first event.
        for outcome in ["ok", "failed"] {
            counter!(SANDBOX_CREATIONS, "outcome" => outcome).absolute(0);
        }
        for stream in ["stdout", "stderr"] {
            counter!(OUTPUT_BYTES, "stream" => stream).absolute(0);
        }
        handle
    })
}

fn describe() {
    describe_gauge!(
        POOL_SANDBOXES,
        "Sandboxes in the pool: warm (ready to hand out) and creating (being started now)"
    );
    describe_gauge!(
        POOL_WAITING,
        "Calls waiting for a sandbox because none is ready"
    );
    describe_counter!(
        SANDBOX_CREATIONS,
        "Sandbox creations that finished, by outcome (ok, failed)"
    );
    describe_histogram!(
        SANDBOX_CREATION_SECONDS,
        metrics::Unit::Seconds,
        "Time to create a sandbox, container start to helper ready"
    );
    describe_gauge!(SESSIONS, "Live persistent sessions per client");
    describe_counter!(
        EXECUTIONS,
        "Finished tool calls by tool and outcome (ok, error, timeout, cancelled, sandbox_lost, failed)"
    );
    describe_histogram!(
        EXECUTION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of tool calls by tool, waiting for a sandbox included"
    );
    describe_counter!(
        EGRESS_CONNECTIONS,
        "Connections the egress proxy decided, by client and verdict (allowed, denied)"
    );
    describe_counter!(
        OUTPUT_BYTES,
        metrics::Unit::Bytes,
        "Bytes of the code's output (stdout, stderr) returned to clients"
    );
}

/// Fold recorded histogram samples into their buckets now (bounded memory without a task).
fn upkeep() {
    if let Some(handle) = RECORDER.get() {
        handle.run_upkeep();
    }
}

/// A sandbox creation finished (`ok` false: it failed) after `took`.
pub fn sandbox_created(ok: bool, took: Duration) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!(SANDBOX_CREATIONS, "outcome" => outcome).increment(1);
    histogram!(SANDBOX_CREATION_SECONDS).record(took.as_secs_f64());
    upkeep();
}

/// A tool call finished.
pub fn tool_call(tool: &'static str, outcome: Outcome, took: Duration) {
    counter!(EXECUTIONS, "tool" => tool, "outcome" => outcome.label()).increment(1);
    histogram!(EXECUTION_SECONDS, "tool" => tool).record(took.as_secs_f64());
    upkeep();
}

/// The egress proxy decided a connection of `client`'s run.
pub fn egress_connection(client: &Client, allowed: bool) {
    let verdict = if allowed { "allowed" } else { "denied" };
    counter!(EGRESS_CONNECTIONS, "client" => client.name().to_string(), "verdict" => verdict)
        .increment(1);
}

/// Record a tool's engine call when it finishes: `engine.op(..).timed("tool").await`.
pub trait Timed<T, E>: Future<Output = Result<T, E>> + Sized {
    /// Record the call: `Ok` is [`Outcome::Ok`], `Err` is [`Outcome::Failed`].
    fn timed(self, tool: &'static str) -> impl Future<Output = Result<T, E>> {
        async move {
            let started = Instant::now();
            let result = self.await;
            let outcome = match &result {
                Ok(_) => Outcome::Ok,
                Err(_) => Outcome::Failed,
            };
            tool_call(tool, outcome, started.elapsed());
            result
        }
    }
}

impl<T, E, F: Future<Output = Result<T, E>>> Timed<T, E> for F {}

/// Record an execute tool's engine call when it finishes:
/// `engine.execute_x(..).run_timed("tool").await`.
pub trait TimedRun<R: RunReport, E>: Future<Output = Result<R, E>> + Sized {
    /// Record the call, with the run's [`Outcome`] and its output bytes.
    fn run_timed(self, tool: &'static str) -> impl Future<Output = Result<R, E>> {
        async move {
            let started = Instant::now();
            let result = self.await;
            let outcome = match &result {
                Ok(r) => {
                    let (stdout, stderr) = r.output_bytes();
                    counter!(OUTPUT_BYTES, "stream" => "stdout").increment(stdout as u64);
                    counter!(OUTPUT_BYTES, "stream" => "stderr").increment(stderr as u64);
                    r.outcome()
                }
                Err(_) => Outcome::Failed,
            };
            tool_call(tool, outcome, started.elapsed());
            result
        }
    }
}

impl<R: RunReport, E, F: Future<Output = Result<R, E>>> TimedRun<R, E> for F {}

/// The state gauges at scrape time, read from the engine by the caller.
pub struct Gauges {
    /// Sandboxes ready to hand out.
    pub warm: usize,
    /// Sandboxes being created now.
    pub creating: usize,
    /// Calls waiting for a sandbox.
    pub waiting: usize,
    /// Live sessions per client name; every client that may call, 0 when it has none.
    pub sessions: Vec<(String, usize)>,
}

/// Set the state gauges, then render every metric (installing the recorder if needed).
pub fn render(gauges: Gauges) -> String {
    let handle = install();
    gauge!(POOL_SANDBOXES, "state" => "warm").set(gauges.warm as f64);
    gauge!(POOL_SANDBOXES, "state" => "creating").set(gauges.creating as f64);
    gauge!(POOL_WAITING).set(gauges.waiting as f64);
    for (client, n) in gauges.sessions {
        gauge!(SESSIONS, "client" => client).set(n as f64);
    }
    handle.render()
}
