//! End-to-end benchmark: python-docker-mcp driven as an agent drives it, next to the raw
//! Docker engine and the original Python package, in one run on one machine.
//!
//! ```text
//! cargo bench --bench e2e                        # full run (pool on and off)
//! cargo bench --bench e2e -- --quick             # short run (default config)
//! cargo bench --bench e2e -- --pool both         # our daemon with pool_enabled on and off
//! cargo bench --bench e2e -- --skip original     # skip a part: docker, ours, original
//! cargo bench --bench e2e -- --only after-spawn  # only some phases (see --help)
//! ```
//!
//! Every MCP figure goes through rmcp's real client over a real stdio child process
//! (`TokioChildProcess`), against the real Docker engine. Each server gets a clean `HOME`
//! (a temp dir) and no inherited `PYTHON_DOCKER_MCP_*` variables. The original Python
//! package (python-docker-mcp 0.2.5 from PyPI) is set up by `scripts/bench-original.sh`,
//! which this bench runs first; every container the original leaves behind is removed
//! after each of its runs (found by its own image, never by our label).
//!
//! Output: markdown tables (p50 / p90 from sorted samples, nearest rank, with N) plus a
//! details table, on stdout and in `target/bench-e2e/last-run.md`. The servers' stderr
//! goes to `target/bench-e2e/*.stderr.log`. What each row means: docs/BENCHMARKS.md.
//!
//! # Layout
//! - `plan`: the command line, the phases, how many samples each gets.
//! - `references`: `docker run --rm`, the raw pipe, `docker exec`: the engine's own floor.
//! - `servers`: starting ours and the original, calling tools, pool waits, sweeps.
//! - `phases`: the phases on one running server (starts, steady state, parallel sessions).
//! - `after_spawn`, `refill`, `install`: the phases of issue 11.
//! - `samples`: series, rates and their cells; `report`: the tables.
//!
//! Runs only with `--bench` (which `cargo bench` passes): under `cargo test --all-targets`
//! it prints a note and passes instead of loading Docker for minutes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Progress on stderr, with the time since the bench started.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!(
            "[{:6.1}s] {}",
            $crate::START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64(),
            format!($($arg)*)
        )
    };
}

#[path = "../common/mod.rs"]
mod common;

mod after_spawn;
mod install;
mod phases;
mod plan;
mod references;
mod refill;
mod report;
mod samples;
mod servers;

use plan::{Args, Part, Phase, Pool};
use references::{docker, docker_run_once};

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

async fn run(args: Args) -> anyhow::Result<()> {
    let started = *START.get_or_init(Instant::now);
    let phases = args.phases();
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
    let machine = report::machine().await;
    let load_before = report::load().await;
    let (docker_plan, our_plan, original_plan) = plan::plans(args.quick);
    progress!("phases: {}", phases.names());

    // Warm the image's page cache so the first measured start is not a cold disk read.
    let _ = docker_run_once(&[], "import numpy; print(1)", "1").await;

    let d = if args.skips(Part::Docker) {
        None
    } else {
        Some(references::bench_docker(&docker_plan, &phases).await)
    };

    let mut after = None;
    if !args.skips(Part::Ours) && phases.has(Phase::AfterSpawn) && our_plan.after_spawn > 0 {
        let home = scratch.join("home-after-spawn");
        std::fs::create_dir_all(&home)?;
        match (
            servers::ours(Pool::Default, &home),
            servers::ours(Pool::Off, &home),
        ) {
            (Ok((mut on, on_note)), Ok((mut off, off_note))) => {
                on.log_prefix = "after-spawn-default".into();
                off.log_prefix = "after-spawn-off".into();
                let mut a = after_spawn::measure(&on, &off, our_plan.after_spawn, &out_dir).await;
                a.notes = vec![format!("default: {on_note}"), format!("off: {off_note}")];
                after = Some(a);
            }
            (Err(e), _) | (_, Err(e)) => progress!("  after spawn not run: {e:#}"),
        }
    }

    let mut servers: Vec<(String, Result<phases::ServerResults, String>)> = Vec::new();
    if !args.skips(Part::Ours) {
        for (i, pool) in args.pools().into_iter().enumerate() {
            let home = scratch.join(format!("home-ours-{pool:?}"));
            std::fs::create_dir_all(&home)?;
            match servers::ours(pool, &home) {
                Ok((t, note)) => {
                    progress!("[{}] {note}", t.label);
                    // Installs in the first configuration only: each uncached package
                    // can be installed once.
                    let run = phases::Run {
                        plan: our_plan,
                        phases: &phases,
                        logs: &out_dir,
                        installs: i == 0,
                    };
                    let mut r = phases::bench_server(&t, &run).await;
                    r.note = Some(note);
                    servers.push((t.label.clone(), Ok(r)));
                }
                Err(e) => servers.push(("python-docker-mcp (Rust)".into(), Err(format!("{e:#}")))),
            }
        }
    }
    if !args.skips(Part::Original) {
        let home = scratch.join("home-original");
        std::fs::create_dir_all(&home)?;
        match servers::original(&args, &home) {
            Ok(t) => {
                progress!("[{}]", t.label);
                let run = phases::Run {
                    plan: original_plan,
                    phases: &phases,
                    logs: &out_dir,
                    installs: false,
                };
                let mut r = phases::bench_server(&t, &run).await;
                r.note = Some(format!(
                    "image {ORIGINAL_IMAGE} (the sandbox image plus a `python` symlink), pool_enabled: {}, \
                     pool_size: 32, allowed_modules: [] (so `import numpy` passes its validator).",
                    args.original_pool == plan::OnOff::On
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

    let load_after = report::load().await;
    let text = report::report(&report::Run {
        quick: args.quick,
        phases: &phases,
        machine: &machine,
        load_before: &load_before,
        load_after: &load_after,
        elapsed: started.elapsed(),
        docker: d.as_ref(),
        after_spawn: after.as_ref(),
        servers: &servers,
    });
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
    if !common::under_cargo_bench("e2e", "-- --quick") {
        return;
    }
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("e2e bench: {e:#}");
        std::process::exit(1);
    }
}
