//! The Docker engine goes away under a running daemon and comes back: calls fail promptly
//! with a message naming Docker, then the same daemon serves again without a restart.
//!
//! This stops the machine's engine, which breaks every other test running at the time, so
//! it is `#[ignore]`d: `scripts/test.sh` runs it alone after the rest of the suite with
//! `cargo test --test engine_restart -- --ignored --test-threads 1`. The engine is started
//! again with `scripts/ensure-docker.sh`, which is also how test.sh starts it.
//!
//! **Changes the host:** it stops the machine's Docker engine. It puts it back even when
//! the test fails: a guard (`EngineBack`) starts the engine again from `Drop` if it does
//! not answer, before the daemon's own clean-up runs.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Where dockerd writes its pid by default.
const DOCKERD_PIDFILE: &str = "/var/run/docker.pid";

fn engine_answers() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// SIGTERM the engine by the pid in its pid file, and wait until it is gone.
async fn stop_engine() {
    let pid: u32 = std::fs::read_to_string(DOCKERD_PIDFILE)
        .unwrap_or_else(|e| panic!("{DOCKERD_PIDFILE}: {e}; is dockerd running here?"))
        .trim()
        .parse()
        .expect("a pid in the pid file");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid}");
    // dockerd stops its containers first (up to its 15 s shutdown time-out).
    let stopped = eventually(Duration::from_secs(60), || {
        !engine_answers() && !process_alive(pid)
    })
    .await;
    assert!(stopped, "dockerd ({pid}) did not stop within 60 s");
}

fn start_engine() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ensure-docker.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .status()
        .expect("run scripts/ensure-docker.sh");
    assert!(status.success(), "scripts/ensure-docker.sh failed");
}

/// Ends the test with the engine running, whatever happened: other tests need it.
struct EngineBack;

impl Drop for EngineBack {
    fn drop(&mut self) {
        if !engine_answers() {
            start_engine();
        }
    }
}

/// How long a call may take while the engine is down before the test calls it a hang: a
/// call is expected to fail at once (the engine refuses the connection, or the pool's last
/// failure is fresh), at worst after one probe that fails at once too.
const HANG: Duration = Duration::from_secs(30);

/// The call answered, within [`HANG`], with an error whose text names Docker.
#[track_caller]
fn assert_names_docker(r: &rmcp::model::CallToolResult, took: Duration, what: &str) {
    assert!(
        took < HANG,
        "{what}: expected at once, still unanswered after {took:?}"
    );
    assert!(is_error(r), "{what}: {}", describe(r));
    assert!(
        text(r).contains("Docker"),
        "{what}: the error names Docker: {}",
        describe(r)
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "stops and restarts the Docker engine: run alone (scripts/test.sh does)"]
async fn the_same_daemon_serves_again_after_the_engine_restarts() {
    assert!(engine_answers(), "the engine runs before the test");
    let mut d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true"),
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "2"),
    ])
    .await;
    // Declared after the daemon, so dropped before it: the daemon's own clean-up (and the
    // test's removal of its leftovers) needs the engine.
    let _engine_back = EngineBack;
    let old = d.new_session("x = 1").await;
    d.assert_serves().await;

    stop_engine().await;
    let started = Instant::now();
    let r = d.transient("1 + 1").await;
    assert_names_docker(&r, started.elapsed(), "transient without an engine");
    let started = Instant::now();
    let r = d.persistent("1 + 1", None).await;
    assert_names_docker(&r, started.elapsed(), "new session without an engine");
    let started = Instant::now();
    let r = d.persistent("x", Some(&old)).await;
    assert!(
        started.elapsed() < HANG,
        "the old session answers (expected at once): {:?}",
        started.elapsed()
    );
    assert!(
        is_error(&r) && (text(&r).contains("Docker") || text(&r).contains("ended")),
        "the old session's sandbox went with the engine: {}",
        describe(&r)
    );

    start_engine();
    // The same daemon, no restart: transient and new sessions work again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = d.transient("1 + 1").await;
        if r.structured_content.is_some() && value(&r).as_deref() == Some("2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "transient runs still fail 30 s after the engine is back: {}",
            describe(&r)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let r = d.persistent("y = 2\ny", None).await;
        if r.structured_content.is_some() && value(&r).as_deref() == Some("2") {
            break session_id(&r);
        }
        assert!(
            Instant::now() < deadline,
            "new sessions still fail 30 s after the engine is back: {}",
            describe(&r)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let r = d.persistent_ok("y + 1", &new).await;
    assert_eq!(value(&r).as_deref(), Some("3"));
    let r = d.persistent("x", Some(&old)).await;
    assert_tool_error(&r, "ended");

    let status = d.close(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    let pid = d.pid;
    let clean = eventually(Duration::from_secs(15), || leftovers(pid).is_empty()).await;
    assert!(clean, "nothing left after exit: {:?}", leftovers(pid));
    d.finish().await;
}
