//! `GET /metrics` end to end: the real binary serving HTTP, real Docker, and the Prometheus
//! text parsed by the reference parser (the Python `prometheus_client` package's, in a venv
//! under the target dir), not by a regex.
//!
//! Security: the endpoint needs a bearer token unless `server.metrics_public`; on loopback
//! without tokens it is open, like `/mcp`; no token ever shows in the body. Functional: the
//! counters, gauges and histograms move with calls made by two clients, by tool, outcome and
//! client, and the output bytes add up to exactly what the clients got.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use common::http::*;
use common::{assert_ok, is_error, session_id, stderr, stdout};
use rmcp::model::CallToolResult;
use serde_json::{json, Value};

/// One parsed scrape: each family's type, and every sample.
#[derive(Debug)]
struct Scrape {
    /// Family name (as the parser names it: counters without `_total`) -> type.
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    body: String,
}

impl Scrape {
    /// The sum of the samples named `name` whose labels include `labels` (0 when none).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Whether a sample named `name` with exactly these labels exists.
    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
        })
    }
}

/// A venv with `prometheus_client`, created once per test run (under the target dir, kept
/// between runs).
fn parser_python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prometheus-client-venv");
        let python = dir.join("bin").join("python");
        let ready = |python: &PathBuf| {
            std::process::Command::new(python)
                .args(["-c", "import prometheus_client.parser"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if ready(&python) {
            return python;
        }
        let status = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("create the venv");
        assert!(status.success(), "python3 -m venv {}", dir.display());
        let out = std::process::Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "prometheus_client"])
            .output()
            .expect("run pip");
        assert!(
            out.status.success(),
            "pip install prometheus_client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(ready(&python), "prometheus_client imports after install");
        python
    })
}

/// Parse a `/metrics` body with `prometheus_client.parser`, which raises on anything that
/// is not the Prometheus text format.
fn parse(body: &str) -> Scrape {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(sys.stdin.read()))
print(json.dumps({
    "types": {f.name: f.type for f in families},
    "samples": [[s.name, s.labels, s.value] for f in families for s in f.samples],
}))
"#;
    let mut child = std::process::Command::new(parser_python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the parser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "not Prometheus text: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("the parser's JSON");
    let types = parsed["types"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let samples = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            (
                s[0].as_str().unwrap().to_string(),
                labels,
                s[2].as_f64().unwrap(),
            )
        })
        .collect();
    Scrape {
        types,
        samples,
        body: body.to_string(),
    }
}

/// GET /metrics with this token (or none): status, headers and body.
async fn get_metrics(
    daemon: &HttpDaemon,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = http().get(format!("{}/metrics", daemon.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET /metrics");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

/// A scrape that must succeed, parsed.
async fn scrape(daemon: &HttpDaemon, token: Option<&str>) -> Scrape {
    let (status, headers, body) = get_metrics(daemon, token).await;
    assert_eq!(status, 200, "{body}");
    let content_type = headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain"),
        "Prometheus text has content type text/plain: {content_type}"
    );
    parse(&body)
}

#[tokio::test]
async fn metrics_need_a_bearer_token_unless_public_and_loopback_without_tokens_is_open() {
    let tokens = tokens_file();
    let tokens = tokens.to_str().unwrap();
    let guarded_env = [("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens)];
    let public_env = [
        ("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens),
        ("PYTHON_DOCKER_MCP_METRICS_PUBLIC", "true"),
    ];
    let (mut guarded, mut public, mut local) = tokio::join!(
        HttpDaemon::start(&guarded_env),
        HttpDaemon::start(&public_env),
        HttpDaemon::start(&[]),
    );

    // Tokens configured, not public: the same answer as /mcp without a valid token.
    let wrong = format!("{ALICE}x");
    for (what, token) in [("no token", None), ("a wrong token", Some(wrong.as_str()))] {
        let (status, headers, body) = get_metrics(&guarded, token).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(
            headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{what}"
        );
        assert!(body.is_empty(), "{what}: nothing but 401: {body}");
    }
    for token in [ALICE, BOB] {
        let s = scrape(&guarded, Some(token)).await;
        assert!(
            s.has("pdm_sessions", &[("client", "alice")])
                && s.has("pdm_sessions", &[("client", "bob")]),
            "every client of the tokens file has a series: {}",
            s.body
        );
        assert!(!s.body.contains(ALICE) && !s.body.contains(BOB));
    }

    // Public: no token needed for /metrics, and /mcp still needs one.
    let s = scrape(&public, None).await;
    assert_eq!(
        s.types.get("pdm_sessions").map(String::as_str),
        Some("gauge")
    );
    assert_eq!(
        s.types.get("pdm_pool_sandboxes").map(String::as_str),
        Some("gauge")
    );
    assert_eq!(
        s.types.get("pdm_sandbox_creations").map(String::as_str),
        Some("counter"),
        "{:?}",
        s.types
    );
    for state in ["warm", "creating"] {
        assert!(
            s.has("pdm_pool_sandboxes", &[("state", state)]),
            "{}",
            s.body
        );
    }
    assert!(!s.body.contains(ALICE) && !s.body.contains(BOB));
    let response = http()
        .post(public.mcp_url())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(initialize().to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 401, "metrics_public opens /metrics only");

    // Loopback without tokens: open, like /mcp, and the one client is `local`.
    let s = scrape(&local, None).await;
    assert!(s.has("pdm_sessions", &[("client", "local")]), "{}", s.body);
    local.finish().await;
    public.finish().await;
    guarded.finish().await;
}

/// Bytes of stdout and of stderr an execution returned.
fn output_bytes(r: &CallToolResult) -> (f64, f64) {
    (stdout(r).len() as f64, stderr(r).len() as f64)
}

#[tokio::test]
async fn counters_gauges_and_histograms_move_with_calls_by_tool_outcome_and_client() {
    let tokens = tokens_file();
    let mut daemon = HttpDaemon::start(&[
        ("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap()),
        ("PYTHON_DOCKER_MCP_TIMEOUT", "2s"),
    ])
    .await;
    let before = scrape(&daemon, Some(ALICE)).await;
    let (alice, bob) = tokio::join!(daemon.connect(Some(ALICE)), daemon.connect(Some(BOB)));

    // alice: three transient runs (ok, an exception, a time-out) and a session she keeps.
    let mut results = Vec::new();
    let ok = call(
        &alice,
        "execute-transient",
        json!({"code": "print('hello')"}),
    )
    .await;
    assert_ok(&ok);
    let raised = call(
        &alice,
        "execute-transient",
        json!({"code": "import sys\nprint('partial')\nprint('to stderr', file=sys.stderr)\n1/0"}),
    )
    .await;
    assert!(is_error(&raised) && stderr(&raised).contains("to stderr"));
    let slow = call(
        &alice,
        "execute-transient",
        json!({"code": "import time\ntime.sleep(60)"}),
    )
    .await;
    assert!(is_error(&slow));
    let kept = call(
        &alice,
        "execute-persistent",
        json!({"code": "x = 1\nprint('x is set')"}),
    )
    .await;
    assert_ok(&kept);
    let alices_session = session_id(&kept);
    results.extend([&ok, &raised, &slow, &kept]);

    // bob: a session whose first call raises; it lives until he cleans it up.
    let bobs = call(
        &bob,
        "execute-persistent",
        json!({"code": "raise ValueError('bob was here')"}),
    )
    .await;
    assert!(is_error(&bobs));
    let bobs_session = session_id(&bobs);
    results.push(&bobs);

    let during = scrape(&daemon, Some(BOB)).await;
    assert_eq!(during.get("pdm_sessions", &[("client", "alice")]), 1.0);
    assert_eq!(during.get("pdm_sessions", &[("client", "bob")]), 1.0);

    let cleaned = call(&bob, "cleanup-session", json!({"session_id": bobs_session})).await;
    assert_ok(&cleaned);
    // alice's session is unknown to bob: a failed call.
    let refused = call(&bob, "reset-session", json!({"session_id": alices_session})).await;
    assert!(is_error(&refused));

    let after = scrape(&daemon, Some(ALICE)).await;
    let moved =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);

    // Executions by tool and outcome, each exactly once.
    let calls = [
        ("execute-transient", "ok", 1.0),
        ("execute-transient", "error", 1.0),
        ("execute-transient", "timeout", 1.0),
        ("execute-persistent", "ok", 1.0),
        ("execute-persistent", "error", 1.0),
        ("cleanup-session", "ok", 1.0),
        ("reset-session", "failed", 1.0),
        ("reset-session", "ok", 0.0),
    ];
    for (tool, outcome, n) in calls {
        assert_eq!(
            moved(
                "pdm_executions_total",
                &[("tool", tool), ("outcome", outcome)]
            ),
            n,
            "{tool} {outcome}:\n{}",
            after.body
        );
    }
    assert_eq!(moved("pdm_executions_total", &[]), 7.0, "{}", after.body);

    // The execution histogram counts the same calls, per tool.
    assert_eq!(
        after.types.get("pdm_execution_seconds").map(String::as_str),
        Some("histogram")
    );
    for (tool, n) in [("execute-transient", 3.0), ("execute-persistent", 2.0)] {
        let count = moved("pdm_execution_seconds_count", &[("tool", tool)]);
        assert_eq!(count, n, "{tool}");
        assert_eq!(
            after.get(
                "pdm_execution_seconds_bucket",
                &[("tool", tool), ("le", "+Inf")]
            ),
            after.get("pdm_execution_seconds_count", &[("tool", tool)]),
        );
    }
    // The time-out ran for 2 s at least, so the transient runs' sum is past it.
    assert!(
        moved(
            "pdm_execution_seconds_sum",
            &[("tool", "execute-transient")]
        ) >= 2.0
    );

    // Sessions per client, by name: alice keeps hers, bob cleaned his up.
    assert_eq!(after.get("pdm_sessions", &[("client", "alice")]), 1.0);
    assert_eq!(after.get("pdm_sessions", &[("client", "bob")]), 0.0);

    // Output bytes: exactly what the clients got, per stream.
    let (out, err) = results
        .iter()
        .map(|r| output_bytes(r))
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(out > 0.0 && err > 0.0);
    assert_eq!(
        moved("pdm_output_bytes_total", &[("stream", "stdout")]),
        out
    );
    assert_eq!(
        moved("pdm_output_bytes_total", &[("stream", "stderr")]),
        err
    );

    // Sandboxes: the pool is off, so one creation per run or session, none failed; the
    // creation histogram saw each of them.
    assert_eq!(
        after
            .types
            .get("pdm_sandbox_creation_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    let created = moved("pdm_sandbox_creations_total", &[("outcome", "ok")]);
    assert!(created >= 5.0, "{}", after.body);
    assert_eq!(
        moved("pdm_sandbox_creations_total", &[("outcome", "failed")]),
        0.0
    );
    assert_eq!(
        after.get("pdm_sandbox_creation_seconds_count", &[]),
        after.get("pdm_sandbox_creations_total", &[])
    );
    assert_eq!(after.get("pdm_pool_sandboxes", &[("state", "warm")]), 0.0);

    // Names, never tokens or session ids.
    for secret in [ALICE, BOB, alices_session.as_str(), bobs_session.as_str()] {
        assert!(!after.body.contains(secret), "{secret} in:\n{}", after.body);
    }
    let _ = alice.cancel().await;
    let _ = bob.cancel().await;
    daemon.finish().await;
}
