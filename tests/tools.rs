//! Functional end-to-end tests: the tools as an MCP client sees them.

mod common;

use std::time::Duration;

use common::*;
use rmcp::model::ErrorCode;
use rmcp::service::ServiceError;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn tools_list_has_the_originals_four_tools_the_session_and_file_tools_with_output_schemas() {
    let mut d = Daemon::start().await;
    let tools = d.client().list_all_tools().await.expect("tools/list");
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
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
            "upload-file"
        ]
    );
    for tool in &tools {
        let schema = tool
            .output_schema
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no outputSchema", tool.name));
        assert_eq!(
            schema.get("type").and_then(|t| t.as_str()),
            Some("object"),
            "{}: {schema:?}",
            tool.name
        );
        assert!(
            tool.description.as_deref().is_some_and(|d| d.len() > 20),
            "{} has no real description",
            tool.name
        );
    }
    let by_name = |n: &str| tools.iter().find(|t| t.name == n).unwrap();
    for exec in ["execute-transient", "execute-persistent"] {
        let out = by_name(exec).output_schema.as_ref().unwrap();
        let props = out["properties"].as_object().expect("properties");
        for key in [
            "stdout",
            "stderr",
            "value",
            "error",
            "timed_out",
            "sandbox_lost",
        ] {
            assert!(props.contains_key(key), "{exec} outputSchema lacks {key}");
        }
        let required = by_name(exec).input_schema["required"].clone();
        assert!(
            required.as_array().unwrap().contains(&json!("code")),
            "{exec}: code is required: {required}"
        );
    }
    let required = by_name("install-package").input_schema["required"].clone();
    assert!(required
        .as_array()
        .unwrap()
        .contains(&json!("package_name")));
    // The server's instructions introduce every tool.
    let instructions = d
        .client()
        .peer_info()
        .and_then(|info| info.instructions.clone())
        .expect("the server sends instructions");
    for name in &names {
        assert!(
            instructions.contains(name.as_str()),
            "the instructions do not mention {name}: {instructions}"
        );
    }
    d.finish().await;
}

/// The `format` values JSON Schema (2020-12) defines. Anything else (schemars writes
/// `uint64`, `uint`, `double` for Rust numbers) makes clients such as the MCP Inspector warn.
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Every `format` keyword in a schema, with its JSON pointer, at any depth.
fn formats_in(value: &serde_json::Value, at: &str, found: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                if key == "format" {
                    if let Some(f) = child.as_str() {
                        found.push((at.to_string(), f.to_string()));
                    }
                }
                formats_in(child, &format!("{at}/{key}"), found);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                formats_in(child, &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_schemas_use_only_standard_json_schema_formats() {
    let mut d = Daemon::start().await;
    let tools = d.client().list_all_tools().await.expect("tools/list");
    let mut bad = Vec::new();
    let mut numbers = 0;
    for tool in &tools {
        let mut schemas = vec![("inputSchema", tool.input_schema.as_ref())];
        if let Some(out) = &tool.output_schema {
            schemas.push(("outputSchema", out.as_ref()));
        }
        for (which, schema) in schemas {
            let schema = serde_json::Value::Object(schema.clone());
            numbers += schema.to_string().matches("\"integer\"").count();
            let mut found = Vec::new();
            formats_in(&schema, "", &mut found);
            for (at, format) in found {
                if !STANDARD_FORMATS.contains(&format.as_str()) {
                    bad.push(format!("{} {which}{at}: {format}", tool.name));
                }
            }
        }
    }
    assert!(numbers > 0, "the schemas have integer fields to check");
    assert!(bad.is_empty(), "non-standard formats:\n{}", bad.join("\n"));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_prints_stdout_and_returns_the_last_expression() {
    let mut d = Daemon::start().await;
    let r = d.transient("print('hello from the sandbox')\n6 * 7").await;
    assert_ok(&r);
    assert_eq!(stdout(&r), "hello from the sandbox\n");
    assert_eq!(value(&r).as_deref(), Some("42"), "{}", describe(&r));
    assert!(text(&r).contains("hello from the sandbox"), "{}", text(&r));
    assert!(text(&r).contains("Result: 42"), "{}", text(&r));
    assert_eq!(field(&r, "timed_out"), &json!(false));
    assert_eq!(field(&r, "sandbox_lost"), &json!(false));
    assert!(
        field(&r, "session_id").is_null(),
        "transient runs have no session"
    );

    // A repr, not a str; a trailing None (or a statement) gives no value.
    let r = d.transient("'a' + 'b'").await;
    assert_eq!(value(&r).as_deref(), Some("'ab'"));
    let r = d.transient("x = 1\nNone").await;
    assert_ok(&r);
    assert_eq!(value(&r), None, "{}", describe(&r));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_state_goes_in_and_json_variables_come_out() {
    let mut d = Daemon::start().await;
    let code = "\
import math
b = a * 21
c = items + [3]
def f():
    return 1
g = lambda: 1
class K:
    pass
s = {1, 2}
nan = float('nan')
_hidden = 5
b";
    let r = d
        .transient_with_state(code, json!({"a": 2, "items": [1, 2]}))
        .await;
    assert_ok(&r);
    assert_eq!(value(&r).as_deref(), Some("42"));
    let state = field(&r, "state")
        .as_object()
        .expect("state object")
        .clone();
    assert_eq!(state.get("a"), Some(&json!(2)), "inputs stay in state");
    assert_eq!(state.get("b"), Some(&json!(42)));
    assert_eq!(state.get("c"), Some(&json!([1, 2, 3])));
    assert_eq!(state.get("items"), Some(&json!([1, 2])));
    for omitted in ["math", "f", "g", "K", "_hidden", "s", "nan", "__builtins__"] {
        assert!(
            !state.contains_key(omitted),
            "{omitted} must not be in state: {state:?}"
        );
    }
    let skipped = field(&r, "state_skipped")
        .as_object()
        .expect("state_skipped")
        .clone();
    assert_eq!(skipped.get("s"), Some(&json!("set")), "{skipped:?}");
    assert_eq!(skipped.get("nan"), Some(&json!("float")), "{skipped:?}");
    for absent in ["math", "f", "g", "K", "_hidden"] {
        assert!(
            !skipped.contains_key(absent),
            "functions, modules, classes and _names are omitted entirely: {skipped:?}"
        );
    }
    assert!(
        text(&r).contains("s (set)"),
        "the text names skipped variables: {}",
        text(&r)
    );

    // The state of one run feeds the next.
    let r2 = d
        .transient_with_state("b + len(c)", json!(state.clone()))
        .await;
    assert_eq!(value(&r2).as_deref(), Some("45"), "{}", describe(&r2));

    // Without state in, nothing is defined.
    let r3 = d.transient("b").await;
    assert_eq!(error_type(&r3).as_deref(), Some("NameError"));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_runs_never_share_a_container() {
    let mut d = Daemon::start().await;
    let code = "\
import os, socket
existed = os.path.exists('/tmp/pdm-marker') or os.path.exists('/app/pdm-marker')
open('/tmp/pdm-marker', 'w').write('x')
open('/app/pdm-marker', 'w').write('x')
host = socket.gethostname()";
    let first = d.transient(code).await;
    assert_ok(&first);
    let second = d.transient(code).await;
    assert_ok(&second);
    // Two at once as well.
    let (third, fourth) = tokio::join!(d.transient(code), d.transient(code));
    let mut hosts = Vec::new();
    for r in [&first, &second, &third, &fourth] {
        assert_ok(r);
        let state = field(r, "state");
        assert_eq!(
            state["existed"],
            json!(false),
            "a file from an earlier run is visible: {}",
            describe(r)
        );
        hosts.push(state["host"].as_str().unwrap().to_string());
    }
    let mut unique = hosts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        4,
        "every run has its own container: {hosts:?}"
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_without_session_id_starts_a_session() {
    let mut d = Daemon::start().await;
    let r = d.persistent("x = 1\nx + 1", None).await;
    assert_ok(&r);
    let id = session_id(&r);
    assert_eq!(id.len(), 36, "a uuid: {id}");
    assert!(
        text(&r).starts_with(&format!("Session ID: {id}")),
        "{}",
        text(&r)
    );
    assert_eq!(value(&r).as_deref(), Some("2"));

    // Passing it back runs in the same session; an empty id starts a new one.
    let again = d.persistent("x", Some(&id)).await;
    assert_eq!(session_id(&again), id);
    assert_eq!(value(&again).as_deref(), Some("1"));
    let fresh = d.persistent("'x' in globals()", Some("")).await;
    assert_ne!(session_id(&fresh), id);
    assert_eq!(value(&fresh).as_deref(), Some("False"));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn session_keeps_variables_functions_imports_and_files() {
    let mut d = Daemon::start().await;
    let id = d.new_session("x = 1").await;
    d.persistent_ok(
        "\
import json, collections
def double(v):
    return v * 2
class Box:
    def __init__(self, v):
        self.v = v
with open('notes.txt', 'w') as f:
    f.write('hello')
with open('/tmp/scratch.txt', 'w') as f:
    f.write('tmp too')
y = double(21)
box = Box(3)",
        &id,
    )
    .await;
    let r = d
        .persistent_ok(
            "\
import os
(x, y, double(5), box.v, json.dumps([1]), collections.Counter('aab')['a'],
 open('notes.txt').read(), open('/tmp/scratch.txt').read(), os.getcwd())",
            &id,
        )
        .await;
    assert_eq!(
        value(&r).as_deref(),
        Some("(1, 42, 10, 3, '[1]', 2, 'hello', 'tmp too', '/app')"),
        "{}",
        describe(&r)
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_calls_to_one_session_do_not_interleave() {
    let mut d = Daemon::start().await;
    let id = d.new_session("import time\nlog = []").await;
    let calls = (0..4).map(|i| {
        let code = format!("log.append(({i}, 'start'))\ntime.sleep(0.3)\nlog.append(({i}, 'end'))");
        let id = id.clone();
        let d = &d;
        async move { d.persistent(&code, Some(&id)).await }
    });
    let results = futures::future::join_all(calls).await;
    for r in &results {
        assert_ok(r);
    }
    // One at a time is shown by the order of events in `log` below, not by a duration.
    let r = d
        .persistent_ok(
            "\
pairs_ok = len(log) == 8 and all(
    log[k][0] == log[k + 1][0] and log[k][1] == 'start' and log[k + 1][1] == 'end'
    for k in range(0, len(log), 2))
(pairs_ok, sorted(set(i for i, _ in log)), log)",
            &id,
        )
        .await;
    let v = value(&r).unwrap_or_default();
    assert!(
        v.starts_with("(True, [0, 1, 2, 3]"),
        "calls interleaved: {v}"
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sessions_are_independent() {
    let mut d = Daemon::start().await;
    let (a, b) = tokio::join!(d.new_session("x = 'a'"), d.new_session("x = 'b'"));
    assert_ne!(a, b);
    d.persistent_ok("only_in_b = True\nopen('f.txt', 'w').write('b')", &b)
        .await;
    let ra = d.persistent_ok("x", &a).await;
    let rb = d.persistent_ok("x", &b).await;
    assert_eq!(value(&ra).as_deref(), Some("'a'"));
    assert_eq!(value(&rb).as_deref(), Some("'b'"));
    let r = d.persistent("only_in_b", Some(&a)).await;
    assert_eq!(
        error_type(&r).as_deref(),
        Some("NameError"),
        "{}",
        describe(&r)
    );
    let r = d
        .persistent_ok("import os\nos.path.exists('f.txt')", &a)
        .await;
    assert_eq!(value(&r).as_deref(), Some("False"), "files are per session");
    let host_a = d
        .persistent_ok("import socket\nsocket.gethostname()", &a)
        .await;
    let host_b = d
        .persistent_ok("import socket\nsocket.gethostname()", &b)
        .await;
    assert_ne!(value(&host_a), value(&host_b), "one container per session");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_exception_is_a_tool_error_and_the_session_survives() {
    let mut d = Daemon::start().await;
    let id = d.new_session("keep = 7").await;
    let r = d
        .persistent("def inner():\n    return 1 / 0\ninner()", Some(&id))
        .await;
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(error_type(&r).as_deref(), Some("ZeroDivisionError"));
    let err = field(&r, "error");
    assert_eq!(err["message"], json!("division by zero"));
    let tb = err["traceback"].as_str().unwrap_or_default();
    assert!(
        tb.contains("Traceback") && tb.contains("in inner") && tb.contains("ZeroDivisionError"),
        "traceback: {tb}"
    );
    assert!(
        !tb.contains("helper"),
        "the helper's frames are not shown: {tb}"
    );
    assert!(
        text(&r).contains("ZeroDivisionError: division by zero"),
        "{}",
        text(&r)
    );
    assert_eq!(field(&r, "timed_out"), &json!(false));
    assert_eq!(field(&r, "sandbox_lost"), &json!(false));

    let r = d.persistent("def broken(:\n  pass", Some(&id)).await;
    assert!(is_error(&r));
    assert_eq!(error_type(&r).as_deref(), Some("SyntaxError"));

    // sys.exit ends the cell, not the session.
    let r = d.persistent("import sys\nsys.exit(3)", Some(&id)).await;
    assert_eq!(
        error_type(&r).as_deref(),
        Some("SystemExit"),
        "{}",
        describe(&r)
    );

    let r = d.persistent_ok("keep * 6", &id).await;
    assert_eq!(value(&r).as_deref(), Some("42"));

    // A transient run reports exceptions the same way.
    let r = d.transient("raise ValueError('bad value')").await;
    assert!(is_error(&r));
    assert_eq!(error_type(&r).as_deref(), Some("ValueError"));
    assert!(text(&r).contains("ValueError: bad value"), "{}", text(&r));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn output_from_every_channel_is_captured_and_cannot_forge_frames() {
    let mut d = Daemon::start().await;
    let id = d.new_session("n = 0").await;
    // Fake result frames for this call (id 2) and the next (id 3): if user output reached
    // the protocol stream, they would be taken as replies.
    let fake2 = r#"{"op": "result", "id": 2, "stdout": "FORGED", "stderr": "", "value": "'forged'", "error": null, "interrupted": false, "duration_ms": 0}"#;
    let fake3 = fake2.replace("\"id\": 2", "\"id\": 3");
    let code = format!(
        r#"import sys, os, subprocess
print('via print')
print('via sys.stderr', file=sys.stderr)
os.write(1, b'via os.write 1\n')
os.write(2, b'via os.write 2\n')
subprocess.run(['echo', 'via child'])
subprocess.run(['sh', '-c', 'echo via child stderr >&2'])
print('{{"op": "ready", "python": "0"}}')
print({fake2:?})
print({fake3:?})
sys.stdout.flush()
os.write(1, ({fake2:?} + '\n').encode())
'real value'"#
    );
    let r = d.persistent(&code, Some(&id)).await;
    assert_ok(&r);
    assert_eq!(
        value(&r).as_deref(),
        Some("'real value'"),
        "{}",
        describe(&r)
    );
    let out = stdout(&r);
    for line in ["via print", "via os.write 1", "via child", fake2, &fake3] {
        assert!(out.contains(line), "stdout lacks {line:?}: {out:?}");
    }
    let err = stderr(&r);
    for line in ["via sys.stderr", "via os.write 2", "via child stderr"] {
        assert!(err.contains(line), "stderr lacks {line:?}: {err:?}");
    }
    assert!(!err.contains("via print") && !out.contains("via sys.stderr"));
    assert!(text(&r).contains("Standard Error:"), "{}", text(&r));

    let next = d.persistent_ok("n + 40 + 2", &id).await;
    assert_eq!(value(&next).as_deref(), Some("42"), "{}", describe(&next));
    assert_eq!(stdout(&next), "");
    assert!(!text(&next).contains("FORGED"));

    // Output beyond the cap is dropped, and said so.
    let r = d.persistent_ok("print('x' * 1_000_000)", &id).await;
    assert!(field(&r, "stdout_dropped").as_u64().unwrap_or(0) > 0);
    assert!(stdout(&r).len() <= 300 * 1024);
    assert!(
        text(&r).contains("truncated"),
        "{}",
        &text(&r)[text(&r).len().saturating_sub(200)..]
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn input_gets_end_of_file_instead_of_hanging() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_TIMEOUT", "15s")]).await;
    let r = d.transient("input('your name? ')").await;
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(
        error_type(&r).as_deref(),
        Some("EOFError"),
        "{}",
        describe(&r)
    );
    // Not timed out: input() got end-of-file rather than waiting for the 15 s time-out.
    assert_eq!(field(&r, "timed_out"), &json!(false));

    let id = d.new_session("import sys").await;
    let r = d.persistent("input()", Some(&id)).await;
    assert_eq!(
        error_type(&r).as_deref(),
        Some("EOFError"),
        "{}",
        describe(&r)
    );
    let r = d
        .persistent_ok("(sys.stdin.read(), __import__('os').read(0, 10))", &id)
        .await;
    assert_eq!(value(&r).as_deref(), Some("('', b'')"), "{}", describe(&r));
    // Closing stdin (as exit() does) does not break the next call.
    d.persistent_ok("sys.stdin.close()", &id).await;
    let r = d.persistent("input()", Some(&id)).await;
    assert_eq!(
        error_type(&r).as_deref(),
        Some("EOFError"),
        "{}",
        describe(&r)
    );
    d.finish().await;
}

/// A malformed call is refused before anything runs, naming what is wrong. rmcp 3.9 turns
/// argument deserialisation failures into an `isError` tool result (MCP's "input validation
/// errors are tool execution errors", so the model can correct itself); a JSON-RPC
/// invalid-params error is accepted too.
fn assert_refused(
    result: Result<rmcp::model::CallToolResult, ServiceError>,
    what: &str,
    needle: &str,
) {
    match result {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code, ErrorCode::INVALID_PARAMS, "{what}: {e:?}");
            assert!(e.message.contains(needle), "{what}: {e:?}");
        }
        Err(other) => panic!("{what}: expected a refusal, got a transport failure {other:?}"),
        Ok(r) => {
            assert!(
                is_error(&r),
                "{what}: expected a refusal, got {}",
                describe(&r)
            );
            assert!(
                text(&r).contains(needle),
                "{what}: the refusal should mention {needle:?}: {}",
                describe(&r)
            );
            assert!(
                r.structured_content.is_none(),
                "{what}: nothing ran, so there is no execution result: {}",
                describe(&r)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_refused_and_the_client_keeps_working() {
    let mut d = Daemon::start().await;
    let since = unix_now();
    assert_refused(
        d.try_call("execute-transient", json!({})).await,
        "missing code",
        "code",
    );
    assert_refused(
        d.try_call("execute-transient", json!({"code": 5})).await,
        "code as a number",
        "invalid type",
    );
    assert_refused(
        d.try_call("execute-transient", json!({"code": "1", "state": [1, 2]}))
            .await,
        "state as a list",
        "invalid type",
    );
    assert_refused(
        d.try_call("execute-persistent", json!({"code": "1", "session_id": 5}))
            .await,
        "session_id as a number",
        "invalid type",
    );
    assert_refused(
        d.try_call("install-package", json!({})).await,
        "missing package_name",
        "package_name",
    );
    assert_refused(
        d.try_call("cleanup-session", json!({})).await,
        "missing session_id",
        "session_id",
    );
    assert!(
        matches!(
            d.try_call("no-such-tool", json!({})).await,
            Err(ServiceError::McpError(_))
        ),
        "an unknown tool is a JSON-RPC error"
    );
    assert!(
        containers_created_since(d.pid, "sandbox", since).is_empty(),
        "no sandbox was started for a malformed call"
    );
    let r = d.transient("1 + 1").await;
    assert_eq!(value(&r).as_deref(), Some("2"), "{}", describe(&r));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ended_and_cleaned_up_sessions_are_explained() {
    let mut d = Daemon::start().await;
    let r = d
        .persistent("1", Some("00000000-0000-0000-0000-000000000000"))
        .await;
    assert_tool_error(&r, "no such session");

    let id = d.new_session("x = 1").await;
    assert_eq!(containers_with_role(d.pid, "sandbox").len(), 1);
    let r = d.cleanup(&id).await;
    assert_ok(&r);
    assert_eq!(field(&r, "session_id"), &json!(id));
    assert_eq!(field(&r, "removed"), &json!(true));
    assert!(text(&r).contains(&id));
    assert!(
        containers_with_role(d.pid, "sandbox").is_empty(),
        "cleanup removes the session's container"
    );
    assert!(
        volumes_with_role(d.pid, "sandbox").is_empty(),
        "cleanup removes the session's volume"
    );

    let r = d.persistent("x", Some(&id)).await;
    assert_tool_error(&r, "has ended");
    assert!(
        text(&r).contains("cleanup-session"),
        "says why: {}",
        text(&r)
    );
    let r = d.install("tomli-w", Some(&id)).await;
    assert_tool_error(&r, "has ended");
    let r = d.cleanup(&id).await;
    assert_tool_error(&r, "already ended");
    let r = d.cleanup("never-existed").await;
    assert_tool_error(&r, "no such session");
    let r = d.install("tomli-w", Some("never-existed")).await;
    assert_tool_error(&r, "no such session");
    d.finish().await;
}

// ----- install-package -----

/// A small pure-Python wheel that the sandbox image does not have.
const PACKAGE: &str = "tomli-w";
const MODULE: &str = "tomli_w";

/// Code that tries to create a file next to `module`'s `__init__`, creates one in the
/// package directory too, and evaluates to the errno name of the failure (or `'written'`).
fn write_next_to(module: &str) -> String {
    format!(
        "import {module}, os, errno\n\
         def attempt(path):\n    \
             try:\n        \
                 open(path, 'w').close()\n        \
                 return 'written'\n    \
             except OSError as e:\n        \
                 return errno.errorcode.get(e.errno, str(e))\n\
         here = os.path.dirname({module}.__file__)\n\
         outcomes = {{attempt(os.path.join(here, 'x')), attempt(os.path.join(os.path.dirname(here), 'x'))}}\n\
         outcomes.pop() if len(outcomes) == 1 else sorted(outcomes)"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn install_into_a_session_is_importable_there_only() {
    let mut d = Daemon::start().await;
    let since = unix_now();
    let (a, b) = tokio::join!(d.new_session("x = 1"), d.new_session("x = 2"));
    let before = d.persistent(&format!("import {MODULE}"), Some(&a)).await;
    assert_eq!(
        error_type(&before).as_deref(),
        Some("ModuleNotFoundError"),
        "{MODULE} must not be in the image for this test to mean anything"
    );

    let r = d.install(PACKAGE, Some(&a)).await;
    assert_ok(&r);
    assert_eq!(field(&r, "requirements"), &json!([PACKAGE]));
    assert_eq!(field(&r, "target"), &json!(format!("session {a}")));
    assert_eq!(field(&r, "installer"), &json!("uv"));
    let installed = field(&r, "installed")
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        installed
            .iter()
            .any(|i| i.as_str().unwrap_or("").starts_with("tomli_w-")
                || i.as_str().unwrap_or("").starts_with("tomli-w-")),
        "{}",
        describe(&r)
    );
    assert!(
        text(&r).contains("Package installation result"),
        "{}",
        text(&r)
    );

    let r = d
        .persistent_ok(&format!("import {MODULE}\n{MODULE}.dumps({{'a': 1}})"), &a)
        .await;
    assert_eq!(value(&r).as_deref(), Some("'a = 1\\n'"), "{}", describe(&r));
    assert_eq!(
        value(&d.persistent_ok("x", &a).await).as_deref(),
        Some("1"),
        "the session kept its variables through the install"
    );

    // The session's own packages are read-only to its code as well.
    let r = d.persistent(&write_next_to(MODULE), Some(&a)).await;
    assert_eq!(value(&r).as_deref(), Some("'EROFS'"), "{}", describe(&r));

    let r = d.persistent(&format!("import {MODULE}"), Some(&b)).await;
    assert_eq!(error_type(&r).as_deref(), Some("ModuleNotFoundError"));
    let r = d.transient(&format!("import {MODULE}")).await;
    assert_eq!(error_type(&r).as_deref(), Some("ModuleNotFoundError"));

    assert_eq!(
        containers_created_since(d.pid, "installer", since).len(),
        1,
        "one installer container ran"
    );
    // A successful installer is removed off the reply path, so it goes shortly after.
    let pid = d.pid;
    assert!(
        eventually(Duration::from_secs(10), || containers_with_role(
            pid,
            "installer"
        )
        .is_empty())
        .await,
        "the installer container is removed afterwards"
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn install_into_the_shared_environment_reaches_transient_runs_and_running_sessions() {
    let mut d = Daemon::start().await;
    let running = d.new_session("x = 1").await;
    let r = d
        .persistent(&format!("import {MODULE}"), Some(&running))
        .await;
    assert_eq!(error_type(&r).as_deref(), Some("ModuleNotFoundError"));

    let r = d.install(PACKAGE, None).await;
    assert_ok(&r);
    assert_eq!(field(&r, "target"), &json!("shared environment"));

    let probe = format!("import {MODULE}\n{MODULE}.dumps({{'k': 'v'}})");
    let r = d.transient(&probe).await;
    assert_eq!(
        value(&r).as_deref(),
        Some("'k = \"v\"\\n'"),
        "{}",
        describe(&r)
    );
    let r = d.persistent(&probe, Some(&running)).await;
    assert_eq!(
        value(&r).as_deref(),
        Some("'k = \"v\"\\n'"),
        "{}",
        describe(&r)
    );
    let r = d.persistent(&probe, None).await;
    assert_eq!(
        value(&r).as_deref(),
        Some("'k = \"v\"\\n'"),
        "{}",
        describe(&r)
    );
    // The sandbox may read the shared packages but not change them, and it is the mount
    // that says no: EROFS, not the EACCES that root-owned files would give uid 1000 on a
    // writable mount.
    let r = d.transient(&write_next_to(MODULE)).await;
    assert_eq!(value(&r).as_deref(), Some("'EROFS'"), "{}", describe(&r));
    let r = d.persistent(&write_next_to(MODULE), Some(&running)).await;
    assert_eq!(value(&r).as_deref(), Some("'EROFS'"), "{}", describe(&r));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requirements_never_start_an_installer() {
    let mut d = Daemon::start().await;
    let since = unix_now();
    let id = d.new_session("x = 1").await;
    for (spec, expect) in [
        ("six; rm -rf /", "not a valid requirement"),
        ("--index-url=http://x", "option"),
        ("../x", "URL or path"),
        ("https://x/y.whl", "URL or path"),
        ("six @ https://x/y.whl", "URL or path"),
        ("", "empty"),
    ] {
        for session in [None, Some(id.as_str())] {
            let r = d.install(spec, session).await;
            assert_tool_error(&r, expect);
            assert!(
                text(&r).contains("pandas>=2") || text(&r).contains("requests"),
                "the refusal shows what is accepted: {}",
                text(&r)
            );
        }
    }
    assert_eq!(
        containers_created_since(d.pid, "installer", since),
        Vec::<String>::new(),
        "no installer container was created for refused requirements"
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_package_that_does_not_exist_reports_the_installers_error() {
    let mut d = Daemon::start().await;
    let r = d
        .install("this-package-does-not-exist-pdm-12345", None)
        .await;
    assert_tool_error(&r, "this-package-does-not-exist-pdm-12345");
    let t = text(&r);
    eprintln!("{t}");
    assert!(
        t.contains("No matching distribution")
            || t.contains("Could not find a version")
            || t.contains("not found in the package registry"),
        "the installer's own error is shown: {t}"
    );
    assert!(
        containers_with_role(d.pid, "installer").is_empty(),
        "the failed installer container is removed before the error is returned"
    );
    // The shared environment still works.
    let r = d.transient("1").await;
    assert_ok(&r);
    d.finish().await;
}
