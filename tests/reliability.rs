//! Reliability: hostile or careless code, hostile MCP traffic, load, and the daemon or a
//! container dying under it. Each case checks what the caller is told, then ends with the
//! same three checks ([`Daemon::assert_recovered`]): the daemon still serves, its containers
//! and volumes are back where they started, and its memory is within 64 MiB of the start.
//!
//! The sandbox can reach the protocol descriptor (the helper's duplicate of the original
//! fd 1): user code finds it by writing to every descriptor in `/proc/self/fd`. Several
//! cases attack it that way.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rmcp::service::ServiceError;
use serde_json::json;

// ----- helpers -----

/// Python that writes `data` (a bytes expression) to every descriptor it can write to,
/// `rounds` times; the protocol descriptor is among them.
fn write_everywhere(data: &str, rounds: u64) -> String {
    format!(
        "\
import os
data = {data}
fds = [int(fd) for fd in os.listdir('/proc/self/fd')]
for _ in range({rounds}):
    for fd in list(fds):
        try:
            os.write(fd, data)
        except OSError:
            fds.remove(fd)
    if not fds:
        break"
    )
}

/// The sandbox was ended by the daemon during this call, for `reason` when one is given.
#[track_caller]
fn assert_ended_during(r: &rmcp::model::CallToolResult, reason: Option<&str>) {
    assert!(is_error(r), "expected isError, got {}", describe(r));
    assert_eq!(
        field(r, "sandbox_lost"),
        &json!(true),
        "the sandbox is reported lost: {}",
        describe(r)
    );
    let t = text(r);
    assert!(
        t.contains("it was ended"),
        "the text says the sandbox was ended: {}",
        describe(r)
    );
    if let Some(reason) = reason {
        assert!(
            t.contains(reason),
            "the text gives the reason {reason:?}: {}",
            describe(r)
        );
    }
}

/// A later call to an ended session says it has ended.
async fn assert_session_has_ended(d: &Daemon, id: &str) {
    let r = d.persistent("1", Some(id)).await;
    assert_tool_error(&r, "has ended");
}

/// Another session still works, and kept its variable.
async fn assert_other_session_works(d: &Daemon, id: &str) {
    let r = d.persistent_ok("other", id).await;
    assert_eq!(value(&r).as_deref(), Some("'fine'"), "{}", describe(&r));
}

// ----- hostile code: time, memory, processes, output -----

#[tokio::test(flavor = "multi_thread")]
async fn an_infinite_loop_is_timed_out_and_the_session_keeps_its_variables() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_TIMEOUT", "3s")]).await;
    let base = d.baseline().await;
    let id = d.new_session("kept = 42").await;
    let started = Instant::now();
    let r = d.persistent("while True:\n    pass", Some(&id)).await;
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(field(&r, "timed_out"), &json!(true), "{}", describe(&r));
    assert_eq!(field(&r, "sandbox_lost"), &json!(false), "{}", describe(&r));
    // Expected at the 3 s time-out (the interrupt landed: the sandbox was not lost);
    // 30 s only catches a loop that was never stopped.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the 3 s time-out stopped the loop: {:?}",
        started.elapsed()
    );
    let r = d.persistent_ok("kept", &id).await;
    assert_eq!(value(&r).as_deref(), Some("42"));
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loop_that_swallows_keyboard_interrupt_loses_only_its_sandbox() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_TIMEOUT", "3s")]).await;
    let base = d.baseline().await;
    let other = d.new_session("other = 'fine'").await;
    let id = d.new_session("x = 1").await;
    let code = "\
while True:
    try:
        while True:
            pass
    except KeyboardInterrupt:
        pass";
    let r = d.persistent(code, Some(&id)).await;
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(field(&r, "sandbox_lost"), &json!(true), "{}", describe(&r));
    let t = text(&r);
    assert!(
        t.contains("KeyboardInterrupt") && t.contains("killed"),
        "says the code ignored the interrupt and the sandbox was killed: {t}"
    );
    assert_session_has_ended(&d, &id).await;
    assert_other_session_works(&d, &other).await;
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

/// A memory bomb in a session raises MemoryError in the cell; the session keeps its state.
async fn memory_bomb(code: &str) {
    let mut d = Daemon::start().await;
    let base = d.baseline().await;
    let id = d
        .new_session("kept = 'still here'\nimport numpy as np")
        .await;
    let r = d.persistent(code, Some(&id)).await;
    assert!(is_error(&r), "{}", describe(&r));
    let kind = error_type(&r).unwrap_or_default();
    assert!(
        kind.contains("MemoryError"),
        "a MemoryError in the cell, not a killed sandbox: {}",
        describe(&r)
    );
    assert_eq!(field(&r, "sandbox_lost"), &json!(false), "{}", describe(&r));
    let r = d.persistent_ok("kept", &id).await;
    assert_eq!(value(&r).as_deref(), Some("'still here'"));
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_python_memory_bomb_is_a_memory_error_and_the_session_survives() {
    memory_bomb("b = bytearray(3 * 1024**3)").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_numpy_memory_bomb_is_a_memory_error_and_the_session_survives() {
    memory_bomb("a = np.ones((40000, 40000))").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_out_of_memory_kill_is_reported_for_certain() {
    // tmpfs pages count against the container's memory but not against the helper's own
    // allocation limit, so filling /tmp and then memory reaches the kernel's OOM killer.
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_TMPFS_SIZE", "1g")]).await;
    let base = d.baseline().await;
    let other = d.new_session("other = 'fine'").await;
    let id = d.new_session("x = 1").await;
    let code = "\
chunk = b'x' * 2**20
for i in range(400):
    with open(f'/tmp/fill{i}', 'wb') as f:
        f.write(chunk)
hog = []
while True:
    hog.append(bytearray(2**20))";
    let r = d.persistent(code, Some(&id)).await;
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(field(&r, "sandbox_lost"), &json!(true), "{}", describe(&r));
    let t = text(&r).to_lowercase();
    assert!(
        t.contains("memory limit"),
        "names the memory limit: {}",
        text(&r)
    );
    assert!(
        t.contains("killed by the kernel") || t.contains("out of memory"),
        "says the kernel killed it for lack of memory: {}",
        text(&r)
    );
    assert!(
        !t.contains("most likely"),
        "the engine knows it was an OOM kill; no guessing: {}",
        text(&r)
    );
    assert_session_has_ended(&d, &id).await;
    assert_other_session_works(&d, &other).await;
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_hits_the_pids_limit_and_the_daemon_is_unaffected() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_TIMEOUT", "20s")]).await;
    let base = d.baseline().await;
    let other = d.new_session("other = 'fine'").await;
    let id = d.new_session("import os, time").await;
    let code = "\
children = 0
while True:
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
    children += 1";
    // A hang is caught by CALL_LIMIT (120 s, 6x the 20 s time-out); no speed is asserted.
    let r = d.persistent(code, Some(&id)).await;
    assert!(is_error(&r), "{}", describe(&r));
    if field(&r, "sandbox_lost") == &json!(false) {
        // Outcome 1: fork() failed with EAGAIN at the pids limit, the cell got the
        // exception, and the session lives on with what the loop counted.
        assert_eq!(
            error_type(&r).as_deref(),
            Some("BlockingIOError"),
            "{}",
            describe(&r)
        );
        let r = d.persistent_ok("children", &id).await;
        let children: u64 = value(&r).unwrap_or_default().parse().unwrap_or(0);
        assert!(
            children > 0 && children < 128,
            "the pids limit (128) stopped it: {children}"
        );
        assert_ok(&d.cleanup(&id).await);
    } else {
        // Outcome 2: the helper itself could not go on at the limit (a thread it needed
        // could not start): only this sandbox is lost, the result says so, and the session
        // is reported ended from then on.
        assert_eq!(field(&r, "sandbox_lost"), &json!(true), "{}", describe(&r));
        assert_session_has_ended(&d, &id).await;
    }
    assert_other_session_works(&d, &other).await;
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_of_output_is_truncated_with_a_marker() {
    let mut d = Daemon::start().await;
    let base = d.baseline().await;
    let peak_before = d.peak_rss();
    let code = "\
import sys
chunk = 'x' * (2**20 - 1) + '\\n'
for _ in range(1024):
    sys.stdout.write(chunk)
'done'";
    let r = d.persistent(code, None).await;
    assert_ok(&r);
    assert_eq!(value(&r).as_deref(), Some("'done'"), "{}", describe(&r));
    assert!(
        stdout(&r).len() <= 256 * 1024,
        "stdout is capped at output_limit: {} bytes",
        stdout(&r).len()
    );
    let dropped = field(&r, "stdout_dropped").as_u64().unwrap_or(0);
    assert!(dropped > 1_000_000_000 - 300_000, "{dropped} bytes dropped");
    assert!(
        text(&r).contains("[stdout truncated:"),
        "the text says output was dropped"
    );
    assert!(
        d.peak_rss() <= peak_before + MEMORY_SLACK,
        "the daemon's peak memory grew from {} MiB to {} MiB",
        peak_before >> 20,
        d.peak_rss() >> 20
    );
    let id = session_id(&r);
    d.assert_recovered(&base, 1).await;
    d.cleanup(&id).await;
    d.finish().await;
}

// ----- hostile code: the protocol descriptor -----

#[tokio::test(flavor = "multi_thread")]
async fn gigabytes_without_a_newline_to_every_descriptor_end_the_sandbox_not_the_daemon() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_TIMEOUT", "15s")]).await;
    let base = d.baseline().await;
    let peak_before = d.peak_rss();
    let other = d.new_session("other = 'fine'").await;
    let id = d.new_session("x = 1").await;
    // 3 GB in 1 MB chunks to every descriptor; the time-out caps the test's time.
    let code = write_everywhere("b'x' * 2**20", 3 * 1024);
    let mut call = Box::pin(d.persistent(&code, Some(&id)));
    // A daemon that buffers the endless frame would take gigabytes from a shared machine:
    // stop it well before that.
    let r = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let rss = d.rss();
                if rss > peak_before + 8 * MEMORY_SLACK {
                    d.signal("KILL");
                    panic!(
                        "the daemon buffers a frame without end: {} MiB resident after {} MiB \
                         at the start; it was killed",
                        rss >> 20,
                        peak_before >> 20
                    );
                }
            }
        }
    };
    drop(call);
    assert!(
        d.peak_rss() <= peak_before + MEMORY_SLACK,
        "a frame without end must not be buffered: the daemon's peak memory grew from {} MiB \
         to {} MiB",
        peak_before >> 20,
        d.peak_rss() >> 20
    );
    // A frame larger than 16 MiB ends the sandbox.
    assert_ended_during(&r, None);
    assert_session_has_ended(&d, &id).await;
    assert_other_session_works(&d, &other).await;
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_nobody_asked_for_end_the_sandbox() {
    let mut d = Daemon::start().await;
    let base = d.baseline().await;
    let other = d.new_session("other = 'fine'").await;
    let id = d.new_session("x = 1").await;
    // The cell returns at once; a thread keeps sending well-formed replies nobody asked for,
    // one frame per write (a pipe write of at most 4 KB is atomic, so none is torn).
    let code = format!(
        "\
import threading
def spam():
    while True:
{}
threading.Thread(target=spam, daemon=True).start()",
        write_everywhere("b'{\"op\":\"pong\",\"id\":1}\\n'", 100_000)
            .lines()
            .map(|l| format!("        {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let r = d.persistent(&code, Some(&id)).await;
    assert!(
        !is_error(&r) || field(&r, "sandbox_lost") == &json!(true),
        "either the cell returned or the spam already ended it: {}",
        describe(&r)
    );
    // The next call finds the sandbox ended (during the call, or before it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = d.persistent("x", Some(&id)).await;
    assert!(is_error(&r), "{}", describe(&r));
    // The reason: more than MAX_STRAY_FRAMES (16, src/repl.rs) frames nobody asked for.
    // A helper that answers what it was not asked is not the helper any more (its code
    // took over the protocol channel), so its sandbox is ended rather than trusted.
    assert!(
        text(&r).contains("ended") && text(&r).contains("sent 17 protocol frames nobody asked for"),
        "the session was ended, and says why: {}",
        describe(&r)
    );
    assert_session_has_ended(&d, &id).await;
    assert_other_session_works(&d, &other).await;
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_end_the_sandbox_with_that_reason() {
    let mut d = Daemon::start().await;
    let base = d.baseline().await;
    let other = d.new_session("other = 'fine'").await;
    let id = d.new_session("x = 1").await;
    let r = d
        .persistent(
            &write_everywhere("b'this is not a frame\\n'", 100),
            Some(&id),
        )
        .await;
    assert_ended_during(&r, Some("malformed protocol frames"));
    assert_session_has_ended(&d, &id).await;
    assert_other_session_works(&d, &other).await;
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frame_larger_than_16_mib_ends_the_sandbox() {
    let mut d = Daemon::start().await;
    let base = d.baseline().await;
    let peak_before = d.peak_rss();
    let other = d.new_session("other = 'fine'").await;
    let id = d.new_session("x = 1").await;
    // One well-formed but oversized reply: 20 MiB of stdout in a result frame.
    let code = write_everywhere(
        "('{\"op\":\"result\",\"id\":1,\"stdout\":\"' + 'x' * (20 * 2**20) + '\"}\\n').encode()",
        1,
    );
    let r = d.persistent(&code, Some(&id)).await;
    // The cap's value is in the reason (src/repl.rs MAX_FRAME: 16 MiB).
    assert_ended_during(&r, Some("wrote a protocol frame larger than 16 MiB"));
    assert!(d.peak_rss() <= peak_before + MEMORY_SLACK);
    assert_session_has_ended(&d, &id).await;
    assert_other_session_works(&d, &other).await;
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cell_that_closes_its_stdout_leaves_a_working_session() {
    let mut d = Daemon::start().await;
    let base = d.baseline().await;
    let id = d.new_session("import os, sys").await;
    d.persistent("os.close(1)", Some(&id)).await;
    let r = d.persistent_ok("print('back')\n1 + 1", &id).await;
    assert_eq!(stdout(&r), "back\n", "{}", describe(&r));
    assert_eq!(value(&r).as_deref(), Some("2"));
    d.persistent("sys.stdout.close()", Some(&id)).await;
    let r = d.persistent_ok("print('again')\n2 + 2", &id).await;
    assert_eq!(stdout(&r), "again\n", "{}", describe(&r));
    assert_eq!(value(&r).as_deref(), Some("4"));
    d.persistent("os.close(2)\nsys.stderr.close()", Some(&id))
        .await;
    let r = d
        .persistent_ok("import sys\nprint('err', file=sys.stderr)\n3", &id)
        .await;
    assert_eq!(stderr(&r), "err\n", "{}", describe(&r));
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cell_that_kills_the_helper_loses_only_its_sandbox() {
    let mut d = Daemon::start().await;
    let base = d.baseline().await;
    let other = d.new_session("other = 'fine'").await;
    let id = d.new_session("import os").await;
    let r = d.persistent("os.kill(os.getpid(), 9)", Some(&id)).await;
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(field(&r, "sandbox_lost"), &json!(true), "{}", describe(&r));
    let t = text(&r).to_lowercase();
    assert!(
        t.contains("sandbox") && (t.contains("killed") || t.contains("exited")),
        "says the sandbox went away: {}",
        text(&r)
    );
    assert!(
        !t.contains("killed by the kernel"),
        "this was no out-of-memory kill: {}",
        text(&r)
    );
    assert_session_has_ended(&d, &id).await;
    assert_other_session_works(&d, &other).await;
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

// ----- the world under the daemon -----

#[tokio::test(flavor = "multi_thread")]
async fn a_session_container_removed_behind_the_daemons_back_is_reported_ended() {
    let mut d = Daemon::start().await;
    let base = d.baseline().await;
    let other = d.new_session("other = 'fine'").await;
    let before = containers_with_role(d.pid, "sandbox");
    let id = d.new_session("x = 1").await;
    let mine: Vec<String> = containers_with_role(d.pid, "sandbox")
        .into_iter()
        .filter(|c| !before.contains(c))
        .collect();
    assert_eq!(mine.len(), 1, "the new session's container: {mine:?}");
    let out = std::process::Command::new("docker")
        .args(["rm", "-f", &mine[0]])
        .output()
        .expect("docker rm");
    assert!(out.status.success(), "{out:?}");
    let started = Instant::now();
    let r = d.persistent("x", Some(&id)).await;
    // Expected at once (the helper's stream has ended); 30 s only catches a call that
    // waits for a container that is gone.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no hang: {:?}",
        started.elapsed()
    );
    assert!(is_error(&r), "{}", describe(&r));
    assert!(
        field(&r, "sandbox_lost") == &json!(true) || text(&r).contains("ended"),
        "says the sandbox is gone: {}",
        describe(&r)
    );
    assert_session_has_ended(&d, &id).await;
    assert_other_session_works(&d, &other).await;
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

/// SIGKILL `dead` while `work` runs, start a new daemon, and check that its start removes
/// every container and volume the dead one left.
async fn killed_mid_call_is_cleaned_by_the_next_daemon(dead: Daemon, in_flight: Vec<String>) {
    let dead_pid = dead.pid;
    let mut dead = dead;
    dead.signal("KILL");
    dead.wait_exit(Duration::from_secs(10))
        .await
        .expect("SIGKILL ends the daemon");
    assert!(
        !in_flight.is_empty(),
        "something was running when the daemon was killed"
    );
    let mut d = Daemon::start().await;
    let base = d.baseline().await;
    let gone = eventually(Duration::from_secs(30), || leftovers(dead_pid).is_empty()).await;
    assert!(
        gone,
        "the new daemon removed what the killed one left: {:?}",
        leftovers(dead_pid)
    );
    d.assert_recovered(&base, 0).await;
    d.finish().await;
    dead.finish_as(Exit::Signal(9)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_mid_execution_leaves_nothing_after_the_next_start() {
    let dead = Daemon::start().await;
    let id = dead.new_session("import time").await;
    let peer = dead.client().peer().clone();
    let call = tokio::spawn(async move {
        let params = rmcp::model::CallToolRequestParams::new("execute-persistent").with_arguments(
            json!({"code": "time.sleep(60)", "session_id": id})
                .as_object()
                .unwrap()
                .clone(),
        );
        peer.call_tool(params).await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!call.is_finished(), "the execution is still running");
    let running = containers_with_role(dead.pid, "sandbox");
    killed_mid_call_is_cleaned_by_the_next_daemon(dead, running).await;
    call.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_mid_install_leaves_nothing_after_the_next_start() {
    // The index is an address nothing answers at, so the installer keeps trying.
    let dead = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_INDEX_URL", "http://192.0.2.1/simple"),
        ("PYTHON_DOCKER_MCP_INSTALL_TIMEOUT", "60s"),
    ])
    .await;
    let id = dead.new_session("x = 1").await;
    let peer = dead.client().peer().clone();
    let call = tokio::spawn(async move {
        let params = rmcp::model::CallToolRequestParams::new("install-package").with_arguments(
            json!({"package_name": "pdm-test-no-such-package", "session_id": id})
                .as_object()
                .unwrap()
                .clone(),
        );
        peer.call_tool(params).await
    });
    let pid = dead.pid;
    let installing = eventually(Duration::from_secs(20), || {
        !containers_with_role(pid, "installer").is_empty()
    })
    .await;
    assert!(installing, "an installer container runs");
    let running = containers_with_role(pid, "installer");
    killed_mid_call_is_cleaned_by_the_next_daemon(dead, running).await;
    call.abort();
}

// ----- hostile MCP traffic -----

#[tokio::test(flavor = "multi_thread")]
async fn invalid_json_and_misshapen_messages_do_not_stop_the_daemon() {
    let mut raw = RawDaemon::start(&[]).await;
    let r = raw
        .call_tool(1, "execute-transient", json!({"code": "1 + 1"}))
        .await;
    assert_eq!(r["result"]["structuredContent"]["value"], json!("2"), "{r}");
    let pid = raw.pid;
    assert!(
        eventually(Duration::from_secs(30), || counted(pid) == (0, 0)).await,
        "the transient run's container is removed: {:?}",
        leftovers(pid)
    );
    let rss_before = proc_status_bytes(pid, "VmRSS");
    // Not JSON: ignored (there is no id to answer).
    raw.send_line("{this is not json").await;
    raw.send_line("\u{1}\u{2}garbage]]").await;
    // JSON of the wrong shape: an Invalid Request error.
    raw.send_json(&json!({"jsonrpc": "2.0", "id": 7, "nonsense": true}))
        .await;
    let first = raw
        .next_message(Duration::from_secs(10))
        .await
        .expect("a misshapen message is answered");
    assert!(first.get("error").is_some(), "an error response: {first}");
    // An unknown method: a JSON-RPC error.
    raw.send_json(&json!({"jsonrpc": "2.0", "id": 8, "method": "no/such/method"}))
        .await;
    let r = raw.response(8, Duration::from_secs(10)).await;
    assert!(r.get("error").is_some(), "{r}");
    // Still serving, in order.
    raw.send_json(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}))
        .await;
    let r = raw.response(9, Duration::from_secs(10)).await;
    assert_eq!(
        r["result"]["tools"].as_array().map(Vec::len),
        Some(11),
        "{r}"
    );
    let r = raw
        .call_tool(10, "execute-transient", json!({"code": "1 + 1"}))
        .await;
    assert_eq!(r["result"]["structuredContent"]["value"], json!("2"), "{r}");
    assert!(
        eventually(Duration::from_secs(30), || counted(pid) == (0, 0)).await,
        "nothing is left: {:?}",
        leftovers(pid)
    );
    let rss = proc_status_bytes(pid, "VmRSS");
    assert!(
        rss <= rss_before + MEMORY_SLACK,
        "RSS {} MiB, {} MiB at the start",
        rss >> 20,
        rss_before >> 20
    );
    raw.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tool_calls_are_answered_briefly_and_nothing_hangs() {
    let mut d = Daemon::start().await;
    let base = d.baseline().await;
    // Unknown tool: a JSON-RPC error.
    match d.try_call("no-such-tool", json!({})).await {
        Err(ServiceError::McpError(e)) => assert!(e.message.contains("not found"), "{e:?}"),
        other => panic!("an unknown tool is a JSON-RPC error: {other:?}"),
    }
    // Wrong argument types: an isError result naming the field.
    for (tool, args, field_name) in [
        ("execute-transient", json!({"code": ["a"]}), "code"),
        (
            "execute-persistent",
            json!({"code": "1", "session_id": {}}),
            "session_id",
        ),
        (
            "install-package",
            json!({"package_name": 5}),
            "package_name",
        ),
        ("list-variables", json!({"session_id": true}), "session_id"),
        (
            "execute-transient",
            json!({"code": "1", "state": "x"}),
            "state",
        ),
    ] {
        let r = d.call(tool, args.clone()).await;
        assert!(is_error(&r), "{tool} {args}: {}", describe(&r));
        assert!(
            text(&r).contains(field_name) || text(&r).contains("invalid type"),
            "{tool} {args}: names what is wrong: {}",
            describe(&r)
        );
    }
    // 10 MB of code: answered (a result or a SyntaxError), not dropped.
    let big = format!("s = '{}'\nlen(s)", "a".repeat(10_000_000));
    let started = Instant::now();
    let r = d.call("execute-transient", json!({ "code": big })).await;
    assert!(
        value(&r).as_deref() == Some("10000000") || is_error(&r),
        "{}",
        text(&r).chars().take(500).collect::<String>()
    );
    assert!(
        text(&r).len() < 100_000,
        "the code is not echoed back whole"
    );
    // Expected within a couple of seconds (one transient run of 10 MB of code); 60 s
    // only catches a hang.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "10 MB of code is answered: {:?}",
        started.elapsed()
    );
    // A 100 KB session id: refused with a short message.
    let long_id = "s".repeat(100_000);
    for tool in ["execute-persistent", "list-variables", "cleanup-session"] {
        let args = if tool == "execute-persistent" {
            json!({"code": "1", "session_id": long_id})
        } else {
            json!({ "session_id": long_id })
        };
        let r = d.call(tool, args).await;
        assert!(is_error(&r), "{tool}: {}", text(&r).len());
        assert!(
            text(&r).len() < 1024,
            "{tool}: the error echoes the id clipped: {} bytes",
            text(&r).len()
        );
    }
    d.assert_recovered(&base, 0).await;
    d.finish().await;
}

// ----- load -----

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_transient_runs_back_to_back_are_all_right() {
    let mut d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true"),
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "4"),
    ])
    .await;
    let pid = d.pid;
    let full = eventually(Duration::from_secs(60), || containers_of(pid).len() == 4).await;
    assert!(full, "the pool fills: {:?}", containers_of(pid));
    let base = d.baseline().await;
    for i in 0..500u64 {
        let r = d.transient_with_state("n * n", json!({ "n": i })).await;
        assert_eq!(
            value(&r),
            Some((i * i).to_string()),
            "run {i}: {}",
            describe(&r)
        );
    }
    d.assert_recovered(&base, 0).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_sessions_times_a_hundred_calls_in_parallel_are_all_right() {
    let d =
        std::sync::Arc::new(Daemon::start_with(&[("PYTHON_DOCKER_MCP_MAX_SESSIONS", "32")]).await);
    let base = d.baseline().await;
    let mut tasks = Vec::new();
    for s in 0..16u64 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let id = d.new_session(&format!("total = 0\nme = {s}")).await;
            for i in 1..=100u64 {
                let r = d
                    .persistent_ok(&format!("total += {i}\n(me, total)"), &id)
                    .await;
                assert_eq!(
                    value(&r),
                    Some(format!("({s}, {})", i * (i + 1) / 2)),
                    "session {s} call {i}"
                );
            }
            id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("a session's calls"));
    }
    d.assert_recovered(&base, 16).await;
    for id in ids {
        assert_ok(&d.cleanup(&id).await);
    }
    d.assert_recovered(&base, 0).await;
    let mut d = std::sync::Arc::try_unwrap(d)
        .ok()
        .expect("every session's task has ended");
    d.finish().await;
}

// ----- issue 14: output must not fill the engine's disk -----

/// The engine's files for one container: (name, size) of every file whose name says log.
fn engine_log_files(container: &str) -> Vec<(String, u64)> {
    let out = std::process::Command::new("docker")
        .args(["info", "-f", "{{.DockerRootDir}}"])
        .output()
        .expect("docker info");
    let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = std::path::Path::new(&root)
        .join("containers")
        .join(container);
    let mut found = Vec::new();
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().contains("log") {
                found.push((path.display().to_string(), meta.len()));
            }
        }
    }
    found
}

fn log_driver(container: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.HostConfig.LogConfig.Type}}", container])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The full id of the one sandbox container that is not in `before`.
fn new_sandbox(pid: u32, before: &[String]) -> String {
    let now: Vec<String> = containers_with_role(pid, "sandbox")
        .into_iter()
        .filter(|c| !before.contains(c))
        .collect();
    assert_eq!(now.len(), 1, "one new sandbox: {now:?}");
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.Id}}", &now[0]])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A session floods every descriptor with newline-terminated junk: the engine keeps no log
/// of it, the daemon's own log barely grows, the session ends with a reason, others work.
async fn junk_lines_leave_no_logs(line: &str, total_bytes: u64) {
    let mut d = Daemon::start_logged(&[
        ("PYTHON_DOCKER_MCP_LOG", "info"),
        ("PYTHON_DOCKER_MCP_TIMEOUT", "20s"),
    ])
    .await;
    let base = d.baseline().await;
    let other = d.new_session("other = 'fine'").await;
    let before = containers_with_role(d.pid, "sandbox");
    let id = d.new_session("x = 1").await;
    let container = new_sandbox(d.pid, &before);
    assert_eq!(log_driver(&container), "none", "the engine keeps no log");
    let log_before = d.log_len();

    let chunk_lines = (1 << 20) / line.len() as u64;
    let rounds = total_bytes / (chunk_lines * line.len() as u64);
    let code = write_everywhere(
        &format!("{:?}.encode() * {chunk_lines}", line),
        rounds.max(1),
    );
    let mut call = Box::pin({
        let code = code.clone();
        let id = id.clone();
        let d = &d;
        async move { d.persistent(&code, Some(&id)).await }
    });
    let mut largest = 0u64;
    let r = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                for (_, size) in engine_log_files(&container) {
                    largest = largest.max(size);
                }
            }
        }
    };
    drop(call);
    for (_, size) in engine_log_files(&container) {
        largest = largest.max(size);
    }
    assert!(
        largest < 16 * 1024,
        "no engine log file of the container grew beyond a few KB: {largest} bytes"
    );
    let grown = d.log_len().saturating_sub(log_before);
    assert!(
        grown < 1 << 20,
        "the daemon's log grew by {grown} bytes; its tail: {}",
        d.log_text()
            .chars()
            .rev()
            .take(2000)
            .collect::<String>()
            .chars()
            .rev()
            .collect::<String>()
    );
    assert_ended_during(&r, Some("malformed protocol frames"));
    assert_session_has_ended(&d, &id).await;
    assert_other_session_works(&d, &other).await;
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_megabytes_of_junk_lines_leave_no_engine_log_and_a_quiet_daemon_log() {
    junk_lines_leave_no_logs(
        "junk junk junk junk junk junk junk junk junk junk junk junk junk junk\n",
        300 << 20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_megabyte_of_tiny_lines_leaves_no_engine_log_and_a_quiet_daemon_log() {
    junk_lines_leave_no_logs("x\n", 1 << 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn installer_containers_keep_no_engine_log() {
    // An index nothing answers at keeps the installer running long enough to look at it.
    let mut d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_INDEX_URL", "http://192.0.2.1/simple"),
        ("PYTHON_DOCKER_MCP_INSTALL_TIMEOUT", "20s"),
    ])
    .await;
    let base = d.baseline().await;
    let mut install = Box::pin(d.install("pdm-test-no-such-package", None));
    let pid = d.pid;
    let mut seen = None;
    let r = loop {
        tokio::select! {
            r = &mut install => break r,
            _ = tokio::time::sleep(Duration::from_millis(100)), if seen.is_none() => {
                if let Some(id) = containers_with_role(pid, "installer").first() {
                    seen = Some(log_driver(id));
                }
            }
        }
    };
    drop(install);
    assert!(is_error(&r), "the install cannot succeed: {}", describe(&r));
    assert_eq!(
        seen.as_deref(),
        Some("none"),
        "an installer container was seen, with log driver none"
    );
    d.assert_recovered(&base, 0).await;
    d.finish().await;
}
