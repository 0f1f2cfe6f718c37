//! MCP's legacy HTTP+SSE transport (2024-11-05: `GET /sse`, then `POST /messages`) end to
//! end: the real binary, real Docker, and the official MCP Python SDK's SSE client
//! (`mcp.client.sse.sse_client`, driven by `tests/python/sse_client.py`).
//!
//! The same checks as `tests/http.rs` makes of `/mcp`. Security: no token or a wrong one
//! gets 401 on both routes and the SDK gets nothing; without tokens a foreign `Host` gets
//! 403 (DNS rebinding); another client's stream is a stream
//! that does not exist, and another client's sandbox session is an unknown id; a body over
//! `server.max_message` gets 413 naming it; `server.legacy_sse: false` turns the routes
//! off. Functional: a session keeps its variables across calls, and a long run streams its
//! output as progress while it runs. The drain: a call in flight at SIGTERM finishes and
//! its answer arrives on the stream, while a new stream gets 503.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http::*;
use serde_json::{json, Value};

/// How long one SDK run may take (it connects, calls, exits).
const RUN_LIMIT: Duration = Duration::from_secs(120);

async fn tokened() -> HttpDaemon {
    let tokens = tokens_file();
    HttpDaemon::start(&[("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap())]).await
}

fn sse_url(daemon: &HttpDaemon) -> String {
    format!("{}/sse", daemon.base)
}

/// One step of `tests/python/sse_client.py`, to spawn.
fn sdk_command(
    python: &Path,
    daemon: &HttpDaemon,
    token: &str,
    step: &[&str],
) -> tokio::process::Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sse_client.py");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(&script)
        .arg(sse_url(daemon))
        .arg(token)
        .args(step)
        .kill_on_drop(true);
    cmd
}

/// The JSON line of a finished step.
fn sdk_line(step: &[&str], out: std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{step:?}: {stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{step:?}: not JSON ({e}): {stdout}\n{stderr}"))
}

/// One step of `tests/python/sse_client.py`: its JSON line.
async fn sdk(python: &Path, daemon: &HttpDaemon, token: &str, step: &[&str]) -> Value {
    let out = tokio::time::timeout(RUN_LIMIT, sdk_command(python, daemon, token, step).output())
        .await
        .unwrap_or_else(|_| panic!("the SDK's SSE client did not finish within {RUN_LIMIT:?}"))
        .expect("run the SDK's SSE client");
    sdk_line(step, out)
}

async fn python() -> PathBuf {
    tokio::task::spawn_blocking(python_sdk).await.unwrap()
}

/// Open a stream as `token`'s client and read its `endpoint` event: the URL to post to.
/// The stream stays open as long as the returned response is kept.
async fn open_stream(daemon: &HttpDaemon, token: &str) -> (String, reqwest::Response) {
    let mut response = reqwest::Client::new()
        .get(sse_url(daemon))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(response.status(), 200);
    let mut seen = String::new();
    let endpoint = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(data) = seen
                .split("event: endpoint\ndata: ")
                .nth(1)
                .and_then(|rest| rest.split_once('\n'))
                .map(|(data, _)| data.to_string())
            {
                return data;
            }
            match response.chunk().await.expect("a chunk") {
                Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                None => panic!("the stream ended before its endpoint event: {seen}"),
            }
        }
    })
    .await
    .expect("the endpoint event comes at once");
    assert!(endpoint.starts_with("/messages?sessionId="), "{endpoint}");
    (format!("{}{endpoint}", daemon.base), response)
}

// ----- security -----

#[tokio::test]
async fn no_token_or_a_wrong_one_gets_401_on_both_routes_and_the_sdk_gets_nothing() {
    let mut daemon = tokened().await;
    let http = http();
    for token in [None, Some("wrong-token-0123456789")] {
        let mut get = http.get(sse_url(&daemon));
        let mut post = http
            .post(format!("{}/messages?sessionId=abc", daemon.base))
            .header("content-type", "application/json")
            .body(initialize().to_string());
        if let Some(token) = token {
            get = get.bearer_auth(token);
            post = post.bearer_auth(token);
        }
        for (route, request) in [("GET /sse", get), ("POST /messages", post)] {
            let r = request.send().await.expect("send");
            assert_eq!(r.status(), 401, "{route} with {token:?}");
            assert_eq!(
                r.headers().get("www-authenticate").unwrap(),
                "Bearer",
                "{route}"
            );
            assert!(r.text().await.unwrap().is_empty(), "{route}: no body");
        }
    }
    let python = python().await;
    let got = sdk(&python, &daemon, "wrong-token-0123456789", &["session"]).await;
    assert!(
        got["error"].as_str().is_some_and(|e| e.contains("401")),
        "the SDK is refused: {got}"
    );
    daemon.finish().await;
}

#[tokio::test]
async fn another_clients_stream_and_sandbox_session_are_ones_that_do_not_exist() {
    let mut daemon = tokened().await;
    let python = python().await;
    // Alice's stream: Bob posting to it gets what an id that never existed gets.
    let (hers, _keep) = open_stream(&daemon, ALICE).await;
    let never = format!(
        "{}/messages?sessionId=0123456789abcdef0123456789abcdef",
        daemon.base
    );
    let post = |url: &str, token: &str| {
        http()
            .post(url.to_string())
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(initialize().to_string())
            .send()
    };
    let bob_on_hers = post(&hers, BOB).await.expect("send");
    let bob_on_never = post(&never, BOB).await.expect("send");
    assert_eq!(bob_on_hers.status(), 404);
    assert_eq!(bob_on_never.status(), 404);
    assert_eq!(
        bob_on_hers.text().await.unwrap(),
        bob_on_never.text().await.unwrap()
    );
    assert_eq!(post(&hers, ALICE).await.expect("send").status(), 202);

    // Alice's sandbox session: to Bob it is unknown, and not among his sessions.
    let got = sdk(&python, &daemon, ALICE, &["session"]).await;
    let id = got["session_id"]
        .as_str()
        .expect("a session id")
        .to_string();
    let stolen = sdk(&python, &daemon, BOB, &["steal", &id]).await;
    let baseline = sdk(
        &python,
        &daemon,
        BOB,
        &["steal", "0f0e0d0c-0b0a-4999-8888-777766665555"],
    )
    .await;
    assert_eq!(stolen["used"]["is_error"], true, "{stolen}");
    assert_eq!(
        stolen["used"]["text"].to_string().replace(&id, "<ID>"),
        baseline["used"]["text"]
            .to_string()
            .replace("0f0e0d0c-0b0a-4999-8888-777766665555", "<ID>"),
        "the same answer as for an id that never existed"
    );
    assert!(
        !stolen["listed"].to_string().contains(&id),
        "not among Bob's sessions: {stolen}"
    );
    let again = sdk(&python, &daemon, ALICE, &["steal", &id]).await;
    assert_eq!(
        again["used"]["is_error"], false,
        "Alice still has it: {again}"
    );
    assert!(again["used"]["text"].to_string().contains("41"), "{again}");
    daemon.finish().await;
}

#[tokio::test]
async fn a_body_over_max_message_gets_413_naming_the_limit() {
    let mut daemon = HttpDaemon::start(&[
        ("PYTHON_DOCKER_MCP_MAX_MESSAGE", "6m"),
        ("PYTHON_DOCKER_MCP_FILE_LIMIT", "1m"),
    ])
    .await;
    let (endpoint, _keep) = open_stream(&daemon, "unused").await;
    let body = json!({
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "execute-transient", "arguments": {"code": "a".repeat(7_000_000)}}
    });
    let r = http()
        .post(endpoint)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("server.max_message") && text.contains("6.0 MiB"),
        "{text}"
    );
    daemon.finish().await;
}

/// On loopback without tokens, a `Host` that is not a loopback name is refused, as on
/// `/mcp` (DNS rebinding); a body that is not a JSON-RPC message gets 400.
#[tokio::test]
async fn without_tokens_a_foreign_host_is_forbidden_and_a_bad_body_is_400() {
    let mut daemon = HttpDaemon::start(&[]).await;
    let r = http()
        .get(sse_url(&daemon))
        .header("host", "rebound.invalid:8002")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let (endpoint, _keep) = open_stream(&daemon, "unused").await;
    let r = http()
        .post(&endpoint)
        .header("host", "rebound.invalid:8002")
        .body(initialize().to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let r = http()
        .post(&endpoint)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("JSON-RPC"));
    daemon.finish().await;
}

#[tokio::test]
async fn legacy_sse_false_turns_the_routes_off() {
    let mut daemon = HttpDaemon::start(&[("PYTHON_DOCKER_MCP_LEGACY_SSE", "false")]).await;
    let r = http().get(sse_url(&daemon)).send().await.expect("send");
    assert_eq!(r.status(), 404);
    let r = http()
        .post(format!("{}/messages?sessionId=abc", daemon.base))
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
    assert!(
        !daemon.log().contains("legacy HTTP+SSE"),
        "{}",
        daemon.log()
    );
    daemon.finish().await;
}

// ----- functional -----

#[tokio::test]
async fn the_sdks_sse_client_lists_tools_and_a_session_keeps_its_variables() {
    let mut daemon = tokened().await;
    let python = python().await;
    let got = sdk(&python, &daemon, ALICE, &["session"]).await;
    let tools: Vec<&str> = got["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{got}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for tool in ["execute-persistent", "execute-transient", "list-sessions"] {
        assert!(tools.contains(&tool), "{tool} missing from {tools:?}");
    }
    assert_eq!(got["first"]["is_error"], false, "{got}");
    assert_eq!(got["second"]["is_error"], false, "{got}");
    assert_eq!(got["second"]["structured"]["value"], "42", "{got}");
    assert!(
        daemon.log().contains("legacy SSE stream opened"),
        "it went over /sse: {}",
        daemon.log()
    );
    daemon.finish().await;
}

#[tokio::test]
async fn a_long_run_streams_its_output_while_it_runs() {
    let mut daemon = tokened().await;
    let python = python().await;
    let got = sdk(&python, &daemon, BOB, &["stream"]).await;
    assert_eq!(got["result"]["is_error"], false, "{got}");
    assert_eq!(
        got["result"]["structured"]["stdout"], "tick 0\ntick 1\ntick 2\ntick 3\ntick 4\ntick 5\n",
        "{got}"
    );
    let progress = got["progress"].as_array().expect("progress");
    assert!(progress.len() >= 3, "output came as progress: {got}");
    let first = progress[0]["at"].as_f64().unwrap();
    let ended = got["ended_at"].as_f64().unwrap();
    assert!(
        ended - first > 1.5,
        "the first output arrived while the run went on (first at {first:.2} s, end at {ended:.2} s): {got}"
    );
    let joined: String = progress
        .iter()
        .filter_map(|p| p["message"].as_str())
        .collect();
    assert_eq!(
        joined, got["result"]["structured"]["stdout"],
        "the progress messages carry the output, in order: {got}"
    );
    daemon.finish().await;
}

// ----- the drain -----

/// At SIGTERM a call in flight over SSE finishes and its answer reaches the client on its
/// stream, while a new stream is refused with 503 and `Retry-After`; then the daemon exits
/// cleanly (`HttpDaemon::finish` checks that nothing is left behind).
#[tokio::test]
async fn a_call_in_flight_at_sigterm_finishes_over_sse_while_new_streams_get_503() {
    let mut daemon = tokened().await;
    let python = python().await;
    let step = ["stream"];
    let run = sdk_command(&python, &daemon, ALICE, &step)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the SDK's SSE client");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !daemon.log().contains("legacy SSE stream opened") {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The 3 s run is under way.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(daemon.pid, "TERM");
    while !daemon.log().contains("draining") {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http()
        .get(sse_url(&daemon))
        .bearer_auth(BOB)
        .send()
        .await
        .expect("GET /sse while draining");
    assert_eq!(r.status(), 503);
    assert!(
        r.headers().get("retry-after").is_some(),
        "{:?}",
        r.headers()
    );
    let out = tokio::time::timeout(RUN_LIMIT, run.wait_with_output())
        .await
        .expect("the SDK's SSE client finished")
        .expect("wait for the SDK's SSE client");
    let got = sdk_line(&step, out);
    assert_eq!(got["result"]["is_error"], false, "{got}");
    assert_eq!(
        got["result"]["structured"]["stdout"], "tick 0\ntick 1\ntick 2\ntick 3\ntick 4\ntick 5\n",
        "the whole run's answer arrived: {got}"
    );
    let status = tokio::time::timeout(Duration::from_secs(40), daemon.child.wait())
        .await
        .expect("the daemon exits after the drain")
        .expect("wait");
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    daemon.finish().await;
}
