//! What one host holds (issue 12, item 6): the figures behind `docs/SCALING.md`, measured
//! from outside the release daemon, which runs over stdio and is driven by a raw JSON-RPC
//! client (the same spawning as `benches/files.rs`).
//!
//! ```text
//! cargo build --release && cargo bench --bench scaling
//! cargo bench --bench scaling -- --bin PATH --calls 500 --transient 100 --sessions 100
//! ```
//!
//! Parts, each printed as a markdown table:
//! 1. **Warm sandboxes, idle.** A daemon with `docker.pool_size` 8, then one with 32. Each
//!    sandbox's memory and pids through the engine's stats (`docker stats --no-stream`), the
//!    host's `MemAvailable` (`/proc/meminfo`) before and after the pool filled, the
//!    containerd-shim of each sandbox (RSS, threads, fds) and dockerd's growth (RSS,
//!    threads, fds). The pool's fill time from empty gives the daemon's creation rate.
//! 2. **Sessions.** The daemon's `VmRSS` (`/proc/PID/status`) with 0, 10, 50 and 100 live
//!    sessions, each holding one small variable.
//! 3. **CPU per call.** utime+stime (`/proc/PID/stat`) of the daemon, dockerd and containerd
//!    over N `execute-persistent` calls to one session and over M `execute-transient` calls
//!    (each turns a sandbox over: the refill is waited for inside the window), plus the
//!    whole host's busy time from `/proc/stat` over the same windows.
//! 4. **Raw churn.** `docker run --rm IMAGE true`, 4 at a time: the engine's creation rate.
//!
//! The machine is shared: other builds and other daemons run beside this one, so CPU and
//! host-wide memory figures are noisy. Compare within one run; ratios are steadier than
//! absolute numbers. Everything created is removed: each daemon is closed through EOF on
//! stdin (its shutdown removes its containers and volumes), and the end checks that no
//! container or volume labelled with the bench daemons' pids is left.
//!
//! Runs only with `--bench` (which `cargo bench` passes): under `cargo test --all-targets`
//! it prints a note and passes.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "common/mod.rs"]
mod common;
use common::parse_size;
use common::rpc::Rpc;

/// The label every object the daemon makes carries (`sandbox::labels::MANAGED`).
const MANAGED: &str = python_docker_mcp::sandbox::labels::MANAGED;
const PID_LABEL: &str = python_docker_mcp::sandbox::labels::PID;
const ROLE_LABEL: &str = python_docker_mcp::sandbox::labels::ROLE;

const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------- reading the host

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `Key:   123 kB` field of `/proc/meminfo` or `/proc/PID/status`, in bytes (or count).
fn proc_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{key}:")))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    Some(if words.next() == Some("kB") {
        n * 1024
    } else {
        n
    })
}

fn rss(pid: u32) -> u64 {
    proc_field(&format!("/proc/{pid}/status"), "VmRSS").unwrap_or(0)
}

fn threads(pid: u32) -> u64 {
    proc_field(&format!("/proc/{pid}/status"), "Threads").unwrap_or(0)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// utime + stime of a process, in seconds.
fn cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    sh("getconf", &["CLK_TCK"]).trim().parse().unwrap_or(100.0)
}

/// Busy seconds of the whole host (all CPUs: everything but idle and iowait).
fn host_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().unwrap())
        .collect();
    let busy: u64 = f.iter().sum::<u64>() - f[3] - f[4];
    busy as f64 / clock_ticks()
}

/// `MemAvailable`, median of five readings 200 ms apart (others' builds move it).
fn mem_available() -> f64 {
    let mut v: Vec<u64> = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(200));
            proc_field("/proc/meminfo", "MemAvailable").unwrap()
        })
        .collect();
    v.sort();
    v[2] as f64
}

fn pid_of(name: &str) -> u32 {
    sh("pgrep", &["-xo", name])
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no {name} process"))
}

/// The containerd-shim serving each container id, by its `-id` argument.
fn shims() -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for line in sh("pgrep", &["-af", "containerd-shim"]).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "-id") {
            if let (Ok(pid), Some(id)) = (words[0].parse(), words.get(i + 1)) {
                out.insert(id.to_string(), pid);
            }
        }
    }
    out
}

/// The daemon's sandbox containers (full ids), found by its pid label.
fn sandboxes(daemon: u32) -> Vec<String> {
    sh(
        "docker",
        &[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label={PID_LABEL}={daemon}"),
            "--filter",
            &format!("label={ROLE_LABEL}=sandbox"),
        ],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn wait_for_sandboxes(daemon: u32, n: usize) -> Duration {
    let started = Instant::now();
    while sandboxes(daemon).len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{n} sandboxes never came"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// Memory usage and pids of each container, through the engine's stats.
fn engine_stats(ids: &[String]) -> Vec<(f64, u64)> {
    let mut args = vec![
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}\t{{.PIDs}}",
    ];
    args.extend(ids.iter().map(String::as_str));
    sh("docker", &args)
        .lines()
        .filter_map(|l| {
            let (mem, pids) = l.split_once('\t')?;
            Some((
                parse_size(mem.split('/').next()?),
                pids.trim().parse().ok()?,
            ))
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(0.0, f64::max)
}

// ---------------------------------------------------------------- the parts

struct Pool {
    size: usize,
    fill: Duration,
    stats_mean: f64,
    stats_max: f64,
    pids_mean: f64,
    host_per_sandbox: f64,
    daemon_rss: f64,
    shim_rss: f64,
    shim_threads: f64,
    shim_fds: f64,
    dockerd_rss: f64,
    dockerd_threads: f64,
    dockerd_fds: f64,
    containerd_rss: f64,
}

fn pool_part(bin: &str, size: usize, pids: &mut Vec<u32>) -> Pool {
    let (dockerd, containerd) = (pid_of("dockerd"), pid_of("containerd"));
    let before = mem_available();
    let (d_rss, d_thr, d_fds, c_rss) = (
        rss(dockerd),
        threads(dockerd),
        fds(dockerd),
        rss(containerd),
    );
    let rpc = Rpc::start(
        bin,
        "scaling",
        &[("PYTHON_DOCKER_MCP_POOL_SIZE", size.to_string())],
    );
    pids.push(rpc.pid());
    let fill = wait_for_sandboxes(rpc.pid(), size);
    std::thread::sleep(Duration::from_secs(5)); // let the helpers settle
    let after = mem_available();
    let ids = sandboxes(rpc.pid());
    let stats = engine_stats(&ids);
    let mem: Vec<f64> = stats.iter().map(|s| s.0).collect();
    let shim_map = shims();
    let shim_pids: Vec<u32> = ids
        .iter()
        .filter_map(|id| shim_map.get(id).copied())
        .collect();
    let per = |f: fn(u32) -> u64| mean(&shim_pids.iter().map(|p| f(*p) as f64).collect::<Vec<_>>());
    let daemon_rss = rss(rpc.pid()) as f64;
    let n = size as f64;
    let pool = Pool {
        size,
        fill,
        stats_mean: mean(&mem),
        stats_max: max(&mem),
        pids_mean: mean(&stats.iter().map(|s| s.1 as f64).collect::<Vec<_>>()),
        host_per_sandbox: (before - after - daemon_rss) / n,
        daemon_rss,
        shim_rss: per(rss),
        shim_threads: per(threads),
        shim_fds: per(fds),
        dockerd_rss: (rss(dockerd) as f64 - d_rss as f64) / n,
        dockerd_threads: (threads(dockerd) as f64 - d_thr as f64) / n,
        dockerd_fds: (fds(dockerd) as f64 - d_fds as f64) / n,
        containerd_rss: (rss(containerd) as f64 - c_rss as f64) / n,
    };
    rpc.close();
    pool
}

struct Cpu {
    calls: usize,
    daemon: f64,
    dockerd: f64,
    containerd: f64,
    host: f64,
    wall: f64,
}

fn measure_cpu(rpc: &mut Rpc, calls: usize, mut call: impl FnMut(&mut Rpc)) -> Cpu {
    let (dockerd, containerd) = (pid_of("dockerd"), pid_of("containerd"));
    let (d0, k0, c0, h0) = (cpu(rpc.pid()), cpu(dockerd), cpu(containerd), host_busy());
    let started = Instant::now();
    for _ in 0..calls {
        call(rpc);
    }
    let wall = started.elapsed().as_secs_f64();
    Cpu {
        calls,
        daemon: cpu(rpc.pid()) - d0,
        dockerd: cpu(dockerd) - k0,
        containerd: cpu(containerd) - c0,
        host: host_busy() - h0,
        wall,
    }
}

fn main() {
    if !common::under_cargo_bench("scaling", "") {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let number = |flag: &str, default: usize| {
        value_of(flag).map_or(default, |v| {
            v.parse().unwrap_or_else(|_| panic!("{flag} N"))
        })
    };
    let calls = number("--calls", 500);
    let transient = number("--transient", 100);
    let max_sessions = number("--sessions", 100);
    let bin = value_of("--bin").unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        format!("{target}/release/python-docker-mcp")
    });
    let mut daemons = Vec::new();
    println!("binary: {bin}");
    println!(
        "command: cargo bench --bench scaling -- --calls {calls} --transient {transient} --sessions {max_sessions}"
    );
    println!(
        "host: {} CPUs, MemTotal {:.1} GiB, pid_max {}, other containers running: {}\n",
        sh("nproc", &[]).trim(),
        proc_field("/proc/meminfo", "MemTotal").unwrap() as f64 / MIB / 1024.0,
        std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim(),
        sh("docker", &["ps", "-q"]).lines().count()
    );

    // 1. Warm sandboxes, idle.
    let pools: Vec<Pool> = [8, 32]
        .iter()
        .map(|n| pool_part(&bin, *n, &mut daemons))
        .collect();
    print_pools(&pools);

    // 2. Sessions, and 3. CPU per call, in one daemon.
    let pool_size = 4;
    let mut rpc = Rpc::start(
        &bin,
        "scaling",
        &[
            ("PYTHON_DOCKER_MCP_POOL_SIZE", pool_size.to_string()),
            (
                "PYTHON_DOCKER_MCP_MAX_SESSIONS",
                (max_sessions + 8).to_string(),
            ),
        ],
    );
    daemons.push(rpc.pid());
    wait_for_sandboxes(rpc.pid(), pool_size);
    std::thread::sleep(Duration::from_secs(2));
    let sessions = sessions_part(&mut rpc, max_sessions, pool_size);
    cpu_part(&mut rpc, &sessions, calls, transient, pool_size);
    rpc.close();

    // 4. Raw churn through the engine.
    churn_part();

    // Nothing left behind.
    check_nothing_left(&daemons);
}

/// The warm-sandbox table, one row per pool size.
fn print_pools(pools: &[Pool]) {
    println!("## Warm sandboxes, idle (per sandbox)\n");
    println!("| pool_size | fill from empty | containers/s | engine stats mean | engine stats max | pids | host MemAvailable drop | shim RSS | shim threads | shim fds | dockerd RSS | dockerd threads | dockerd fds | containerd RSS | daemon RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for p in pools {
        println!(
            "| {} | {:.1} s | {:.1} | {:.1} MiB | {:.1} MiB | {:.1} | {:.1} MiB | {:.1} MiB | {:.1} | {:.1} | {:.2} MiB | {:.1} | {:.1} | {:.2} MiB | {:.1} MiB |",
            p.size,
            p.fill.as_secs_f64(),
            p.size as f64 / p.fill.as_secs_f64(),
            p.stats_mean / MIB,
            p.stats_max / MIB,
            p.pids_mean,
            p.host_per_sandbox / MIB,
            p.shim_rss / MIB,
            p.shim_threads,
            p.shim_fds,
            p.dockerd_rss / MIB,
            p.dockerd_threads,
            p.dockerd_fds,
            p.containerd_rss / MIB,
            p.daemon_rss / MIB,
        );
    }
    println!();
}

/// Daemon memory, threads and fds at 0, 10, 50 and 100 live sessions (up to
/// `max_sessions`); the sessions made.
fn sessions_part(rpc: &mut Rpc, max_sessions: usize, pool_size: usize) -> Vec<String> {
    let mut sessions = Vec::new();
    let mut rows = Vec::new();
    let steps: Vec<usize> = [0, 10, 50, 100]
        .into_iter()
        .filter(|s| *s <= max_sessions)
        .collect();
    for target in steps {
        while sessions.len() < target {
            let i = sessions.len();
            sessions.push(rpc.new_session(&format!("x = {}", i)));
        }
        wait_for_sandboxes(rpc.pid(), target + pool_size);
        std::thread::sleep(Duration::from_secs(2));
        rows.push((target, rss(rpc.pid()), threads(rpc.pid()), fds(rpc.pid())));
    }
    println!("## Daemon memory per session (pool_size {pool_size})\n");
    println!("| live sessions | daemon VmRSS | threads | fds | RSS per session since 0 |");
    println!("|---|---|---|---|---|");
    for (n, r, t, f) in &rows {
        let per = if *n == 0 {
            "—".to_string()
        } else {
            format!(
                "{:.0} KiB",
                (*r as f64 - rows[0].1 as f64) / *n as f64 / 1024.0
            )
        };
        println!("| {n} | {:.1} MiB | {t} | {f} | {per} |", *r as f64 / MIB);
    }
    println!();

    sessions
}

/// CPU per persistent call and per transient call (with the refills it causes), from the
/// daemon, dockerd, containerd and the whole host.
fn cpu_part(rpc: &mut Rpc, sessions: &[String], calls: usize, transient: usize, pool_size: usize) {
    let session = sessions
        .first()
        .cloned()
        .unwrap_or_else(|| rpc.new_session("x = 0"));
    let persistent = measure_cpu(rpc, calls, |rpc| {
        rpc.tool(
            "execute-persistent",
            json!({"code": "x += 1", "session_id": session}),
        );
    });
    let daemon_pid = rpc.pid();
    let live = sessions.len().max(1);
    let transient_cpu = measure_cpu(rpc, transient, |rpc| {
        rpc.tool("execute-transient", json!({"code": "print(1)"}));
    });
    // The refills after the last transient calls belong to the window too.
    let (dockerd, containerd) = (pid_of("dockerd"), pid_of("containerd"));
    let (d0, k0, c0, h0) = (cpu(daemon_pid), cpu(dockerd), cpu(containerd), host_busy());
    let settle = Instant::now();
    wait_for_sandboxes(daemon_pid, live + pool_size);
    let transient_cpu = Cpu {
        daemon: transient_cpu.daemon + cpu(daemon_pid) - d0,
        dockerd: transient_cpu.dockerd + cpu(dockerd) - k0,
        containerd: transient_cpu.containerd + cpu(containerd) - c0,
        host: transient_cpu.host + host_busy() - h0,
        wall: transient_cpu.wall + settle.elapsed().as_secs_f64(),
        ..transient_cpu
    };
    println!("## CPU per call (utime+stime; noisy: shared machine)\n");
    println!("| call | calls | wall per call | daemon | dockerd | containerd | whole host (busy, all CPUs) |");
    println!("|---|---|---|---|---|---|---|");
    for (name, c) in [
        ("execute-persistent", &persistent),
        ("execute-transient", &transient_cpu),
    ] {
        let n = c.calls as f64;
        println!(
            "| {name} | {} | {:.1} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} ms |",
            c.calls,
            c.wall / n * 1e3,
            c.daemon / n * 1e3,
            c.dockerd / n * 1e3,
            c.containerd / n * 1e3,
            c.host / n * 1e3,
        );
    }
    println!();
}

/// `docker run --rm IMAGE true`, 16 runs 4 at a time: the engine's own churn rate.
fn churn_part() {
    let image = "python-docker-mcp:latest";
    let (runs, parallel) = (16, 4);
    let started = Instant::now();
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..runs / parallel {
                    let status = Command::new("docker")
                        .args([
                            "run",
                            "--rm",
                            "--network",
                            "none",
                            "--label",
                            "python-docker-mcp-bench=scaling",
                            image,
                            "true",
                        ])
                        .stdout(Stdio::null())
                        .status()
                        .expect("docker run");
                    assert!(status.success(), "docker run --rm {image} true");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let churn = started.elapsed().as_secs_f64();
    println!("## Raw engine churn\n");
    println!("| `docker run --rm {image} true`, {parallel} at a time | runs | containers/s |");
    println!("|---|---|---|");
    println!(
        "| {:.2} s wall | {runs} | {:.1} |",
        churn,
        runs as f64 / churn
    );
    println!();
}

/// No container or volume of the bench's daemons, and no churn container, is left.
fn check_nothing_left(daemons: &[u32]) {
    let mut left = Vec::new();
    for pid in daemons {
        let label = format!("label={PID_LABEL}={pid}");
        left.extend(
            sh("docker", &["ps", "-aq", "--filter", &label])
                .lines()
                .map(str::to_string),
        );
        left.extend(
            sh("docker", &["volume", "ls", "-q", "--filter", &label])
                .lines()
                .map(str::to_string),
        );
    }
    left.extend(
        sh(
            "docker",
            &[
                "ps",
                "-aq",
                "--filter",
                "label=python-docker-mcp-bench=scaling",
            ],
        )
        .lines()
        .map(str::to_string),
    );
    assert!(
        left.is_empty(),
        "left behind by the bench's daemons: {left:?}"
    );
    println!(
        "cleanup: no container or volume labelled {MANAGED} with the bench daemons' pids {daemons:?} is left"
    );
}
