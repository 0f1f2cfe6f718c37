//! Browser sandboxes (issue 22, "Measured"): the browser image's size, the time to the
//! first screenshot of a local page in a new browser session taken from a warm pool and in
//! a session whose browser is already open, and the memory an idle browser session holds.
//! A stdio daemon of this crate's release binary with the profile `browser` on
//! python-docker-mcp:browser (1 GB, 1 CPU, one sandbox kept warm).
//!
//! ```text
//! scripts/build-image.sh --browser && cargo build --release && cargo bench --bench browser
//! cargo bench --bench browser -- --runs 10
//! ```
//!
//! The image's build time is not re-measured here (a cold build downloads about 300 MB of
//! packages); `scripts/build-image.sh --browser` prints it, and docs/BENCHMARKS.md records it.
//!
//! Runs only with `--bench` (which `cargo bench` passes): under `cargo test --all-targets`
//! it prints a note and passes.

#[path = "common/mod.rs"]
mod common;
use common::{arg, median, rpc};
use python_docker_mcp::sandbox::labels;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

const IMAGE: &str = "python-docker-mcp:browser";

/// The page every screenshot renders: a file in the sandbox.
const OPEN: &str = "from playwright.sync_api import sync_playwright\n\
open('/app/page.html', 'w').write(\"<div style='width:120px;height:80px;background:red'></div>\")\n\
pw = sync_playwright().start()\n\
browser = pw.chromium.launch()\n\
page = browser.new_page(viewport={'width': 400, 'height': 300})\n\
page.goto('file:///app/page.html')\n\
page.screenshot()";

fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The images in a tool result.
fn image_count(result: &Value) -> usize {
    result["content"]
        .as_array()
        .map(|c| c.iter().filter(|i| i["type"] == "image").count())
        .unwrap_or(0)
}

fn main() {
    if !common::under_cargo_bench("browser", "") {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let runs = arg(&args, "--runs", 10) as usize;
    let bin = common::daemon::release_binary();
    let bin = bin.to_str().expect("a UTF-8 path");
    assert!(
        std::path::Path::new(bin).exists(),
        "build the release binary first: cargo build --release"
    );
    print_image_sizes();

    let env = [
        ("PYTHON_DOCKER_MCP_SESSION_DURABLE", "false".to_string()),
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true".to_string()),
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "0".to_string()),
        (
            "PYTHON_DOCKER_MCP_PROFILES",
            "{browser: {image: python-docker-mcp:browser, memory_limit: 1g, shm_size: 256m, \
             pids_limit: 512, cpu_limit: 1, timeout: 120, pool_size: 1}}"
                .to_string(),
        ),
    ];
    let mut rpc = rpc::Rpc::start(bin, "browser", &env);
    let mut first = Vec::new();
    let mut open = Vec::new();
    let mut idle = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..runs {
        wait_for_warm(&rpc, sessions.len());
        let round = one_session(&mut rpc);
        first.push(round.first);
        open.extend(round.open);
        idle.push(round.idle_mib);
        sessions.push(round.id);
        // Keep at most two sessions open: the host has little memory to spare.
        if sessions.len() >= 2 {
            let id = sessions.remove(0);
            rpc.tool("cleanup-session", json!({"session_id": id}));
        }
    }
    println!(
        "first screenshot, new session from a warm pool (start Playwright, launch, open, shoot): \
         median {:.0} ms over {runs}",
        median(first.clone())
    );
    println!(
        "screenshot in a session whose browser is open: median {:.0} ms over {}",
        median(open.clone()),
        open.len()
    );
    println!(
        "memory of an idle browser session (browser open, one page): median {:.0} MiB",
        median(idle.clone())
    );
    rpc.close();
}

/// The browser image's size and the sandbox image's under it.
fn print_image_sizes() {
    let size = docker(&["image", "inspect", "-f", "{{.Size}}", IMAGE]);
    let base = docker(&[
        "image",
        "inspect",
        "-f",
        "{{.Size}}",
        "python-docker-mcp:latest",
    ]);
    let gb = |s: &str| s.parse::<f64>().unwrap_or(0.0) / 1e9;
    println!(
        "image: {IMAGE} {:.2} GB (the sandbox image under it: {:.2} GB)",
        gb(&size),
        gb(&base)
    );
}

/// Wait (120 s at most) until the browser profile's pool holds a warm sandbox beside the
/// `open` sessions, then a second more.
fn wait_for_warm(rpc: &rpc::Rpc, open: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let warm = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label={}={}", labels::PID, rpc.pid()),
            "--filter",
            &format!("label={}=browser", labels::PROFILE),
        ]);
        if warm.lines().count() > open {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
}

/// What one browser session measured.
struct Round {
    /// The session's first call (start Playwright, launch, open, screenshot), ms.
    first: f64,
    /// Screenshots with the browser open, ms.
    open: Vec<f64>,
    /// The idle session's memory cgroup, MiB.
    idle_mib: f64,
    id: String,
}

/// A new browser session from the warm pool: its first screenshot, three more with the
/// browser open, and its memory once idle.
fn one_session(rpc: &mut rpc::Rpc) -> Round {
    let mut open = Vec::new();
    // New session from the warm pool: start Playwright, launch, open, screenshot.
    let (result, took) = rpc.tool(
        "execute-persistent",
        json!({"code": OPEN, "profile": "browser"}),
    );
    assert_eq!(image_count(&result), 1, "a screenshot");
    let first = ms(took);
    let id = result["structuredContent"]["session_id"]
        .as_str()
        .expect("a session")
        .to_string();
    // The browser is open: one more screenshot of the same page.
    for _ in 0..3 {
        let (result, took) = rpc.tool(
            "execute-persistent",
            json!({"code": "page.screenshot()", "session_id": id}),
        );
        assert_eq!(image_count(&result), 1);
        open.push(ms(took));
    }
    // Idle: the container's own memory cgroup (cgroup v1 inside the container), which
    // is what counts against the limit: the browser, the helper and the tmpfs pages.
    std::thread::sleep(Duration::from_secs(2));
    let (result, _) = rpc.tool(
        "execute-persistent",
        json!({"code": "import os\nmax(int(open(p).read()) for p in ('/sys/fs/cgroup/memory/memory.usage_in_bytes', '/sys/fs/cgroup/memory.current') if os.path.exists(p))",
               "session_id": id}),
    );
    let bytes: f64 = result["structuredContent"]["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Round {
        first,
        open,
        idle_mib: bytes / (1 << 20) as f64,
        id,
    }
}
