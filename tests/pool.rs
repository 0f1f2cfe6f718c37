//! The warm pool against the real engine: filling in the background, max age, health,
//! single use, exhaustion, orphans and clean exit. Timings are never asserted here; the
//! benchmark measures speed.

mod common;

use std::collections::HashSet;
use std::time::Duration;

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
    d.close(Duration::from_secs(30))
        .await
        .expect("the daemon exits");
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
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
    d.close(Duration::from_secs(30))
        .await
        .expect("the daemon exits");
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
    d.close(Duration::from_secs(30))
        .await
        .expect("the daemon exits");
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
    d.close(Duration::from_secs(30))
        .await
        .expect("the daemon exits");
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
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
    d.close(Duration::from_secs(30))
        .await
        .expect("the daemon exits");
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
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
    assert_tool_error(&r, "build-image.sh");
    let r = d.persistent("1", None).await;
    assert_tool_error(&r, "build-image.sh");
    d.close(Duration::from_secs(30))
        .await
        .expect("the daemon exits");
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());

    // Nothing ready and no time to wait: the call fails and says what to tune.
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_POOL_WAIT_TIMEOUT", "1ms")]).await;
    let r = d.transient("1").await;
    assert_tool_error(&r, "pool_wait_timeout");
    // And the daemon still serves once there is time.
    d.close(Duration::from_secs(30))
        .await
        .expect("the daemon exits");
    let pid = d.pid;
    assert!(eventually(Duration::from_secs(15), || containers_of(pid).is_empty()).await);
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
    b.close(Duration::from_secs(30)).await.expect("b exits");
    a.close(Duration::from_secs(30)).await.expect("a exits");
    assert!(a.leftovers().is_empty(), "{:?}", a.leftovers());
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
    d.close(Duration::from_secs(30))
        .await
        .expect("the daemon exits");
}
