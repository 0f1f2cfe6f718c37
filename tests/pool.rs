//! The warm pool against the real engine: filling in the background, max age, health,
//! single use, exhaustion, a broken image (back-off, recovery, `doctor`), OOM kills
//! reported by the engine, orphans and clean exit. Speed is never asserted here (the
//! benchmark measures it), only bounds far from normal: "at once" and "not back to back".

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const POOL_ON: (&str, &str) = ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true");

fn sandboxes(pid: u32) -> Vec<String> {
    containers_with_role(pid, "sandbox")
}

/// The container's hostname, which Docker sets to the first 12 characters of its id.
async fn hostname_of_run(d: &Daemon) -> String {
    let r = d.transient("import socket\nsocket.gethostname()").await;
    assert_ok(&r);
    value(&r)
        .expect("a hostname")
        .trim_matches('\'')
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pool_fills_to_its_size_in_the_background() {
    let mut d = Daemon::start_with(&[POOL_ON, ("PYTHON_DOCKER_MCP_POOL_SIZE", "3")]).await;
    let pid = d.pid;
    assert!(
        eventually(Duration::from_secs(60), || sandboxes(pid).len() == 3).await,
        "three warm sandboxes: {:?}",
        sandboxes(pid)
    );
    // It stays at its size: no more are made while nobody asks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sandboxes(pid).len(), 3);
    // Taking one for a session refills the pool to its size again.
    let id = d.new_session("x = 1").await;
    assert!(
        eventually(Duration::from_secs(60), || sandboxes(pid).len() == 4).await,
        "the session's sandbox plus three warm ones: {:?}",
        sandboxes(pid)
    );
    let r = d.persistent_ok("x + 1", &id).await;
    assert_eq!(value(&r).as_deref(), Some("2"));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_sandboxes_past_their_max_age_are_replaced() {
    let mut d = Daemon::start_with(&[
        POOL_ON,
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "2"),
        ("PYTHON_DOCKER_MCP_POOL_MAX_AGE", "3s"),
    ])
    .await;
    let pid = d.pid;
    assert!(eventually(Duration::from_secs(60), || sandboxes(pid).len() == 2).await);
    let first: HashSet<String> = sandboxes(pid).into_iter().collect();
    let replaced = eventually(Duration::from_secs(60), || {
        let now: HashSet<String> = sandboxes(pid).into_iter().collect();
        now.len() == 2 && now.is_disjoint(&first)
    })
    .await;
    assert!(
        replaced,
        "both warm sandboxes were retired and replaced: first {first:?}, now {:?}",
        sandboxes(pid)
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_warm_sandbox_is_never_handed_out() {
    let mut d = Daemon::start_with(&[POOL_ON, ("PYTHON_DOCKER_MCP_POOL_SIZE", "2")]).await;
    let pid = d.pid;
    assert!(eventually(Duration::from_secs(60), || sandboxes(pid).len() == 2).await);
    let killed: Vec<String> = sandboxes(pid);
    let status = std::process::Command::new("docker")
        .arg("kill")
        .args(&killed)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("docker kill");
    assert!(status.success());
    // Asked at once: the dead ones may still sit in the pool, but must not be used.
    let host = hostname_of_run(&d).await;
    assert!(
        !killed.iter().any(|id| id.starts_with(&host)),
        "a killed sandbox ({host}) was handed out; killed: {killed:?}"
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_runs_from_the_pool_never_share_a_sandbox() {
    let mut d = Daemon::start_with(&[POOL_ON, ("PYTHON_DOCKER_MCP_POOL_SIZE", "3")]).await;
    let pid = d.pid;
    assert!(eventually(Duration::from_secs(60), || sandboxes(pid).len() == 3).await);
    let mut hosts = HashSet::new();
    for i in 0..5 {
        let r = d
            .transient(&format!(
                "import os, socket, glob\nseen = glob.glob('/tmp/mark-*') + glob.glob('mark-*')\n\
                 open(f'/tmp/mark-{i}', 'w').write('x'); open('mark-{i}', 'w').write('x')\n\
                 print(socket.gethostname()); seen"
            ))
            .await;
        assert_ok(&r);
        assert_eq!(
            value(&r).as_deref(),
            Some("[]"),
            "run {i} saw an earlier run's files"
        );
        assert!(
            hosts.insert(stdout(&r).trim().to_string()),
            "run {i} reused a sandbox"
        );
    }
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_pool_makes_callers_wait_then_serves_them_all() {
    let mut d = Daemon::start_with(&[
        POOL_ON,
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "1"),
        ("PYTHON_DOCKER_MCP_MAX_CONCURRENT_CREATIONS", "1"),
    ])
    .await;
    let calls = (0..4).map(|i| d.transient_with_state("n * 10", json!({ "n": i })));
    let results = futures::future::join_all(calls).await;
    for (i, r) in results.iter().enumerate() {
        assert_ok(r);
        assert_eq!(value(r), Some((i * 10).to_string()), "{}", describe(r));
    }
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn when_no_sandbox_can_be_made_the_caller_is_told_why() {
    // The image is missing: creation fails, and the waiting call hears it at once.
    let mut d = Daemon::start_with(&[
        POOL_ON,
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "2"),
        ("PYTHON_DOCKER_MCP_IMAGE", "pdm-no-such-image:latest"),
    ])
    .await;
    let r = d.transient("1").await;
    assert_tool_error(&r, "python-docker-mcp image build");
    let r = d.persistent("1", None).await;
    assert_tool_error(&r, "python-docker-mcp image build");
    d.finish().await;

    // Nothing ready and no time to wait: the call fails and says what to tune.
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_POOL_WAIT_TIMEOUT", "1ms")]).await;
    let r = d.transient("1").await;
    assert_tool_error(&r, "pool_wait_timeout");
    // And the daemon still serves once there is time: the sandbox that call asked for is
    // made anyway and kept ready, so a later call gets it at once.
    let started = Instant::now();
    let served = loop {
        let r = d.transient("6 * 7").await;
        if !is_error(&r) {
            break r;
        }
        assert_tool_error(&r, "pool_wait_timeout");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no call was served within a minute: {}",
            describe(&r)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        value(&served).as_deref(),
        Some("42"),
        "{}",
        describe(&served)
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_daemons_pool_is_left_alone_by_a_new_daemon() {
    let mut a = Daemon::start_with(&[POOL_ON, ("PYTHON_DOCKER_MCP_POOL_SIZE", "2")]).await;
    let a_pid = a.pid;
    assert!(eventually(Duration::from_secs(60), || sandboxes(a_pid).len() == 2).await);
    let before: HashSet<String> = sandboxes(a_pid).into_iter().collect();

    let mut b = Daemon::start().await;
    // B sweeps for orphans once Docker answers; a call of its own proves it is up.
    let r = b.transient("1").await;
    assert_ok(&r);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: HashSet<String> = sandboxes(a_pid).into_iter().collect();
    assert_eq!(before, after, "a live daemon's sandboxes were touched");
    let r = a.transient("2").await;
    assert_eq!(value(&r).as_deref(), Some("2"));
    b.finish().await;
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_imports_are_loaded_before_a_sandbox_is_handed_out() {
    let mut d = Daemon::start_with(&[
        POOL_ON,
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "1"),
        ("PYTHON_DOCKER_MCP_WARM_IMPORTS", "json,decimal"),
    ])
    .await;
    let pid = d.pid;
    assert!(eventually(Duration::from_secs(60), || sandboxes(pid).len() == 1).await);
    // Already in sys.modules, but not in the user's namespace.
    let r = d
        .transient("import sys\n('decimal' in sys.modules, 'decimal' in dir())")
        .await;
    assert_eq!(
        value(&r).as_deref(),
        Some("(True, False)"),
        "{}",
        describe(&r)
    );
    d.finish().await;
}

/// The sandbox image the tests build on.
const IMAGE: &str = "python-docker-mcp:latest";

/// Run the docker CLI; its trimmed stdout, or a panic naming the failure.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An image built from the sandbox image whose `python3` (first on the PATH, before the
/// real one) complains and exits at once. Tests share it and leave it in place: removing
/// it by id would pull it from under a test running at the same time.
const BROKEN_IMAGE: &str = "pdm-test-broken-python:latest";

/// Build [`BROKEN_IMAGE`] (a cached no-op when it exists).
fn build_broken_image() {
    let tag = BROKEN_IMAGE;
    let dockerfile = format!(
        "FROM {IMAGE}\nUSER 0\nRUN printf '#!/bin/sh\\necho this python is broken >&2\\nexit 3\\n' \
         > /usr/local/bin/python3 && chmod 755 /usr/local/bin/python3\n"
    );
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker build");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dockerfile.as_bytes())
        .expect("write the Dockerfile");
    let out = child.wait_with_output().expect("docker build");
    assert!(
        out.status.success(),
        "docker build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Counts the engine's `create` events for containers of one image, live. (Replaying
/// with `docker events --since` is not enough for a 20 s window: the engine keeps only
/// its last 256 events, and on a shared engine older ones are gone.)
struct CreationCounter {
    child: std::process::Child,
    reader: std::thread::JoinHandle<usize>,
}

impl CreationCounter {
    fn start(image: &str) -> CreationCounter {
        let image_filter = format!("image={image}");
        let mut child = Command::new("docker")
            .args([
                "events",
                "--filter",
                "type=container",
                "--filter",
                "event=create",
            ])
            .args(["--filter", &image_filter, "--format", "{{.ID}}"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker events");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout).lines().count()
        });
        // Let the subscription reach the engine before anything is created.
        std::thread::sleep(Duration::from_millis(500));
        CreationCounter { child, reader }
    }

    fn stop(mut self) -> usize {
        // Events arrive a moment after the fact.
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader.join().expect("reader")
    }
}

/// Transient calls one after another until `until`, each failing with the broken
/// image's reason. Returns how many were made and the slowest.
async fn call_a_broken_pool(d: &Daemon, until: Instant) -> (usize, Duration) {
    let (mut calls, mut slowest) = (0, Duration::ZERO);
    while Instant::now() < until {
        let t = Instant::now();
        let r = d.transient("1").await;
        slowest = slowest.max(t.elapsed());
        calls += 1;
        assert_tool_error(&r, "the container exited before the helper was ready");
        assert_tool_error(&r, "this python is broken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (calls, slowest)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_image_fails_calls_at_once_backs_off_and_recovers_when_fixed() {
    // A tag of this test's own, so it can be pointed at the good image later.
    build_broken_image();
    let tag = format!("pdm-test-fixable-{}:latest", std::process::id());
    docker(&["tag", BROKEN_IMAGE, &tag]);
    let creations = CreationCounter::start(&tag);
    let mut d = Daemon::start_with(&[
        POOL_ON,
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "2"),
        ("PYTHON_DOCKER_MCP_IMAGE", &tag),
    ])
    .await;
    // Two callers, one call after another, for 20 s.
    let drive = Duration::from_secs(20);
    let started = Instant::now();
    let ((a, slow_a), (b, slow_b)) = tokio::join!(
        call_a_broken_pool(&d, started + drive),
        call_a_broken_pool(&d, started + drive)
    );
    let created = creations.stop();
    eprintln!(
        "{} calls in {drive:?}, slowest {:?}; {created} sandbox creations",
        a + b,
        slow_a.max(slow_b)
    );
    // A call is expected to fail at once with the last failure, at worst after one probe
    // creation of the broken image (about a second); 30 s only catches a call that waits.
    assert!(
        slow_a.max(slow_b) < Duration::from_secs(30),
        "every call is answered with the reason; the slowest took {:?}",
        slow_a.max(slow_b)
    );
    // Calls do not each wait for a creation of their own: more calls than creations.
    assert!(
        a + b > created,
        "{} calls and {created} creations: calls waited for creations",
        a + b
    );
    assert!(
        created <= 15,
        "creations back off instead of running back to back: {created} in {drive:?}"
    );

    // Fix the image under the same tag: a call a few seconds later succeeds, no restart.
    docker(&["tag", IMAGE, &tag]);
    // Expected within about 3 s (a call probes once the last failure is 3 s old, and the
    // back-off retries within 10 s anyway); 60 s only catches a pool that never recovers.
    let fixed = Instant::now();
    let mut last = None;
    while fixed.elapsed() < Duration::from_secs(60) {
        let r = d.transient("6 * 7").await;
        if !is_error(&r) {
            last = Some(r);
            break;
        }
        last = Some(r);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = last.expect("a call");
    eprintln!(
        "a call succeeded {:?} after the image was fixed",
        fixed.elapsed()
    );
    assert_ok(&r);
    assert_eq!(value(&r).as_deref(), Some("42"));
    d.finish().await;
    // Only a tag now: the good image keeps its own.
    docker(&["rmi", &tag]);
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_starts_a_sandbox_and_names_why_it_fails() {
    let out = run_cli(&["doctor"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The driver the doctor names is the one sandboxes really get: a sandbox of a daemon,
    // inspected, has it, and the engine keeps no log of it.
    let named = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("log driver of every container: "))
        .unwrap_or_else(|| panic!("the doctor names the log driver: {stdout}"))
        .trim()
        .to_string();
    assert_eq!(named, "none", "{stdout}");
    let mut d = Daemon::start().await;
    d.new_session("x = 1").await;
    let sandbox = containers_with_role(d.pid, "sandbox");
    assert_eq!(sandbox.len(), 1, "{sandbox:?}");
    let driver = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.LogConfig.Type}}",
        &sandbox[0],
    ]);
    assert_eq!(driver.trim(), named, "the sandbox's log driver");
    let logs = Command::new("docker")
        .args(["logs", &sandbox[0]])
        .output()
        .expect("docker logs");
    assert!(
        !logs.status.success(),
        "the engine has no log to show for a sandbox: {logs:?}"
    );
    d.finish().await;
    assert!(
        stdout.contains("a sandbox starts and answers in "),
        "{stdout}"
    );

    build_broken_image();
    let out = run_cli(&["doctor"], &[("PYTHON_DOCKER_MCP_IMAGE", BROKEN_IMAGE)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken image fails the doctor");
    assert!(
        stderr.contains("the container exited before the helper was ready")
            && stderr.contains("Its last words: this python is broken"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_reports_oom_kills_for_certain() {
    let docker_api = python_docker_mcp::runtime::docker::Docker::new();
    docker_api.ping().await.expect("Docker answers");
    let since = Instant::now();
    // Asking starts the watcher; nobody was killed yet.
    assert!(!docker_api.oom_killed("nobody", since, Duration::ZERO).await);
    let run = |code: &str| {
        docker(&[
            "run",
            "-d",
            "--label",
            "python-docker-mcp.managed=true",
            "--memory",
            "32m",
            "--memory-swap",
            "32m",
            "--network",
            "none",
            "--log-driver",
            "none",
            IMAGE,
            "python3",
            "-c",
            code,
        ])
    };
    let hog = run("b = bytearray(100 * 1024 * 1024)");
    let calm = run("print(1)");
    assert_eq!(docker(&["wait", &hog]), "137", "the hog was killed");
    assert_eq!(docker(&["wait", &calm]), "0");
    let killed = docker_api
        .oom_killed(&hog, since, Duration::from_secs(10))
        .await;
    let calm_killed = docker_api
        .oom_killed(&calm, since, Duration::from_secs(1))
        .await;
    let later = docker_api
        .oom_killed(
            &hog,
            Instant::now() + Duration::from_secs(1),
            Duration::ZERO,
        )
        .await;
    docker_api.close();
    docker(&["rm", "-f", &hog, &calm]);
    assert!(killed, "the OOM kill of {hog} was reported");
    assert!(
        !calm_killed,
        "a container that exited normally was not OOM-killed"
    );
    assert!(!later, "a kill before `since` does not count");
}

/// An image whose `python3` sleeps a second before it starts the real one: a sandbox made
/// from it cannot be ready sooner than a second after its container started. Shared by
/// tests and left in place, like [`BROKEN_IMAGE`].
const SLOW_IMAGE: &str = "pdm-test-slow-python:latest";

fn build_slow_image() {
    let dockerfile = format!(
        "FROM {IMAGE}\nUSER 0\nRUN printf '#!/bin/sh\\nsleep 1\\nexec /usr/bin/python3 \"$@\"\\n' \
         > /usr/local/bin/python3 && chmod 755 /usr/local/bin/python3\nUSER 1000:1000\n"
    );
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", SLOW_IMAGE, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker build");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dockerfile.as_bytes())
        .expect("write the Dockerfile");
    let out = child.wait_with_output().expect("docker build");
    assert!(
        out.status.success(),
        "docker build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The engine's `create` and `start` events for one daemon's sandboxes, recorded live
/// with the engine's own timestamps.
/// (engine time, action, container id, daemon pid label)
type Event = (i128, String, String, String);

struct SandboxEvents {
    child: std::process::Child,
    /// Events of every daemon's sandboxes, with the daemon's pid.
    seen: std::sync::Arc<std::sync::Mutex<Vec<Event>>>,
    pid: Option<u32>,
}

impl SandboxEvents {
    fn start(pid: u32) -> SandboxEvents {
        SandboxEvents {
            pid: Some(pid),
            ..SandboxEvents::before_spawn()
        }
    }

    /// Listen before the daemon exists (to see its very first creations); name its pid
    /// with [`SandboxEvents::of`] once it runs.
    fn before_spawn() -> SandboxEvents {
        let format = format!(
            "{{{{.TimeNano}}}} {{{{.Action}}}} {{{{.ID}}}} {{{{index .Actor.Attributes \"{PID_LABEL}\"}}}}"
        );
        let mut child = Command::new("docker")
            .args(["events", "--filter", "type=container"])
            .args(["--filter", "event=create", "--filter", "event=start"])
            .args(["--filter", "label=python-docker-mcp.role=sandbox"])
            .args(["--format", &format])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker events");
        let stdout = child.stdout.take().expect("stdout");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut parts = line.split_whitespace();
                if let (Some(t), Some(action), Some(id), Some(pid)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                {
                    if let Ok(t) = t.parse::<i128>() {
                        sink.lock().unwrap().push((
                            t,
                            action.to_string(),
                            id.to_string(),
                            pid.to_string(),
                        ));
                    }
                }
            }
        });
        // Let the subscription reach the engine before anything is created.
        std::thread::sleep(Duration::from_millis(500));
        SandboxEvents {
            child,
            seen,
            pid: None,
        }
    }

    fn of(self, pid: u32) -> SandboxEvents {
        SandboxEvents {
            pid: Some(pid),
            ..self
        }
    }

    fn events(&self) -> Vec<(i128, String, String)> {
        let pid = self.pid.expect("the daemon's pid").to_string();
        let mut events: Vec<_> = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.3 == pid)
            .map(|e| (e.0, e.1.clone(), e.2.clone()))
            .collect();
        events.sort();
        events
    }

    /// Wait until `n` containers have started (events arrive a moment after the fact),
    /// then stop listening. Returns (engine time, action, container id), oldest first.
    async fn stop_after(mut self, n: usize) -> Vec<(i128, String, String)> {
        let started = |s: &SandboxEvents| s.events().iter().filter(|e| e.1 == "start").count();
        eventually(Duration::from_secs(30), || started(&self) >= n).await;
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.events()
    }
}

/// Ids of the sandboxes in the order they were created.
fn creation_order(events: &[(i128, String, String)]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.1 == "create")
        .map(|e| e.2.clone())
        .collect()
}

/// The most sandboxes that were being created at one time, by a measure that can only
/// undercount: a sandbox counts from its container's `create` event until a second after
/// its `start` event (the slow image's `python3` sleeps that long before the helper can
/// even begin), a part of the time it really is being created.
fn most_at_once(events: &[(i128, String, String)]) -> usize {
    const SLEEP_NS: i128 = 900_000_000;
    let mut edges = Vec::new();
    for id in creation_order(events) {
        let at = |action: &str| {
            events
                .iter()
                .find(|e| e.2 == id && e.1 == action)
                .map(|e| e.0)
                .unwrap_or_else(|| panic!("no {action} event for {id}: {events:?}"))
        };
        edges.push((at("create"), 1i32));
        edges.push((at("start") + SLEEP_NS, -1));
    }
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn never_more_than_max_concurrent_creations_are_made_at_once() {
    build_slow_image();
    let mut d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_IMAGE", SLOW_IMAGE),
        ("PYTHON_DOCKER_MCP_MAX_CONCURRENT_CREATIONS", "2"),
    ])
    .await;
    let events = SandboxEvents::start(d.pid);
    // Five calls at once, each needing a sandbox made on demand (the pool is off).
    let calls = (0..5).map(|i| d.transient_with_state("n", json!({ "n": i })));
    for (i, r) in futures::future::join_all(calls).await.iter().enumerate() {
        assert_eq!(value(r), Some(i.to_string()), "{}", describe(r));
    }
    let events = events.stop_after(5).await;
    assert_eq!(creation_order(&events).len(), 5, "{events:?}");
    let most = most_at_once(&events);
    eprintln!("at most {most} sandboxes were being created at once");
    assert!(
        most <= 2,
        "{most} sandboxes were being created at once, more than max_concurrent_creations 2: \
         {events:?}"
    );
    assert_eq!(most, 2, "the cap was used, so the check means something");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_calls_are_served_in_arrival_order() {
    build_slow_image();
    let mut d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_IMAGE", SLOW_IMAGE),
        ("PYTHON_DOCKER_MCP_MAX_CONCURRENT_CREATIONS", "1"),
    ])
    .await;
    let events = SandboxEvents::start(d.pid);
    // One client, five calls sent 0.4 s apart; one sandbox is made at a time and each
    // takes more than a second, so they all wait, and sandboxes become ready in the order
    // they were created. Call i must get the i-th.
    let calls = (0..5u64).map(|i| {
        let d = &d;
        async move {
            tokio::time::sleep(Duration::from_millis(400 * i)).await;
            hostname_of_run(d).await
        }
    });
    let hosts = futures::future::join_all(calls).await;
    let created = creation_order(&events.stop_after(5).await);
    assert_eq!(created.len(), 5, "{created:?}");
    let served: Vec<usize> = hosts
        .iter()
        .map(|h| {
            created
                .iter()
                .position(|id| id.starts_with(h.as_str()))
                .unwrap_or_else(|| panic!("{h} is not among {created:?}"))
        })
        .collect();
    assert_eq!(
        served,
        vec![0, 1, 2, 3, 4],
        "call i got the sandbox created n-th: waiters were not served in arrival order"
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn warming_never_competes_with_the_first_call_after_spawn() {
    build_slow_image();
    let events = SandboxEvents::before_spawn();
    let mut d = Daemon::start_with(&[
        POOL_ON,
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "3"),
        ("PYTHON_DOCKER_MCP_MAX_CONCURRENT_CREATIONS", "5"),
        ("PYTHON_DOCKER_MCP_IMAGE", SLOW_IMAGE),
    ])
    .await;
    // As an agent does: a call right after start, while the pool has nothing ready.
    let host = hostname_of_run(&d).await;
    // Three warm sandboxes, plus the replacement of the one the call used.
    let events = events.of(d.pid).stop_after(4).await;
    let created = creation_order(&events);
    assert_eq!(
        created.iter().position(|id| id.starts_with(&host)),
        Some(0),
        "the call did not get the first sandbox the pool made: {host} among {created:?}"
    );
    let most = most_at_once(&events);
    assert_eq!(
        most, 1,
        "{most} sandboxes were made at once while warming (max_concurrent_creations 5): the \
         refill competed with the call for the CPU: {events:?}"
    );
    d.finish().await;
}
