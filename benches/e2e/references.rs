//! The references measured next to the MCP servers, through the Docker CLI: `docker run
//! --rm` (plain and with the sandbox profile), the raw `docker run -i` pipe (an echo loop,
//! and the daemon's own REPL helper), `docker exec`, and their parallel and throughput
//! forms. Also the CLI helpers the other modules use.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use python_docker_mcp::Config;
use python_docker_mcp::{runtime::docker, sandbox};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::plan::{DockerPlan, Phase, Phases};
use crate::samples::{ms_since, throughput, Parallel, Rate, Series};
use crate::{CALL_TIMEOUT, IMAGE, IN_FLIGHT};

/// The sandbox profile our daemon applies with its default configuration (a clean `HOME`,
/// as the bench starts it), as `docker run` flags, from the crate itself.
pub static PROFILE_FLAGS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    docker::docker_run_flags(&Config::defaults())
        .into_iter()
        .map(|f| &*f.leak())
        .collect()
});

/// Echo loop for the raw pipe round trip: one JSON line in, one JSON line out.
const ECHO_LOOP: &str = "import json, sys\n\
while True:\n    \
    line = sys.stdin.readline()\n    \
    if not line:\n        break\n    \
    msg = json.loads(line)\n    \
    sys.stdout.write(json.dumps({'op': 'result', 'id': msg['id'], 'stdout': '', 'value': None}) + '\\n')\n";

/// The daemon's REPL helper, run over a plain `docker run -i` pipe for the reference.
const HELPER: &str = sandbox::HELPER;

/// `docker ARGS`' stdout, or an error with its stderr (the benches' shared one).
pub use crate::common::host::docker;

pub async fn docker_lines(args: &[&str]) -> BTreeSet<String> {
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
pub async fn docker_run_once(extra: &[&str], code: &str, expect: &str) -> Result<(), String> {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[IMAGE, "python3", "-c", code]);
    match docker(&args).await {
        Ok(out) if out.trim() == expect => Ok(()),
        Ok(out) => Err(format!("unexpected output {out:?}")),
        Err(e) => Err(e.to_string()),
    }
}

pub async fn docker_run_series(n: usize, extra: &[&str], code: &str, expect: &str) -> Series {
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
pub async fn raw_pipe(code: &str, starts: usize, round_trips: usize) -> (Series, Series) {
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

pub async fn raw_pipe_once(
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
pub struct Pipe {
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
pub async fn raw_parallel(levels: &[usize], calls: usize, rounds: usize) -> Vec<Parallel> {
    let max = levels.iter().copied().max().unwrap_or(0);
    let started: Vec<anyhow::Result<Pipe>> =
        futures::future::join_all((0..max).map(|_| Pipe::start(HELPER, &PROFILE_FLAGS))).await;
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
pub async fn pipe_round_trip(
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
pub async fn docker_exec_series(n: usize) -> Series {
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

#[derive(Default)]
pub struct DockerResults {
    pub run: Series,
    pub run_profile: Series,
    pub pipe_first: Series,
    pub pipe_rtt: Series,
    pub helper_ready: Series,
    pub helper_rtt: Series,
    pub exec: Series,
    pub throughput: Rate,
    pub numpy: Series,
    /// Helper pipes with the sandbox profile, concurrent streams, one entry per level.
    pub parallel: Vec<Parallel>,
}

/// The references the chosen phases are compared with (see [`Phase`]).
pub async fn bench_docker(p: &DockerPlan, phases: &Phases) -> DockerResults {
    let mut d = DockerResults::default();
    if phases.has(Phase::Transient) || phases.has(Phase::Refill) {
        progress!("[docker] docker run --rm print(1) ×{}", p.run);
        d.run = docker_run_series(p.run, &[], "print(1)", "1").await;
    }
    if phases.has(Phase::Transient) {
        progress!(
            "[docker] docker run --rm <sandbox profile> print(1) ×{}",
            p.run
        );
        d.run_profile = docker_run_series(p.run, &PROFILE_FLAGS, "print(1)", "1").await;
    }
    if phases.has(Phase::Sessions) || phases.has(Phase::Persistent) {
        progress!(
            "[docker] raw pipe: {} starts, {} round trips",
            p.pipe_starts,
            p.pipe_round_trips
        );
        (d.pipe_first, d.pipe_rtt) = raw_pipe(ECHO_LOOP, p.pipe_starts, p.pipe_round_trips).await;
        progress!(
            "[docker] raw pipe to the REPL helper: {} starts, {} round trips",
            p.pipe_starts,
            p.pipe_round_trips
        );
        (d.helper_ready, d.helper_rtt) = raw_pipe(HELPER, p.pipe_starts, p.pipe_round_trips).await;
    }
    if phases.has(Phase::Parallel) {
        progress!(
            "[docker] REPL helper pipes with the sandbox profile, {:?} in parallel, {} round trips each, {} round(s)",
            p.parallel_levels,
            p.parallel_calls,
            p.parallel_rounds
        );
        d.parallel = raw_parallel(p.parallel_levels, p.parallel_calls, p.parallel_rounds).await;
    }
    if phases.has(Phase::Persistent) {
        progress!("[docker] docker exec <running container> true ×{}", p.exec);
        d.exec = docker_exec_series(p.exec).await;
    }
    if phases.has(Phase::Throughput) {
        progress!(
            "[docker] docker run --rm ×{} ({IN_FLIGHT} in flight)",
            p.throughput
        );
        d.throughput = throughput(p.throughput, 0, |_| docker_run_once(&[], "print(1)", "1")).await;
    }
    if phases.has(Phase::Numpy) {
        progress!("[docker] docker run --rm import numpy ×{}", p.numpy);
        d.numpy = docker_run_series(
            p.numpy,
            &[],
            "import numpy\nprint(numpy.ones(3).sum())",
            "3.0",
        )
        .await;
    }
    d
}
