//! Hostile sandboxes: what a cell that attacks the daemon costs the daemon, in memory and
//! in log, and whether the daemon keeps serving everyone else (issues 8 and 14).
//!
//! ```text
//! cargo build --release && cargo bench --bench attacks          # this crate's release binary
//! cargo bench --bench attacks -- --bin OLD --bin NEW            # compare two binaries
//! cargo bench --bench attacks -- --quick --only 1,3,load        # short development run
//! ```
//!
//! Per binary: a daemon started over stdio and driven by rmcp's client (fresh `HOME`, no
//! inherited `PYTHON_DOCKER_MCP_*` variables, log level info, stderr to a file under
//! `target/bench-attacks/`), pool on with 2 sandboxes, 30 s time-out, 32 sessions. Once
//! the pool is warm: its idle `VmRSS` and `VmHWM`. Then each attack case in a session of
//! its own, one after another on the same daemon: the daemon's peak RSS during the case
//! (`VmHWM`, reset before each case through `/proc/PID/clear_refs`), its RSS after, its
//! log growth, whether the case's session ended, the attack call's wall time, and whether
//! a bystander session still answers. A daemon whose RSS passes 3 GB is killed (the machine
//! is shared) and the next case gets a fresh one. Then, on a fresh daemon, load: 500
//! transient runs back to back and 16 sessions × 100 calls in parallel.
//!
//! Output: one markdown table per binary, and a comparison when several are given, on
//! stdout and in `target/bench-attacks/last-run.md`. What each column means:
//! docs/BENCHMARKS.md, "Hostile sandboxes".
//!
//! Runs only with `--bench` (which `cargo bench` passes): under `cargo test --all-targets`
//! it prints a note and passes instead of loading Docker for minutes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::{json, Value};

#[path = "common/mod.rs"]
mod common;
use common::daemon::{self, Client};
use common::host::{
    docker, docker_lines, fmt_mib, proc_status, process_alive, remove_leftovers,
    running_containers_of as containers_of, MIB,
};

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Progress on stderr, with the time since the bench started.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!(
            "[{:6.1}s] {}",
            START.get_or_init(Instant::now).elapsed().as_secs_f64(),
            format!($($arg)*)
        )
    };
}

/// Bound on any single call, so a wedged server becomes a failure row instead of a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(180);
/// A daemon whose resident memory passes this is killed: the machine is shared.
const KILL_AT: u64 = 3_000_000_000;
/// How often the guard samples the daemon's RSS.
const GUARD_EVERY: Duration = Duration::from_millis(50);
/// Sandboxes in the warm pool; the idle figures are taken once this many exist.
const POOL_SIZE: usize = 2;
/// How long to wait for the warm pool before taking the idle figures anyway.
const WARM_TIMEOUT: Duration = Duration::from_secs(30);

/// The settings every daemon gets, on top of a clean environment.
const SETTINGS: &[(&str, &str)] = &[
    ("PYTHON_DOCKER_MCP_LOG", "info"),
    ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true"),
    ("PYTHON_DOCKER_MCP_POOL_SIZE", "2"),
    ("PYTHON_DOCKER_MCP_TIMEOUT", "30s"),
    ("PYTHON_DOCKER_MCP_MAX_SESSIONS", "32"),
];

// ---------------------------------------------------------------------------------------
// Command line

struct Args {
    bins: Vec<PathBuf>,
    /// Sizes divided by 16 and a tenth of the load, for development.
    quick: bool,
    /// Case keys to run (`1`, `2`, `3`, `4`, `5a`, `5b`, `6`, `load`); empty: all.
    only: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        bins: Vec::new(),
        quick: false,
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match arg.as_str() {
            // cargo bench passes --bench to harness = false benches.
            "--bench" => {}
            "--quick" => a.quick = true,
            "--bin" => a.bins.push(PathBuf::from(value("--bin")?)),
            "--only" => a
                .only
                .extend(value("--only")?.split(',').map(|s| s.trim().to_string())),
            "-h" | "--help" => {
                println!(
                    "cargo bench --bench attacks -- [--bin PATH]... [--quick] \
                     [--only 1,2,3,4,5a,5b,6,load]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    if a.bins.is_empty() {
        a.bins.push(default_bin());
    }
    for bin in &a.bins {
        if !bin.is_file() {
            bail!(
                "no binary at {} (build it with `cargo build --release`, or pass --bin PATH)",
                bin.display()
            );
        }
    }
    Ok(a)
}

/// This crate's release binary, under the target dir cargo uses for this bench.
fn default_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release/python-docker-mcp")
}

// ---------------------------------------------------------------------------------------
// The cases

/// One attack: the cell that runs it, and what happens after it returned.
struct Case {
    key: &'static str,
    title: &'static str,
    code: String,
    /// Pause after the cell returned, before the follow-up call (background-thread cases).
    pause: Duration,
}

/// Write `data` to every descriptor the cell can open (one of them is the protocol's).
const EVERY_FD: &str = "def every_fd(data):\n    \
    for fd in map(int, os.listdir('/proc/self/fd')):\n        \
        try:\n            os.write(fd, data)\n        \
        except OSError:\n            pass\n";

fn cases(quick: bool) -> Vec<Case> {
    let scale = if quick { 16 } else { 1 };
    let every_fd = |body: String| format!("import os\n{EVERY_FD}{body}");
    vec![
        Case {
            key: "1",
            title: "3 GB without a newline, to every fd",
            code: every_fd(format!(
                "chunk = b'x' * (1 << 20)\nfor _ in range({}):\n    every_fd(chunk)\n",
                3072 / scale
            )),
            pause: Duration::ZERO,
        },
        Case {
            key: "2",
            title: "300 MiB of 64-byte junk lines, to every fd",
            code: every_fd(format!(
                "chunk = (b'j' * 63 + b'\\n') * 16384\nfor _ in range({}):\n    every_fd(chunk)\n",
                300 / scale
            )),
            pause: Duration::ZERO,
        },
        Case {
            key: "3",
            title: "1 MB of `x\\n` lines, to every fd",
            code: every_fd("every_fd(b'x\\n' * 500000)\n".into()),
            pause: Duration::ZERO,
        },
        Case {
            key: "4",
            title: "`pong` frames from a thread after the cell returned (2 s)",
            code: every_fd(
                "import threading\n\
                 def spam():\n    \
                     while True:\n        \
                         every_fd(b'{\"op\":\"pong\",\"id\":1}\\n')\n\
                 threading.Thread(target=spam, daemon=True).start()\n"
                    .into(),
            ),
            pause: Duration::from_secs(2),
        },
        Case {
            key: "5a",
            title: "`bytearray(3 * 1024**3)`",
            code: "b = bytearray(3 * 1024**3)\n".into(),
            pause: Duration::ZERO,
        },
        Case {
            key: "5b",
            title: "numpy `np.ones((40000, 40000))`",
            code: "import numpy as np\na = np.ones((40000, 40000))\n".into(),
            pause: Duration::ZERO,
        },
        Case {
            key: "6",
            title: "1 GB print (1 MiB `sys.stdout.write` × 1024)",
            code: format!(
                "import sys\nchunk = 'p' * (1 << 20)\nfor _ in range({}):\n    sys.stdout.write(chunk)\n",
                1024 / scale
            ),
            pause: Duration::ZERO,
        },
        // How long a fork bomb takes to be answered at the pids limit: the speed side of
        // tests/reliability.rs's fork-bomb case, which asserts only what happens.
        Case {
            key: "7",
            title: "fork bomb up to the pids limit",
            code: "import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(600)\n        os._exit(0)\n"
                .into(),
            pause: Duration::ZERO,
        },
    ]
}

// ---------------------------------------------------------------------------------------
// Results

/// What became of the case's session, from a follow-up call to it.
#[derive(Clone, Debug)]
enum SessionFate {
    /// The follow-up said "has ended".
    Ended,
    /// The follow-up was the first call to see the sandbox gone ("is gone: its sandbox was
    /// lost"): ended while idle, reported on the next use.
    EndedSeenLater,
    /// The follow-up answered `2`.
    Alive,
    /// Anything else (a different error, no answer, the daemon was gone).
    Other(String),
}

#[derive(Clone, Debug, Default)]
struct CaseRow {
    key: &'static str,
    title: &'static str,
    /// The daemon was killed for passing `KILL_AT`.
    killed: bool,
    /// The daemon did not answer within `CALL_TIMEOUT` and was replaced.
    wedged: bool,
    /// The daemon's idle RSS (the daemon the case ran on).
    idle_rss: u64,
    /// Peak RSS during the case (`VmHWM` after a reset, or the guard's samples).
    peak: u64,
    /// `VmHWM` since the daemon started, after the case.
    hwm_total: u64,
    rss_after: u64,
    log_growth: u64,
    session: Option<SessionFate>,
    /// The attack call's wall time, ms.
    wall_ms: f64,
    /// What the attack call returned, in a few words.
    reply: String,
    /// Why the bystander session did not answer `42` (None: it did).
    bystander: Option<String>,
}

impl CaseRow {
    fn over_idle(&self) -> String {
        if self.killed {
            return format!("**killed at {} GB**", KILL_AT / 1_000_000_000);
        }
        fmt_signed_mib(self.peak as i64 - self.idle_rss as i64)
    }

    fn session_cell(&self) -> String {
        match &self.session {
            _ if self.killed => "daemon killed".into(),
            Some(SessionFate::Ended) => "ended".into(),
            Some(SessionFate::EndedSeenLater) => "ended (seen by the follow-up)".into(),
            Some(SessionFate::Alive) => "survived".into(),
            Some(SessionFate::Other(why)) => format!("? {}", first_line(why, 80)),
            None => "—".into(),
        }
    }

    fn bystander_cell(&self) -> String {
        match &self.bystander {
            _ if self.killed => "daemon killed".into(),
            None => "answers".into(),
            Some(why) => format!("**fails**: {}", first_line(why, 80)),
        }
    }
}

#[derive(Default, Clone)]
struct Latencies {
    ms: Vec<f64>,
    failures: Vec<String>,
}

impl Latencies {
    fn pct(&self, p: f64) -> Option<f64> {
        let mut v = self.ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }
}

#[derive(Default, Clone)]
struct LoadRow {
    what: String,
    wall_ms: f64,
    lat: Latencies,
    /// Peak RSS during the phase (`VmHWM` after a reset).
    peak: u64,
    idle_rss: u64,
    note: String,
}

impl LoadRow {
    fn rate(&self) -> f64 {
        self.lat.ms.len() as f64 / (self.wall_ms / 1000.0)
    }
}

struct BinResults {
    bin: PathBuf,
    idle_rss: u64,
    idle_hwm: u64,
    cases: Vec<CaseRow>,
    load: Vec<LoadRow>,
    notes: Vec<String>,
    /// Daemons started for this binary (each a pid whose leftovers were removed).
    daemons: usize,
}

// ---------------------------------------------------------------------------------------
// The daemon

/// The memory guard's findings, shared with its sampling task.
#[derive(Default)]
struct Guard {
    /// Highest RSS sampled since the last `take_peak`.
    sampled_peak: AtomicU64,
    /// The guard killed the daemon for passing `KILL_AT`.
    killed: AtomicBool,
}

/// One daemon under test, the client connected to it, and its memory guard.
struct GuardedDaemon {
    client: Option<Client>,
    child: tokio::process::Child,
    pid: u32,
    home: PathBuf,
    log: PathBuf,
    idle_rss: u64,
    idle_hwm: u64,
    guard: Arc<Guard>,
    /// Samples the daemon's RSS and kills it past `KILL_AT`; aborted on drop.
    guard_task: tokio::task::JoinHandle<()>,
    bystander: Option<String>,
}

impl GuardedDaemon {
    async fn start(bin: &Path, log: PathBuf, scratch: &Path) -> anyhow::Result<GuardedDaemon> {
        let home = scratch.join(format!(
            "home-{}",
            START.get_or_init(Instant::now).elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&home)?;
        let mut cmd = daemon::command(bin, &home);
        for (k, v) in SETTINGS {
            cmd.env(k, v);
        }
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id().context("the daemon's pid")?;
        let guard = Arc::new(Guard::default());
        let guard_task = tokio::spawn(watch(pid, guard.clone()));
        let mut d = GuardedDaemon {
            client: None,
            child,
            pid,
            home,
            log,
            idle_rss: 0,
            idle_hwm: 0,
            guard,
            guard_task,
            bystander: None,
        };
        d.client = Some(daemon::connect_stdio(&mut d.child, CALL_TIMEOUT).await?);
        // Idle: the pool is warm (or WARM_TIMEOUT passed), then a second to settle.
        let deadline = Instant::now() + WARM_TIMEOUT;
        while containers_of(pid).await.len() < POOL_SIZE && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.idle_rss = proc_status(pid, "VmRSS");
        d.idle_hwm = proc_status(pid, "VmHWM");
        progress!(
            "  daemon {pid} up: idle RSS {} / HWM {}",
            fmt_mib(d.idle_rss),
            fmt_mib(d.idle_hwm)
        );
        Ok(d)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the client is open")
    }

    fn alive(&self) -> bool {
        !self.guard.killed.load(Ordering::SeqCst) && process_alive(self.pid)
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Reset the peak (`VmHWM`) to the current RSS, and the guard's sampled peak.
    fn reset_peak(&self) -> bool {
        self.guard.sampled_peak.store(0, Ordering::SeqCst);
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    /// The peak since `reset_peak`: `VmHWM` when that could be reset, else the samples.
    fn peak(&self, hwm_reset: bool) -> u64 {
        let sampled = self.guard.sampled_peak.load(Ordering::SeqCst);
        if hwm_reset && process_alive(self.pid) {
            proc_status(self.pid, "VmHWM").max(sampled)
        } else {
            sampled
        }
    }

    /// A session to check that others are still served: `bystander = 41` (made anew when
    /// the last check failed).
    async fn bystander(&mut self) -> Result<String, String> {
        if let Some(id) = &self.bystander {
            return Ok(id.clone());
        }
        let r = call(
            self.client(),
            "execute-persistent",
            json!({"code": "bystander = 41"}),
        )
        .await?;
        let id = session_of(&r).ok_or_else(|| format!("no session: {}", summary(&r)))?;
        self.bystander = Some(id.clone());
        Ok(id)
    }

    async fn check_bystander(&mut self) -> Result<(), String> {
        let id = self.bystander().await?;
        let r = call(
            self.client(),
            "execute-persistent",
            json!({"code": "bystander + 1", "session_id": id}),
        )
        .await;
        let ok = matches!(&r, Ok(r) if value_of(r).as_deref() == Some("42"));
        if ok {
            return Ok(());
        }
        self.bystander = None;
        Err(match r {
            Ok(r) => summary(&r),
            Err(e) => e,
        })
    }

    /// Close stdin, wait for the daemon to exit (then kill it), remove what carries its
    /// pid label.
    async fn stop(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), client.cancel()).await;
        }
        if tokio::time::timeout(Duration::from_secs(25), self.child.wait())
            .await
            .is_err()
        {
            progress!("  daemon {} did not exit within 25 s: killing it", self.pid);
            let _ = self.child.kill().await;
        }
        let removed = remove_leftovers(self.pid).await;
        if removed > 0 {
            progress!(
                "  removed {removed} container(s)/volume(s) left by {}",
                self.pid
            );
        }
    }
}

impl Drop for GuardedDaemon {
    fn drop(&mut self) {
        self.guard_task.abort();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Sample the daemon's RSS until it exits; kill it past `KILL_AT`.
async fn watch(pid: u32, guard: Arc<Guard>) {
    loop {
        tokio::time::sleep(GUARD_EVERY).await;
        if !process_alive(pid) {
            return;
        }
        let rss = proc_status(pid, "VmRSS");
        guard.sampled_peak.fetch_max(rss, Ordering::SeqCst);
        if rss > KILL_AT {
            guard.killed.store(true, Ordering::SeqCst);
            progress!(
                "  daemon {pid} passed {} GB ({}): killing it",
                KILL_AT / 1_000_000_000,
                fmt_mib(rss)
            );
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Calls and results

async fn call(client: &Client, tool: &'static str, args: Value) -> Result<CallToolResult, String> {
    let params = CallToolRequestParams::new(tool)
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    tokio::time::timeout(CALL_TIMEOUT, client.call_tool(params))
        .await
        .map_err(|_| format!("{tool}: no answer within {} s", CALL_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{tool}: {e}"))
}

fn is_timeout(e: &str) -> bool {
    e.contains("no answer within")
}

fn text_of(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn field<'a>(r: &'a CallToolResult, name: &str) -> Option<&'a Value> {
    r.structured_content.as_ref()?.get(name)
}

fn value_of(r: &CallToolResult) -> Option<String> {
    field(r, "value")?.as_str().map(str::to_string)
}

fn session_of(r: &CallToolResult) -> Option<String> {
    field(r, "session_id")?.as_str().map(str::to_string)
}

/// A result in a few words: the exception, time-out or lost sandbox, or the value.
fn summary(r: &CallToolResult) -> String {
    let flag = |name| field(r, name).and_then(Value::as_bool) == Some(true);
    let mut parts = Vec::new();
    if let Some(t) = field(r, "error")
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
    {
        parts.push(t.to_string());
    }
    if flag("timed_out") {
        parts.push("timed out".into());
    }
    if flag("sandbox_lost") {
        parts.push("sandbox lost".into());
    }
    for (name, what) in [("stdout_dropped", "stdout"), ("stderr_dropped", "stderr")] {
        if let Some(n) = field(r, name).and_then(Value::as_u64).filter(|n| *n > 0) {
            parts.push(format!("{what} dropped {}", fmt_bytes(n)));
        }
    }
    if parts.is_empty() {
        if r.is_error == Some(true) {
            parts.push(format!("error: {}", first_line(&text_of(r), 100)));
        } else {
            parts.push(format!(
                "ok{}",
                value_of(r).map(|v| format!(" ({v})")).unwrap_or_default()
            ));
        }
    } else if let Some(notice) = field(r, "notice").and_then(Value::as_str) {
        parts.push(format!("“{}”", first_line(notice, 100)));
    } else if r.is_error == Some(true) && field(r, "error").is_none() {
        parts.push(format!("“{}”", first_line(&text_of(r), 100)));
    }
    parts.join(", ")
}

// ---------------------------------------------------------------------------------------
// One binary

/// The daemon the next case runs on: the current one if it is alive and answering.
async fn ensure_daemon(
    slot: &mut Option<GuardedDaemon>,
    bin: &Path,
    logs: &Path,
    scratch: &Path,
    tag: &str,
    started: &mut usize,
) -> anyhow::Result<()> {
    if let Some(d) = slot.as_ref() {
        if d.alive() {
            return Ok(());
        }
    }
    if let Some(d) = slot.take() {
        d.stop().await;
    }
    *started += 1;
    let log = logs.join(format!("{tag}-{}.stderr.log", started));
    *slot = Some(GuardedDaemon::start(bin, log, scratch).await?);
    Ok(())
}

async fn run_case(d: &mut GuardedDaemon, case: &Case) -> CaseRow {
    let mut row = CaseRow {
        key: case.key,
        title: case.title,
        idle_rss: d.idle_rss,
        ..CaseRow::default()
    };
    // The case's own session, made before the attack so its id is known whatever happens.
    let session = match call(d.client(), "execute-persistent", json!({"code": "x = 0"})).await {
        Ok(r) => session_of(&r).ok_or_else(|| summary(&r)),
        Err(e) => Err(e),
    };
    let session = match session {
        Ok(id) => id,
        Err(why) => {
            row.reply = format!("could not start a session: {why}");
            row.wedged = is_timeout(&why);
            row.bystander = d.check_bystander().await.err();
            return row;
        }
    };
    let hwm_reset = d.reset_peak();
    let log_before = d.log_len();
    let t = Instant::now();
    let attack = unless_dead(
        d,
        call(
            d.client(),
            "execute-persistent",
            json!({"code": case.code, "session_id": session}),
        ),
    )
    .await;
    row.wall_ms = t.elapsed().as_secs_f64() * 1000.0;
    row.reply = match &attack {
        Ok(r) => summary(r),
        Err(e) => {
            row.wedged = is_timeout(e);
            first_line(e, 120)
        }
    };
    if !case.pause.is_zero() {
        tokio::time::sleep(case.pause).await;
    }
    if d.alive() && !row.wedged {
        let follow = call(
            d.client(),
            "execute-persistent",
            json!({"code": "1 + 1", "session_id": session}),
        )
        .await;
        row.session = Some(match follow {
            Ok(r) if text_of(&r).contains("has ended") => SessionFate::Ended,
            Ok(r) if text_of(&r).contains("is gone") => SessionFate::EndedSeenLater,
            Ok(r) if value_of(&r).as_deref() == Some("2") => SessionFate::Alive,
            Ok(r) => SessionFate::Other(summary(&r)),
            Err(e) => {
                row.wedged = is_timeout(&e);
                SessionFate::Other(e)
            }
        });
    }
    if d.alive() && !row.wedged {
        row.bystander = d.check_bystander().await.err();
        if let Some(e) = &row.bystander {
            row.wedged = is_timeout(e);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    row.killed = d.guard.killed.load(Ordering::SeqCst);
    row.peak = d.peak(hwm_reset);
    row.hwm_total = proc_status(d.pid, "VmHWM");
    row.rss_after = proc_status(d.pid, "VmRSS");
    row.log_growth = d.log_len().saturating_sub(log_before);
    // A session that survived is closed, so the next case starts from the same place
    // (and a spamming thread stops).
    if matches!(row.session, Some(SessionFate::Alive)) && d.alive() && !row.wedged {
        let _ = call(
            d.client(),
            "cleanup-session",
            json!({"session_id": session}),
        )
        .await;
    }
    progress!(
        "  case {}: peak over idle {}, log +{}, session {}, bystander {}, {:.1} s: {}",
        row.key,
        row.over_idle(),
        fmt_bytes(row.log_growth),
        row.session_cell(),
        row.bystander_cell(),
        row.wall_ms / 1000.0,
        row.reply
    );
    row
}

/// `fut`, or an error as soon as the daemon is gone (killed by the guard, or crashed), so a
/// call to a dead daemon does not wait for the client to notice.
async fn unless_dead<T>(
    d: &GuardedDaemon,
    fut: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let pid = d.pid;
    let guard = d.guard.clone();
    let dead = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if guard.killed.load(Ordering::SeqCst) || !process_alive(pid) {
                return;
            }
        }
    };
    tokio::select! {
        r = fut => r,
        _ = dead => Err(format!("the daemon ({pid}) is gone")),
    }
}

async fn run_load(d: &GuardedDaemon, quick: bool) -> Vec<LoadRow> {
    let (runs, sessions, calls) = if quick { (50, 4, 20) } else { (500, 16, 100) };
    let mut rows = Vec::new();

    // Transient runs, one at a time, back to back.
    let hwm_reset = d.reset_peak();
    let mut row = LoadRow {
        what: format!("{runs} `execute-transient` `1+1`, back to back"),
        idle_rss: d.idle_rss,
        ..LoadRow::default()
    };
    progress!("  load: {}", row.what);
    let t = Instant::now();
    for _ in 0..runs {
        let c = Instant::now();
        match call(d.client(), "execute-transient", json!({"code": "1+1"})).await {
            Ok(r) if value_of(&r).as_deref() == Some("2") => {
                row.lat.ms.push(c.elapsed().as_secs_f64() * 1000.0)
            }
            Ok(r) => row.lat.failures.push(summary(&r)),
            Err(e) => {
                row.lat.failures.push(e);
                if !d.alive() {
                    break;
                }
            }
        }
    }
    row.wall_ms = t.elapsed().as_secs_f64() * 1000.0;
    row.peak = d.peak(hwm_reset);
    rows.push(row);

    // Sessions in parallel, each a stream of calls, each checked at the end.
    let hwm_reset = d.reset_peak();
    let mut row = LoadRow {
        what: format!("{sessions} sessions × {calls} `execute-persistent` calls, in parallel"),
        idle_rss: d.idle_rss,
        ..LoadRow::default()
    };
    progress!("  load: {}", row.what);
    const STEP: &str = "i = globals().get('i', 0) + 1";
    let client = d.client();
    let t = Instant::now();
    let streams = (0..sessions).map(|_| async move {
        let mut lat = Latencies::default();
        let mut id: Option<String> = None;
        for _ in 0..calls {
            let args = match &id {
                Some(s) => json!({"code": STEP, "session_id": s}),
                None => json!({"code": STEP}),
            };
            let c = Instant::now();
            match call(client, "execute-persistent", args).await {
                Ok(r) if r.is_error != Some(true) => {
                    lat.ms.push(c.elapsed().as_secs_f64() * 1000.0);
                    if id.is_none() {
                        id = session_of(&r);
                    }
                }
                Ok(r) => lat.failures.push(summary(&r)),
                Err(e) => lat.failures.push(e),
            }
        }
        (lat, id)
    });
    let done = futures::future::join_all(streams).await;
    row.wall_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut wrong = 0;
    for (lat, id) in done {
        row.lat.ms.extend(lat.ms);
        row.lat.failures.extend(lat.failures);
        let Some(id) = id else {
            wrong += 1;
            continue;
        };
        match call(
            client,
            "execute-persistent",
            json!({"code": "i", "session_id": id}),
        )
        .await
        {
            Ok(r) if value_of(&r) == Some(calls.to_string()) => {}
            Ok(r) => {
                wrong += 1;
                row.lat.failures.push(format!("final i: {}", summary(&r)));
            }
            Err(e) => {
                wrong += 1;
                row.lat.failures.push(format!("final i: {e}"));
            }
        }
        let _ = call(client, "cleanup-session", json!({"session_id": id})).await;
    }
    row.note = if wrong == 0 {
        format!("every session ended at i = {calls}")
    } else {
        format!("**{wrong} session(s) did not end at i = {calls}**")
    };
    row.peak = d.peak(hwm_reset);
    rows.push(row);
    for r in &rows {
        progress!(
            "    {}: {:.1} s, {:.1}/s, p50 {} p90 {}, {} failed, peak over idle {}",
            r.what,
            r.wall_ms / 1000.0,
            r.rate(),
            r.lat.pct(50.0).map(fmt_ms).unwrap_or_default(),
            r.lat.pct(90.0).map(fmt_ms).unwrap_or_default(),
            r.lat.failures.len(),
            fmt_signed_mib(r.peak as i64 - r.idle_rss as i64)
        );
    }
    rows
}

async fn bench_binary(
    bin: &Path,
    tag: &str,
    args: &Args,
    logs: &Path,
    scratch: &Path,
) -> anyhow::Result<BinResults> {
    let wanted = |key: &str| args.only.is_empty() || args.only.iter().any(|k| k == key);
    let mut r = BinResults {
        bin: bin.to_path_buf(),
        idle_rss: 0,
        idle_hwm: 0,
        cases: Vec::new(),
        load: Vec::new(),
        notes: Vec::new(),
        daemons: 0,
    };
    let mut slot: Option<GuardedDaemon> = None;
    ensure_daemon(&mut slot, bin, logs, scratch, tag, &mut r.daemons).await?;
    if let Some(d) = &slot {
        r.idle_rss = d.idle_rss;
        r.idle_hwm = d.idle_hwm;
    }
    for case in cases(args.quick).iter().filter(|c| wanted(c.key)) {
        ensure_daemon(&mut slot, bin, logs, scratch, tag, &mut r.daemons).await?;
        let d = slot.as_mut().expect("a daemon");
        progress!("[{tag}] case {}: {}", case.key, case.title);
        let row = run_case(d, case).await;
        if row.wedged && d.alive() {
            progress!("  daemon {} wedged: replacing it", d.pid);
            r.notes.push(format!(
                "Case {}: the daemon stopped answering within {} s and was replaced.",
                row.key,
                CALL_TIMEOUT.as_secs()
            ));
            if let Some(d) = slot.take() {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &d.pid.to_string()])
                    .status();
                d.stop().await;
            }
        }
        r.cases.push(row);
    }
    if let Some(d) = slot.take() {
        d.stop().await;
    }
    if wanted("load") {
        progress!("[{tag}] load, on a fresh daemon");
        let mut fresh = None;
        ensure_daemon(&mut fresh, bin, logs, scratch, tag, &mut r.daemons).await?;
        let d = fresh.take().expect("a daemon");
        r.load = run_load(&d, args.quick).await;
        d.stop().await;
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// Report

fn fmt_signed_mib(b: i64) -> String {
    let m = b as f64 / MIB as f64;
    if m.abs() >= 1024.0 {
        format!("{:+.2} GiB", m / 1024.0)
    } else {
        format!("{m:+.1} MiB")
    }
}

fn fmt_bytes(b: u64) -> String {
    if b >= MIB {
        format!("{:.1} MiB", b as f64 / MIB as f64)
    } else if b >= 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn first_line(s: &str, max: usize) -> String {
    let line = s
        .trim()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .replace('|', "\\|");
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line
    }
}

fn binary_table(i: usize, r: &BinResults) -> String {
    let mut s = format!(
        "### Binary {}: `{}`\n\nIdle (pool of {POOL_SIZE} warm): VmRSS {}, VmHWM {}. \
         Daemons started: {}.\n\n",
        i + 1,
        r.bin.display(),
        fmt_mib(r.idle_rss),
        fmt_mib(r.idle_hwm),
        r.daemons
    );
    s += "| Case | Peak RSS over idle | RSS after | Log growth | Session | Bystander | Wall | The attack call returned |\n";
    s += "|---|---|---|---|---|---|---|---|\n";
    for c in &r.cases {
        s += &format!(
            "| {}. {} | {} | {} | {} | {} | {} | {:.1} s | {} |\n",
            c.key,
            c.title,
            c.over_idle(),
            if c.killed {
                "—".into()
            } else {
                fmt_mib(c.rss_after)
            },
            fmt_bytes(c.log_growth),
            c.session_cell(),
            c.bystander_cell(),
            c.wall_ms / 1000.0,
            first_line(&c.reply, 140)
        );
    }
    if !r.load.is_empty() {
        s +=
            "\n| Load (fresh daemon) | Wall | Rate | p50 / p90 | Failed | Peak RSS over idle | |\n";
        s += "|---|---|---|---|---|---|---|\n";
        for l in &r.load {
            s += &format!(
                "| {} | {:.1} s | {:.1} calls/s | {} / {} | {} | {} | {} |\n",
                l.what,
                l.wall_ms / 1000.0,
                l.rate(),
                l.lat.pct(50.0).map(fmt_ms).unwrap_or("—".into()),
                l.lat.pct(90.0).map(fmt_ms).unwrap_or("—".into()),
                l.lat.failures.len(),
                fmt_signed_mib(l.peak as i64 - l.idle_rss as i64),
                l.note
            );
        }
        for l in &r.load {
            for f in l.lat.failures.iter().take(3) {
                s += &format!("\n- {}: failure: {}", l.what, first_line(f, 200));
            }
        }
        s += "\n";
    }
    for n in &r.notes {
        s += &format!("\n- {n}");
    }
    s += "\n";
    s
}

fn comparison(all: &[BinResults]) -> String {
    let mut s = String::from("### Comparison\n\n| Case |");
    let mut rule = String::from("|---|");
    for i in 0..all.len() {
        s += &format!(
            " {0}: peak over idle | {0}: log growth | {0}: session |",
            i + 1
        );
        rule += "---|---|---|";
    }
    s += "\n";
    s += &rule;
    s += "\n| idle RSS |";
    for r in all {
        s += &format!(" {} | | |", fmt_mib(r.idle_rss));
    }
    s += "\n";
    let keys: Vec<(&str, &str)> = all[0].cases.iter().map(|c| (c.key, c.title)).collect();
    for (key, title) in keys {
        s += &format!("| {key}. {title} |");
        for r in all {
            match r.cases.iter().find(|c| c.key == key) {
                Some(c) => {
                    s += &format!(
                        " {} | {} | {} |",
                        c.over_idle(),
                        fmt_bytes(c.log_growth),
                        c.session_cell()
                    )
                }
                None => s += " — | — | — |",
            }
        }
        s += "\n";
    }
    for (n, what) in ["500 transient runs", "16 × 100 in parallel"]
        .iter()
        .enumerate()
    {
        if all.iter().all(|r| r.load.len() > n) {
            s += &format!("| load: {what} |");
            for r in all {
                let l = &r.load[n];
                s += &format!(
                    " {} | {:.1} calls/s | p50 {} |",
                    fmt_signed_mib(l.peak as i64 - l.idle_rss as i64),
                    l.rate(),
                    l.lat.pct(50.0).map(fmt_ms).unwrap_or("—".into())
                );
            }
            s += "\n";
        }
    }
    s += "\nColumns by binary: ";
    s += &all
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{} = `{}`", i + 1, r.bin.display()))
        .collect::<Vec<_>>()
        .join(", ");
    s += "\n";
    s
}

// ---------------------------------------------------------------------------------------
// Machine and Docker

async fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = proc_meminfo("MemTotal");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let engine = docker(&["version", "--format", "{{.Server.Version}}"])
        .await
        .unwrap_or_default();
    format!(
        "{cpus} CPUs, {:.1} GiB RAM, kernel {}, Docker engine {}",
        mem as f64 / (1024.0 * MIB as f64),
        kernel.trim(),
        engine.trim()
    )
}

fn proc_meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Load average and the root filesystem's free space.
async fn load() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let df = std::process::Command::new("df")
        .args(["-h", "--output=avail", "/"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    let running = docker_lines(&["ps", "-q"]).await.len();
    format!(
        "load average {}, {running} container(s) running, {df} free on /",
        avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

// ---------------------------------------------------------------------------------------

async fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let started = *START.get_or_init(Instant::now);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out_dir = root.join("target/bench-attacks");
    std::fs::create_dir_all(&out_dir)?;
    for entry in std::fs::read_dir(&out_dir)?.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".stderr.log") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let scratch = std::env::temp_dir().join(format!("pdm-bench-attacks-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let machine = machine().await;
    let before = load().await;
    progress!("{machine}; {before}");

    let mut all = Vec::new();
    for (i, bin) in args.bins.iter().enumerate() {
        let tag = format!("bin{}", i + 1);
        progress!("[{tag}] {}", bin.display());
        all.push(bench_binary(bin, &tag, &args, &out_dir, &scratch).await?);
    }

    let after = load().await;
    let mut text = format!(
        "## Hostile sandboxes ({})\n\n- Machine: {machine}\n- Before: {before}\n- After: {after}\n\
         - Settings: pool on, size {POOL_SIZE}; time-out 30 s; 32 sessions; log level info\n\
         - Run time: {:.0} s{}\n\n",
        if args.quick { "quick run" } else { "full run" },
        started.elapsed().as_secs_f64(),
        if args.only.is_empty() {
            String::new()
        } else {
            format!("; only {}", args.only.join(","))
        }
    );
    for (i, r) in all.iter().enumerate() {
        text += &binary_table(i, r);
        text += "\n";
    }
    if all.len() > 1 {
        text += &comparison(&all);
    }
    println!("\n{text}");
    std::fs::write(out_dir.join("last-run.md"), &text)?;
    progress!(
        "(also written to {})",
        out_dir.join("last-run.md").display()
    );
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn main() {
    if !common::under_cargo_bench("attacks", "-- --quick") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("attacks bench: {e:#}");
        std::process::exit(1);
    }
}
