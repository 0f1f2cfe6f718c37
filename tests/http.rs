//! The HTTP service end to end: the real binary serving streamable HTTP, real Docker.
//!
//! Security: bearer tokens (401 and nothing else), no open port off loopback, a malformed
//! tokens file, one client never reaching another's session. Functional: the per-client
//! session limit, `/health` and `/ready`, and a round trip through the official MCP Python
//! SDK in both protocol generations.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_ok, fresh_dir, is_error, remove_leftovers, session_id, text, BIN, CALL_LIMIT};
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef00";

/// A tokens file for alice and bob, with a comment and a blank line.
fn tokens_file() -> PathBuf {
    let path = fresh_dir("tokens").join("tokens");
    std::fs::write(
        &path,
        format!("# the team\nalice {ALICE}\n\nbob {BOB}  # laptop\n"),
    )
    .expect("write the tokens file");
    path
}

/// A daemon serving HTTP on a port of its choosing, which it logs; its log is kept.
struct HttpDaemon {
    child: tokio::process::Child,
    pid: u32,
    /// `http://127.0.0.1:PORT`
    base: String,
    log: Arc<Mutex<String>>,
    home: PathBuf,
}

/// The command, isolated like the stdio tests' daemons: a fresh HOME, none of the
/// developer's settings, the pool off unless the test turns it on.
fn command(home: &Path, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("PYTHON_DOCKER_MCP_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("HOME", home)
        .env("PYTHON_DOCKER_MCP_LOG", "info")
        .env("PYTHON_DOCKER_MCP_POOL_ENABLED", "false");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

impl HttpDaemon {
    async fn start(env: &[(&str, &str)]) -> HttpDaemon {
        let home = fresh_dir("http-home");
        let mut child = command(&home, &["serve", "--http", "127.0.0.1:0"], env)
            .spawn()
            .expect("spawn python-docker-mcp");
        let pid = child.id().expect("pid");
        let log = Arc::new(Mutex::new(String::new()));
        let (url_tx, url_rx) = tokio::sync::oneshot::channel();
        // Read the log for the whole life of the daemon (a full pipe would block it).
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let kept = log.clone();
        tokio::spawn(async move {
            let mut url_tx = Some(url_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("url=").nth(1) {
                    if let Some(tx) = url_tx.take() {
                        let url = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(url);
                    }
                }
                let mut log = kept.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let url = tokio::time::timeout(Duration::from_secs(30), url_rx)
            .await
            .unwrap_or_else(|_| panic!("the daemon did not log its URL: {}", log.lock().unwrap()))
            .unwrap_or_else(|_| panic!("the daemon exited: {}", log.lock().unwrap()));
        let base = url.trim_end_matches("/mcp").to_string();
        HttpDaemon {
            child,
            pid,
            base,
            log,
            home,
        }
    }

    fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// An rmcp client over streamable HTTP, with this bearer token (or none).
    async fn connect(&self, token: Option<&str>) -> RunningService<RoleClient, ClientConfig> {
        let mut config = StreamableHttpClientTransportConfig::with_uri(self.mcp_url());
        if let Some(token) = token {
            config = config.auth_header(token.to_string());
        }
        let transport = StreamableHttpClientTransport::from_config(config);
        tokio::time::timeout(
            Duration::from_secs(30),
            ClientConfig::default().serve(transport),
        )
        .await
        .expect("MCP connect timed out")
        .expect("MCP connect failed")
    }

    /// Stop with SIGTERM and wait for the exit status.
    async fn stop(&mut self) -> Option<std::process::ExitStatus> {
        signal(self.pid, "TERM");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl Drop for HttpDaemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.start_kill();
        }
        remove_leftovers(self.pid);
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

async fn call(
    client: &RunningService<RoleClient, ClientConfig>,
    tool: &str,
    args: Value,
) -> CallToolResult {
    let params = CallToolRequestParams::new(tool.to_string())
        .with_arguments(args.as_object().expect("object").clone());
    tokio::time::timeout(CALL_LIMIT, client.call_tool(params))
        .await
        .unwrap_or_else(|_| panic!("{tool} did not answer within {CALL_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{tool} failed at the protocol level: {e}"))
}

/// Run the binary with `args` until it exits (at most 30 s); its exit code and stderr.
async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let home = fresh_dir("http-cli");
    let child = command(&home, args, env)
        .spawn()
        .expect("spawn python-docker-mcp");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the daemon should refuse to start, not serve")
        .expect("wait");
    let _ = std::fs::remove_dir_all(&home);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// An `initialize` request body, as a client's first POST.
fn initialize() -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}
        }
    })
}

// ----- security -----

#[tokio::test]
async fn a_missing_or_wrong_token_gets_401_with_www_authenticate_and_nothing_else() {
    let tokens = tokens_file();
    let daemon =
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
    let daemon =
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

    // Several clients share this daemon: nobody changes the shared environment.
    let r = call(&bob, "install-package", json!({"package_name": "tomli-w"})).await;
    assert!(
        is_error(&r) && text(&r).contains("shared by several clients"),
        "{}",
        text(&r)
    );
    let _ = alice.cancel().await;
    let _ = bob.cancel().await;
}

// ----- quotas -----

#[tokio::test]
async fn each_client_gets_its_share_of_the_sessions() {
    let tokens = tokens_file();
    // 4 sessions in all; unset, each of the two clients may hold a quarter: 1.
    let daemon = HttpDaemon::start(&[
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
}

// ----- a real client nobody here wrote -----

/// A venv with the official MCP Python SDK, under the target dir; installed only when
/// missing (`pip install mcp` into a CPython 3.11 venv).
fn python_sdk() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mcp-sdk-venv");
    let python = dir.join("bin").join("python");
    let has_sdk = |python: &Path| {
        std::process::Command::new(python)
            .args(["-c", "import mcp.client.client, mcp.client.streamable_http"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_sdk(&python) {
        return python;
    }
    let interpreter = ["python3.11", "python3"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("a python3 to create the SDK's venv with");
    let status = std::process::Command::new(interpreter)
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .expect("create the venv");
    assert!(status.success(), "python -m venv {}", dir.display());
    let out = std::process::Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "mcp>=2"])
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "pip install mcp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(has_sdk(&python), "the SDK imports after install");
    python
}

#[tokio::test]
async fn the_official_python_sdk_lists_tools_and_runs_code_in_both_protocol_generations() {
    let python = tokio::task::spawn_blocking(python_sdk).await.unwrap();
    let tokens = tokens_file();
    let daemon =
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
}
