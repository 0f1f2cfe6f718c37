//! A team on one daemon: 16 clients over streamable HTTP, each with its own token, two
//! Python sessions and a stream of transient runs, all at once (issue 9, "Measured"); then
//! the same workload over stdio, for comparison.
//!
//! ```text
//! cargo build --release && cargo bench --bench http          # full run, about 2-3 min here
//! cargo bench --bench http -- --calls 20 --transient 3       # a shorter run
//! cargo bench --bench http -- --only http                    # leave stdio out
//! cargo bench --bench http -- --bin PATH                     # another binary
//! ```
//!
//! **Workload**, per transport: C clients (16). Each client has two session streams, each
//! one Python session doing N `execute-persistent` calls (100) and then `cleanup-session`,
//! and one transient stream of T `execute-transient` runs (10), one after another. All
//! 3 × C streams start together. Every session checks at its last call that it saw all N
//! of its own calls (`i == N`); every transient run checks its value.
//!
//! **HTTP**: one daemon, `serve --http 127.0.0.1:0`, a tokens file with C names
//! (`client01` ...); each client is one rmcp streamable HTTP client with its own bearer
//! token, shared by its three streams. `session.max_sessions` is 2 × C and
//! `session.max_sessions_per_client` 2, so the 32 sessions fit exactly: the per-client
//! default would be a quarter of `max_sessions`.
//!
//! **Stdio**: one daemon, one rmcp client over its stdin/stdout, shared by the same 3 × C
//! streams. This is the comparable set-up: the same engine, pool, registry and sandbox
//! count, so the difference is the transport and the per-client bookkeeping. (16 stdio
//! daemons would compare 16 pools and 16 engines competing for 2 cores against one.)
//!
//! Both daemons: pool on with the default size (32), default limits, log level info to a
//! file under `target/bench-http/`. Before the load, once the pool is warm: the idle RSS
//! and container count. During: the peak RSS (`VmHWM`, reset through
//! `/proc/PID/clear_refs`, and a 50 ms sampler). After the clients cleaned up and (HTTP)
//! disconnected, and the pool refilled: RSS and containers again, and from the log the
//! Python sessions started and ended and (HTTP) the MCP sessions opened and closed. Then
//! (HTTP) every client opens two new sessions, to show its quota is free again.
//!
//! Runs only with `--bench` (which `cargo bench` passes): under `cargo test --all-targets`
//! it prints a note and passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::{json, Value};

#[path = "common/mod.rs"]
mod common;
use common::daemon::{self, Client};
use common::host::{
    containers_of, docker_lines, fmt_mib, proc_status, process_alive, remove_leftovers,
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

/// Bound on any single call, so a wedged server becomes a failure instead of a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(180);
/// How long to wait for the warm pool (before) and its refill (after).
const WARM_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the sampler reads the daemon's RSS.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The pool's default size (`docker.pool_size`): the idle container count.
const POOL_SIZE: usize = 32;
/// Our daemon's pid label (see src/sandbox.rs).
/// One session call: counts the calls this session saw, and returns the count.
const STEP: &str = "i = globals().get('i', 0) + 1\ni";
/// One transient run, and its value.
const TRANSIENT: (&str, &str) = ("sum(range(1000))", "499500");

// ---------------------------------------------------------------------------------------
// Command line

struct Args {
    bin: PathBuf,
    clients: usize,
    /// Calls per session.
    calls: usize,
    /// Transient runs per client.
    transient: usize,
    http: bool,
    stdio: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        bin: default_bin(),
        clients: 16,
        calls: 100,
        transient: 10,
        http: true,
        stdio: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| anyhow!("{name} needs a value"));
        let mut count = |name: &str| -> anyhow::Result<usize> {
            let v = value(name)?;
            match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => bail!("{name} takes a positive number, not {v}"),
            }
        };
        match arg.as_str() {
            // cargo bench passes --bench to harness = false benches.
            "--bench" => {}
            "--bin" => a.bin = PathBuf::from(value("--bin")?),
            "--clients" => a.clients = count("--clients")?,
            "--calls" => a.calls = count("--calls")?,
            "--transient" => a.transient = count("--transient")?,
            "--only" => match value("--only")?.as_str() {
                "http" => a.stdio = false,
                "stdio" => a.http = false,
                other => bail!("--only takes http or stdio, not {other}"),
            },
            "-h" | "--help" => {
                println!(
                    "cargo bench --bench http -- [--bin PATH] [--clients 16] [--calls 100] \
                     [--transient 10] [--only http|stdio]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    if !a.bin.is_file() {
        bail!(
            "no binary at {} (build it with `cargo build --release`, or pass --bin PATH)",
            a.bin.display()
        );
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
// The daemon

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Http,
    Stdio,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Http => "HTTP",
            Transport::Stdio => "stdio",
        }
    }
}

/// One daemon under test, its clients (one per token over HTTP; one over stdio), and the
/// RSS sampler.
struct SampledDaemon {
    transport: Transport,
    child: tokio::process::Child,
    pid: u32,
    home: PathBuf,
    log: PathBuf,
    /// `http://127.0.0.1:PORT/mcp` (HTTP only).
    url: Option<String>,
    /// Highest RSS sampled since the last [`SampledDaemon::reset_peak`].
    sampled_peak: Arc<AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

/// `client01 token...`, one per client.
fn tokens(clients: usize) -> Vec<(String, String)> {
    (1..=clients)
        .map(|i| {
            (
                format!("client{i:02}"),
                format!("bench-token-{i:02}-0123456789abcdef"),
            )
        })
        .collect()
}

impl SampledDaemon {
    async fn start(
        bin: &Path,
        transport: Transport,
        args: &Args,
        out: &Path,
        scratch: &Path,
    ) -> anyhow::Result<(SampledDaemon, Option<Client>)> {
        let home = scratch.join(format!("home-{}", transport.name()));
        std::fs::create_dir_all(&home)?;
        let log = out.join(format!("{}.stderr.log", transport.name()));
        let mut cmd = daemon::command(bin, &home);
        let max_sessions = (2 * args.clients).to_string();
        cmd.env("PYTHON_DOCKER_MCP_LOG", "info")
            .env("PYTHON_DOCKER_MCP_MAX_SESSIONS", &max_sessions)
            .stderr(Stdio::from(std::fs::File::create(&log)?));
        match transport {
            Transport::Http => {
                let file = scratch.join("tokens");
                let lines: String = tokens(args.clients)
                    .iter()
                    .map(|(name, token)| format!("{name} {token}\n"))
                    .collect();
                std::fs::write(&file, lines)?;
                cmd.env("PYTHON_DOCKER_MCP_TOKENS_FILE", &file)
                    .env("PYTHON_DOCKER_MCP_MAX_SESSIONS_PER_CLIENT", "2")
                    .args(["serve", "--http", "127.0.0.1:0"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null());
            }
            Transport::Stdio => {
                cmd.arg("serve")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped());
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id().context("the daemon's pid")?;
        let sampled_peak = Arc::new(AtomicU64::new(0));
        let sampler = tokio::spawn(sample(pid, sampled_peak.clone()));
        let (url, client) = match transport {
            Transport::Http => (Some(wait_for_url(&log, pid).await?), None),
            Transport::Stdio => (
                None,
                Some(daemon::connect_stdio(&mut child, CALL_TIMEOUT).await?),
            ),
        };
        let d = SampledDaemon {
            transport,
            child,
            pid,
            home,
            log,
            url,
            sampled_peak,
            sampler,
        };
        Ok((d, client))
    }

    /// An rmcp streamable HTTP client with this bearer token.
    async fn connect(&self, token: &str) -> anyhow::Result<Client> {
        let url = self.url.as_deref().context("not an HTTP daemon")?;
        daemon::connect_http(url, Some(token), CALL_TIMEOUT).await
    }

    fn rss(&self) -> u64 {
        proc_status(self.pid, "VmRSS")
    }

    /// Reset the peak (`VmHWM`) to the current RSS, and the sampled peak.
    fn reset_peak(&self) {
        self.sampled_peak.store(0, Ordering::SeqCst);
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }

    fn peak(&self) -> u64 {
        proc_status(self.pid, "VmHWM").max(self.sampled_peak.load(Ordering::SeqCst))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the pool holds `POOL_SIZE` containers again (or `WARM_TIMEOUT`), then a
    /// second to settle; the container count.
    async fn settle(&self) -> usize {
        let deadline = Instant::now() + WARM_TIMEOUT;
        loop {
            let n = containers_of(self.pid).await.len();
            if n == POOL_SIZE || Instant::now() > deadline {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return containers_of(self.pid).await.len();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM (HTTP) or closed stdin (stdio, done by dropping the client), wait for the
    /// exit, then remove anything left with this pid's label (counted: should be 0).
    async fn stop(mut self) -> usize {
        if self.transport == Transport::Http {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .is_err()
        {
            progress!("  daemon {} did not exit within 40 s: killing it", self.pid);
            let _ = self.child.kill().await;
        }
        remove_leftovers(self.pid).await
    }
}

impl Drop for SampledDaemon {
    fn drop(&mut self) {
        self.sampler.abort();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// The URL the HTTP daemon logs once it listens.
async fn wait_for_url(log: &Path, pid: u32) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(url) = text
            .lines()
            .find_map(|l| l.split("url=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
        {
            return Ok(url.to_string());
        }
        if Instant::now() > deadline || !process_alive(pid) {
            bail!("the HTTP daemon did not log its URL:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sample(pid: u32, peak: Arc<AtomicU64>) {
    while process_alive(pid) {
        peak.fetch_max(proc_status(pid, "VmRSS"), Ordering::SeqCst);
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

// ---------------------------------------------------------------------------------------
// The workload

/// Latencies by row label, and what went wrong.
#[derive(Default)]
struct Samples {
    ms: BTreeMap<&'static str, Vec<f64>>,
    failures: Vec<String>,
}

impl Samples {
    fn add(&mut self, other: Samples) {
        for (k, v) in other.ms {
            self.ms.entry(k).or_default().extend(v);
        }
        self.failures.extend(other.failures);
    }

    fn executions(&self) -> usize {
        self.ms
            .iter()
            .filter(|(k, _)| k.starts_with("execute-"))
            .map(|(_, v)| v.len())
            .sum()
    }
}

const NEW_SESSION: &str = "execute-persistent, first call (new session)";
const SESSION_CALL: &str = "execute-persistent, session call";
const TRANSIENT_RUN: &str = "execute-transient";
const CLEANUP: &str = "cleanup-session";

async fn call(client: &Client, tool: &'static str, args: Value) -> Result<CallToolResult, String> {
    let params = CallToolRequestParams::new(tool)
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    tokio::time::timeout(CALL_TIMEOUT, client.call_tool(params))
        .await
        .map_err(|_| format!("{tool}: no answer within {} s", CALL_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{tool}: {e}"))
}

fn text_of(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn value_of(r: &CallToolResult) -> Option<String> {
    r.structured_content
        .as_ref()?
        .get("value")?
        .as_str()
        .map(String::from)
}

fn session_of(r: &CallToolResult) -> Option<String> {
    let text = text_of(r);
    let rest = text.strip_prefix("Session ID: ")?;
    rest.split_whitespace().next().map(String::from)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(160).collect()
}

/// One session: `calls` steps, the last one checked, then cleanup. Its session id.
async fn session_stream(
    client: Arc<Client>,
    calls: usize,
    tag: String,
) -> (Samples, Option<String>) {
    let mut s = Samples::default();
    let mut id: Option<String> = None;
    for n in 1..=calls {
        let args = match &id {
            Some(id) => json!({"code": STEP, "session_id": id}),
            None => json!({"code": STEP}),
        };
        let label = if id.is_none() {
            NEW_SESSION
        } else {
            SESSION_CALL
        };
        let t = Instant::now();
        match call(&client, "execute-persistent", args).await {
            Ok(r) if r.is_error != Some(true) && value_of(&r) == Some(n.to_string()) => {
                s.ms.entry(label).or_default().push(ms_since(t));
                if id.is_none() {
                    id = session_of(&r);
                }
            }
            Ok(r) => {
                s.failures
                    .push(format!("{tag} call {n}: {}", first_line(&text_of(&r))));
                if id.is_none() {
                    return (s, None);
                }
            }
            Err(e) => s.failures.push(format!("{tag} call {n}: {e}")),
        }
    }
    if let Some(id) = &id {
        let t = Instant::now();
        match call(&client, "cleanup-session", json!({"session_id": id})).await {
            Ok(r) if r.is_error != Some(true) => s.ms.entry(CLEANUP).or_default().push(ms_since(t)),
            Ok(r) => s
                .failures
                .push(format!("{tag} cleanup: {}", first_line(&text_of(&r)))),
            Err(e) => s.failures.push(format!("{tag} cleanup: {e}")),
        }
    }
    (s, id)
}

/// `runs` transient runs, one after another, each checked.
async fn transient_stream(client: Arc<Client>, runs: usize, tag: String) -> Samples {
    let mut s = Samples::default();
    for n in 1..=runs {
        let t = Instant::now();
        match call(&client, "execute-transient", json!({"code": TRANSIENT.0})).await {
            Ok(r) if value_of(&r).as_deref() == Some(TRANSIENT.1) => {
                s.ms.entry(TRANSIENT_RUN).or_default().push(ms_since(t))
            }
            Ok(r) => s
                .failures
                .push(format!("{tag} transient {n}: {}", first_line(&text_of(&r)))),
            Err(e) => s.failures.push(format!("{tag} transient {n}: {e}")),
        }
    }
    s
}

/// Every client's three streams at once; the samples, the wall time, the session ids.
async fn workload(clients: &[Arc<Client>], args: &Args) -> (Samples, f64, Vec<String>) {
    let mut sessions = Vec::new();
    let mut transients = Vec::new();
    let t = Instant::now();
    for (i, client) in clients.iter().enumerate() {
        for k in 0..2 {
            sessions.push(tokio::spawn(session_stream(
                client.clone(),
                args.calls,
                format!("client {} session {k}", i + 1),
            )));
        }
        transients.push(tokio::spawn(transient_stream(
            client.clone(),
            args.transient,
            format!("client {}", i + 1),
        )));
    }
    let mut all = Samples::default();
    let mut ids = Vec::new();
    for h in sessions {
        match h.await {
            Ok((s, id)) => {
                all.add(s);
                ids.extend(id);
            }
            Err(e) => all.failures.push(format!("a session stream panicked: {e}")),
        }
    }
    for h in transients {
        match h.await {
            Ok(s) => all.add(s),
            Err(e) => all
                .failures
                .push(format!("a transient stream panicked: {e}")),
        }
    }
    (all, ms_since(t), ids)
}

// ---------------------------------------------------------------------------------------
// One transport

#[derive(Default)]
struct Outcome {
    transport: &'static str,
    idle_rss: u64,
    idle_containers: usize,
    peak_rss: u64,
    after_rss: u64,
    after_containers: usize,
    wall_ms: f64,
    samples: Samples,
    /// Python sessions started and ended, from the log.
    py_sessions: (usize, usize),
    /// MCP sessions created and finished, from the log (HTTP).
    mcp_sessions: Option<(usize, usize)>,
    /// Ended session ids a fresh client still reached (should be 0).
    reachable_after: usize,
    /// Clients whose two new sessions after the load were both refused or failed.
    quota_after: Option<String>,
    left_over: usize,
}

async fn run_transport(
    transport: Transport,
    args: &Args,
    out: &Path,
    scratch: &Path,
) -> anyhow::Result<Outcome> {
    progress!("[{}] starting the daemon", transport.name());
    let (d, stdio_client) = SampledDaemon::start(&args.bin, transport, args, out, scratch).await?;
    let mut o = Outcome {
        transport: transport.name(),
        ..Outcome::default()
    };
    o.idle_containers = d.settle().await;
    o.idle_rss = d.rss();
    progress!(
        "[{}] daemon {} idle: {} containers, RSS {}",
        transport.name(),
        d.pid,
        o.idle_containers,
        fmt_mib(o.idle_rss)
    );

    let clients: Vec<Arc<Client>> = match stdio_client {
        Some(c) => vec![Arc::new(c)],
        None => {
            let mut v = Vec::new();
            for (_, token) in tokens(args.clients) {
                v.push(Arc::new(d.connect(&token).await?));
            }
            v
        }
    };
    // Over stdio the C callers share the one client.
    let callers: Vec<Arc<Client>> = (0..args.clients)
        .map(|i| clients[i % clients.len()].clone())
        .collect();
    progress!(
        "[{}] {} clients × (2 sessions × {} calls + {} transient runs), all at once",
        transport.name(),
        args.clients,
        args.calls,
        args.transient
    );
    d.reset_peak();
    let (samples, wall_ms, ids) = workload(&callers, args).await;
    o.peak_rss = d.peak();
    o.wall_ms = wall_ms;
    o.samples = samples;
    progress!(
        "[{}] done in {:.1} s: {} executions, {:.0}/s, {} failures, peak RSS {}",
        transport.name(),
        wall_ms / 1000.0,
        o.samples.executions(),
        o.samples.executions() as f64 / (wall_ms / 1000.0),
        o.samples.failures.len(),
        fmt_mib(o.peak_rss)
    );
    for f in o.samples.failures.iter().take(5) {
        progress!("  failure: {f}");
    }
    drop(callers);

    // The clients disconnect (HTTP); the stdio client has to stay, or the daemon exits.
    let stdio_client = match transport {
        Transport::Http => {
            for c in clients {
                if let Ok(c) = Arc::try_unwrap(c) {
                    let _ = tokio::time::timeout(Duration::from_secs(10), c.cancel()).await;
                }
            }
            None
        }
        Transport::Stdio => clients.into_iter().next(),
    };
    read_after_load(&d, &mut o).await;
    progress!(
        "[{}] after: {} containers, RSS {}, Python sessions started/ended {:?}, MCP sessions {:?}",
        transport.name(),
        o.after_containers,
        fmt_mib(o.after_rss),
        o.py_sessions,
        o.mcp_sessions
    );

    // Ended sessions stay ended, and (HTTP) every client's quota is free again.
    match transport {
        Transport::Http => {
            let first = d.connect(&tokens(args.clients)[0].1).await?;
            o.reachable_after = count_reachable(&first, &ids).await;
            let _ = first.cancel().await;
            o.quota_after = Some(quota_check(&d, args).await);
        }
        Transport::Stdio => {
            if let Some(c) = &stdio_client {
                o.reachable_after = count_reachable(c, &ids).await;
            }
        }
    }
    if let Some(c) = stdio_client.and_then(|c| Arc::try_unwrap(c).ok()) {
        let _ = tokio::time::timeout(Duration::from_secs(10), c.cancel()).await;
    }
    o.left_over = d.stop().await;
    Ok(o)
}

/// After the load, once the pool refilled: containers, RSS, and from the log the Python
/// sessions started and ended and (HTTP) the MCP sessions opened and closed.
async fn read_after_load(d: &SampledDaemon, o: &mut Outcome) {
    o.after_containers = d.settle().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    o.after_rss = d.rss();
    let log = d.log_text();
    o.py_sessions = (
        log.matches("session started").count(),
        log.matches("session ended").count(),
    );
    if d.transport == Transport::Http {
        o.mcp_sessions = Some((
            log.matches("create new session").count(),
            log.matches("serve finished").count(),
        ));
    }
}

/// How many of the ended sessions `ids` still answer `list-variables` (should be none).
async fn count_reachable(client: &Client, ids: &[String]) -> usize {
    let mut reachable = 0;
    for id in ids {
        let r = call(client, "list-variables", json!({"session_id": id})).await;
        if matches!(&r, Ok(r) if r.is_error != Some(true)) {
            reachable += 1;
        }
    }
    reachable
}

/// Every HTTP client opens two new sessions again: its quota is free after the load.
async fn quota_check(d: &SampledDaemon, args: &Args) -> String {
    let checks = tokens(args.clients)
        .into_iter()
        .map(|(name, token)| async move {
            let c = d
                .connect(&token)
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            let mut made = 0;
            for _ in 0..2 {
                let r = call(&c, "execute-persistent", json!({"code": "1"})).await;
                if let Some(id) = r.ok().as_ref().and_then(session_of) {
                    made += 1;
                    let _ = call(&c, "cleanup-session", json!({"session_id": id})).await;
                }
            }
            let _ = c.cancel().await;
            if made == 2 {
                Ok(())
            } else {
                Err(format!("{name}: {made} of 2 new sessions"))
            }
        });
    let bad: Vec<String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if bad.is_empty() {
        format!("all {} clients opened 2 new sessions", args.clients)
    } else {
        format!("**{}**", bad.join("; "))
    }
}

// ---------------------------------------------------------------------------------------
// Report

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of unsorted samples.
fn pct(v: &[f64], p: f64) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn report(outcomes: &[Outcome], args: &Args, machine: &str, before: &str, after: &str) -> String {
    let mut t = format!(
        "## A team on one daemon: HTTP and stdio\n\n- Machine: {machine}\n- Before: {before}\n\
         - After: {after}\n- Workload: {} clients × (2 sessions × {} `execute-persistent` + \
         {} `execute-transient`), all at once; pool on, size {POOL_SIZE}; \
         max_sessions {}, max_sessions_per_client 2 (HTTP)\n\n",
        args.clients,
        args.calls,
        args.transient,
        2 * args.clients
    );
    let cols: Vec<&str> = outcomes.iter().map(|o| o.transport).collect();
    t += &format!(
        "| | {} |\n|---|{}\n",
        cols.join(" | "),
        "---|".repeat(cols.len())
    );
    let mut row = |name: &str, f: &dyn Fn(&Outcome) -> String| {
        let cells: Vec<String> = outcomes.iter().map(f).collect();
        t += &format!("| {name} | {} |\n", cells.join(" | "));
    };
    row("executions (checked)", &|o| {
        o.samples.executions().to_string()
    });
    row("wall time", &|o| fmt_ms(o.wall_ms));
    row("**executions/s**", &|o| {
        format!(
            "**{:.0}**",
            o.samples.executions() as f64 / (o.wall_ms / 1000.0)
        )
    });
    row("failures", &|o| o.samples.failures.len().to_string());
    for label in [SESSION_CALL, NEW_SESSION, TRANSIENT_RUN, CLEANUP] {
        row(&format!("{label}: p50 / p90 (N)"), &|o| {
            let v = o.samples.ms.get(label).map(Vec::as_slice).unwrap_or(&[]);
            match (pct(v, 50.0), pct(v, 90.0)) {
                (Some(a), Some(b)) => format!("{} / {} ({})", fmt_ms(a), fmt_ms(b), v.len()),
                _ => "—".into(),
            }
        });
    }
    row("daemon RSS idle (pool warm)", &|o| fmt_mib(o.idle_rss));
    row("daemon RSS peak", &|o| fmt_mib(o.peak_rss));
    row("daemon RSS after", &|o| fmt_mib(o.after_rss));
    row("containers idle → after", &|o| {
        format!("{} → {}", o.idle_containers, o.after_containers)
    });
    row("Python sessions started / ended (log)", &|o| {
        format!("{} / {}", o.py_sessions.0, o.py_sessions.1)
    });
    row("MCP sessions opened / closed (log)", &|o| {
        o.mcp_sessions
            .map(|(a, b)| format!("{a} / {b}"))
            .unwrap_or_else(|| "1 (the stdio connection)".into())
    });
    row("ended sessions still reachable", &|o| {
        o.reachable_after.to_string()
    });
    row("quota free again", &|o| {
        o.quota_after.clone().unwrap_or_else(|| "—".into())
    });
    row("left after exit", &|o| o.left_over.to_string());
    for o in outcomes {
        for f in o.samples.failures.iter().take(10) {
            t += &format!("\n- {} failure: {f}", o.transport);
        }
    }
    t
}

// ---------------------------------------------------------------------------------------
// Docker and /proc

async fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let engine = docker_lines(&["version", "--format", "{{.Server.Version}}"]).await;
    format!(
        "{cpus} CPUs, kernel {}, Docker engine {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        engine.first().map(String::as_str).unwrap_or("?")
    )
}

/// Load average and the containers running on the engine (others' included).
async fn load() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let running = docker_lines(&["ps", "-q"]).await.len();
    format!(
        "load average {}, {running} container(s) running on the engine",
        avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

// ---------------------------------------------------------------------------------------

async fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let started = *START.get_or_init(Instant::now);
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-http");
    std::fs::create_dir_all(&out)?;
    let scratch = std::env::temp_dir().join(format!("pdm-bench-http-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let machine = machine().await;
    let before = load().await;
    progress!("{machine}; {before}; binary {}", args.bin.display());

    let mut outcomes = Vec::new();
    for (wanted, transport) in [(args.http, Transport::Http), (args.stdio, Transport::Stdio)] {
        if wanted {
            outcomes.push(run_transport(transport, &args, &out, &scratch).await?);
        }
    }
    let after = load().await;
    let mut text = report(&outcomes, &args, &machine, &before, &after);
    text += &format!("\n\nRun time: {:.0} s\n", started.elapsed().as_secs_f64());
    println!("\n{text}");
    std::fs::write(out.join("last-run.md"), &text)?;
    progress!("(also written to {})", out.join("last-run.md").display());
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn main() {
    if !common::under_cargo_bench("http", "-- --calls 20 --transient 3") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("http bench: {e:#}");
        std::process::exit(1);
    }
}
