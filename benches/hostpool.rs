//! The host pool (issue 20, "Measured"): what a daemon that starts with the host's pool
//! already warm gets, what several daemons together keep, and what a full pool costs at
//! rest. Stdio daemons of this crate's release binary, each with a fresh `HOME` and no
//! inherited `PYTHON_DOCKER_MCP_*`, in a scope of this run's own.
//!
//! ```text
//! cargo build --release && cargo bench --bench hostpool
//! cargo bench --bench hostpool -- --spawns 5 --pool 8 --idle 60
//! cargo bench --bench hostpool -- --skip-first     # parts 2 to 5 only
//! ```
//!
//! 1. **Second daemon's first result.** A first daemon fills the host pool (`--pool`) and
//!    exits (SIGTERM). Then `--spawns` times: spawn a daemon (pool on, the same
//!    settings), initialise it (timed from the spawn), then time its first
//!    `execute-transient` `1`. Beside it, the same with `session.durable: false` (a private pool,
//!    today's cold start) and pool off, and `docker run --rm IMAGE python3 -c 'print(1)'`.
//! 2. **Four daemons.** Four daemons at once with `pool_size` `--pool`, durable (one host
//!    pool) and not (four private pools): the most warm sandboxes on the host, and the
//!    host memory they take (`MemAvailable` before and once full).
//! 3. **Idle CPU.** The four durable daemons with a full pool, over `--idle` seconds: the
//!    CPU time of the daemons, of dockerd and of the warm containers (cgroup `cpuacct`),
//!    as a share of one core.
//! 4. **Steady state.** 30 transient runs in a row once the pool is full, p50, host pool
//!    against a private pool: what a claim (rename, attach, hello) adds.
//! 5. **Refills, from spawn.** A daemon with the host pool empty: `i += 1` in a session
//!    while the pool fills against once it is full (p90), and 30 transient runs back to
//!    back (p90) against `docker run --rm` / 10.
//!
//! Runs only with `--bench` (which `cargo bench` passes): under `cargo test --all-targets`
//! it prints a note and passes.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rmcp::model::CallToolRequestParams;
use serde_json::json;

#[path = "common/mod.rs"]
mod common;
use common::arg;
use common::daemon::{self, Daemon};

/// A daemon of this crate's release binary over stdio with `env`, in a home of its own.
async fn spawn(env: &[(&str, String)]) -> anyhow::Result<HostDaemon> {
    let home = daemon::fresh_home("hostpool")?;
    let mut cmd = daemon::command(&daemon::release_binary(), &home);
    cmd.env("PYTHON_DOCKER_MCP_LOG", "warn")
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let daemon = Daemon::stdio(cmd).await?;
    Ok(HostDaemon { daemon, home })
}

/// One of the daemons that share the host pool, and the home it removes when stopped.
struct HostDaemon {
    daemon: Daemon,
    home: PathBuf,
}

impl HostDaemon {
    async fn transient(&self, code: &str) -> anyhow::Result<()> {
        self.daemon
            .call_ok("execute-transient", json!({ "code": code }))
            .await
            .map(drop)
    }

    fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    async fn stop(mut self) {
        self.daemon
            .signal_and_wait("TERM", Duration::from_secs(40))
            .await;
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn settings(scope: &str, durable: bool, pool: u64) -> Vec<(&'static str, String)> {
    vec![
        ("PYTHON_DOCKER_MCP_SESSION_SCOPE", scope.to_string()),
        ("PYTHON_DOCKER_MCP_SESSION_DURABLE", durable.to_string()),
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", (pool > 0).to_string()),
        ("PYTHON_DOCKER_MCP_POOL_SIZE", pool.max(1).to_string()),
    ]
}

fn docker(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new("docker").args(args).output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// Running sandboxes of these daemons whose name starts with `prefix` (`""`: all).
fn warm_of(pids: &[u32], prefix: &str) -> Vec<String> {
    pids.iter()
        .flat_map(|pid| {
            docker(&[
                "ps",
                "--filter",
                &format!("label=python-docker-mcp.pid={pid}"),
                "--format",
                "{{.ID}} {{.Names}}",
            ])
        })
        .filter(|l| {
            l.split(' ').nth(1).is_some_and(|n| match prefix {
                // The host pool's: anyone's, or held ready by a daemon.
                "warm" => n.starts_with("pdm-w.") || n.starts_with("pdm-h."),
                _ => n.starts_with(prefix),
            })
        })
        .collect()
}

fn remove_all_of(pids: &[u32]) {
    for pid in pids {
        let ids = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=python-docker-mcp.pid={pid}"),
        ]);
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
    }
}

async fn wait_warm(pids: &[u32], prefix: &str, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut most = 0;
    loop {
        let have = warm_of(pids, prefix).len();
        most = most.max(have);
        if have >= n || Instant::now() > deadline {
            return most;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// CPU ticks (user + system) of a process.
fn ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// CPU nanoseconds a container used (cgroup v1 `cpuacct.usage`; v2 `cpu.stat`).
fn container_ns(id: &str) -> u64 {
    let full = docker(&["inspect", "-f", "{{.Id}}", id]);
    let Some(full) = full.first() else { return 0 };
    for path in [
        format!("/sys/fs/cgroup/cpuacct/docker/{full}/cpuacct.usage"),
        format!("/sys/fs/cgroup/cpu,cpuacct/docker/{full}/cpuacct.usage"),
    ] {
        if let Ok(v) = std::fs::read_to_string(&path) {
            return v.trim().parse().unwrap_or(0);
        }
    }
    if let Ok(s) = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/system.slice/docker-{full}.scope/cpu.stat"
    )) {
        if let Some(us) = s.lines().find_map(|l| l.strip_prefix("usage_usec ")) {
            return us.trim().parse::<u64>().unwrap_or(0) * 1000;
        }
    }
    0
}

fn dockerd_pid() -> u32 {
    std::process::Command::new("pidof")
        .arg("dockerd")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn docker_run_p50(spawns: u64) -> f64 {
    let mut v: Vec<f64> = (0..spawns)
        .map(|_| {
            let t = Instant::now();
            let _ = std::process::Command::new("docker")
                .args([
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "python-docker-mcp:latest",
                ])
                .args(["python3", "-c", "print(1)"])
                .output();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    p(&mut v, 0.5)
}

fn p(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// Per spawn: (spawn to initialised, the first call alone), in ms.
async fn first_result(
    env: &[(&str, String)],
    spawns: u64,
    pids: &mut Vec<u32>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut start, mut call) = (Vec::new(), Vec::new());
    for _ in 0..spawns {
        let t = Instant::now();
        let d = spawn(env).await?;
        start.push(t.elapsed().as_secs_f64() * 1000.0);
        pids.push(d.pid());
        let t = Instant::now();
        d.transient("1").await?;
        call.push(t.elapsed().as_secs_f64() * 1000.0);
        d.stop().await;
    }
    Ok((start, call))
}

/// From spawn, with the host pool empty, as an agent meets it: `i += 1` in a session
/// 30 times while the pool fills, then 30 times once it is full (p90 each), then 30
/// transient runs back to back (p90).
async fn refills(env: &[(&str, String)], pool: u64) -> anyhow::Result<(f64, f64, f64)> {
    let d = spawn(env).await?;
    let params = CallToolRequestParams::new("execute-persistent")
        .with_arguments(json!({ "code": "i = 0" }).as_object().cloned().unwrap());
    let r = d.daemon.client.call_tool(params).await?;
    let id = r
        .structured_content
        .as_ref()
        .and_then(|s| s.get("session_id")?.as_str().map(str::to_string))
        .context("session_id")?;
    let step = || {
        CallToolRequestParams::new("execute-persistent").with_arguments(
            json!({ "code": "i += 1", "session_id": id })
                .as_object()
                .cloned()
                .unwrap(),
        )
    };
    let mut filling = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        d.daemon.client.call_tool(step()).await?;
        filling.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut transient = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        d.transient("1").await?;
        transient.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    wait_warm(&[d.pid()], "warm", pool as usize, Duration::from_secs(120)).await;
    let mut quiet = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        d.daemon.client.call_tool(step()).await?;
        quiet.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = d.pid();
    d.stop().await;
    remove_all_of(&[pid]);
    Ok((
        p(&mut filling, 0.9),
        p(&mut quiet, 0.9),
        p(&mut transient, 0.9),
    ))
}

async fn steady(d: &HostDaemon) -> anyhow::Result<f64> {
    let mut v = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        d.transient("1").await?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
        // Between calls, as an agent leaves them: the refill may run.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(p(&mut v, 0.5))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !common::under_cargo_bench("hostpool", "") {
        return Ok(());
    }
    let args: Vec<String> = std::env::args().collect();
    if !daemon::release_binary().exists() {
        bail!("build the release binary first: cargo build --release");
    }
    let spawns = arg(&args, "--spawns", 5);
    let pool = arg(&args, "--pool", 8);
    let idle = arg(&args, "--idle", 60);
    let scope = format!("bench-{}", std::process::id());
    let mut all_pids = Vec::new();

    // 1. The second daemon's first result.
    if !args.iter().any(|a| a == "--skip-first") {
        first_result_part(&scope, pool, spawns, &mut all_pids).await?;
        // What the first spawns left in the host pool goes before the next part.
        remove_all_of(&all_pids);
    }
    let docker_p50 = docker_run_p50(spawns);

    // 2. Four daemons; 3. idle CPU; 4. steady state.
    println!("## Four daemons, pool_size {pool}\n");
    println!("| mode | most sandboxes on the host | host memory, MB | steady transient p50 ms |");
    println!("|---|---|---|---|");
    let mut idle_row = String::new();
    for durable in [true, false] {
        if let Some(row) = four_daemons(&scope, durable, pool, idle, &mut all_pids).await? {
            idle_row = row;
        }
    }
    let (filling, quiet, transient) =
        refills(&settings(&format!("{scope}-r"), true, pool), pool).await?;
    println!("\n## From spawn, the host pool empty (pool_size {pool}), ms\n");
    println!("| `i += 1` p90 while it fills | `i += 1` p90 once full | ratio | 30 transient runs back to back p90 | `docker run --rm` / 10 |");
    println!("|---|---|---|---|---|");
    println!(
        "| {filling:.1} | {quiet:.1} | {:.1}x | {transient:.1} | {:.1} |",
        filling / quiet,
        docker_p50 / 10.0
    );
    println!("\n## A full host pool at rest (four daemons), share of one core\n");
    println!(
        "| over | daemons | dockerd | warm containers | warm sandboxes still the same at the end |"
    );
    println!("|---|---|---|---|---|");
    println!("{idle_row}");
    remove_all_of(&all_pids);
    Ok(())
}

/// A first daemon fills the host pool and exits; then the first transient result of
/// `spawns` new daemons each, with the host pool warm, a private pool, and no pool, beside
/// `docker run --rm`.
async fn first_result_part(
    scope: &str,
    pool: u64,
    spawns: u64,
    all_pids: &mut Vec<u32>,
) -> anyhow::Result<()> {
    let host = settings(scope, true, pool);
    let first = spawn(&host).await?;
    all_pids.push(first.pid());
    wait_warm(
        &[first.pid()],
        "warm",
        pool as usize,
        Duration::from_secs(120),
    )
    .await;
    first.stop().await;
    let (mut warm_start, mut warm_first) = first_result(&host, spawns, all_pids).await?;
    let (_, mut private_first) =
        first_result(&settings(scope, false, pool), spawns, all_pids).await?;
    let (_, mut off_first) = first_result(&settings(scope, false, 0), spawns, all_pids).await?;
    let docker_p50 = docker_run_p50(spawns);
    println!("## First transient result after spawn (p50 of {spawns}, ms)\n");
    println!("| spawn to initialised | first call: host pool warm | private pool (durable off) | pool off | `docker run --rm` |");
    println!("|---|---|---|---|---|");
    println!(
        "| {:.0} | {:.1} | {:.0} | {:.0} | {:.0} |\n",
        p(&mut warm_start, 0.5),
        p(&mut warm_first, 0.5),
        p(&mut private_first, 0.5),
        p(&mut off_first, 0.5),
        docker_p50
    );
    Ok(())
}

/// Four daemons at once, durable (one host pool) or not (four private pools): the most
/// sandboxes on the host, the host memory they take, a steady transient p50; for durable
/// daemons also the idle CPU row (returned).
async fn four_daemons(
    scope: &str,
    durable: bool,
    pool: u64,
    idle: u64,
    all_pids: &mut Vec<u32>,
) -> anyhow::Result<Option<String>> {
    let mut idle_row = None;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = mem_available();
    let env = settings(scope, durable, pool);
    let (a, b, c, d) = tokio::join!(spawn(&env), spawn(&env), spawn(&env), spawn(&env));
    let daemons = [a?, b?, c?, d?];
    let pids: Vec<u32> = daemons.iter().map(HostDaemon::pid).collect();
    all_pids.extend(&pids);
    let want = if durable { pool } else { 4 * pool } as usize;
    let prefix = if durable { "warm" } else { "" };
    let mut most = wait_warm(&pids, prefix, want, Duration::from_secs(240)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    most = most.max(warm_of(&pids, "").len());
    let used = before.saturating_sub(mem_available()) / 1_000_000;
    if durable {
        idle_row = Some(idle_cpu_row(&pids, idle).await);
    }
    let p50 = steady(&daemons[0]).await?;
    println!(
        "| {} | {most} | {used} | {p50:.1} |",
        if durable {
            "durable: one host pool"
        } else {
            "durable off: four private pools"
        }
    );
    for d in daemons {
        d.stop().await;
    }
    remove_all_of(all_pids);
    Ok(idle_row)
}

/// The CPU the daemons, dockerd and the warm containers take over `idle` seconds of a
/// full host pool at rest, and how many warm sandboxes are still the same at the end.
async fn idle_cpu_row(pids: &[u32], idle: u64) -> String {
    let hz = 100.0;
    let warm: Vec<String> = warm_of(pids, "warm")
        .iter()
        .filter_map(|l| l.split(' ').next().map(str::to_string))
        .collect();
    let dockerd = dockerd_pid();
    let t0: u64 = pids.iter().map(|p| ticks(*p)).sum();
    let d0 = ticks(dockerd);
    let c0: u64 = warm.iter().map(|w| container_ns(w)).sum();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let t1: u64 = pids.iter().map(|p| ticks(*p)).sum();
    let d1 = ticks(dockerd);
    let c1: u64 = warm.iter().map(|w| container_ns(w)).sum();
    let share = |secs: f64| 100.0 * secs / idle as f64;
    let left = warm_of(pids, "warm").len();
    format!(
        "| {idle} s | {:.2} % | {:.2} % | {:.2} % | {} of {} |",
        share((t1 - t0) as f64 / hz),
        share((d1 - d0) as f64 / hz),
        share((c1.saturating_sub(c0)) as f64 / 1e9),
        warm.iter()
            .filter(|w| left > 0
                && warm_of(pids, "warm")
                    .iter()
                    .any(|l| l.starts_with(w.as_str())))
            .count(),
        warm.len()
    )
}
