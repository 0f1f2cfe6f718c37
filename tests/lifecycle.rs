//! Lifecycle: whatever way the daemon ends, its containers go with it; when it ends
//! normally (stdin EOF, SIGTERM) its volumes go too.

mod common;

use std::time::Duration;

use common::*;
use rmcp::model::CallToolRequestParams;
use serde_json::json;

/// A daemon that starts removes the containers of daemons that are gone. The SIGKILL test
/// watches its containers exit by themselves, which such a sweep would spoil, so it runs
/// alone: it holds this for writing, every other test here for reading.
static ALONE: std::sync::LazyLock<tokio::sync::RwLock<()>> =
    std::sync::LazyLock::new(|| tokio::sync::RwLock::new(()));

/// Give the daemon a session (container + volume), the shared volume and a finished
/// transient run; check that Docker shows them under its pid label.
async fn make_work(d: &Daemon) -> String {
    assert!(
        d.leftovers().is_empty(),
        "a fresh pid has nothing yet: {:?}",
        d.leftovers()
    );
    let id = d
        .new_session("x = 1\nopen('data.txt', 'w').write('x')")
        .await;
    let r = d.transient("1 + 1").await;
    assert_ok(&r);
    let now = d.leftovers();
    let pid = d.pid;
    assert!(
        eventually(Duration::from_secs(10), || containers_with_role(
            pid, "sandbox"
        )
        .len()
            == 1)
        .await,
        "only the session's container runs once the transient one is removed: {now:?}"
    );
    assert!(
        now.volumes.len() >= 2,
        "a session volume and the shared volume exist: {now:?}"
    );
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_and_volumes_carry_the_owner_labels() {
    let _shared = ALONE.read().await;
    let mut d = Daemon::start().await;
    d.new_session("x = 1").await;
    let containers = containers_with_role(d.pid, "sandbox");
    assert_eq!(containers.len(), 1);
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{json .Config.Labels}}",
            &containers[0],
        ])
        .output()
        .expect("docker inspect");
    let labels: serde_json::Value = serde_json::from_slice(&out.stdout).expect("labels are JSON");
    assert_eq!(labels["python-docker-mcp.managed"], json!("true"));
    assert_eq!(labels["python-docker-mcp.role"], json!("sandbox"));
    assert_eq!(labels["python-docker-mcp.pid"], json!(d.pid.to_string()));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(labels["python-docker-mcp.host"], json!(hostname.trim()));
    let instance = labels["python-docker-mcp.instance"]
        .as_str()
        .expect("instance label")
        .to_string();
    assert!(instance.len() >= 8, "{labels}");
    // Every volume of this daemon belongs to the same instance.
    for v in volumes_of(d.pid) {
        let out = std::process::Command::new("docker")
            .args(["volume", "inspect", "--format", "{{json .Labels}}", &v])
            .output()
            .expect("docker volume inspect");
        let vl: serde_json::Value = serde_json::from_slice(&out.stdout).expect("labels");
        assert_eq!(
            vl["python-docker-mcp.instance"],
            json!(instance),
            "{v}: {vl}"
        );
        assert_eq!(vl["python-docker-mcp.managed"], json!("true"), "{v}: {vl}");
    }
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_client_stops_the_daemon_and_removes_everything() {
    let _shared = ALONE.read().await;
    let mut d = Daemon::start().await;
    make_work(&d).await;
    // EOF on stdin, and nothing else: the test owns the process and sends no signal.
    // `finish` closes the client, waits for the exit (expected within a few seconds: it
    // removes one container and two volumes; 30 s is the hang bound), and checks the
    // status and that the daemon removed its containers and volumes before exiting.
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_daemon_and_removes_everything_even_mid_call() {
    let _shared = ALONE.read().await;
    // No drain: the signal interrupts the running call at once (tests/operations.rs covers
    // the drain).
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_DRAIN_TIMEOUT", "0")]).await;
    make_work(&d).await;
    // A call that is still running when the signal arrives.
    let busy = d.new_session("import time").await;
    let peer = d.client().peer().clone();
    let in_flight = tokio::spawn(async move {
        let params = CallToolRequestParams::new("execute-persistent").with_arguments(
            json!({"code": "time.sleep(60)", "session_id": busy})
                .as_object()
                .unwrap()
                .clone(),
        );
        peer.call_tool(params).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!in_flight.is_finished(), "the call is still running");

    d.signal("TERM");
    let call = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the in-flight call is answered when the daemon shuts down")
        .expect("task");
    assert!(
        call.is_err() || call.as_ref().is_ok_and(|r| r.is_error == Some(true)),
        "the interrupted call does not report success: {call:?}"
    );
    let pid = d.pid;
    let cleaned = eventually(Duration::from_secs(10), || leftovers(pid).is_empty()).await;
    assert!(
        cleaned,
        "the daemon removes its containers and volumes on SIGTERM: {:?}",
        leftovers(pid)
    );
    // The client still holds the daemon's stdin open, as a supervisor that signals it would.
    let status = d.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some(),
        "the daemon is still running 10 s after SIGTERM (its cleanup finished long before): \
         pid {pid} is alive: {}",
        process_alive(pid)
    );
    assert!(
        status.unwrap().success(),
        "clean exit after SIGTERM: {status:?}"
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_sigkill_the_containers_remove_themselves() {
    let _alone = ALONE.write().await;
    let mut d = Daemon::start().await;
    make_work(&d).await;
    let pid = d.pid;
    // The transient run's container is being removed by the daemon; let that finish so
    // that what is left at the kill is the session's, which only its helper can end.
    assert!(
        eventually(Duration::from_secs(10), || containers_with_role(
            pid, "sandbox"
        )
        .len()
            == 1)
        .await,
        "only the session's sandbox is left before the kill"
    );
    let containers = containers_of(pid);
    assert_eq!(
        containers.len(),
        1,
        "the session's container: {containers:?}"
    );
    let killed_at = unix_now();
    d.signal("KILL");
    let status = d
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("SIGKILL ends the daemon");
    assert!(!status.success());
    assert!(!process_alive(pid));
    // Nobody is left to remove anything: the helpers see their stdin close and exit, and
    // Docker auto-removes their containers.
    let gone = eventually(Duration::from_secs(15), || containers_of(pid).is_empty()).await;
    assert!(
        gone,
        "containers of a SIGKILLed daemon are still there after 15 s: {:?}",
        containers_of(pid)
    );
    // They exited by themselves: Docker saw them die, and nobody killed them (a daemon
    // starting meanwhile could reap them, which would prove nothing here).
    for id in &containers {
        let events = container_events(id, killed_at);
        assert!(
            events.iter().any(|e| e == "die"),
            "{id}: no die event: {events:?}"
        );
        assert!(
            !events.iter().any(|e| e == "kill"),
            "{id} was killed by someone rather than exiting on its own: {events:?}"
        );
    }
    // Session and shared volumes stay (no one is left to remove them): the shared volume
    // and package volumes of sandboxes, nothing else. The test removes them, then checks
    // that nothing else is left.
    let volumes = volumes_of(pid);
    let (shared, own) = (
        volumes_with_role(pid, "packages"),
        volumes_with_role(pid, "sandbox"),
    );
    assert_eq!(shared.len(), 1, "the shared volume stays: {volumes:?}");
    assert!(!own.is_empty(), "the session's volume stays: {volumes:?}");
    assert_eq!(
        volumes.len(),
        shared.len() + own.len(),
        "no other volume: {volumes:?}"
    );
    remove_leftovers(pid);
    d.finish_as(Exit::Signal(9)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_daemon_removes_what_a_killed_one_left_behind() {
    let _shared = ALONE.read().await;
    let mut dead = Daemon::start().await;
    make_work(&dead).await;
    let dead_pid = dead.pid;
    dead.signal("KILL");
    dead.wait_exit(Duration::from_secs(10))
        .await
        .expect("SIGKILL ends the daemon");
    assert!(
        eventually(Duration::from_secs(15), || containers_of(dead_pid)
            .is_empty())
        .await,
        "{:?}",
        containers_of(dead_pid)
    );

    let mut d = Daemon::start().await;
    // The new daemon's own objects are not touched while it reaps the old ones.
    let id = d.new_session("kept = 1").await;
    let reaped = eventually(Duration::from_secs(15), || volumes_of(dead_pid).is_empty()).await;
    assert!(
        reaped,
        "a new daemon removes the volumes of a daemon that is gone: {:?}",
        volumes_of(dead_pid)
    );
    let r = d.persistent_ok("kept", &id).await;
    assert_eq!(value(&r).as_deref(), Some("1"));
    d.finish().await;
    // The killed daemon's objects went to the sweep of the new one.
    dead.finish_as(Exit::Signal(9)).await;
}

/// Every volume on the engine, labelled or not (a volume re-created by a late install
/// would carry no label at all).
fn all_volumes() -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["volume", "ls", "-q"])
        .output()
        .expect("docker volume ls");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_touches_a_session_after_it_ended_not_even_a_call_already_waiting() {
    let _shared = ALONE.read().await;
    let d = std::sync::Arc::new(Daemon::start().await);
    let before = all_volumes();
    let id = d.new_session("x = 1").await;
    let own: Vec<String> = volumes_with_role(d.pid, "sandbox")
        .into_iter()
        .filter(|v| !before.contains(v))
        .collect();
    assert_eq!(own.len(), 1, "the session has one package volume: {own:?}");
    let since = unix_now();
    // A long call holds the session; an install and a listing queue behind it.
    let busy = {
        let (d, id) = (d.clone(), id.clone());
        tokio::spawn(async move { d.persistent("import time\ntime.sleep(30)", Some(&id)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let install = {
        let (d, id) = (d.clone(), id.clone());
        tokio::spawn(async move { d.install("six", Some(&id)).await })
    };
    let listing = {
        let (d, id) = (d.clone(), id.clone());
        tokio::spawn(async move { d.call("list-variables", json!({ "session_id": id })).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cleaned = d.cleanup(&id).await;
    assert_ok(&cleaned);

    let busy = busy.await.unwrap();
    assert!(is_error(&busy), "{}", describe(&busy));
    assert!(text(&busy).contains("cleaned up"), "{}", describe(&busy));
    let install = install.await.unwrap();
    assert_tool_error(&install, "has ended");
    let listing = listing.await.unwrap();
    assert_tool_error(&listing, "has ended");

    // No installer ran for it, and its volume is gone for good (not re-created unlabelled).
    assert!(
        containers_created_since(d.pid, "installer", since).is_empty(),
        "an installer ran for an ended session"
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            let now = all_volumes();
            own.iter().all(|v| !now.contains(v))
        })
        .await,
        "the session's volume is gone: {own:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = all_volumes();
    assert!(own.iter().all(|v| !now.contains(v)), "and stays gone");
    let mut d = std::sync::Arc::try_unwrap(d)
        .ok()
        .expect("every call holding the daemon has ended");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_way_a_session_ends_frees_its_slot() {
    let _shared = ALONE.read().await;
    let mut d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_MAX_SESSIONS", "1"),
        ("PYTHON_DOCKER_MCP_SESSION_IDLE_TIMEOUT", "2s"),
    ])
    .await;
    // Cleanup.
    let a = d.new_session("1").await;
    assert_tool_error(&d.persistent("1", None).await, "max_sessions");
    assert_ok(&d.cleanup(&a).await);
    // A lost sandbox (its container removed behind the daemon's back).
    let b = d.new_session("1").await;
    for c in containers_with_role(d.pid, "sandbox") {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &c])
            .output();
    }
    let r = d.persistent("1", Some(&b)).await;
    assert_eq!(field(&r, "sandbox_lost"), &json!(true), "{}", describe(&r));
    // Idle expiry.
    let c = d.new_session("1").await;
    assert!(
        eventually(Duration::from_secs(15), || containers_with_role(
            d.pid, "sandbox"
        )
        .is_empty())
        .await,
        "the idle session was ended"
    );
    assert_tool_error(&d.persistent("1", Some(&c)).await, "idle");
    // And the slot is free again after all three.
    d.new_session("1").await;
    d.finish().await;
}
