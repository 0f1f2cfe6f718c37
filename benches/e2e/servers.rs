//! The MCP servers under test: how to start ours and the original (clean `HOME`, no
//! inherited `PYTHON_DOCKER_MCP_*`), calling their tools through rmcp's client over a real
//! stdio child process, waiting for a warm pool, and sweeping what a server left behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use python_docker_mcp::sandbox::labels;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::json;

use crate::plan::{Args, OnOff, Pool};
use crate::references::{docker, docker_lines};
use crate::samples::ms_since;
use crate::{CALL_TIMEOUT, ORIGINAL_IMAGE, WARM_TIMEOUT};

pub type Client = RunningService<RoleClient, ()>;

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Ours,
    Original,
}

/// How to start one MCP server.
#[derive(Clone)]
pub struct Target {
    pub label: String,
    pub kind: Kind,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub home: PathBuf,
    pub log_prefix: String,
    /// Warm containers the server keeps once started (0: no pool to wait for). The
    /// original builds its pool before answering `initialize`, so it needs no waiting.
    pub pool_size: usize,
}

pub struct Running {
    pub client: Client,
    pub pid: u32,
    pub spawned: Instant,
}

pub async fn spawn(t: &Target, logs: &Path, n: usize) -> anyhow::Result<(Running, f64)> {
    let mut cmd = crate::common::daemon::command(&t.program, &t.home);
    cmd.args(&t.args);
    for (k, v) in &t.env {
        cmd.env(k, v);
    }
    let log = std::fs::File::create(logs.join(format!("{}-{n}.stderr.log", t.log_prefix)))?;
    let spawned = Instant::now();
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("spawning {}", t.program.display()))?;
    let pid = transport.id().unwrap_or(0);
    let client = tokio::time::timeout(CALL_TIMEOUT, ().serve(transport))
        .await
        .context("no initialize answer within the call time-out")?
        .context("MCP initialize")?;
    let init = ms_since(spawned);
    Ok((
        Running {
            client,
            pid,
            spawned,
        },
        init,
    ))
}

/// Call a tool; the result must not be an error and its text must contain `expect`.
pub async fn call(
    client: &Client,
    tool: &'static str,
    args: serde_json::Value,
    expect: &str,
) -> Result<String, String> {
    let params = CallToolRequestParams::new(tool)
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    let result: CallToolResult = tokio::time::timeout(CALL_TIMEOUT, client.call_tool(params))
        .await
        .map_err(|_| format!("{tool}: no answer within {CALL_TIMEOUT:?}"))?
        .map_err(|e| format!("{tool}: {e}"))?;
    let text: String = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect::<Vec<_>>()
        .join("\n");
    // The original reports failures only in the text ("Error: ...", "Error executing ...").
    if result.is_error == Some(true) || text.contains("Error") || !text.contains(expect) {
        return Err(format!(
            "{tool}: unexpected result: {}",
            text.replace('\n', " ⏎ ")
        ));
    }
    Ok(text)
}

pub fn session_id(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Session ID:"))
        .map(|s| s.trim().to_string())
}

/// What a transient `print(1)` answers.
pub const PRINT_1: &str = "Execution Result:\n\n1";

pub fn transient(code: &str) -> serde_json::Value {
    json!({ "code": code })
}

/// Wait until the server runs its `pool_size` warm containers plus `busy` checked-out
/// ones (live sessions), counted as running containers carrying the child's pid label.
/// A container counts once started, while its helper may still be starting, so a second
/// of settling follows.
pub async fn wait_warm(t: &Target, pid: u32, busy: usize) -> Result<(), String> {
    let want = t.pool_size + busy;
    let deadline = Instant::now() + WARM_TIMEOUT;
    loop {
        let (running, _) = container_states(pid).await;
        if running >= want {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {running} of {want} containers after {WARM_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With a pool: let it refill before the next phase, so each phase starts from a full
/// pool (an agent's calls are spaced by its thinking; the throughput phase drains it).
pub async fn settle(t: &Target, pid: u32, busy: usize) {
    if t.pool_size > 0 {
        progress!("    (letting the pool refill)");
        if let Err(e) = wait_warm(t, pid, busy).await {
            progress!("    warning: {e}");
        }
    }
}

/// Containers that belong to this server kind right now (see `sweep`).
pub async fn server_containers(t: &Target, pid: u32) -> BTreeSet<String> {
    match t.kind {
        // The original only ever uses its own derived image; never our managed label.
        Kind::Original => docker_lines(&[
            "ps",
            "-a",
            "--filter",
            &format!("ancestor={ORIGINAL_IMAGE}"),
            "--format",
            &format!("{{{{.ID}}}} {{{{.Label \"{}\"}}}}", labels::MANAGED),
        ])
        .await
        .into_iter()
        .filter(|l| !l.ends_with(" true"))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect(),
        // Ours: containers labelled with the (now exited) child's pid.
        Kind::Ours if pid != 0 => {
            docker_lines(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label={}=true", labels::MANAGED),
                "--filter",
                &format!("label={}={pid}", labels::PID),
            ])
            .await
        }
        Kind::Ours => BTreeSet::new(),
    }
}

/// After a server exited: count the containers it left and remove them. Only containers
/// that appeared since `before` (original), or that carry the exited child's pid label
/// (ours), are touched.
pub async fn sweep(t: &Target, before: &BTreeSet<String>, pid: u32) -> usize {
    // Let any create that was in flight when the process died land first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut left: BTreeSet<String> = server_containers(t, pid)
        .await
        .difference(before)
        .cloned()
        .collect();
    let count = left.len();
    if count > 0 {
        progress!(
            "    {} left {count} container(s) after exit; removing them",
            t.label
        );
    }
    for _ in 0..3 {
        if left.is_empty() {
            break;
        }
        let ids: Vec<&str> = left.iter().map(String::as_str).collect();
        for chunk in ids.chunks(50) {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend_from_slice(chunk);
            if let Err(e) = docker(&args).await {
                progress!("  warning: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = server_containers(t, pid)
            .await
            .difference(before)
            .cloned()
            .collect();
    }
    if t.kind == Kind::Ours && pid != 0 {
        for v in docker_lines(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label={}={pid}", labels::PID),
        ])
        .await
        {
            progress!("    {} left volume {v}; removing it", t.label);
            let _ = docker(&["volume", "rm", "-f", &v]).await;
        }
    }
    count
}

/// Our daemon with a clean HOME and the pool as chosen; its effective pool settings are
/// read back from its own `config` command, so the bench knows how many warm containers
/// to wait for.
pub fn ours(pool: Pool, home: &Path) -> anyhow::Result<(Target, String)> {
    let mut env = vec![("PYTHON_DOCKER_MCP_LOG".to_string(), "warn".to_string())];
    let label = match pool {
        Pool::Default => "python-docker-mcp (Rust)".to_string(),
        Pool::On => "python-docker-mcp (Rust), pool on".to_string(),
        Pool::Off => "python-docker-mcp (Rust), pool off".to_string(),
    };
    match pool {
        Pool::On => env.push(("PYTHON_DOCKER_MCP_POOL_ENABLED".into(), "true".into())),
        Pool::Off => env.push(("PYTHON_DOCKER_MCP_POOL_ENABLED".into(), "false".into())),
        Pool::Default => {}
    }
    // PDM_BENCH_DAEMON: another build of the daemon, for an A/B in one sitting.
    let program = std::env::var_os("PDM_BENCH_DAEMON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_python-docker-mcp")));
    let mut cmd = crate::common::daemon::std_command(&program, home);
    cmd.arg("config");
    cmd.envs(env.iter().cloned());
    let out = cmd.output().context("running python-docker-mcp config")?;
    if !out.status.success() {
        bail!(
            "python-docker-mcp config failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(key))
                    .then(|| w.next().unwrap_or("").trim_matches('"').to_string())
            })
            .unwrap_or_default()
    };
    let enabled = value("docker.pool_enabled") == "true";
    let size: usize = value("docker.pool_size").parse().unwrap_or(0);
    let note = format!(
        "pool_enabled {} ({}), pool_size {size}, max_concurrent_creations {}, pool_max_age {}, \
         warm_imports {}",
        enabled,
        match pool {
            Pool::Default => "default; PYTHON_DOCKER_MCP_POOL_ENABLED unset",
            Pool::On => "PYTHON_DOCKER_MCP_POOL_ENABLED=true",
            Pool::Off => "PYTHON_DOCKER_MCP_POOL_ENABLED=false",
        },
        value("docker.max_concurrent_creations"),
        value("docker.pool_max_age"),
        value("docker.warm_imports"),
    );
    Ok((
        Target {
            label,
            kind: Kind::Ours,
            program,
            args: vec!["serve".into()],
            env,
            home: home.to_path_buf(),
            log_prefix: format!("ours-{pool:?}").to_lowercase(),
            pool_size: if enabled { size } else { 0 },
        },
        note,
    ))
}

pub fn original(a: &Args, home: &Path) -> anyhow::Result<Target> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = a.venv();
    let pool_on = a.original_pool == OnOff::On;
    if !a.no_setup {
        progress!("setting up the original (scripts/bench-original.sh)");
        let status = std::process::Command::new(root.join("scripts/bench-original.sh"))
            .env("PDM_BENCH_ORIGINAL_VENV", &venv)
            .status()
            .context("running scripts/bench-original.sh")?;
        if !status.success() {
            bail!("scripts/bench-original.sh failed ({status})");
        }
    }
    let program = venv.join("bin/python-docker-mcp");
    if !program.exists() {
        bail!(
            "{} is missing: run scripts/bench-original.sh",
            program.display()
        );
    }
    let dir = home.join(".python-docker-mcp");
    std::fs::create_dir_all(&dir)?;
    // Its own defaults except: the derived image; the pool as chosen; no allow-list, so
    // `import numpy` is not refused by its regex validator (its default allow-list is
    // math, datetime, random, json, re, collections, ...).
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "docker:\n  image: {ORIGINAL_IMAGE}\n  working_dir: /app\n  memory_limit: 256m\n  \
             cpu_limit: 0.5\n  timeout: 30\n  network_disabled: true\n  read_only: false\n  \
             pool_enabled: {}\n  pool_size: 32\n  pool_max_age: 300\n  max_concurrent_creations: 5\n\
             allowed_modules: []\n",
            pool_on
        ),
    )?;
    Ok(Target {
        label: format!(
            "python-docker-mcp 0.2.5 (Python){}",
            if pool_on { "" } else { ", pool off" }
        ),
        kind: Kind::Original,
        program,
        args: vec![],
        env: vec![],
        home: home.to_path_buf(),
        log_prefix: "original".into(),
        pool_size: 0,
    })
}

/// Our daemon's containers by state: (running, created but not started yet).
pub async fn container_states(pid: u32) -> (usize, usize) {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={}=true", labels::MANAGED),
        "--filter",
        &format!("label={}={pid}", labels::PID),
        "--format",
        "{{.State}}",
    ])
    .await
    .unwrap_or_else(|e| {
        progress!("  warning: {e}");
        String::new()
    });
    let count = |state: &str| out.lines().filter(|l| l.trim() == state).count();
    (count("running"), count("created"))
}
