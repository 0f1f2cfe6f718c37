//! The HTTP service end to end: the real binary serving streamable HTTP, real Docker.
//!
//! Security: bearer tokens (401 and nothing else), no open port off loopback, a malformed
//! tokens file, one client never reaching another's session. Functional: the per-client
//! session limit, `/health` and `/ready`, a round trip through the official MCP Python
//! SDK in both protocol generations, and the drain at SIGTERM with that SDK: calls in
//! flight finish, new MCP sessions get 503 with `Retry-After`.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::*;
use common::{assert_ok, fresh_dir, is_error, session_id, text};
use rmcp::model::CallToolResult;
use serde_json::{json, Value};

// ----- security -----

#[tokio::test]
async fn a_missing_or_wrong_token_gets_401_with_www_authenticate_and_nothing_else() {
    let tokens = tokens_file();
    let mut daemon =
        HttpDaemon::start(&[("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap())]).await;
    let http = http();
    let url = daemon.mcp_url();
    let post = || {
        http.post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(initialize().to_string())
    };
    let wrong = format!("{ALICE}x");
    let refused = [
        ("no header", post()),
        ("a wrong token", post().bearer_auth(&wrong)),
        ("a prefix of a token", post().bearer_auth(&ALICE[..20])),
        (
            "another scheme",
            post().header("authorization", format!("Basic {ALICE}")),
        ),
        ("a GET without a token", http.get(&url)),
        ("a DELETE without a token", http.delete(&url)),
    ];
    for (what, request) in refused {
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 401, "{what}");
        let headers = response.headers().clone();
        assert_eq!(
            headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{what}: {headers:?}"
        );
        assert!(
            headers.get("mcp-session-id").is_none(),
            "{what}: {headers:?}"
        );
        let body = response.bytes().await.expect("body");
        assert!(body.is_empty(), "{what}: the body says nothing: {body:?}");
    }
    // The right token gets through to MCP.
    let response = post().bearer_auth(BOB).send().await.expect("send");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("mcp-session-id").is_some());
    // No token ever reaches the log; names do.
    let log = daemon.log();
    for secret in [ALICE, BOB, wrong.as_str()] {
        assert!(!log.contains(secret), "a token leaked into the log:\n{log}");
    }
    assert!(log.contains("alice") && log.contains("bob"), "{log}");
    daemon.finish().await;
}

#[tokio::test]
async fn a_non_loopback_address_without_tokens_refuses_to_start_with_exit_code_2() {
    let (code, stderr) = run_to_exit(&["serve", "--http", "0.0.0.0:0"], &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("0.0.0.0:0")
            && stderr.contains("not a loopback address")
            && stderr.contains("PYTHON_DOCKER_MCP_TOKENS_FILE")
            && stderr.contains("127.0.0.1"),
        "the message says why and how to fix it: {stderr}"
    );
    // The same from the environment instead of the flag.
    let (code, stderr) = run_to_exit(&["serve"], &[("PYTHON_DOCKER_MCP_HTTP", "[::]:0")]).await;
    assert_eq!(code, Some(2), "{stderr}");
}

#[tokio::test]
async fn a_malformed_tokens_file_stops_start_up_naming_the_line() {
    let path = fresh_dir("tokens").join("tokens");
    std::fs::write(&path, format!("# team\nalice {ALICE}\nbob\ncarol {BOB}\n")).unwrap();
    let file = path.to_str().unwrap();
    let (code, stderr) = run_to_exit(
        &["serve", "--http", "127.0.0.1:0"],
        &[("PYTHON_DOCKER_MCP_TOKENS_FILE", file)],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(file) && stderr.contains("line 3"),
        "names the file and the line: {stderr}"
    );
    assert!(!stderr.contains(ALICE) && !stderr.contains(BOB), "{stderr}");
    // A tokens file that does not exist is named too.
    let (code, stderr) = run_to_exit(
        &["serve", "--http", "0.0.0.0:0"],
        &[("PYTHON_DOCKER_MCP_TOKENS_FILE", "/nonexistent/pdm-tokens")],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/pdm-tokens"), "{stderr}");
}

/// What an error text says, with the session id it echoes replaced.
fn normalised(r: &CallToolResult, id: &str) -> String {
    text(r).replace(id, "<ID>")
}

#[tokio::test]
async fn another_clients_session_is_exactly_an_unknown_id_for_every_tool() {
    let tokens = tokens_file();
    let mut daemon =
        HttpDaemon::start(&[("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap())]).await;
    let alice = daemon.connect(Some(ALICE)).await;
    let bob = daemon.connect(Some(BOB)).await;

    let r = call(&alice, "execute-persistent", json!({"code": "x = 41"})).await;
    assert_ok(&r);
    let hers = session_id(&r);
    let unknown = "0f0e0d0c-0b0a-4999-8888-777766665555";

    let attempts = |id: &str| {
        vec![
            (
                "execute-persistent",
                json!({"code": "x = 0", "session_id": id}),
            ),
            (
                "install-package",
                json!({"package_name": "tomli-w", "session_id": id}),
            ),
            ("reset-session", json!({"session_id": id})),
            ("list-variables", json!({"session_id": id})),
            ("list-packages", json!({"session_id": id})),
            ("cleanup-session", json!({"session_id": id})),
        ]
    };
    for ((tool, theirs), (_, never)) in attempts(&hers).into_iter().zip(attempts(unknown)) {
        let got = call(&bob, tool, theirs).await;
        let baseline = call(&bob, tool, never).await;
        assert!(
            is_error(&got) && is_error(&baseline),
            "{tool}: {}",
            text(&got)
        );
        assert_eq!(
            normalised(&got, &hers),
            normalised(&baseline, unknown),
            "{tool}: bob sees alice's session exactly as an unknown id"
        );
        assert!(
            text(&got).contains("no such session"),
            "{tool}: {}",
            text(&got)
        );
        assert!(got.structured_content.is_none(), "{tool}");
    }

    // Nothing bob did touched it: alice's variable is still there.
    let r = call(
        &alice,
        "execute-persistent",
        json!({"code": "x + 1", "session_id": hers}),
    )
    .await;
    assert_ok(&r);
    assert_eq!(common::value(&r).as_deref(), Some("42"));

    // Once it has ended, alice is told why; bob still learns nothing.
    assert_ok(&call(&alice, "cleanup-session", json!({"session_id": hers})).await);
    let r = call(&alice, "list-variables", json!({"session_id": hers})).await;
    assert!(text(&r).contains("has ended"), "{}", text(&r));
    let got = call(&bob, "list-variables", json!({"session_id": hers})).await;
    let baseline = call(&bob, "list-variables", json!({"session_id": unknown})).await;
    assert_eq!(normalised(&got, &hers), normalised(&baseline, unknown));
    let got = call(&bob, "cleanup-session", json!({"session_id": hers})).await;
    let baseline = call(&bob, "cleanup-session", json!({"session_id": unknown})).await;
    assert_eq!(normalised(&got, &hers), normalised(&baseline, unknown));

    let _ = alice.cancel().await;
    let _ = bob.cancel().await;
    daemon.finish().await;
}

#[tokio::test]
async fn an_mcp_session_id_answers_only_the_client_that_opened_it() {
    let tokens = tokens_file();
    let mut daemon =
        HttpDaemon::start(&[("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap())]).await;
    let http = http();
    let url = daemon.mcp_url();
    let opened = http
        .post(&url)
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(initialize().to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(opened.status(), 200);
    let hers = opened
        .headers()
        .get("mcp-session-id")
        .expect("an MCP session id")
        .to_str()
        .unwrap()
        .to_string();
    let request = |method: reqwest::Method, token: &str, id: &str| {
        http.request(method, &url)
            .bearer_auth(token)
            .header("mcp-session-id", id)
            .header("mcp-protocol-version", "2025-11-25")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
    };
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();
    let never = "0f0e0d0c0b0a49998888777766665555";
    for (what, method, body) in [
        ("a request", reqwest::Method::POST, list.clone()),
        ("the event stream", reqwest::Method::GET, String::new()),
        ("closing it", reqwest::Method::DELETE, String::new()),
    ] {
        let theirs = request(method.clone(), BOB, &hers)
            .body(body.clone())
            .send()
            .await
            .expect("send");
        let unknown = request(method.clone(), BOB, never)
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(
            theirs.status(),
            unknown.status(),
            "{what}: the same status as an unknown id"
        );
        if method != reqwest::Method::DELETE {
            assert_eq!(theirs.status(), 404, "{what} on alice's MCP session as bob");
        }
        assert_eq!(
            theirs.text().await.unwrap(),
            unknown.text().await.unwrap(),
            "{what}: the same answer as an unknown id"
        );
    }
    // Alice's MCP session is untouched and still hers.
    let still = request(reqwest::Method::POST, ALICE, &hers)
        .body(list)
        .send()
        .await
        .expect("send");
    assert_eq!(still.status(), 200);
    assert!(still.text().await.unwrap().contains("execute-transient"));
    daemon.finish().await;
}

// ----- quotas and fairness -----

#[tokio::test]
async fn each_client_gets_its_share_of_the_sessions() {
    let tokens = tokens_file();
    // 4 sessions in all; unset, each of the two clients may hold a quarter: 1.
    let mut daemon = HttpDaemon::start(&[
        ("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap()),
        ("PYTHON_DOCKER_MCP_MAX_SESSIONS", "4"),
    ])
    .await;
    let alice = daemon.connect(Some(ALICE)).await;
    let bob = daemon.connect(Some(BOB)).await;
    let new_session = json!({"code": "1"});

    let first = call(&alice, "execute-persistent", new_session.clone()).await;
    assert_ok(&first);
    let refused = call(&alice, "execute-persistent", new_session.clone()).await;
    assert!(is_error(&refused), "{}", text(&refused));
    let message = text(&refused);
    assert!(
        message.contains("session.max_sessions_per_client")
            && message.contains("alice")
            && message.contains("1 session"),
        "the refusal names the client, the limit and the key: {message}"
    );
    // Alice's quota is hers alone: bob still gets his.
    let his = call(&bob, "execute-persistent", new_session.clone()).await;
    assert_ok(&his);
    // Ending a session gives the slot back.
    assert_ok(
        &call(
            &alice,
            "cleanup-session",
            json!({"session_id": session_id(&first)}),
        )
        .await,
    );
    assert_ok(&call(&alice, "execute-persistent", new_session).await);
    let _ = alice.cancel().await;
    let _ = bob.cancel().await;
    daemon.finish().await;
}

#[tokio::test]
async fn each_client_has_a_shared_environment_of_its_own() {
    let tokens = tokens_file();
    let mut daemon =
        HttpDaemon::start(&[("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap())]).await;
    let alice = daemon.connect(Some(ALICE)).await;
    let bob = daemon.connect(Some(BOB)).await;
    let probe =
        json!({"code": "import tomli_w; print('tomli_w', tomli_w.dumps({'a': 1}).strip())"});
    // A session alice starts before her first shared install keeps the environment it
    // started with (README: "Each client's shared environment is its own").
    let early = call(&alice, "execute-persistent", json!({"code": "early = 1"})).await;
    assert_ok(&early);
    let early = session_id(&early);

    let installed = call(
        &alice,
        "install-package",
        json!({"package_name": "tomli-w"}),
    )
    .await;
    assert_ok(&installed);
    assert!(
        text(&installed).contains("shared environment"),
        "{}",
        text(&installed)
    );

    // Alice's runs and new sessions see it.
    let r = call(&alice, "execute-transient", probe.clone()).await;
    assert_ok(&r);
    assert!(text(&r).contains("tomli_w a = 1"), "{}", text(&r));
    let r = call(&alice, "execute-persistent", probe.clone()).await;
    assert_ok(&r);
    // Her earlier session does not: it keeps its old shared environment...
    let in_early = json!({"code": probe["code"], "session_id": early});
    let r = call(&alice, "execute-persistent", in_early.clone()).await;
    assert!(
        is_error(&r) && text(&r).contains("ModuleNotFoundError"),
        "the earlier session kept its old shared environment: {}",
        text(&r)
    );
    // ...and an install into it by its id is how it gets the package.
    let r = call(
        &alice,
        "install-package",
        json!({"package_name": "tomli-w", "session_id": early}),
    )
    .await;
    assert_ok(&r);
    let r = call(&alice, "execute-persistent", in_early).await;
    assert_ok(&r);
    assert!(text(&r).contains("tomli_w a = 1"), "{}", text(&r));
    // Bob's do not, and his listing does not show it.
    for tool in ["execute-transient", "execute-persistent"] {
        let r = call(&bob, tool, probe.clone()).await;
        assert!(is_error(&r), "{tool} as bob: {}", text(&r));
        assert!(text(&r).contains("ModuleNotFoundError"), "{}", text(&r));
    }
    let names = |r: &CallToolResult| -> Vec<String> {
        let list = r.structured_content.as_ref().expect("a package list");
        list["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_lowercase().replace('_', "-"))
            .collect()
    };
    let hers = call(&alice, "list-packages", json!({})).await;
    let his = call(&bob, "list-packages", json!({})).await;
    assert!(
        names(&hers).contains(&"tomli-w".to_string()),
        "{:?}",
        names(&hers)
    );
    assert!(
        !names(&his).contains(&"tomli-w".to_string()),
        "{:?}",
        names(&his)
    );
    // The volume says whose it is.
    let labelled = std::process::Command::new("docker")
        .args([
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=python-docker-mcp.pid={}", daemon.pid),
            "--filter",
            "label=python-docker-mcp.client=alice",
        ])
        .output()
        .expect("docker volume ls");
    let volumes = String::from_utf8_lossy(&labelled.stdout);
    assert_eq!(
        volumes.lines().count(),
        1,
        "alice's shared volume: {volumes}"
    );
    let _ = alice.cancel().await;
    let _ = bob.cancel().await;
    daemon.finish().await;
}

#[tokio::test]
async fn when_the_pool_is_dry_clients_are_served_in_turn() {
    let tokens = tokens_file();
    // Pool off, one creation at a time: every call waits for a sandbox of its own.
    let mut daemon = HttpDaemon::start(&[
        ("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap()),
        ("PYTHON_DOCKER_MCP_MAX_CONCURRENT_CREATIONS", "1"),
        ("PYTHON_DOCKER_MCP_POOL_WAIT_TIMEOUT", "300s"),
    ])
    .await;
    let alice = daemon.connect(Some(ALICE)).await;
    let bob = daemon.connect(Some(BOB)).await;
    const BURST: usize = 20;
    let done = Arc::new(Mutex::new(Vec::<&'static str>::new()));
    let run = |peer: rmcp::Peer<rmcp::RoleClient>, who: &'static str| {
        let done = done.clone();
        tokio::spawn(async move {
            let params = rmcp::model::CallToolRequestParams::new("execute-transient")
                .with_arguments(json!({"code": "print(1)"}).as_object().unwrap().clone());
            let r = peer.call_tool(params).await.expect("call");
            assert_ok(&r);
            done.lock().unwrap().push(who);
        })
    };
    let burst: Vec<_> = (0..BURST)
        .map(|_| run(alice.peer().clone(), "alice"))
        .collect();
    // Once one of alice's runs is done, all of hers have long arrived and wait.
    while done.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = done.lock().unwrap().len();
    run(bob.peer().clone(), "bob").await.expect("bob's call");
    let order = done.lock().unwrap().clone();
    let ahead = order.iter().position(|w| *w == "bob").unwrap() - before;
    assert!(
        ahead <= 3,
        "bob waited behind {ahead} of alice's runs (order {order:?}); in turn, at most a couple"
    );
    assert!(
        order.len() < BURST,
        "alice still had runs waiting when bob was served: {order:?}"
    );
    for task in burst {
        task.await.expect("alice's call");
    }
    let _ = alice.cancel().await;
    let _ = bob.cancel().await;
    daemon.finish().await;
}

#[tokio::test]
async fn a_request_over_max_message_gets_413_naming_the_limit_and_a_large_one_under_it_runs() {
    let mut daemon = HttpDaemon::start(&[
        ("PYTHON_DOCKER_MCP_MAX_MESSAGE", "6m"),
        ("PYTHON_DOCKER_MCP_FILE_LIMIT", "1m"),
    ])
    .await;
    let client = daemon.connect(None).await;
    // 5 MB of code: over rmcp's 4 MiB default, under this daemon's limit.
    let code = format!("s = '{}'\nprint(len(s))", "a".repeat(5_000_000));
    let r = call(&client, "execute-transient", json!({ "code": code })).await;
    assert_ok(&r);
    assert!(text(&r).contains("5000000"), "{}", text(&r));
    let body = json!({
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "execute-transient", "arguments": {"code": "a".repeat(7_000_000)}}
    });
    let response = http()
        .post(daemon.mcp_url())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 413);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("server.max_message") && text.contains("6.0 MiB"),
        "{text}"
    );
    // Still serving.
    assert_ok(&call(&client, "execute-transient", json!({"code": "print(2)"})).await);
    let _ = client.cancel().await;
    daemon.finish().await;
}

/// The `Host` header guard against DNS rebinding: a page from a name its attacker points
/// at 127.0.0.1 sends requests with that name as `Host`. On loopback without tokens only
/// loopback names (and the bound address) are served; with tokens the check is off by
/// design (src/http.rs, `transport_config`), because every request must carry a secret
/// such a page cannot know: the token decides.
#[tokio::test]
async fn a_foreign_host_is_refused_without_tokens_and_the_token_decides_with_them() {
    fn port(daemon: &HttpDaemon) -> String {
        daemon.base.rsplit(':').next().expect("a port").to_string()
    }
    let post = |url: &str, host: &str| {
        http()
            .post(url)
            .header("host", host)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(initialize().to_string())
    };

    let mut open = HttpDaemon::start(&[]).await;
    let (url, p) = (open.mcp_url(), port(&open));
    for host in [
        format!("rebound.invalid:{p}"),
        "rebound.invalid".to_string(),
        format!("192.0.2.1:{p}"),
        format!("localhost.rebound.invalid:{p}"),
    ] {
        let r = post(&url, &host).send().await.expect("send");
        assert_eq!(r.status(), 403, "Host {host} without tokens");
        assert!(r.headers().get("mcp-session-id").is_none(), "{host}");
    }
    for host in [format!("localhost:{p}"), format!("127.0.0.1:{p}")] {
        let r = post(&url, &host).send().await.expect("send");
        assert_eq!(r.status(), 200, "Host {host} without tokens");
        assert!(r.headers().get("mcp-session-id").is_some(), "{host}");
    }
    open.finish().await;

    let tokens = tokens_file();
    let mut guarded =
        HttpDaemon::start(&[("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap())]).await;
    let (url, p) = (guarded.mcp_url(), port(&guarded));
    let foreign = format!("rebound.invalid:{p}");
    let r = post(&url, &foreign).send().await.expect("send");
    assert_eq!(r.status(), 401, "a foreign Host without a token");
    let r = post(&url, &foreign)
        .bearer_auth(ALICE)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "a foreign Host with a token");
    assert!(r.headers().get("mcp-session-id").is_some());
    guarded.finish().await;
}

// ----- health -----

#[tokio::test]
async fn health_is_open_and_ready_waits_for_a_warm_sandbox() {
    // Loopback without tokens: every request is the client `local`.
    let mut daemon = HttpDaemon::start(&[
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true"),
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "1"),
    ])
    .await;
    let http = http();
    let health = http
        .get(format!("{}/health", daemon.base))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);

    let ready = |http: reqwest::Client, url: String| async move {
        let r = http.get(url).send().await.expect("ready");
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("/ready answers JSON");
        (status, body)
    };
    let url = format!("{}/ready", daemon.base);
    let (status, body) = ready(http.clone(), url.clone()).await;
    assert_eq!(status, 503, "no sandbox is warm right after start: {body}");
    assert_eq!(body["ready"], false);
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no warm sandbox"),
        "{body}"
    );

    let deadline = Instant::now() + Duration::from_secs(90);
    let body = loop {
        let (status, body) = ready(http.clone(), url.clone()).await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["ready"], true);
    assert!(body["warm"].as_u64().unwrap_or(0) >= 1, "{body}");

    // No token needed on loopback without a tokens file.
    let local = daemon.connect(None).await;
    let r = call(&local, "execute-transient", json!({"code": "6 * 7"})).await;
    assert_eq!(common::value(&r).as_deref(), Some("42"), "{}", text(&r));
    let _ = local.cancel().await;

    // SIGTERM: the daemon stops and removes what it made.
    let status = daemon.stop().await.expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    let left = common::leftovers(daemon.pid);
    assert!(left.is_empty(), "left behind: {left:?}");
    daemon.finish().await;
}

/// `/ready` answers 503 naming the cause when the engine does not answer (here an address
/// where nothing listens; the real engine is never stopped for this), while `/health`
/// still answers 200: the process is up, it cannot serve.
#[tokio::test]
async fn ready_is_503_when_the_engine_does_not_answer_and_health_stays_200() {
    let mut daemon = HttpDaemon::start(&[("DOCKER_HOST", "unix:///nonexistent.sock")]).await;
    let http = http();
    let health = http
        .get(format!("{}/health", daemon.base))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    let r = http
        .get(format!("{}/ready", daemon.base))
        .send()
        .await
        .expect("ready");
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("/ready answers JSON");
    assert_eq!(body["ready"], false, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("/nonexistent.sock") || reason.contains("Docker"),
        "the reason names the engine that did not answer: {body}"
    );
    daemon.finish().await;
}

// ----- a real client nobody here wrote -----

#[tokio::test]
async fn the_official_python_sdk_lists_tools_and_runs_code_in_both_protocol_generations() {
    let python = tokio::task::spawn_blocking(python_sdk).await.unwrap();
    let tokens = tokens_file();
    let mut daemon =
        HttpDaemon::start(&[("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap())]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_client.py");
    // `legacy`: the 2025-11-25 initialize handshake, with Mcp-Session-Id; `2026-07-28`:
    // the stateless generation, version and capabilities in each request's `_meta`.
    for (mode, version) in [("legacy", "2025-11-25"), ("2026-07-28", "2026-07-28")] {
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(&python)
                .arg(&script)
                .args([daemon.mcp_url().as_str(), ALICE, mode])
                .output(),
        )
        .await
        .expect("the SDK client finished")
        .expect("run the SDK client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {stdout}\n{stderr}");
        let line = stdout.lines().last().unwrap_or_default();
        let got: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{mode}: not JSON ({e}): {stdout}\n{stderr}"));
        assert_eq!(got["protocol_version"], version, "{mode}: {got}");
        let tools: Vec<&str> = got["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for tool in [
            "cleanup-session",
            "execute-persistent",
            "execute-transient",
            "install-package",
            "list-packages",
            "list-variables",
            "reset-session",
        ] {
            assert!(
                tools.contains(&tool),
                "{mode}: {tool} missing from {tools:?}"
            );
        }
        assert_eq!(got["is_error"], false, "{mode}: {got}");
        assert_eq!(got["structured"]["value"], "42", "{mode}: {got}");
        assert_eq!(got["structured"]["stdout"], "42\n", "{mode}: {got}");
    }
    // A wrong token is refused before MCP: the SDK call fails.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&python)
            .arg(&script)
            .args([
                daemon.mcp_url().as_str(),
                "wrong-token-0123456789",
                "legacy",
            ])
            .output(),
    )
    .await
    .expect("a refused SDK client gives up")
    .expect("run the SDK client");
    assert!(!out.status.success(), "a wrong token must not get through");
    daemon.finish().await;
}

// ----- the drain, with real clients -----

/// One run of `tests/python/drain_client.py`: its JSON lines as they come, its stderr.
struct SdkRun {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    stderr: Arc<Mutex<String>>,
    mode: &'static str,
}

impl SdkRun {
    fn start(python: &Path, url: &str, token: &str, mode: &'static str, code: &str) -> SdkRun {
        use tokio::io::AsyncBufReadExt;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/drain_client.py");
        let mut child = tokio::process::Command::new(python)
            .arg(&script)
            .args([url, token, mode, code])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run the SDK client");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let parsed = serde_json::from_str(&line).unwrap_or(json!({ "raw": line }));
                if tx.send(parsed).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let kept = stderr.clone();
        let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                let mut kept = kept.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        SdkRun {
            child,
            lines,
            stderr,
            mode,
        }
    }

    /// The next line it prints (within `limit`).
    async fn next(&mut self, limit: Duration) -> Value {
        match tokio::time::timeout(limit, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "{}: the SDK client exited early:\n{}",
                self.mode,
                self.stderr.lock().unwrap()
            ),
            Err(_) => panic!(
                "{}: no line from the SDK client within {limit:?}:\n{}",
                self.mode,
                self.stderr.lock().unwrap()
            ),
        }
    }
}

/// A POST to `/mcp` as a client without an MCP session would send it.
fn post(http: &reqwest::Client, url: &str, token: &str, body: &Value) -> reqwest::RequestBuilder {
    http.post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string())
}

/// The `_meta` a 2026-07-28 request carries in place of a handshake.
fn stateless_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}
    })
}

/// A stateless 2026-07-28 request: the version and capabilities in `_meta`, the method
/// (and a tool's name) in the SEP-2243 headers.
fn stateless(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    method: &str,
    mut params: Value,
) -> reqwest::RequestBuilder {
    params["_meta"] = stateless_meta();
    let name = params["name"].as_str().map(str::to_owned);
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    let request = post(http, url, token, &body)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    match name {
        Some(name) => request.header("mcp-name", name),
        None => request,
    }
}

#[tokio::test]
async fn calls_in_flight_at_sigterm_finish_for_the_official_sdk_while_new_sessions_get_503() {
    let python = tokio::task::spawn_blocking(python_sdk).await.unwrap();
    let tokens = tokens_file();
    let mut daemon =
        HttpDaemon::start(&[("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap())]).await;
    let http = http();
    let url = daemon.mcp_url();
    let ready_url = format!("{}/ready", daemon.base);
    let r = http.get(&ready_url).send().await.expect("ready");
    assert_eq!(r.status(), 200, "ready before the signal (the pool is off)");

    // Existing MCP sessions of another client, opened before the signal: one through
    // rmcp's client, one by hand (to reopen its event stream as a reconnecting SDK does).
    let existing = daemon.connect(Some(BOB)).await;
    let opened = post(&http, &url, BOB, &initialize())
        .send()
        .await
        .expect("initialize");
    assert_eq!(opened.status(), 200);
    let by_hand = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = post(&http, &url, BOB, &initialized)
        .header("mcp-session-id", &by_hand)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("initialized");
    assert_eq!(r.status(), 202);
    let code = "import time; time.sleep(3); print('done')";
    // The official SDK in both generations, each with a 3 s call in flight.
    let mut runs = [
        SdkRun::start(&python, &url, ALICE, "legacy", code),
        SdkRun::start(&python, &url, ALICE, "2026-07-28", code),
    ];
    for run in &mut runs {
        let line = run.next(Duration::from_secs(60)).await;
        assert_eq!(line["event"], "calling", "{}: {line}", run.mode);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(daemon.pid, "TERM");
    let signalled = Instant::now();
    let deadline = signalled + Duration::from_secs(5);
    while !daemon.log().contains("draining") {
        assert!(Instant::now() < deadline, "no drain:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // `/ready` says so at once, so a balancer stops sending new clients.
    let r = http
        .get(&ready_url)
        .send()
        .await
        .expect("ready while draining");
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("/ready answers JSON");
    assert_eq!(body["ready"], false, "{body}");
    assert!(
        body["reason"].as_str().unwrap_or("").contains("draining"),
        "{body}"
    );

    // A new MCP session, in either generation, is refused with 503 and Retry-After. Every
    // request from here on comes over new connections.
    let http = self::http();
    let refusals = [
        ("initialize", post(&http, &url, ALICE, &initialize())),
        (
            "server/discover",
            stateless(&http, &url, ALICE, "server/discover", json!({})),
        ),
    ];
    for (what, request) in refusals {
        let r = request.send().await.expect("send");
        assert_eq!(r.status(), 503, "{what} while draining");
        let retry = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(retry.is_some_and(|s| s > 0), "{what}: {:?}", r.headers());
        assert!(r.headers().get("mcp-session-id").is_none(), "{what}");
        let text = r.text().await.unwrap();
        assert!(text.contains("draining"), "{what}: {text}");
    }
    // Authentication still comes first: no token is still 401.
    let r = http
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(initialize().to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);

    // Requests of an existing session are served, over new connections too: its event
    // stream reopens, its requests are answered, and a new call gets the engine's answer.
    let stream = http
        .get(&url)
        .bearer_auth(BOB)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &by_hand)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("reopen the event stream");
    assert_eq!(
        stream.status(),
        200,
        "the event stream reopens while draining"
    );
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{:?}",
        stream.headers()
    );
    drop(stream);
    let listed = tokio::time::timeout(Duration::from_secs(10), existing.list_all_tools())
        .await
        .expect("tools/list answered while draining")
        .expect("tools/list");
    assert!(listed.iter().any(|t| t.name == "execute-transient"));
    let refused = call(&existing, "execute-transient", json!({"code": "print(1)"})).await;
    assert!(is_error(&refused), "{}", text(&refused));
    assert!(
        text(&refused).contains("shutting down"),
        "{}",
        text(&refused)
    );
    // A stateless call gets the same answer: it is served, and the engine refuses it.
    let r = stateless(
        &http,
        &url,
        ALICE,
        "tools/call",
        json!({"name": "execute-transient", "arguments": {"code": "print(1)"}}),
    )
    .send()
    .await
    .expect("send");
    assert_eq!(r.status(), 200, "a stateless call while draining");
    let body = r.text().await.unwrap();
    assert!(body.contains("shutting down"), "{body}");

    // Both calls in flight finish with their output.
    for run in &mut runs {
        let line = run.next(Duration::from_secs(30)).await;
        assert_eq!(
            line["event"],
            "result",
            "{}: {line}\n{}\n{}",
            run.mode,
            run.stderr.lock().unwrap(),
            daemon.log()
        );
        assert_eq!(line["is_error"], false, "{}: {line}", run.mode);
        assert!(
            line["text"].to_string().contains("done"),
            "{}: {line}",
            run.mode
        );
    }
    // Then the daemon exits by itself, cleanly, and leaves nothing.
    let status = tokio::time::timeout(Duration::from_secs(40), daemon.child.wait())
        .await
        .expect("the daemon exits after the drain")
        .expect("wait");
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains("drained: every running call finished"),
        "{log}"
    );
    assert!(!log.contains("cut short"), "{log}");
    let left = common::leftovers(daemon.pid);
    assert!(left.is_empty(), "left behind: {left:?}");
    for mut run in runs {
        let _ = tokio::time::timeout(Duration::from_secs(20), run.child.wait()).await;
    }
    let _ = existing.cancel().await;
    daemon.finish().await;
}
