//! End-to-end benchmark: python-docker-mcp driven as an agent drives it, next to the raw
//! Docker engine and the original Python package, in one run on one machine.
//!
//! ```text
//! cargo bench --bench e2e                      # full run (pool on and off), ~3-4 min
//! cargo bench --bench e2e -- --quick           # short run (default config), ~1.5 min
//! cargo bench --bench e2e -- --pool both       # our daemon with pool_enabled on and off
//! cargo bench --bench e2e -- --skip original   # skip a part: docker, ours, original
//! ```
//!
//! Every MCP figure goes through rmcp's real client over a real stdio child process
//! (`TokioChildProcess`), against the real Docker engine. Each server gets a clean `HOME`
//! (a temp dir) and no inherited `PYTHON_DOCKER_MCP_*` variables. The original Python
//! package (python-docker-mcp 0.2.5 from PyPI) is set up by `scripts/bench-original.sh`,
//! which this bench runs first; every container the original leaves behind is removed
//! after each of its runs (found by its own image, never by our label).
//!
//! Output: one markdown table (p50 / p90 from sorted samples, nearest rank, with N) plus a
//! details table, on stdout and in `target/bench-e2e/last-run.md`. The servers' stderr
//! goes to `target/bench-e2e/*.stderr.log`. What each row means: docs/BENCHMARKS.md.
//!
//! Runs only with `--bench` (which `cargo bench` passes): under `cargo test --all-targets`
//! it prints a note and passes instead of loading Docker for minutes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::{StreamExt, TryFutureExt};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

type Client = RunningService<RoleClient, ()>;

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

/// The sandbox image our daemon uses (its default) and the raw Docker reference runs.
const IMAGE: &str = "python-docker-mcp:latest";
/// The derived image the original runs (adds a `python` symlink; see the setup script).
const ORIGINAL_IMAGE: &str = "python-docker-mcp-orig-bench:latest";
/// Calls in flight in the throughput measurements.
const IN_FLIGHT: usize = 8;
/// Pause before each call of the spaced transient series.
const SPACING: Duration = Duration::from_millis(1500);
/// How long to wait for a warm pool to fill.
const WARM_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on any single call, so a wedged server shows up as failures instead of a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Our daemon's label keys (see src/sandbox.rs).
const LABEL_MANAGED: &str = "python-docker-mcp.managed";
const LABEL_PID: &str = "python-docker-mcp.pid";

/// Echo loop for the raw pipe round trip: one JSON line in, one JSON line out.
const ECHO_LOOP: &str = "import json, sys\n\
while True:\n    \
    line = sys.stdin.readline()\n    \
    if not line:\n        break\n    \
    msg = json.loads(line)\n    \
    sys.stdout.write(json.dumps({'op': 'result', 'id': msg['id'], 'stdout': '', 'value': None}) + '\\n')\n";

/// The daemon's REPL helper, run over a plain `docker run -i` pipe for the reference.
const HELPER: &str = include_str!("../src/repl/helper.py");

/// The sandbox profile our daemon applies (src/sandbox.rs defaults), as `docker run` flags.
const PROFILE_FLAGS: &[&str] = &[
    "--network",
    "none",
    "--memory",
    "256m",
    "--memory-swap",
    "256m",
    "--cpus",
    "0.5",
    "--pids-limit",
    "128",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--read-only",
    "--tmpfs",
    "/tmp:rw,nosuid,nodev,size=128m,mode=1777",
    "--tmpfs",
    "/app:rw,nosuid,nodev,size=128m,mode=0755,uid=1000,gid=1000",
    "--init",
    "--user",
    "1000:1000",
];

// ---------------------------------------------------------------------------------------
// Command line and plan

#[derive(Clone, Copy, PartialEq, Debug)]
enum Pool {
    /// Leave PYTHON_DOCKER_MCP_POOL_ENABLED unset (the default, `true`).
    Default,
    On,
    Off,
}

struct Args {
    quick: bool,
    /// None: pool on and off in a full run, the default in a quick run.
    pools: Option<Vec<Pool>>,
    skip_docker: bool,
    skip_ours: bool,
    skip_original: bool,
    original_pool: bool,
    setup_original: bool,
    venv: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        quick: false,
        pools: None,
        skip_docker: false,
        skip_ours: false,
        skip_original: false,
        original_pool: true,
        setup_original: true,
        venv: std::env::var_os("PDM_BENCH_ORIGINAL_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/bench-original/venv")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match arg.as_str() {
            // cargo bench passes --bench to harness = false benches.
            "--bench" => {}
            "--quick" => a.quick = true,
            "--pool" => {
                a.pools = Some(match value("--pool")?.as_str() {
                    "on" => vec![Pool::On],
                    "off" => vec![Pool::Off],
                    "both" => vec![Pool::On, Pool::Off],
                    "default" => vec![Pool::Default],
                    other => bail!("--pool takes on, off, both or default, not {other}"),
                })
            }
            "--original-pool" => {
                a.original_pool = match value("--original-pool")?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => bail!("--original-pool takes on or off, not {other}"),
                }
            }
            "--skip" => {
                for part in value("--skip")?.split(',') {
                    match part.trim() {
                        "docker" => a.skip_docker = true,
                        "ours" => a.skip_ours = true,
                        "original" => a.skip_original = true,
                        other => bail!("--skip takes docker, ours, original; not {other}"),
                    }
                }
            }
            "--no-setup" => a.setup_original = false,
            "--original-venv" => a.venv = PathBuf::from(value("--original-venv")?),
            "-h" | "--help" => {
                println!(
                    "cargo bench --bench e2e -- [--quick] [--pool on|off|both|default] \
                     [--original-pool on|off] [--skip docker,ours,original] [--no-setup] \
                     [--original-venv DIR]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    Ok(a)
}

/// How many samples of each kind one server gets.
#[derive(Clone, Copy)]
struct Plan {
    /// Cold starts (spawn → initialize → first transient result → shutdown).
    starts: usize,
    transient: usize,
    /// Transient `print(1)` calls spaced `SPACING` apart, so the replacement for the
    /// previous call's sandbox is made before the next call (0: not measured).
    transient_spaced: usize,
    new_session: usize,
    cleanup: usize,
    persistent: usize,
    /// Transient calls in the throughput run, on top of the warm pool's size (with a
    /// pool, the first `pool_size` calls drain it and are reported apart).
    throughput: usize,
    numpy: usize,
    /// Transient `import numpy` calls on a second daemon started with
    /// `PYTHON_DOCKER_MCP_WARM_IMPORTS=numpy` (ours, pool on only; 0: not measured).
    warm_numpy: usize,
    /// Sessions running concurrent streams of `x = 1`, one stream per session (empty:
    /// not measured); the largest is how many sessions are created for it.
    parallel_levels: &'static [usize],
    /// Sequential calls in each stream.
    parallel_calls: usize,
    /// How many times the levels are run, interleaved (the rate is the median round's).
    parallel_rounds: usize,
}

struct DockerPlan {
    run: usize,
    exec: usize,
    pipe_starts: usize,
    pipe_round_trips: usize,
    throughput: usize,
    numpy: usize,
    /// Helper pipes (sandbox profile) running concurrent streams of exec round trips.
    parallel_levels: &'static [usize],
    parallel_calls: usize,
    parallel_rounds: usize,
}

/// Parallel sessions (or raw pipes) in the throughput-across-sessions measurement. The
/// report has a row for each of `LEVELS`.
const LEVELS: &[usize] = &[1, 2, 4, 8];
const QUICK_LEVELS: &[usize] = &[1, 8];

fn plans(quick: bool) -> (DockerPlan, Plan, Plan) {
    if quick {
        (
            DockerPlan {
                run: 6,
                exec: 6,
                pipe_starts: 2,
                pipe_round_trips: 200,
                throughput: 16,
                numpy: 3,
                parallel_levels: QUICK_LEVELS,
                parallel_calls: 50,
                parallel_rounds: 1,
            },
            Plan {
                starts: 1,
                transient: 10,
                transient_spaced: 5,
                new_session: 3,
                cleanup: 3,
                persistent: 100,
                throughput: 16,
                numpy: 3,
                warm_numpy: 3,
                parallel_levels: QUICK_LEVELS,
                parallel_calls: 50,
                parallel_rounds: 1,
            },
            Plan {
                starts: 1,
                transient: 6,
                transient_spaced: 0,
                new_session: 2,
                cleanup: 1,
                persistent: 10,
                throughput: 12,
                numpy: 2,
                warm_numpy: 0,
                parallel_levels: &[],
                parallel_calls: 0,
                parallel_rounds: 0,
            },
        )
    } else {
        (
            DockerPlan {
                run: 20,
                exec: 20,
                pipe_starts: 5,
                pipe_round_trips: 500,
                throughput: 48,
                numpy: 5,
                parallel_levels: LEVELS,
                parallel_calls: 200,
                parallel_rounds: 3,
            },
            Plan {
                starts: 3,
                transient: 30,
                transient_spaced: 10,
                new_session: 5,
                cleanup: 5,
                persistent: 200,
                throughput: 48,
                numpy: 5,
                warm_numpy: 5,
                parallel_levels: LEVELS,
                parallel_calls: 200,
                parallel_rounds: 3,
            },
            Plan {
                starts: 1,
                transient: 20,
                transient_spaced: 0,
                new_session: 3,
                cleanup: 1,
                persistent: 40,
                throughput: 32,
                numpy: 5,
                warm_numpy: 0,
                parallel_levels: &[],
                parallel_calls: 0,
                parallel_rounds: 0,
            },
        )
    }
}

// ---------------------------------------------------------------------------------------
// Samples and formatting

#[derive(Default, Clone)]
struct Series {
    ms: Vec<f64>,
    failures: Vec<String>,
}

impl Series {
    fn push(&mut self, started: Instant) {
        self.ms.push(ms_since(started));
    }

    fn fail(&mut self, why: impl std::fmt::Display) {
        let why = why.to_string();
        progress!("    failure: {}", first_line(&why, 200));
        self.failures.push(why);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    /// Nearest-rank percentile of the successful samples.
    fn pct(&self, p: f64) -> Option<f64> {
        let v = self.sorted();
        if v.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }

    fn n(&self) -> usize {
        self.ms.len()
    }

    fn fails_note(&self) -> String {
        if self.failures.is_empty() {
            String::new()
        } else {
            format!(", **{} failed**", self.failures.len())
        }
    }

    /// `p50 / p90 (N=n)`, or one value when there is one sample.
    fn cell(&self) -> String {
        match (self.pct(50.0), self.pct(90.0)) {
            (Some(p50), Some(p90)) if self.n() > 1 => {
                format!(
                    "{} / {} (N={}{})",
                    fmt_ms(p50),
                    fmt_ms(p90),
                    self.n(),
                    self.fails_note()
                )
            }
            (Some(p50), _) => format!("{} (N=1{})", fmt_ms(p50), self.fails_note()),
            _ if !self.failures.is_empty() => {
                format!("**all {} failed** (see Failures)", self.failures.len())
            }
            _ => "—".into(),
        }
    }
}

/// Completed calls over wall-clock time, with the per-call latency under that load.
#[derive(Default, Clone)]
struct Rate {
    wall_ms: f64,
    /// Per-call latency under the load.
    calls: Series,
    /// When each successful call completed, in ms since the first was sent, in order.
    done_at: Vec<f64>,
    /// The first `burst` completions are served by a warm pool; the rest is sustained.
    burst: usize,
}

impl Rate {
    fn overall(&self) -> f64 {
        self.calls.n() as f64 / (self.wall_ms / 1000.0)
    }

    /// Completions per second after the first `burst` (the pool drained), if measurable.
    fn sustained(&self) -> Option<f64> {
        let n = self.done_at.len();
        if self.burst == 0 || n < self.burst + 4 {
            return None;
        }
        let span = self.done_at[n - 1] - self.done_at[self.burst - 1];
        (span > 0.0).then(|| (n - self.burst) as f64 / (span / 1000.0))
    }

    fn cell(&self) -> String {
        if self.calls.n() == 0 {
            return self.calls.cell();
        }
        let all = format!(
            "{:.2}/s ({} calls in {:.1} s{})",
            self.overall(),
            self.calls.n(),
            self.wall_ms / 1000.0,
            self.calls.fails_note()
        );
        match self.sustained() {
            Some(tail) => format!(
                "**{tail:.2}/s** sustained after the first {} (pool drained); {all} overall",
                self.burst
            ),
            None => all,
        }
    }
}

/// Concurrent streams of sequential calls, one stream per session (or raw pipe): total
/// completed calls over the wall-clock time of all streams, and the per-call latency.
/// Measured in rounds (the levels interleaved), so one noisy moment does not decide it.
#[derive(Default, Clone)]
struct Parallel {
    streams: usize,
    /// Per round: successful calls and wall-clock ms.
    rounds: Vec<(usize, f64)>,
    /// Every call of every round.
    calls: Series,
}

impl Parallel {
    /// The entry for `streams` in `levels`, created on first use.
    fn level(levels: &mut Vec<Parallel>, streams: usize) -> &mut Parallel {
        match levels.iter().position(|p| p.streams == streams) {
            Some(i) => &mut levels[i],
            None => {
                levels.push(Parallel {
                    streams,
                    ..Parallel::default()
                });
                levels.last_mut().expect("just pushed")
            }
        }
    }

    fn add_round(&mut self, wall_ms: f64, per_stream: Vec<Series>) {
        let before = self.calls.n();
        for s in per_stream {
            self.calls.ms.extend(s.ms);
            self.calls.failures.extend(s.failures);
        }
        self.rounds.push((self.calls.n() - before, wall_ms));
    }

    /// Calls per second of each round, sorted.
    fn rates(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .rounds
            .iter()
            .filter(|(_, ms)| *ms > 0.0)
            .map(|(n, ms)| *n as f64 / (ms / 1000.0))
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    /// The median round's rate (the lower middle one for an even count).
    fn rate(&self) -> Option<f64> {
        let v = self.rates();
        (!v.is_empty()).then(|| v[(v.len() - 1) / 2])
    }

    fn cell(&self) -> String {
        let (Some(p50), Some(p90), Some(rate)) =
            (self.calls.pct(50.0), self.calls.pct(90.0), self.rate())
        else {
            return self.calls.cell();
        };
        let rates = self.rates();
        let per_round = self.rounds.first().map(|r| r.0).unwrap_or(0);
        let how = if rates.len() == 1 {
            format!("{per_round} calls in {:.2} s", self.rounds[0].1 / 1000.0)
        } else {
            format!(
                "median of {} rounds of {per_round} calls; {}–{}/s",
                rates.len(),
                fmt_rate(rates[0]),
                fmt_rate(rates[rates.len() - 1])
            )
        };
        format!(
            "**{}/s** ({how}{}); per call {} / {}",
            fmt_rate(rate),
            self.calls.fails_note(),
            fmt_ms(p50),
            fmt_ms(p90)
        )
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// The cell of the level with `streams` streams, or a dash when it was not run.
fn parallel_cell(levels: &[Parallel], streams: usize) -> String {
    levels
        .iter()
        .find(|p| p.streams == streams)
        .map(Parallel::cell)
        .unwrap_or_else(|| "—".into())
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn first_line(s: &str, max: usize) -> String {
    let line = s.trim().lines().next().unwrap_or("").trim();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Docker CLI helpers

async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running the docker CLI")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn docker_lines(args: &[&str]) -> BTreeSet<String> {
    match docker(args).await {
        Ok(s) => s
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        Err(e) => {
            progress!("  warning: {e}");
            BTreeSet::new()
        }
    }
}

/// One `docker run --rm` that must print `expect`.
async fn docker_run_once(extra: &[&str], code: &str, expect: &str) -> Result<(), String> {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[IMAGE, "python3", "-c", code]);
    match docker(&args).await {
        Ok(out) if out.trim() == expect => Ok(()),
        Ok(out) => Err(format!("unexpected output {out:?}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn docker_run_series(n: usize, extra: &[&str], code: &str, expect: &str) -> Series {
    let mut s = Series::default();
    for _ in 0..n {
        let t = Instant::now();
        match docker_run_once(extra, code, expect).await {
            Ok(()) => s.push(t),
            Err(e) => s.fail(e),
        }
    }
    s
}

/// The raw pipe: `docker run -i` a Python loop (the echo loop, or the daemon's REPL helper
/// that announces itself with a `ready` line); time to the first answer, then round trips.
async fn raw_pipe(code: &str, starts: usize, round_trips: usize) -> (Series, Series) {
    let (mut first, mut rtt) = (Series::default(), Series::default());
    for start in 0..starts {
        if let Err(e) = raw_pipe_once(
            code,
            &mut first,
            &mut rtt,
            if start == 0 { round_trips } else { 0 },
        )
        .await
        {
            first.fail(format!("{e:#}"));
        }
    }
    (first, rtt)
}

async fn raw_pipe_once(
    code: &str,
    first: &mut Series,
    rtt: &mut Series,
    n: usize,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut pipe = Pipe::start(code, &["--network", "none"]).await?;
    first.push(t);
    for _ in 0..n {
        let t = Instant::now();
        match pipe.round_trip().await {
            Ok(()) => rtt.push(t),
            Err(e) => {
                rtt.fail(format!("{e:#}"));
                break;
            }
        }
    }
    pipe.close().await
}

/// `docker run -i --rm <flags> IMAGE python3 -u -c <code>`, answering JSON lines.
struct Pipe {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    id: usize,
}

impl Pipe {
    /// Start it; returns once the helper said `ready` (or the echo loop echoed once).
    async fn start(code: &str, flags: &[&str]) -> anyhow::Result<Pipe> {
        let mut child = tokio::process::Command::new("docker")
            .args(["run", "-i", "--rm"])
            .args(flags)
            .args([IMAGE, "python3", "-u", "-c", code])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut pipe = Pipe {
            child,
            stdin,
            lines,
            id: 0,
        };
        if code == HELPER {
            let ready = tokio::time::timeout(CALL_TIMEOUT, pipe.lines.next_line())
                .await
                .context("helper not ready in time")??
                .context("helper exited")?;
            if !ready.contains("\"ready\"") {
                bail!("helper said {ready}");
            }
        } else {
            pipe_round_trip(&mut pipe.stdin, &mut pipe.lines, 0).await?;
        }
        Ok(pipe)
    }

    async fn round_trip(&mut self) -> anyhow::Result<()> {
        self.id += 1;
        pipe_round_trip(&mut self.stdin, &mut self.lines, self.id).await
    }

    /// Close its stdin and wait for it to exit (the helper exits on EOF).
    async fn close(self) -> anyhow::Result<()> {
        let Pipe {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
        Ok(())
    }
}

/// The reference for throughput across sessions: the REPL helper in `max(levels)`
/// containers with the sandbox profile, each over its own `docker run -i` pipe; for each
/// level, that many pipes run `calls` sequential exec round trips concurrently.
async fn raw_parallel(levels: &[usize], calls: usize, rounds: usize) -> Vec<Parallel> {
    let max = levels.iter().copied().max().unwrap_or(0);
    let started: Vec<anyhow::Result<Pipe>> =
        futures::future::join_all((0..max).map(|_| Pipe::start(HELPER, PROFILE_FLAGS))).await;
    let mut pipes = Vec::new();
    let mut errors = Vec::new();
    for p in started {
        match p {
            Ok(p) => pipes.push(p),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let mut out = Vec::new();
    // One untimed round trip each, so every helper is warm.
    let warm: Vec<anyhow::Result<()>> =
        futures::future::join_all(pipes.iter_mut().map(Pipe::round_trip)).await;
    if let Some(e) = warm.into_iter().find_map(Result::err) {
        errors.push(format!("{e:#}"));
    }
    for &k in levels.iter().cycle().take(levels.len() * rounds) {
        if !errors.is_empty() || k > pipes.len() {
            Parallel::level(&mut out, k)
                .calls
                .fail(format!("helper pipes not started: {}", errors.join("; ")));
            continue;
        }
        let t = Instant::now();
        let per: Vec<Series> =
            futures::future::join_all(pipes[..k].iter_mut().map(|p| async move {
                let mut s = Series::default();
                for _ in 0..calls {
                    let t = Instant::now();
                    match p.round_trip().await {
                        Ok(()) => s.push(t),
                        Err(e) => {
                            s.fail(format!("{e:#}"));
                            break;
                        }
                    }
                }
                s
            }))
            .await;
        Parallel::level(&mut out, k).add_round(ms_since(t), per);
    }
    for p in pipes {
        if let Err(e) = p.close().await {
            progress!("  warning: helper pipe: {e:#}");
        }
    }
    out
}

/// One JSON line to the echo loop and its answer back.
async fn pipe_round_trip(
    stdin: &mut tokio::process::ChildStdin,
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    id: usize,
) -> anyhow::Result<()> {
    let line = format!(
        "{}\n",
        json!({"op": "exec", "id": id, "code": "x = 1", "state": null, "want_state": false, "output_limit": 262144})
    );
    stdin.write_all(line.as_bytes()).await?;
    stdin.flush().await?;
    let reply = tokio::time::timeout(CALL_TIMEOUT, lines.next_line())
        .await
        .context("echo timed out")??
        .context("echo loop exited")?;
    let v: serde_json::Value = serde_json::from_str(&reply)?;
    if v["id"] != json!(id) {
        bail!("echo answered {reply}");
    }
    Ok(())
}

/// `docker exec <running container> true`: what one exec costs (the original's every call
/// is several of these).
async fn docker_exec_series(n: usize) -> Series {
    let mut s = Series::default();
    let name = format!("pdm-bench-exec-{}", std::process::id());
    if let Err(e) = docker(&[
        "run",
        "-d",
        "--rm",
        "--name",
        &name,
        "--network",
        "none",
        IMAGE,
        "sleep",
        "600",
    ])
    .await
    {
        s.fail(e);
        return s;
    }
    for _ in 0..n {
        let t = Instant::now();
        match docker(&["exec", &name, "true"]).await {
            Ok(_) => s.push(t),
            Err(e) => s.fail(e),
        }
    }
    if let Err(e) = docker(&["rm", "-f", &name]).await {
        progress!("  warning: {e}");
    }
    s
}

/// `total` runs of `job`, `IN_FLIGHT` at a time.
async fn throughput<F, Fut>(total: usize, burst: usize, job: F) -> Rate
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let results: Vec<(f64, f64, Result<(), String>)> = futures::stream::iter(0..total)
        .map(|i| {
            let t = Instant::now();
            let fut = job(i);
            async move {
                let r = fut.await;
                (ms_since(t), ms_since(started), r)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut rate = Rate {
        wall_ms: ms_since(started),
        burst,
        ..Rate::default()
    };
    // `collect` keeps completion order.
    for (ms, at, r) in results {
        match r {
            Ok(()) => {
                rate.calls.ms.push(ms);
                rate.done_at.push(at);
            }
            Err(e) => rate.calls.fail(e),
        }
    }
    rate
}

// ---------------------------------------------------------------------------------------
// MCP servers

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Ours,
    Original,
}

/// How to start one MCP server.
#[derive(Clone)]
struct Target {
    label: String,
    kind: Kind,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    home: PathBuf,
    log_prefix: String,
    /// Warm containers the server keeps once started (0: no pool to wait for). The
    /// original builds its pool before answering `initialize`, so it needs no waiting.
    pool_size: usize,
}

struct Running {
    client: Client,
    pid: u32,
    spawned: Instant,
}

async fn spawn(t: &Target, logs: &Path, n: usize) -> anyhow::Result<(Running, f64)> {
    let mut cmd = tokio::process::Command::new(&t.program);
    cmd.args(&t.args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PYTHON_DOCKER_MCP_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("HOME", &t.home);
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
async fn call(
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

fn session_id(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Session ID:"))
        .map(|s| s.trim().to_string())
}

async fn timed<T>(
    s: &mut Series,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Option<T> {
    let t = Instant::now();
    match fut.await {
        Ok(v) => {
            s.push(t);
            Some(v)
        }
        Err(e) => {
            s.fail(e);
            None
        }
    }
}

#[derive(Default)]
struct ServerResults {
    note: Option<String>,
    init: Series,
    first_transient: Series,
    transient: Series,
    transient_spaced: Series,
    new_session: Series,
    cleanup: Series,
    persistent: Series,
    throughput: Rate,
    numpy: Series,
    shutdown: Series,
    leftover_containers: Vec<usize>,
    held_idle: Option<usize>,
    warm: Series,
    /// The second daemon, with `warm_imports` numpy: spawn → pool full, and the calls.
    warm_numpy_fill: Series,
    warm_numpy: Series,
    /// Streams of `x = 1` across sessions, one entry per level.
    parallel: Vec<Parallel>,
}

fn transient(code: &str) -> serde_json::Value {
    json!({ "code": code })
}

async fn bench_server(t: &Target, plan: Plan, logs: &Path) -> ServerResults {
    let mut r = ServerResults::default();
    for start in 0..plan.starts {
        let main_run = start + 1 == plan.starts;
        progress!(
            "  [{}] start {}/{}{}",
            t.label,
            start + 1,
            plan.starts,
            if main_run {
                " (the measured instance)"
            } else {
                ""
            }
        );
        let before = server_containers(t, 0).await;
        let (run, init) = match spawn(t, logs, start).await {
            Ok(x) => x,
            Err(e) => {
                r.init.fail(format!("{e:#}"));
                sweep(t, &before, 0).await;
                continue;
            }
        };
        r.init.ms.push(init);
        let c = &run.client;
        match call(
            c,
            "execute-transient",
            transient("print(1)"),
            "Execution Result:\n\n1",
        )
        .await
        {
            Ok(_) => r.first_transient.ms.push(ms_since(run.spawned)),
            Err(e) => r.first_transient.fail(e),
        }
        let pid = run.pid;
        if main_run {
            if t.pool_size > 0 {
                progress!(
                    "    waiting for the pool to fill ({} containers)",
                    t.pool_size
                );
                match wait_warm(t, pid, 0).await {
                    Ok(()) => r.warm.push(run.spawned),
                    Err(e) => r.warm.fail(e),
                }
            }
            measure_steady_state(c, t, pid, plan, &mut r).await;
            // What the server keeps while idle: warm pools, sessions not cleaned up.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let held = server_containers(t, pid).await.difference(&before).count();
            r.held_idle = Some(held);
        }
        let t_close = Instant::now();
        match tokio::time::timeout(Duration::from_secs(30), run.client.cancel()).await {
            Ok(_) => r.shutdown.push(t_close),
            Err(_) => r.shutdown.fail("did not exit within 30 s"),
        }
        let left = sweep(t, &before, pid).await;
        r.leftover_containers.push(left);
    }
    if t.kind == Kind::Ours && t.pool_size > 0 && plan.warm_numpy > 0 {
        measure_warm_numpy(t, plan, logs, &mut r).await;
    }
    r
}

/// A second start of our daemon, pool on, with `PYTHON_DOCKER_MCP_WARM_IMPORTS=numpy`:
/// once its pool is full (and has had a few seconds to finish the imports), transient
/// `import numpy` calls. Its exit is checked like the others' (one more start in
/// `leftover_containers`).
async fn measure_warm_numpy(t: &Target, plan: Plan, logs: &Path, r: &mut ServerResults) {
    let mut w = t.clone();
    w.env.push((
        "PYTHON_DOCKER_MCP_WARM_IMPORTS".to_string(),
        "numpy".to_string(),
    ));
    w.log_prefix = format!("{}-warm-numpy", t.log_prefix);
    progress!("  [{}] with warm_imports numpy: start", t.label);
    let before = server_containers(&w, 0).await;
    let run = match spawn(&w, logs, 0).await {
        Ok((run, _)) => run,
        Err(e) => {
            r.warm_numpy.fail(format!("{e:#}"));
            return;
        }
    };
    let (c, pid) = (&run.client, run.pid);
    progress!(
        "    waiting for the pool to fill ({} containers)",
        w.pool_size
    );
    match wait_warm(&w, pid, 0).await {
        Ok(()) => r.warm_numpy_fill.push(run.spawned),
        Err(e) => r.warm_numpy_fill.fail(e),
    }
    // A container counts once started; its helper then still imports numpy at 0.5 CPU.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Untimed: the warm import really happened (numpy is loaded before the user imports it).
    match call(
        c,
        "execute-transient",
        transient(
            "import sys
print('numpy' in sys.modules)",
        ),
        "Execution Result:\n\nTrue",
    )
    .await
    {
        Ok(_) => {
            settle(&w, pid, 0).await;
            progress!(
                "    transient import numpy ×{} (warm imports)",
                plan.warm_numpy
            );
            for _ in 0..plan.warm_numpy {
                timed(
                    &mut r.warm_numpy,
                    call(
                        c,
                        "execute-transient",
                        transient("import numpy\nprint(numpy.ones(3).sum())"),
                        "Execution Result:\n\n3.0",
                    ),
                )
                .await;
            }
        }
        Err(e) => r
            .warm_numpy
            .fail(format!("numpy was not preloaded in a warm sandbox: {e}")),
    }
    match tokio::time::timeout(Duration::from_secs(30), run.client.cancel()).await {
        Ok(_) => {}
        Err(_) => r.warm_numpy.fail("did not exit within 30 s"),
    }
    let left = sweep(&w, &before, pid).await;
    r.leftover_containers.push(left);
}

/// Throughput across sessions: `max(levels)` new sessions, then for each level that many
/// concurrent streams of `calls` sequential `x = 1` calls, one stream per session. The
/// sessions are cleaned up afterwards (untimed).
async fn measure_parallel(
    c: &Client,
    t: &Target,
    pid: u32,
    plan: Plan,
    live: usize,
    r: &mut ServerResults,
) {
    let max = plan.parallel_levels.iter().copied().max().unwrap_or(0);
    if max == 0 {
        return;
    }
    progress!("    {max} new sessions for parallel streams");
    let mut ids = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..max {
        match call(
            c,
            "execute-persistent",
            json!({"code": "x = 1"}),
            "Session ID",
        )
        .await
        {
            Ok(text) => match session_id(&text) {
                Some(id) => ids.push(id),
                None => errors.push(format!("no session id in {text:?}")),
            },
            Err(e) => errors.push(e),
        }
    }
    settle(t, pid, live + ids.len()).await;
    // One untimed call per session, all at once, so every session is warm.
    let warm = futures::future::join_all(ids.iter().map(|id| {
        call(
            c,
            "execute-persistent",
            json!({"code": "x = 1", "session_id": id}),
            "",
        )
    }))
    .await;
    if let Some(e) = warm.into_iter().find_map(Result::err) {
        errors.push(e);
    }
    progress!(
        "    {:?} session(s) in parallel, {} calls each, {} round(s)",
        plan.parallel_levels,
        plan.parallel_calls,
        plan.parallel_rounds
    );
    let levels = plan.parallel_levels;
    for &k in levels
        .iter()
        .cycle()
        .take(levels.len() * plan.parallel_rounds)
    {
        if !errors.is_empty() || k > ids.len() {
            Parallel::level(&mut r.parallel, k)
                .calls
                .fail(format!("sessions not started: {}", errors.join("; ")));
            continue;
        }
        let started = Instant::now();
        let per: Vec<Series> = futures::future::join_all(ids[..k].iter().map(|id| async move {
            let mut s = Series::default();
            let args = json!({"code": "x = 1", "session_id": id});
            for _ in 0..plan.parallel_calls {
                if timed(&mut s, call(c, "execute-persistent", args.clone(), ""))
                    .await
                    .is_none()
                    && s.failures.len() >= 5
                {
                    break;
                }
            }
            s
        }))
        .await;
        Parallel::level(&mut r.parallel, k).add_round(ms_since(started), per);
    }
    progress!("    parallel streams done; cleaning up the sessions");
    for id in &ids {
        if let Err(e) = call(c, "cleanup-session", json!({"session_id": id}), "").await {
            progress!("    warning: {e}");
        }
    }
}

/// Wait until the server runs its `pool_size` warm containers plus `busy` checked-out
/// ones (live sessions), counted as running containers carrying the child's pid label.
/// A container counts once started, while its helper may still be starting, so a second
/// of settling follows.
async fn wait_warm(t: &Target, pid: u32, busy: usize) -> Result<(), String> {
    let want = t.pool_size + busy;
    let deadline = Instant::now() + WARM_TIMEOUT;
    loop {
        let running = docker_lines(&[
            "ps",
            "-q",
            "--filter",
            &format!("label={LABEL_MANAGED}=true"),
            "--filter",
            &format!("label={LABEL_PID}={pid}"),
            "--filter",
            "status=running",
        ])
        .await
        .len();
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
async fn settle(t: &Target, pid: u32, busy: usize) {
    if t.pool_size > 0 {
        progress!("    (letting the pool refill)");
        if let Err(e) = wait_warm(t, pid, busy).await {
            progress!("    warning: {e}");
        }
    }
}

async fn measure_steady_state(c: &Client, t: &Target, pid: u32, plan: Plan, r: &mut ServerResults) {
    const PRINT_1: &str = "Execution Result:\n\n1";
    progress!("    transient print(1) ×{}", plan.transient);
    for _ in 0..plan.transient {
        timed(
            &mut r.transient,
            call(c, "execute-transient", transient("print(1)"), PRINT_1),
        )
        .await;
    }

    if plan.transient_spaced > 0 {
        settle(t, pid, 0).await;
        progress!(
            "    transient print(1) ×{}, {SPACING:?} apart",
            plan.transient_spaced
        );
        for _ in 0..plan.transient_spaced {
            tokio::time::sleep(SPACING).await;
            timed(
                &mut r.transient_spaced,
                call(c, "execute-transient", transient("print(1)"), PRINT_1),
            )
            .await;
        }
    }

    settle(t, pid, 0).await;
    progress!("    new sessions ×{}", plan.new_session);
    let mut sessions = Vec::new();
    for _ in 0..plan.new_session {
        let text = timed(
            &mut r.new_session,
            call(
                c,
                "execute-persistent",
                json!({"code": "x = 1"}),
                "Session ID",
            ),
        )
        .await;
        if let Some(id) = text.as_deref().and_then(session_id) {
            sessions.push(id);
        }
    }

    settle(t, pid, sessions.len()).await;
    progress!("    persistent x = 1 ×{}", plan.persistent);
    if let Some(id) = sessions.first().cloned() {
        let args = json!({"code": "x = 1", "session_id": id});
        // One untimed call so the session is warm (the first call of a session is above).
        let _ = call(c, "execute-persistent", args.clone(), "").await;
        for _ in 0..plan.persistent {
            if timed(
                &mut r.persistent,
                call(c, "execute-persistent", args.clone(), ""),
            )
            .await
            .is_none()
                && r.persistent.failures.len() >= 5
            {
                break;
            }
        }
    } else {
        r.persistent.fail("no session could be started");
    }

    progress!("    cleanup-session ×{}", plan.cleanup.min(sessions.len()));
    for id in sessions.iter().take(plan.cleanup) {
        timed(
            &mut r.cleanup,
            call(c, "cleanup-session", json!({"session_id": id}), ""),
        )
        .await;
    }
    let live = sessions.len().saturating_sub(plan.cleanup);

    settle(t, pid, live).await;
    // With a pool, the first `pool_size` calls drain it; the rest are sustained.
    let total = plan.throughput + t.pool_size;
    progress!("    transient throughput ×{total} ({IN_FLIGHT} in flight)");
    r.throughput = throughput(total, t.pool_size, |_| {
        call(c, "execute-transient", transient("print(1)"), PRINT_1).map_ok(|_| ())
    })
    .await;

    settle(t, pid, live).await;
    progress!("    transient import numpy ×{}", plan.numpy);
    for _ in 0..plan.numpy {
        timed(
            &mut r.numpy,
            call(
                c,
                "execute-transient",
                transient("import numpy\nprint(numpy.ones(3).sum())"),
                "Execution Result:\n\n3.0",
            ),
        )
        .await;
    }

    settle(t, pid, live).await;
    measure_parallel(c, t, pid, plan, live, r).await;
    settle(t, pid, live).await;
}

/// Containers that belong to this server kind right now (see `sweep`).
async fn server_containers(t: &Target, pid: u32) -> BTreeSet<String> {
    match t.kind {
        // The original only ever uses its own derived image; never our managed label.
        Kind::Original => docker_lines(&[
            "ps",
            "-a",
            "--filter",
            &format!("ancestor={ORIGINAL_IMAGE}"),
            "--format",
            &format!("{{{{.ID}}}} {{{{.Label \"{LABEL_MANAGED}\"}}}}"),
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
                &format!("label={LABEL_MANAGED}=true"),
                "--filter",
                &format!("label={LABEL_PID}={pid}"),
            ])
            .await
        }
        Kind::Ours => BTreeSet::new(),
    }
}

/// After a server exited: count the containers it left and remove them. Only containers
/// that appeared since `before` (original), or that carry the exited child's pid label
/// (ours), are touched.
async fn sweep(t: &Target, before: &BTreeSet<String>, pid: u32) -> usize {
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
            &format!("label={LABEL_PID}={pid}"),
        ])
        .await
        {
            progress!("    {} left volume {v}; removing it", t.label);
            let _ = docker(&["volume", "rm", "-f", &v]).await;
        }
    }
    count
}

// ---------------------------------------------------------------------------------------
// Set-up of the two servers

/// Our daemon with a clean HOME and the pool as chosen; its effective pool settings are
/// read back from its own `config` command, so the bench knows how many warm containers
/// to wait for.
fn ours(pool: Pool, home: &Path) -> anyhow::Result<(Target, String)> {
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
    let program = PathBuf::from(env!("CARGO_BIN_EXE_python-docker-mcp"));
    let mut cmd = std::process::Command::new(&program);
    cmd.arg("config").env("HOME", home);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PYTHON_DOCKER_MCP_") {
            cmd.env_remove(&k);
        }
    }
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

fn original(a: &Args, home: &Path) -> anyhow::Result<Target> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if a.setup_original {
        progress!("setting up the original (scripts/bench-original.sh)");
        let status = std::process::Command::new(root.join("scripts/bench-original.sh"))
            .env("PDM_BENCH_ORIGINAL_VENV", &a.venv)
            .status()
            .context("running scripts/bench-original.sh")?;
        if !status.success() {
            bail!("scripts/bench-original.sh failed ({status})");
        }
    }
    let program = a.venv.join("bin/python-docker-mcp");
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
            a.original_pool
        ),
    )?;
    Ok(Target {
        label: format!(
            "python-docker-mcp 0.2.5 (Python){}",
            if a.original_pool { "" } else { ", pool off" }
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

// ---------------------------------------------------------------------------------------
// The report

struct DockerResults {
    run: Series,
    run_profile: Series,
    pipe_first: Series,
    pipe_rtt: Series,
    helper_ready: Series,
    helper_rtt: Series,
    exec: Series,
    throughput: Rate,
    numpy: Series,
    /// Helper pipes with the sandbox profile, concurrent streams, one entry per level.
    parallel: Vec<Parallel>,
}

async fn machine() -> Vec<String> {
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let info = docker(&[
        "info",
        "--format",
        "{{.ServerVersion}} cgroup v{{.CgroupVersion}} {{.Driver}}",
    ])
    .await
    .unwrap_or_default();
    let image = docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .await
        .unwrap_or_default();
    vec![
        format!("{os}, kernel {}, {cpus} CPUs", kernel.trim()),
        format!("Docker engine {}", info.trim()),
        format!(
            "image {IMAGE} {}",
            image
                .trim()
                .trim_start_matches("sha256:")
                .get(..12)
                .unwrap_or("?")
        ),
    ]
}

async fn load() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let running = docker_lines(&["ps", "-q"]).await.len();
    format!(
        "load average {}, {running} container(s) running",
        avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

fn report(
    quick: bool,
    machine: &[String],
    load_before: &str,
    load_after: &str,
    elapsed: Duration,
    d: Option<&DockerResults>,
    servers: &[(String, Result<ServerResults, String>)],
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "### End-to-end benchmark ({} run, {:.0} s)\n\n",
        if quick { "quick" } else { "full" },
        elapsed.as_secs_f64()
    ));
    for m in machine {
        out.push_str(&format!("- {m}\n"));
    }
    out.push_str(&format!(
        "- before: {load_before}\n- after: {load_after}\n\n"
    ));
    out.push_str("Latencies are p50 / p90 over N samples (nearest rank); one value means N=1.\n\n");

    let dash = || "—".to_string();
    let docker_cell = |f: &dyn Fn(&DockerResults) -> String| d.map(f).unwrap_or_else(dash);
    type Cell = fn(&ServerResults) -> String;
    let rows: Vec<(&str, String, Cell)> = vec![
        ("spawn → `initialize` answered", dash(), |r| r.init.cell()),
        ("spawn → first `execute-transient` result", dash(), |r| {
            r.first_transient.cell()
        }),
        ("spawn → warm pool full (its `pool_size` containers running)", dash(), |r| {
            r.warm.cell()
        }),
        (
            "… the same with `warm_imports` numpy (a separate start)",
            dash(),
            |r| r.warm_numpy_fill.cell(),
        ),
        (
            "`execute-transient` `print(1)` | `docker run --rm` `print(1)`",
            docker_cell(&|d| d.run.cell()),
            |r| r.transient.cell(),
        ),
        (
            "… `execute-transient` `print(1)`, calls 1.5 s apart (the previous call's replacement is ready)",
            dash(),
            |r| r.transient_spaced.cell(),
        ),
        (
            "… `docker run --rm` with the sandbox profile (no network, limits, `--init`, read-only)",
            docker_cell(&|d| d.run_profile.cell()),
            |_| "—".to_string(),
        ),
        (
            "`execute-persistent` `x = 1` round trip | raw `docker run -i` pipe, JSON-line round trip",
            docker_cell(&|d| d.pipe_rtt.cell()),
            |r| r.persistent.cell(),
        ),
        (
            "… the same pipe running the daemon's REPL helper (`src/repl/helper.py`), exec `x = 1`",
            docker_cell(&|d| d.helper_rtt.cell()),
            |_| "—".to_string(),
        ),
        (
            "… `docker exec` into a running container (`true`)",
            docker_cell(&|d| d.exec.cell()),
            |_| "—".to_string(),
        ),
        (
            "`execute-persistent` first call of a new session | `docker run -i` → first echo",
            docker_cell(&|d| d.pipe_first.cell()),
            |r| r.new_session.cell(),
        ),
        (
            "… `docker run -i` → REPL helper `ready`",
            docker_cell(&|d| d.helper_ready.cell()),
            |_| "—".to_string(),
        ),
        ("`cleanup-session`", dash(), |r| r.cleanup.cell()),
        (
            "transient throughput, 8 in flight | `docker run --rm`, 8 in flight",
            docker_cell(&|d| d.throughput.cell()),
            |r| r.throughput.cell(),
        ),
        (
            "… per-call latency under that load",
            docker_cell(&|d| d.throughput.calls.cell()),
            |r| r.throughput.calls.cell(),
        ),
        (
            "`execute-transient` `import numpy` | `docker run --rm` `import numpy`",
            docker_cell(&|d| d.numpy.cell()),
            |r| r.numpy.cell(),
        ),
        (
            "… with `warm_imports` numpy (`PYTHON_DOCKER_MCP_WARM_IMPORTS=numpy`, pool full)",
            dash(),
            |r| r.warm_numpy.cell(),
        ),
        (
            "`execute-persistent` `x = 1`, 1 session, sequential calls: rate; per call p50 / p90 \
             | REPL helper pipe (sandbox profile), 1 pipe",
            docker_cell(&|d| parallel_cell(&d.parallel, 1)),
            |r| parallel_cell(&r.parallel, 1),
        ),
        (
            "… 2 sessions in parallel, one stream of sequential calls each | 2 pipes",
            docker_cell(&|d| parallel_cell(&d.parallel, 2)),
            |r| parallel_cell(&r.parallel, 2),
        ),
        (
            "… 4 sessions in parallel | 4 pipes",
            docker_cell(&|d| parallel_cell(&d.parallel, 4)),
            |r| parallel_cell(&r.parallel, 4),
        ),
        (
            "… 8 sessions in parallel | 8 pipes",
            docker_cell(&|d| parallel_cell(&d.parallel, 8)),
            |r| parallel_cell(&r.parallel, 8),
        ),
        ("shutdown: client closes stdin → server exited", dash(), |r| {
            r.shutdown.cell()
        }),
        ("containers it holds while idle, before shutdown", dash(), |r| {
            r.held_idle.map(|n| n.to_string()).unwrap_or_else(|| "—".into())
        }),
        ("containers left behind after exit, per start", dash(), |r| {
            format!("{:?}", r.leftover_containers)
        }),
    ];

    out.push_str("| Metric (MCP server \\| raw Docker reference) | raw Docker |");
    for (label, _) in servers {
        out.push_str(&format!(" {label} |"));
    }
    out.push_str("\n|---|---|");
    for _ in servers {
        out.push_str("---|");
    }
    out.push('\n');
    for (name, docker_value, f) in &rows {
        out.push_str(&format!(
            "| {} | {docker_value} |",
            name.replace('|', "\\|")
        ));
        for (_, r) in servers {
            let cell = match r {
                Ok(r) => f(r),
                Err(e) => format!("not run: {}", first_line(e, 120)),
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    for (label, r) in servers {
        if let Ok(ServerResults { note: Some(n), .. }) = r {
            out.push_str(&format!("\n{label}: {n}\n"));
        }
    }

    out.push_str(
        "\n<details><summary>All series (ms): min, p50, p90, max, mean, N, failures</summary>\n\n",
    );
    out.push_str("| Series | min | p50 | p90 | max | mean | N | failed |\n|---|---|---|---|---|---|---|---|\n");
    let mut series: Vec<(String, &Series)> = Vec::new();
    if let Some(d) = d {
        series.extend([
            ("docker run print(1)".to_string(), &d.run),
            (
                "docker run print(1), sandbox profile".into(),
                &d.run_profile,
            ),
            ("docker run -i → first echo".into(), &d.pipe_first),
            ("raw pipe round trip".into(), &d.pipe_rtt),
            ("docker run -i → REPL helper ready".into(), &d.helper_ready),
            ("raw pipe to REPL helper, exec x = 1".into(), &d.helper_rtt),
            ("docker exec true".into(), &d.exec),
            ("docker run, 8 in flight".into(), &d.throughput.calls),
            ("docker run import numpy".into(), &d.numpy),
        ]);
        for p in &d.parallel {
            series.push((
                format!("helper pipes, {} in parallel, exec x = 1", p.streams),
                &p.calls,
            ));
        }
    }
    for (label, r) in servers {
        if let Ok(r) = r {
            for (name, s) in [
                ("initialize", &r.init),
                ("first transient", &r.first_transient),
                ("pool full", &r.warm),
                ("transient print(1)", &r.transient),
                ("transient print(1), 1.5 s apart", &r.transient_spaced),
                ("new session", &r.new_session),
                ("persistent x = 1", &r.persistent),
                ("cleanup-session", &r.cleanup),
                ("transient, 8 in flight", &r.throughput.calls),
                ("transient import numpy", &r.numpy),
                ("shutdown", &r.shutdown),
            ] {
                series.push((format!("{label}: {name}"), s));
            }
            if r.warm_numpy_fill.n() + r.warm_numpy.n() + r.warm_numpy.failures.len() > 0 {
                series.push((
                    format!("{label}: pool full, warm_imports numpy"),
                    &r.warm_numpy_fill,
                ));
                series.push((
                    format!("{label}: transient import numpy, warm_imports numpy"),
                    &r.warm_numpy,
                ));
            }
            for p in &r.parallel {
                series.push((
                    format!(
                        "{label}: persistent x = 1, {} session(s) in parallel",
                        p.streams
                    ),
                    &p.calls,
                ));
            }
        }
    }
    let mut failures: Vec<(String, usize, String)> = Vec::new();
    for (name, s) in series {
        let mut distinct: Vec<(usize, &String)> = Vec::new();
        for f in &s.failures {
            match distinct.iter_mut().find(|(_, m)| *m == f) {
                Some((n, _)) => *n += 1,
                None => distinct.push((1, f)),
            }
        }
        for (n, m) in distinct {
            failures.push((name.clone(), n, m.clone()));
        }
        let v = s.sorted();
        let cell = |x: Option<f64>| x.map(fmt_ms).unwrap_or_else(dash);
        let mean = if v.is_empty() {
            None
        } else {
            Some(v.iter().sum::<f64>() / v.len() as f64)
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell(v.first().copied()),
            cell(s.pct(50.0)),
            cell(s.pct(90.0)),
            cell(v.last().copied()),
            cell(mean),
            s.n(),
            s.failures.len()
        ));
    }
    out.push_str("\n</details>\n");
    if !failures.is_empty() {
        out.push_str("\nFailures (distinct messages):\n\n");
        for (name, n, msg) in failures {
            out.push_str(&format!(
                "- {name} ({n}×): `{}`\n",
                first_line(&msg, 400).replace('`', "'")
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------

async fn bench_docker(p: &DockerPlan) -> DockerResults {
    progress!("[docker] docker run --rm print(1) ×{}", p.run);
    let run = docker_run_series(p.run, &[], "print(1)", "1").await;
    progress!(
        "[docker] docker run --rm <sandbox profile> print(1) ×{}",
        p.run
    );
    let run_profile = docker_run_series(p.run, PROFILE_FLAGS, "print(1)", "1").await;
    progress!(
        "[docker] raw pipe: {} starts, {} round trips",
        p.pipe_starts,
        p.pipe_round_trips
    );
    let (pipe_first, pipe_rtt) = raw_pipe(ECHO_LOOP, p.pipe_starts, p.pipe_round_trips).await;
    progress!(
        "[docker] raw pipe to the REPL helper: {} starts, {} round trips",
        p.pipe_starts,
        p.pipe_round_trips
    );
    let (helper_ready, helper_rtt) = raw_pipe(HELPER, p.pipe_starts, p.pipe_round_trips).await;
    progress!(
        "[docker] REPL helper pipes with the sandbox profile, {:?} in parallel, {} round trips each, {} round(s)",
        p.parallel_levels,
        p.parallel_calls,
        p.parallel_rounds
    );
    let parallel = raw_parallel(p.parallel_levels, p.parallel_calls, p.parallel_rounds).await;
    progress!("[docker] docker exec <running container> true ×{}", p.exec);
    let exec = docker_exec_series(p.exec).await;
    progress!(
        "[docker] docker run --rm ×{} ({IN_FLIGHT} in flight)",
        p.throughput
    );
    let throughput = throughput(p.throughput, 0, |_| docker_run_once(&[], "print(1)", "1")).await;
    progress!("[docker] docker run --rm import numpy ×{}", p.numpy);
    let numpy = docker_run_series(
        p.numpy,
        &[],
        "import numpy\nprint(numpy.ones(3).sum())",
        "3.0",
    )
    .await;
    DockerResults {
        run,
        run_profile,
        pipe_first,
        pipe_rtt,
        helper_ready,
        helper_rtt,
        exec,
        throughput,
        numpy,
        parallel,
    }
}

async fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let started = *START.get_or_init(Instant::now);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out_dir = root.join("target/bench-e2e");
    std::fs::create_dir_all(&out_dir)?;
    // Logs of an earlier run would be mistaken for this one's.
    for entry in std::fs::read_dir(&out_dir)?.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".stderr.log") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let scratch = std::env::temp_dir().join(format!("pdm-bench-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;

    docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .await
        .with_context(|| {
            format!("the sandbox image {IMAGE} is needed: run scripts/build-image.sh")
        })?;
    let machine = machine().await;
    let load_before = load().await;
    let (docker_plan, our_plan, original_plan) = plans(args.quick);

    // Warm the image's page cache so the first measured start is not a cold disk read.
    let _ = docker_run_once(&[], "import numpy; print(1)", "1").await;

    let d = if args.skip_docker {
        None
    } else {
        Some(bench_docker(&docker_plan).await)
    };

    let mut servers: Vec<(String, Result<ServerResults, String>)> = Vec::new();
    if !args.skip_ours {
        let pools = args.pools.clone().unwrap_or_else(|| {
            if args.quick {
                vec![Pool::Default]
            } else {
                vec![Pool::On, Pool::Off]
            }
        });
        for pool in pools {
            let home = scratch.join(format!("home-ours-{pool:?}"));
            std::fs::create_dir_all(&home)?;
            match ours(pool, &home) {
                Ok((t, note)) => {
                    progress!("[{}] {note}", t.label);
                    let mut r = bench_server(&t, our_plan, &out_dir).await;
                    r.note = Some(note);
                    servers.push((t.label.clone(), Ok(r)));
                }
                Err(e) => servers.push(("python-docker-mcp (Rust)".into(), Err(format!("{e:#}")))),
            }
        }
    }
    if !args.skip_original {
        let home = scratch.join("home-original");
        std::fs::create_dir_all(&home)?;
        match original(&args, &home) {
            Ok(t) => {
                progress!("[{}]", t.label);
                let mut r = bench_server(&t, original_plan, &out_dir).await;
                r.note = Some(format!(
                    "image {ORIGINAL_IMAGE} (the sandbox image plus a `python` symlink), pool_enabled: {}, \
                     pool_size: 32, allowed_modules: [] (so `import numpy` passes its validator).",
                    args.original_pool
                ));
                servers.push((t.label.clone(), Ok(r)));
            }
            Err(e) => {
                progress!("  original not run: {e:#}");
                servers.push((
                    "python-docker-mcp 0.2.5 (Python)".into(),
                    Err(format!("{e:#}")),
                ));
            }
        }
    }

    let load_after = load().await;
    let text = report(
        args.quick,
        &machine,
        &load_before,
        &load_after,
        started.elapsed(),
        d.as_ref(),
        &servers,
    );
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
    // `cargo bench` passes --bench. `cargo test --all-targets` (or --benches) runs this
    // binary without it: minutes of Docker load are not a unit test, so say so and pass.
    // (Run the binary by hand with --bench to measure.)
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "e2e bench: not run under `cargo test`; run `cargo bench --bench e2e` (or with -- --quick)"
        );
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("e2e bench: {e:#}");
        std::process::exit(1);
    }
}
