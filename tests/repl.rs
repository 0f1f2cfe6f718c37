//! The session as a notebook kernel, against the real engine: memory blow-ups, huge
//! output, figures, client cancellation, streamed progress, reset, variable listing, idle
//! expiry and the session limit. Speed is never asserted here.

mod common;

use std::time::Duration;

use common::*;
use rmcp::model::{CallToolRequestParams, ClientRequest, Request};
use rmcp::service::PeerRequestOptions;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_memory_costs_only_the_cell_and_names_the_limit() {
    let mut d = Daemon::start().await;
    let victim = d.new_session("x = 1").await;
    let bystander = d.new_session("y = 2").await;
    let r = d
        .persistent(
            "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))",
            Some(&victim),
        )
        .await;
    assert_eq!(
        error_type(&r).as_deref(),
        Some("MemoryError"),
        "{}",
        describe(&r)
    );
    assert_eq!(field(&r, "sandbox_lost"), &json!(false), "{}", describe(&r));
    assert!(
        text(&r).contains("docker.memory_limit 256m"),
        "{}",
        describe(&r)
    );
    // The session lives on with its variables, and the memory is usable again.
    let r = d.persistent_ok("del blocks\nx + 1", &victim).await;
    assert_eq!(value(&r).as_deref(), Some("2"));
    let r = d
        .persistent_ok("len(bytearray(64 * 1024 * 1024))", &victim)
        .await;
    assert_eq!(value(&r).as_deref(), Some("67108864"));
    let r = d.persistent_ok("y + 1", &bystander).await;
    assert_eq!(value(&r).as_deref(), Some("3"));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kernel_oom_kill_is_reported_for_certain() {
    let mut d = Daemon::start().await;
    let victim = d.new_session("x = 1").await;
    // Files in the tmpfs count toward the container's memory but not toward the helper's
    // data limit: fill /tmp, then allocate, and the kernel's OOM killer strikes.
    let r = d
        .persistent(
            "import os\nfor i in range(100):\n    open(f'/tmp/f{i}', 'wb').write(os.urandom(1 << 20))\n\
             blocks = []\nwhile True:\n    blocks.append(bytearray(8 << 20))",
            Some(&victim),
        )
        .await;
    // The helper's data limit was set before the files existed, so it cannot catch this.
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(field(&r, "sandbox_lost"), &json!(true), "{}", describe(&r));
    let t = text(&r);
    assert!(t.contains("killed by the kernel"), "{}", describe(&r));
    assert!(t.contains("memory limit"), "{}", describe(&r));
    assert!(!t.contains("most likely"), "{}", describe(&r));
    let r = d.persistent("x", Some(&victim)).await;
    assert_tool_error(&r, "has ended");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn printing_a_hundred_megabytes_returns_with_a_truncation_marker() {
    let mut d = Daemon::start().await;
    let id = d.new_session("x = 1").await;
    let r = d
        .persistent(
            "import sys\nfor _ in range(100):\n    sys.stdout.write('y' * (1 << 20))\nprint('end')",
            Some(&id),
        )
        .await;
    assert!(!is_error(&r), "{}", describe(&r));
    let dropped = field(&r, "stdout_dropped").as_u64().expect("a count");
    assert!(dropped > 90 * (1 << 20), "{dropped} bytes dropped");
    assert!(
        stdout(&r).len() <= 256 * 1024 + 16,
        "kept {} bytes",
        stdout(&r).len()
    );
    assert!(
        text(&r).contains("[stdout truncated:"),
        "{}",
        &text(&r)[text(&r).len() - 200..]
    );
    // The session is unharmed.
    let r = d.persistent_ok("x + 1", &id).await;
    assert_eq!(value(&r).as_deref(), Some("2"));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_matplotlib_figure_comes_back_as_a_png_image() {
    let mut d = Daemon::start().await;
    let id = d.new_session("import matplotlib.pyplot as plt").await;
    let r = d
        .persistent_ok(
            "plt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nNone",
            &id,
        )
        .await;
    let images: Vec<_> = r.content.iter().filter_map(|c| c.as_image()).collect();
    assert_eq!(images.len(), 1, "{}", describe(&r));
    assert_eq!(images[0].mime_type, "image/png");
    // base64 of the PNG signature \x89PNG\r\n\x1a\n
    assert!(images[0].data.starts_with("iVBORw0KGgo"), "not a PNG");
    assert_eq!(field(&r, "figures"), &json!(1));
    // Figures are closed once returned.
    let r = d.persistent_ok("plt.get_fignums()", &id).await;
    assert_eq!(value(&r).as_deref(), Some("[]"));
    assert!(r.content.iter().all(|c| c.as_image().is_none()));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cancel_interrupts_the_code_and_the_session_lives_on() {
    // A time-out far away: only the cancel can stop the loop in time.
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_TIMEOUT", "5m")]).await;
    let id = d.new_session("import time\nbefore = 41").await;
    let params = CallToolRequestParams::new("execute-persistent").with_arguments(
        json!({ "code": "n = 0\nwhile True:\n    n += 1\n    time.sleep(0.01)", "session_id": id })
            .as_object()
            .expect("object")
            .clone(),
    );
    let handle = d
        .client()
        .peer()
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .expect("request sent");
    tokio::time::sleep(Duration::from_secs(1)).await;
    handle
        .cancel(Some("the test changed its mind".into()))
        .await
        .expect("cancel sent");
    // The next call can only run once the loop has stopped.
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        d.persistent("(before + 1, n > 0)", Some(&id)),
    )
    .await
    .expect("the loop was not interrupted by the cancel");
    assert_eq!(value(&r).as_deref(), Some("(42, True)"), "{}", describe(&r));
    d.finish().await;
}

/// Progress comes while the run is going, not in a burst with the result: the code notes
/// the wall clock (the host's, shared by containers) just before each print, and each
/// notification must arrive before the *next* print is even made. The code sleeps 2 s
/// between prints, so this is an order of events the code enforces, not a race.
#[tokio::test(flavor = "multi_thread")]
async fn output_streams_as_progress_notifications_during_a_long_run() {
    let mut d = Daemon::start().await;
    let r = d
        .transient(
            "import time\nprinted = []\nfor i in range(3):\n    printed.append(time.time())\n    \
             print(f'step {i}', flush=True)\n    time.sleep(2)\nprinted",
        )
        .await;
    let result_arrived = std::time::SystemTime::now();
    assert_ok(&r);
    let printed: Vec<f64> = field(&r, "state")["printed"]
        .as_array()
        .unwrap_or_else(|| panic!("no print times: {}", describe(&r)))
        .iter()
        .map(|t| t.as_f64().expect("a time"))
        .collect();
    assert_eq!(printed.len(), 3);
    let arrivals = d.progress_arrivals();
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64()
    };
    let first_with = |needle: &str| {
        arrivals
            .iter()
            .find(|(_, m)| m.contains(needle))
            .map(|((_, wall), _)| secs(*wall))
            .unwrap_or_else(|| panic!("no progress mentions {needle:?}: {arrivals:?}"))
    };
    for i in 0..2 {
        let arrived = first_with(&format!("step {i}"));
        assert!(
            arrived < printed[i + 1],
            "'step {i}' arrived {:.3} s after 'step {}' was printed: progress came in a burst, \
             not while the run was going",
            arrived - printed[i + 1],
            i + 1
        );
    }
    let last = first_with("step 2");
    assert!(last >= printed[2], "{arrivals:?}");
    assert!(last <= secs(result_arrived), "{arrivals:?}");
    // The final result still carries the whole output.
    assert_eq!(stdout(&r), "step 0\nstep 1\nstep 2\n");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_forgets_variables_and_imports_but_keeps_files() {
    let mut d = Daemon::start().await;
    let id = d
        .new_session("import json\nx = 1\nopen('kept.txt', 'w').write('yes')")
        .await;
    let r = d.call("reset-session", json!({ "session_id": id })).await;
    assert_ok(&r);
    let r = d.persistent("x", Some(&id)).await;
    assert_eq!(
        error_type(&r).as_deref(),
        Some("NameError"),
        "{}",
        describe(&r)
    );
    let r = d.persistent("json", Some(&id)).await;
    assert_eq!(
        error_type(&r).as_deref(),
        Some("NameError"),
        "{}",
        describe(&r)
    );
    let r = d.persistent_ok("open('kept.txt').read()", &id).await;
    assert_eq!(value(&r).as_deref(), Some("'yes'"));
    let r = d
        .call("reset-session", json!({ "session_id": "nope" }))
        .await;
    assert_tool_error(&r, "no such session");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_variables_shows_names_types_and_short_reprs() {
    let mut d = Daemon::start().await;
    let id = d
        .new_session(
            "import math\nanswer = 42\nname = 'pdm'\nbig = list(range(10000))\n_hidden = 1",
        )
        .await;
    let r = d.call("list-variables", json!({ "session_id": id })).await;
    assert_ok(&r);
    let vars = field(&r, "variables").as_array().expect("a list").clone();
    let find = |n: &str| vars.iter().find(|v| v["name"] == n).cloned();
    assert_eq!(find("answer").expect("answer")["type"], "int");
    assert_eq!(find("answer").expect("answer")["repr"], "42");
    assert_eq!(find("name").expect("name")["repr"], "'pdm'");
    assert_eq!(find("math").expect("math")["type"], "module");
    let big = find("big").expect("big");
    assert!(
        big["repr"].as_str().expect("repr").len() < 300,
        "reprs are short: {big}"
    );
    assert!(find("_hidden").is_none(), "private names are left out");
    assert!(text(&r).contains("answer: int = 42"), "{}", text(&r));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sessions_are_ended_and_say_so() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_SESSION_IDLE_TIMEOUT", "1s")]).await;
    let id = d.new_session("x = 1").await;
    let pid = d.pid;
    assert!(
        eventually(Duration::from_secs(20), || containers_with_role(
            pid, "sandbox"
        )
        .is_empty())
        .await,
        "the idle session's sandbox is removed"
    );
    let r = d.persistent("x", Some(&id)).await;
    assert_tool_error(&r, "idle");
    // A session in use is not idle, however long the call.
    let busy = d.new_session("import time").await;
    let r = d
        .persistent_ok("time.sleep(2.5)\n'still here'", &busy)
        .await;
    assert_eq!(value(&r).as_deref(), Some("'still here'"));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_limit_is_enforced_with_a_clear_message() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_MAX_SESSIONS", "2")]).await;
    let first = d.new_session("1").await;
    d.new_session("2").await;
    let r = d.persistent("3", None).await;
    assert_tool_error(&r, "session.max_sessions");
    // Ending one frees a place.
    assert_ok(&d.cleanup(&first).await);
    d.new_session("4").await;
    d.finish().await;
}
