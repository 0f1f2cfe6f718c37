//! Failure paths: no Docker, no image, bad configuration. Each must say what is wrong and
//! what to do, and the server must keep answering.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn without_docker_the_server_starts_and_explains() {
    let mut d = Daemon::start_with(&[("DOCKER_HOST", "unix:///nonexistent/docker.sock")]).await;
    let tools = d.client().list_all_tools().await.expect("tools/list");
    assert_eq!(
        tools.len(),
        11,
        "the four original tools plus reset-session, list-variables, list-packages, \
         list-sessions, upload-file, download-file and list-files"
    );

    let r = d.transient("1 + 1").await;
    assert_tool_error(&r, "Docker is not reachable");
    assert!(
        text(&r).contains("/nonexistent/docker.sock"),
        "names the address it tried: {}",
        text(&r)
    );
    // Still answering, for every tool.
    let r = d.persistent("1 + 1", None).await;
    assert_tool_error(&r, "Docker is not reachable");
    let r = d.install("tomli-w", None).await;
    assert_tool_error(&r, "Docker is not reachable");
    let r = d.transient("2 + 2").await;
    assert_tool_error(&r, "Docker is not reachable");

    let status = d.close(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the daemon exits cleanly on EOF even without Docker: {status:?}"
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_says_how_to_build_it() {
    let mut d =
        Daemon::start_with(&[("PYTHON_DOCKER_MCP_IMAGE", "pdm-no-such-image:latest")]).await;
    let r = d.transient("1").await;
    assert_tool_error(&r, "python-docker-mcp image build");
    assert!(
        text(&r).contains("pdm-no-such-image:latest"),
        "{}",
        text(&r)
    );
    let r = d.persistent("1", None).await;
    assert_tool_error(&r, "python-docker-mcp image build");
    assert!(
        volumes_with_role(d.pid, "sandbox").is_empty(),
        "a session that could not start leaves no volume behind"
    );
    let r = d.transient("1").await;
    assert_tool_error(&r, "python-docker-mcp image build");
    let status = d.close(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(leftovers(d.pid).is_empty(), "{:?}", leftovers(d.pid));
    d.finish().await;
}

#[test]
fn an_unknown_environment_variable_is_a_configuration_error() {
    let out = run_cli(&["config"], &[("PYTHON_DOCKER_MCP_POOLSIZE", "3")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PYTHON_DOCKER_MCP_POOLSIZE"), "{stderr}");
    assert!(
        stderr.contains("PYTHON_DOCKER_MCP_POOL_SIZE"),
        "lists the known names: {stderr}"
    );

    // `serve` refuses to start the same way, before speaking MCP.
    let out = run_cli(&["serve"], &[("PYTHON_DOCKER_MCP_POOLSIZE", "3")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "nothing on the protocol stream");
}

#[test]
fn an_invalid_value_names_the_key_and_its_source() {
    let out = run_cli(&["config"], &[("PYTHON_DOCKER_MCP_TIMEOUT", "soon")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("docker.timeout"), "{stderr}");
    assert!(stderr.contains("PYTHON_DOCKER_MCP_TIMEOUT"), "{stderr}");

    let out = run_cli(&["config"], &[("PYTHON_DOCKER_MCP_USER", "0:0")]);
    assert_eq!(out.status.code(), Some(2), "root is refused: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("docker.user"));
}

fn config_line(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no {key} line in:\n{stdout}"))
        .to_string()
}

#[test]
fn config_shows_where_each_value_came_from() {
    let out = run_cli(&["config"], &[("PYTHON_DOCKER_MCP_TIMEOUT", "5m")]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = config_line(&stdout, "docker.timeout");
    assert!(line.contains("5m"), "{line}");
    assert!(
        line.contains("environment variable PYTHON_DOCKER_MCP_TIMEOUT"),
        "{line}"
    );
    let line = config_line(&stdout, "docker.memory_limit");
    assert!(line.contains("default"), "{line}");

    // defaults < file < environment < flags
    let dir = fresh_dir("config");
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        "docker:\n  timeout: 7s\n  memory_limit: 512m\n  pids_limit: 99\n",
    )
    .unwrap();
    let file_str = file.to_str().unwrap();
    let out = run_cli(
        &["config", "--set", "docker.pids_limit=77"],
        &[
            ("PYTHON_DOCKER_MCP_CONFIG", file_str),
            ("PYTHON_DOCKER_MCP_MEMORY_LIMIT", "1g"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let timeout = config_line(&stdout, "docker.timeout");
    assert!(
        timeout.contains("7s") && timeout.contains(file_str),
        "{timeout}"
    );
    let memory = config_line(&stdout, "docker.memory_limit");
    assert!(
        memory.contains("1g") && memory.contains("PYTHON_DOCKER_MCP_MEMORY_LIMIT"),
        "{memory}"
    );
    let pids = config_line(&stdout, "docker.pids_limit");
    assert!(pids.contains("77") && pids.contains("--set"), "{pids}");

    // A config file named explicitly must exist.
    let missing = dir.join("missing.yaml");
    let out = run_cli(
        &["config"],
        &[("PYTHON_DOCKER_MCP_CONFIG", missing.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_from_the_environment_reach_the_sandbox() {
    // The working directory and output cap are applied to real runs.
    let mut d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_WORKING_DIR", "/work"),
        ("PYTHON_DOCKER_MCP_OUTPUT_LIMIT", "2k"),
    ])
    .await;
    let r = d
        .transient("import os\nopen('f', 'w').write('x')\nprint('y' * 10000)\nos.getcwd()")
        .await;
    assert_ok(&r);
    assert_eq!(value(&r).as_deref(), Some("'/work'"), "{}", describe(&r));
    assert_eq!(stdout(&r).len(), 2048);
    assert_eq!(field(&r, "stdout_dropped"), &json!(10001 - 2048));
    d.finish().await;
}

/// A message over `server.max_message` is answered with an error that names the limit,
/// under the request's id whether it comes first or last in the message, and the server
/// goes on serving. (rmcp's own stdio transport drops such a line and never answers.)
#[tokio::test]
async fn an_oversized_message_over_stdio_is_answered_naming_the_limit() {
    // A small file limit, so that it does not raise the message limit (see files::message_limit).
    let mut d = RawDaemon::start(&[
        ("PYTHON_DOCKER_MCP_MAX_MESSAGE", "2m"),
        ("PYTHON_DOCKER_MCP_FILE_LIMIT", "256k"),
    ])
    .await;
    let big = "a".repeat(3 << 20);
    let id_first = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"execute-transient","arguments":{{"code":"s = '{big}'"}}}}}}"#
    );
    let id_last = format!(
        r#"{{"jsonrpc":"2.0","method":"tools/call","params":{{"name":"execute-transient","arguments":{{"code":"s = '{big}'"}}}},"id":"last"}}"#
    );
    d.send_line(&id_first).await;
    let r = d.response(7, Duration::from_secs(30)).await;
    let message = r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("server.max_message") && message.contains("2.0 MiB"),
        "the error names the limit: {r}"
    );
    d.send_line(&id_last).await;
    let r = d
        .next_message(Duration::from_secs(30))
        .await
        .expect("an answer to the second oversized message");
    assert_eq!(r["id"], json!("last"), "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("server.max_message"));
    // Still serving: a call right under the limit works.
    let r = d
        .call_tool(
            8,
            "execute-transient",
            json!({"code": format!("len('{}')", "b".repeat(900_000))}),
        )
        .await;
    assert!(r.to_string().contains("900000"), "{r}");
    d.finish().await;
}
