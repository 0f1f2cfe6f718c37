//! Lifecycle: whatever way the daemon ends, its containers go with it; when it ends
//! normally (stdin EOF, SIGTERM) its volumes go too.

mod common;

use std::time::Duration;

use common::*;
use rmcp::model::CallToolRequestParams;
use serde_json::json;

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
    d.close(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_client_stops_the_daemon_and_removes_everything() {
    let mut d = Daemon::start().await;
    make_work(&d).await;
    // EOF on stdin, and nothing else: the test owns the process and sends no signal.
    let status = d.close(Duration::from_secs(10)).await;
    let status = status.expect("the daemon exits within 10 s of stdin EOF");
    assert!(status.success(), "clean exit: {status:?}");
    let left = d.leftovers();
    assert!(
        left.is_empty(),
        "the daemon removed its containers and volumes before exiting: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_daemon_and_removes_everything_even_mid_call() {
    let mut d = Daemon::start().await;
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
}

#[tokio::test(flavor = "multi_thread")]
async fn after_sigkill_the_containers_remove_themselves() {
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
    // Session and shared volumes stay (no one is left to remove them); Drop cleans up.
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_daemon_removes_what_a_killed_one_left_behind() {
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
    d.close(Duration::from_secs(30)).await;
}
