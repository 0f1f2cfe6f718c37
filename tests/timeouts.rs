//! Time-outs: code that runs too long is interrupted; code that will not stop loses its
//! sandbox; nothing else waits for it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const TIMEOUT: (&str, &str) = ("PYTHON_DOCKER_MCP_TIMEOUT", "2s");

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_loop_in_a_session_is_interrupted_and_the_session_keeps_its_variables() {
    let mut d = Daemon::start_with(&[TIMEOUT]).await;
    let id = d.new_session("before = 41\nimport time").await;
    let started = Instant::now();
    let r = d
        .persistent("print('looping')\nwhile True:\n    pass", Some(&id))
        .await;
    let took = started.elapsed();
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(field(&r, "timed_out"), &json!(true), "{}", describe(&r));
    assert_eq!(field(&r, "sandbox_lost"), &json!(false), "{}", describe(&r));
    assert_eq!(error_type(&r).as_deref(), Some("KeyboardInterrupt"));
    assert!(
        stdout(&r).contains("looping"),
        "output before the time-out is kept"
    );
    assert!(text(&r).contains("time-out"), "{}", text(&r));
    // Not cut short before the time-out. That the interrupt landed within its grace
    // (rather than the sandbox being killed after it) is what `sandbox_lost: false` and
    // the KeyboardInterrupt above say; the call's own bound (CALL_LIMIT) catches a hang.
    assert!(
        took >= Duration::from_millis(1900),
        "not interrupted before the 2 s time-out: {took:?}"
    );

    let r = d.persistent_ok("before + 1", &id).await;
    assert_eq!(value(&r).as_deref(), Some("42"), "{}", describe(&r));

    // A blocking sleep is interrupted the same way.
    let r = d.persistent("time.sleep(60)", Some(&id)).await;
    assert_eq!(field(&r, "timed_out"), &json!(true), "{}", describe(&r));
    let r = d.persistent_ok("before", &id).await;
    assert_eq!(value(&r).as_deref(), Some("41"));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn code_that_ignores_the_interrupt_loses_its_sandbox() {
    let mut d = Daemon::start_with(&[TIMEOUT]).await;
    let id = d.new_session("import time\nx = 1").await;
    assert_eq!(containers_with_role(d.pid, "sandbox").len(), 1);
    let r = d
        .persistent(
            "while True:\n  try:\n    time.sleep(10)\n  except KeyboardInterrupt:\n    pass",
            Some(&id),
        )
        .await;
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(field(&r, "sandbox_lost"), &json!(true), "{}", describe(&r));
    assert_eq!(field(&r, "timed_out"), &json!(true), "{}", describe(&r));
    assert_eq!(session_id(&r), id);
    assert!(
        text(&r).contains("is gone"),
        "the text says the session is gone: {}",
        text(&r)
    );

    let r = d.persistent("x", Some(&id)).await;
    assert_tool_error(&r, "has ended");
    let pid = d.pid;
    assert!(
        eventually(Duration::from_secs(10), || containers_with_role(
            pid, "sandbox"
        )
        .is_empty())
        .await,
        "the killed session's container is removed"
    );
    assert!(
        eventually(Duration::from_secs(10), || volumes_with_role(
            pid, "sandbox"
        )
        .is_empty())
        .await,
        "the lost session's volume is removed"
    );
    // A new session works.
    let fresh = d.new_session("y = 2").await;
    assert_ne!(fresh, id);
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_infinite_loop_times_out() {
    let mut d = Daemon::start_with(&[TIMEOUT]).await;
    let started = Instant::now();
    let r = d.transient("while True:\n    pass").await;
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(field(&r, "timed_out"), &json!(true), "{}", describe(&r));
    // Expected at the 2 s time-out; 30 s only catches a run that was never stopped.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the 2 s time-out stopped the run: {:?}",
        started.elapsed()
    );
    // A transient run that ignores the interrupt is killed, and reported so.
    let r = d
        .transient("import time\nwhile True:\n  try:\n    time.sleep(10)\n  except KeyboardInterrupt:\n    pass")
        .await;
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(field(&r, "timed_out"), &json!(true), "{}", describe(&r));
    assert_eq!(field(&r, "sandbox_lost"), &json!(true), "{}", describe(&r));
    let pid = d.pid;
    assert!(
        eventually(Duration::from_secs(10), || containers_with_role(
            pid, "sandbox"
        )
        .is_empty())
        .await,
        "timed-out transient containers are removed"
    );
    let r = d.transient("'still fine'").await;
    assert_eq!(value(&r).as_deref(), Some("'still fine'"));
    d.finish().await;
}

/// "Not blocked" by the order of events, not by wall-clock limits: the stuck call has
/// visibly started (its first output arrived as a progress notification) before the other
/// calls are sent, and every one of them has its answer before the stuck call's result
/// arrives. The stuck call can only end by the time-out, so if the others waited for it
/// they would be answered after it.
#[tokio::test(flavor = "multi_thread")]
async fn other_sessions_keep_working_while_one_is_stuck() {
    // Long enough that the other calls (a container start among them) fit with room to
    // spare on a loaded machine; the result only depends on their order.
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_TIMEOUT", "10s")]).await;
    let (stuck, free) = tokio::join!(d.new_session("a = 1"), d.new_session("b = 2"));
    let busy = async {
        let r = d
            .persistent(
                "print('stuck now', flush=True)\nwhile True:\n    pass",
                Some(&stuck),
            )
            .await;
        (r, Instant::now())
    };
    let others = async {
        // The stuck call's code is running once its first output has arrived.
        let running = eventually(Duration::from_secs(60), || {
            d.progress_messages()
                .iter()
                .any(|m| m.contains("stuck now"))
        })
        .await;
        assert!(running, "the stuck call's output never arrived as progress");
        let sent = Instant::now();
        let mut answered = Vec::new();
        for i in 0..3 {
            let r = d.persistent_ok(&format!("b + {i}"), &free).await;
            assert_eq!(value(&r), Some((2 + i).to_string()));
            answered.push(("persistent", Instant::now()));
        }
        let t = d.transient("'transient too'").await;
        assert_ok(&t);
        answered.push(("transient", Instant::now()));
        (sent, answered)
    };
    let ((r, stuck_ended), (sent, answered)) = tokio::join!(busy, others);
    assert_eq!(field(&r, "timed_out"), &json!(true), "{}", describe(&r));
    assert!(sent < stuck_ended);
    for (what, at) in &answered {
        assert!(
            *at < stuck_ended,
            "a {what} call was answered only after the stuck session's call ended: it waited \
             for it ({:?} after the stuck call's result)",
            at.duration_since(stuck_ended)
        );
    }
    let r = d.persistent_ok("a", &stuck).await;
    assert_eq!(value(&r).as_deref(), Some("1"));
    d.finish().await;
}
