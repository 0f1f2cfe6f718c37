//! Interrupts are in-band: a time-out reaches the running code as an `interrupt` request on
//! the helper's stdin, not as a signal through the engine's API (Kubernetes has none). The
//! engine's event log shows what was sent: no `kill` event at all for an interrupt that
//! works, and only the forced removal's SIGKILL when the code ignores it.
//!
//! The last tests run the helper alone, as a local `python3` over pipes (no engine), and
//! drive its protocol directly.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TIMEOUT: (&str, &str) = ("PYTHON_DOCKER_MCP_TIMEOUT", "2s");

/// The `signal` of every `kill` event the engine logged for `pid`'s containers since
/// `since`: one per signal sent through its API (a forced removal's SIGKILL included).
fn engine_signals(pid: u32, since: f64) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["events", "--since", &format!("{since:.3}")])
        .args(["--until", &format!("{:.3}", unix_now())])
        .args(["--filter", "type=container", "--filter", "event=kill"])
        .args(["--filter", &format!("label={PID_LABEL}={pid}")])
        .args(["--format", "{{index .Actor.Attributes \"signal\"}}"])
        .output()
        .expect("run docker events");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn timed_out_code_is_interrupted_without_any_signal_from_the_engine() {
    let mut d = Daemon::start_with(&[TIMEOUT]).await;
    let id = d.new_session("kept = 41\nimport os, threading, time").await;
    let since = unix_now();
    let cases = [
        ("a sleep", "time.sleep(60)"),
        ("a tight loop", "while True:\n    pass"),
        ("a blocking read", "r, w = os.pipe()\nos.read(r, 1)"),
        (
            "a thread join",
            "t = threading.Thread(target=time.sleep, args=(60,), daemon=True)\nt.start()\nt.join()",
        ),
    ];
    for (what, code) in cases {
        let r = d
            .persistent(&format!("print('started', flush=True)\n{code}"), Some(&id))
            .await;
        assert_eq!(
            field(&r, "timed_out"),
            &json!(true),
            "{what}: {}",
            describe(&r)
        );
        assert_eq!(
            field(&r, "sandbox_lost"),
            &json!(false),
            "{what}: {}",
            describe(&r)
        );
        assert_eq!(
            error_type(&r).as_deref(),
            Some("KeyboardInterrupt"),
            "{what}"
        );
        assert!(stdout(&r).contains("started"), "{what}: {}", describe(&r));
        let r = d.persistent_ok("kept + 1", &id).await;
        assert_eq!(value(&r).as_deref(), Some("42"), "{what}: {}", describe(&r));
    }
    let sent = engine_signals(d.pid, since);
    assert!(
        sent.is_empty(),
        "the interrupts went through the engine's kill API: {sent:?}"
    );

    // The check above can see a signal: send a harmless one (Python ignores SIGWINCH).
    let containers = containers_with_role(d.pid, "sandbox");
    assert_eq!(containers.len(), 1, "{containers:?}");
    let status = std::process::Command::new("docker")
        .args(["kill", "--signal", "SIGWINCH", &containers[0]])
        .output()
        .expect("docker kill");
    assert!(status.status.success());
    let pid = d.pid;
    assert!(
        eventually(Duration::from_secs(10), || engine_signals(pid, since).len()
            == 1)
        .await,
        "the engine's event log shows a signal sent through its API: {:?}",
        engine_signals(pid, since)
    );
    let r = d.persistent_ok("kept", &id).await;
    assert_eq!(value(&r).as_deref(), Some("41"));
    d.finish().await;
}

/// The sandbox of code that swallows the interrupt is killed (the last resort), with no
/// SIGINT through the engine before it; the daemon and other sessions carry on.
async fn killed_after_the_interrupt(code: &str) {
    let mut d = Daemon::start_with(&[TIMEOUT]).await;
    let base = d.baseline().await;
    let other = d.new_session("other = 'fine'").await;
    let id = d.new_session("import time\nx = 1").await;
    let since = unix_now();
    let r = d.persistent(code, Some(&id)).await;
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(field(&r, "timed_out"), &json!(true), "{}", describe(&r));
    assert_eq!(field(&r, "sandbox_lost"), &json!(true), "{}", describe(&r));
    let t = text(&r);
    assert!(
        t.contains("did not stop when interrupted") && t.contains("killed"),
        "says the code ignored the interrupt and its sandbox was killed: {t}"
    );
    let pid = d.pid;
    // Its forced removal is the one signal: SIGKILL (9), never SIGINT (2).
    assert!(
        eventually(Duration::from_secs(10), || !engine_signals(pid, since)
            .is_empty())
        .await,
        "the killed sandbox shows in the engine's event log"
    );
    let sent = engine_signals(pid, since);
    assert!(
        sent.iter().all(|s| s == "9"),
        "only SIGKILL was sent: {sent:?}"
    );

    let r = d.persistent("x", Some(&id)).await;
    assert_tool_error(&r, "has ended");
    let r = d.persistent_ok("other", &other).await;
    assert_eq!(value(&r).as_deref(), Some("'fine'"));
    d.assert_recovered(&base, 1).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn code_that_catches_the_interrupt_and_goes_on_is_killed_as_the_last_resort() {
    killed_after_the_interrupt(
        "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('caught it', flush=True)\n\
         while True:\n    time.sleep(1)",
    )
    .await;
}

/// Native code that never returns to the interpreter and holds the GIL: the helper's
/// reader thread cannot even take the request (an engine SIGINT did not stop it either).
#[tokio::test(flavor = "multi_thread")]
async fn native_code_holding_the_gil_is_killed_as_the_last_resort() {
    killed_after_the_interrupt("sum(range(10 ** 12))").await;
}

/// The helper alone, over pipes: `python3 -u -c HELPER`, as in a sandbox.
struct Helper {
    child: tokio::process::Child,
    input: tokio::process::ChildStdin,
    output: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    workdir: std::path::PathBuf,
    next: u64,
}

impl Helper {
    async fn start() -> Helper {
        let workdir = fresh_dir("helper");
        let mut child = tokio::process::Command::new("python3")
            .args(["-u", "-c", python_docker_mcp::sandbox::HELPER])
            .env("PDM_WORKDIR", &workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (the helper tests need it on the host)");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut h = Helper {
            child,
            input,
            output,
            workdir,
            next: 0,
        };
        assert_eq!(h.recv().await["op"], "ready");
        h
    }

    async fn send(&mut self, request: Value) {
        let line = format!("{request}\n");
        self.input.write_all(line.as_bytes()).await.unwrap();
        self.input.flush().await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.output.next_line())
            .await
            .expect("the helper answers within 60 s")
            .unwrap()
            .expect("the helper is still running");
        serde_json::from_str(&line).unwrap()
    }

    /// Start `code` (streaming), returning its id.
    async fn exec(&mut self, code: &str) -> u64 {
        self.next += 1;
        let id = self.next;
        self.send(json!({"op": "exec", "id": id, "code": code, "stream": true}))
            .await;
        id
    }

    /// The result of execution `id`, skipping its streamed output.
    async fn result(&mut self, id: u64) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["op"] == "result" {
                assert_eq!(frame["id"], id, "{frame}");
                return frame;
            }
            assert_eq!(
                frame["op"], "output",
                "only output comes before the result: {frame}"
            );
        }
    }

    async fn run(&mut self, code: &str) -> Value {
        let id = self.exec(code).await;
        self.result(id).await
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

#[tokio::test]
async fn the_helper_turns_an_interrupt_request_into_keyboard_interrupt_in_user_code() {
    let mut h = Helper::start().await;
    let r = h.run("kept = 41\nimport os, threading, time").await;
    assert_eq!(r["error"], Value::Null, "{r}");
    let cases = [
        ("a sleep", "time.sleep(60)"),
        ("a tight loop", "while True:\n    pass"),
        ("a blocking read", "r, w = os.pipe()\nos.read(r, 1)"),
        (
            "a thread join",
            "t = threading.Thread(target=time.sleep, args=(60,), daemon=True)\nt.start()\nt.join()",
        ),
    ];
    for (what, code) in cases {
        let id = h
            .exec(&format!("print('started', flush=True)\n{code}"))
            .await;
        // Interrupt once the code has visibly started.
        let first = h.recv().await;
        assert_eq!(first["op"], "output", "{what}: {first}");
        let printed = first["stdout"].as_str().unwrap_or_default();
        assert!(printed.starts_with("started"), "{what}: {first}");
        h.send(json!({"op": "interrupt", "id": id})).await;
        let r = h.result(id).await;
        assert_eq!(r["interrupted"], true, "{what}: {r}");
        assert_eq!(r["error"]["type"], "KeyboardInterrupt", "{what}: {r}");
        let r = h.run("kept + 1").await;
        assert_eq!(r["value"], "42", "{what}: {r}");
    }
}

#[tokio::test]
async fn the_helper_honours_an_interrupt_that_arrives_before_the_code_starts() {
    let mut h = Helper::start().await;
    // The request follows the code at once: it lands while the run is still set up,
    // where a signal would be ignored, and is raised as the code starts.
    let id = h.exec("import time\ntime.sleep(60)").await;
    h.send(json!({"op": "interrupt", "id": id})).await;
    let r = h.result(id).await;
    assert_eq!(r["interrupted"], true, "{r}");
    assert_eq!(r["error"]["type"], "KeyboardInterrupt", "{r}");
}

#[tokio::test]
async fn the_helper_ignores_an_interrupt_for_a_run_that_is_over() {
    let mut h = Helper::start().await;
    let done = h.exec("x = 1").await;
    assert_eq!(h.result(done).await["error"], Value::Null);
    // Late (the run it names is over) and unknown ids: no reply, and nothing is hit.
    h.send(json!({"op": "interrupt", "id": done})).await;
    h.send(json!({"op": "interrupt", "id": 999})).await;
    h.send(json!({"op": "ping", "id": 50})).await;
    assert_eq!(h.recv().await, json!({"op": "pong", "id": 50}));
    let r = h.run("import time\ntime.sleep(0.2)\nx + 1").await;
    assert_eq!(r["interrupted"], false, "{r}");
    assert_eq!(r["value"], "2", "{r}");
}
