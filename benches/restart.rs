//! Restarts: what the first call on a session adopted by a new daemon costs, over stdio and
//! HTTP, after SIGTERM and after SIGKILL (issue 20, "Measured: Restart").
//!
//! ```text
//! cargo build --release && cargo bench --bench restart            # 5 rounds per case
//! cargo bench --bench restart -- --rounds 10
//! ```
//!
//! Per case (transport × signal), `--rounds` times: a daemon of this crate's release binary
//! (fresh `HOME`, no inherited `PYTHON_DOCKER_MCP_*`, pool off, `session.durable` on) gets
//! a session (`i = 0`, then 20 warm-up calls `i += 1`), then 20 timed calls `i += 1` (the
//! normal call). The daemon is stopped with the signal; a new daemon is spawned and
//! initialised (not timed), and its first call on the session, `i += 1` (the adoption), is
//! timed; the value must be the count so far (variables intact). Then the session is
//! cleaned up. Reported: p50 of the normal calls, p50 and max of the first call after the
//! restart, and their difference. Only ratios and differences within one run mean anything
//! on a shared machine.
//!
//! Runs only with `--bench` (which `cargo bench` passes): under `cargo test --all-targets`
//! it prints a note and passes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::{json, Value};

#[path = "common/mod.rs"]
mod common;
use common::daemon::{self, Client, Daemon};

const WARM_UP: usize = 20;
const TIMED: usize = 20;

#[derive(Clone, Copy, Debug)]
enum Transport {
    Stdio,
    Http,
}

#[derive(Clone, Copy, Debug)]
enum Signal {
    Term,
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

/// A daemon of this crate's release binary with the bench's settings, over `transport`.
async fn spawn(transport: Transport, home: &std::path::Path) -> anyhow::Result<Daemon> {
    let mut cmd = daemon::command(&daemon::release_binary(), home);
    cmd.env("PYTHON_DOCKER_MCP_LOG", "warn")
        .env("PYTHON_DOCKER_MCP_POOL_ENABLED", "false")
        .env("PYTHON_DOCKER_MCP_SESSION_DURABLE", "true");
    match transport {
        Transport::Stdio => {
            cmd.stderr(Stdio::null());
            Daemon::stdio(cmd).await
        }
        Transport::Http => Daemon::http(cmd).await,
    }
}

async fn call(
    client: &Client,
    code: &str,
    session: Option<&str>,
) -> anyhow::Result<CallToolResult> {
    let mut args = json!({ "code": code });
    if let Some(id) = session {
        args["session_id"] = json!(id);
    }
    let params = CallToolRequestParams::new("execute-persistent")
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    let r = tokio::time::timeout(Duration::from_secs(60), client.call_tool(params))
        .await
        .context("a call took over 60 s")??;
    if r.is_error == Some(true) {
        bail!("the call failed: {:?}", r.content);
    }
    Ok(r)
}

fn field(r: &CallToolResult, name: &str) -> Value {
    r.structured_content
        .as_ref()
        .and_then(|s| s.get(name).cloned())
        .unwrap_or(Value::Null)
}

fn p50(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn case(transport: Transport, signal: Signal, rounds: usize) -> anyhow::Result<String> {
    let mut normal = Vec::new();
    let mut first = Vec::new();
    for round in 0..rounds {
        let home =
            std::env::temp_dir().join(format!("pdm-bench-restart-{}-{round}", std::process::id()));
        std::fs::create_dir_all(&home)?;
        let mut old = spawn(transport, &home).await?;
        let r = call(&old.client, "i = 0", None).await?;
        let id = field(&r, "session_id")
            .as_str()
            .context("session_id")?
            .to_string();
        for _ in 0..WARM_UP {
            call(&old.client, "i += 1", Some(&id)).await?;
        }
        for _ in 0..TIMED {
            let t = Instant::now();
            call(&old.client, "i += 1", Some(&id)).await?;
            normal.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        // Let the claim (a rename off the reply path) land, as any real session has.
        tokio::time::sleep(Duration::from_millis(300)).await;
        old.signal_and_wait(signal.name(), Duration::from_secs(40))
            .await;
        drop(old);
        eprintln!("  round {round}: restarting");
        let new = tokio::time::timeout(Duration::from_secs(30), spawn(transport, &home))
            .await
            .context("the new daemon did not start within 30 s")??;
        let t = Instant::now();
        let r = call(&new.client, "i += 1\ni", Some(&id)).await?;
        first.push(t.elapsed().as_secs_f64() * 1000.0);
        let want = (WARM_UP + TIMED + 1).to_string();
        if field(&r, "value").as_str() != Some(want.as_str()) {
            bail!("variables lost: {:?} instead of {want}", field(&r, "value"));
        }
        let params = CallToolRequestParams::new("cleanup-session").with_arguments(
            json!({ "session_id": id })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        new.client.call_tool(params).await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), new.client.cancel()).await;
        let _ = std::fs::remove_dir_all(&home);
    }
    let max = first.iter().cloned().fold(0.0, f64::max);
    let (n, f) = (p50(&mut normal), p50(&mut first));
    Ok(format!(
        "| {transport:?} | SIG{} | {rounds} | {n:.2} | {f:.1} | {max:.1} | {:.1} |",
        signal.name(),
        f - n
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !common::under_cargo_bench("restart", "") {
        return Ok(());
    }
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    if !daemon::release_binary().exists() {
        bail!("build the release binary first: cargo build --release");
    }
    println!("| transport | signal | rounds | normal call p50 ms | first call after restart p50 ms | max ms | extra p50 ms |");
    println!("|---|---|---|---|---|---|---|");
    for transport in [Transport::Stdio, Transport::Http] {
        for signal in [Signal::Term, Signal::Kill] {
            eprintln!("{transport:?} SIG{}...", signal.name());
            let limit = Duration::from_secs(30 * rounds as u64 + 60);
            match tokio::time::timeout(limit, case(transport, signal, rounds)).await {
                Ok(Ok(row)) => println!("{row}"),
                Ok(Err(e)) => println!("| {transport:?} | SIG{} | failed: {e:#} |", signal.name()),
                Err(_) => println!(
                    "| {transport:?} | SIG{} | did not finish within {limit:?} |",
                    signal.name()
                ),
            }
        }
    }
    Ok(())
}
