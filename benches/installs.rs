//! Installs end to end (issue 11, "Installs"): `install-package` through the release binary
//! over stdio with a raw JSON-RPC client, next to `docker run --rm IMAGE python3 -c pass` in
//! the same run.
//!
//! ```text
//! cargo build --release && cargo bench --bench installs
//! cargo bench --bench installs -- --rounds 9 --image python-docker-mcp:latest
//! cargo bench --bench installs -- --installer pip        # the fallback, for the A/B
//! ```
//!
//! Rows (each the client's round trip of one `install-package` call):
//! - **cached, into a session**: a new session each round, then [`CACHED`] into it; its
//!   wheel is in the download cache (one install before the rounds puts it there).
//! - **not cached, into a session**: each of [`FRESH_SESSION`] once, into one session; their
//!   entries in the download cache (wheelhouse and uv's cache) are removed first, so the
//!   installer resolves against the index and downloads each wheel (small pure-Python
//!   wheels of tens of KB: the download itself is a few ms of it).
//! - **cached / not cached, shared environment**: the same without `session_id` (into the
//!   environment transient runs and new sessions see), [`FRESH_SHARED`] for the uncached.
//! - **reference**: `docker run --rm IMAGE python3 -c pass`, the floor of any installer
//!   that runs in a container of its own.
//!
//! Runs only with `--bench` (which `cargo bench` passes): under `cargo test --all-targets`
//! it prints a note and passes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use python_docker_mcp::sandbox::CACHE_VOLUME;
use serde_json::json;

#[path = "common/mod.rs"]
mod common;
use common::rpc::Rpc;

/// A small pure-Python wheel installed in every cached round.
const CACHED: &str = "six";
/// Small pure-Python wheels without dependencies, not in the image, each installed once
/// with nothing of it in the download cache.
const FRESH_SESSION: &[&str] = &["tomli-w", "pyjokes", "termcolor", "tabulate", "iniconfig"];
const FRESH_SHARED: &[&str] = &[
    "toml",
    "inflection",
    "colorama",
    "wcwidth",
    "text-unidecode",
];

#[derive(Parser)]
struct Args {
    /// `cargo bench` passes it; without it (`cargo test`) nothing runs.
    #[arg(long)]
    bench: bool,
    /// Rounds of each cached row and of the reference.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// The binary to run.
    #[arg(long)]
    bin: Option<String>,
    /// The sandbox image (the daemon's `docker.image`).
    #[arg(
        long,
        env = "PYTHON_DOCKER_MCP_IMAGE",
        default_value = "python-docker-mcp:latest"
    )]
    image: String,
    /// The daemon's `package.installer` (uv runs only when the image has it).
    #[arg(long, default_value = "uv")]
    installer: String,
    /// Anything else cargo passes (filters).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

/// One install; its round trip and the installer that ran.
fn install(rpc: &mut Rpc, package: &str, session: Option<&str>) -> (Duration, String) {
    let mut args = json!({"package_name": package});
    if let Some(id) = session {
        args["session_id"] = json!(id);
    }
    let (result, took) = rpc.tool("install-package", args);
    let installer = result["structuredContent"]["installer"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    (took, installer)
}

/// Remove `packages` from the download cache: their wheels in the wheelhouse and their
/// entries in uv's cache (when the image has uv), so the next install asks the index.
fn forget(image: &str, packages: &[&str]) {
    let mut script = String::from("set -e\n");
    for p in packages {
        let wheel = p.replace('-', "_");
        script.push_str(&format!(
            "rm -f /cache/wheels/{wheel}-*.whl /cache/wheels/{p}-*.whl\n\
             if command -v uv >/dev/null; then uv cache clean --cache-dir /cache/uv {p} >/dev/null 2>&1 || true; fi\n"
        ));
    }
    let status = Command::new("docker")
        .args(["run", "--rm", "--user", "0:0", "--network", "none", "-v"])
        .arg(format!("{CACHE_VOLUME}:/cache"))
        .args([image, "sh", "-c", &script])
        .stdout(Stdio::null())
        .status()
        .expect("docker run");
    assert!(status.success(), "clearing the cache entries failed");
}

/// `docker run --rm IMAGE python3 -c pass`, timed.
fn docker_run_pass(image: &str) -> Duration {
    let started = Instant::now();
    let status = Command::new("docker")
        .args(["run", "--rm", image, "python3", "-c", "pass"])
        .status()
        .expect("docker run");
    assert!(status.success());
    started.elapsed()
}

/// Nearest-rank percentile of sorted samples, in ms.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn row(what: &str, mut samples: Vec<Duration>, installer: &str) {
    samples.sort();
    println!(
        "| {what} | {} | {:.0} ms | {:.0} ms | {installer} |",
        samples.len(),
        pct(&samples, 0.5),
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    );
}

fn main() {
    // Before parsing: `cargo test` passes its own flags (`--test-threads`).
    if !common::under_cargo_bench("installs", "") {
        return;
    }
    let args = Args::parse();
    let bin = args.bin.clone().unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        format!("{target}/release/python-docker-mcp")
    });
    let image = &args.image;
    let mut rpc = Rpc::start(
        &bin,
        "installs",
        &[
            ("PYTHON_DOCKER_MCP_IMAGE", image.to_string()),
            ("PYTHON_DOCKER_MCP_INSTALLER", args.installer.clone()),
            ("PYTHON_DOCKER_MCP_POOL_SIZE", "2".into()),
        ],
    );

    // The cached package, into the download cache (not timed).
    let warm = rpc.new_session("1");
    install(&mut rpc, CACHED, Some(&warm));
    install(&mut rpc, CACHED, None);

    let (mut session_cached, mut installer) = (Vec::new(), String::new());
    for _ in 0..args.rounds {
        let id = rpc.new_session("1");
        let (took, used) = install(&mut rpc, CACHED, Some(&id));
        session_cached.push(took);
        installer = used;
    }
    forget(image, FRESH_SESSION);
    let id = rpc.new_session("1");
    let session_fresh: Vec<Duration> = FRESH_SESSION
        .iter()
        .map(|p| install(&mut rpc, p, Some(&id)).0)
        .collect();
    let shared_cached: Vec<Duration> = (0..args.rounds)
        .map(|_| install(&mut rpc, CACHED, None).0)
        .collect();
    forget(image, FRESH_SHARED);
    let shared_fresh: Vec<Duration> = FRESH_SHARED
        .iter()
        .map(|p| install(&mut rpc, p, None).0)
        .collect();
    drop(rpc);
    let reference: Vec<Duration> = (0..args.rounds).map(|_| docker_run_pass(image)).collect();

    println!(
        "binary: {bin}; image: {image}; package.installer: {}",
        args.installer
    );
    println!("| install-package | N | p50 | max | installer |");
    println!("|---|---|---|---|---|");
    row(
        &format!("`{CACHED}`, cached, into a new session"),
        session_cached,
        &installer,
    );
    row("not cached, into a session", session_fresh, &installer);
    row(
        &format!("`{CACHED}`, cached, shared environment"),
        shared_cached,
        &installer,
    );
    row("not cached, shared environment", shared_fresh, &installer);
    row(
        "reference: `docker run --rm IMAGE python3 -c pass`",
        reference,
        "-",
    );
}
