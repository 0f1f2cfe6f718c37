//! Long runs as MCP tasks, the per-call time-out, output kept across an interrupt, and
//! what each run cost: end to end, the real binary against the real engine, with rmcp's
//! client declaring the tasks extension (`io.modelcontextprotocol/tasks`) or not.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::http::{command, tokens_file, HttpDaemon, ALICE, BOB};
use common::{field, fresh_dir, is_error, remove_leftovers, stdout, text, Daemon};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ClientCapabilities,
    ClientConfig, GetTaskParams, Implementation, TaskPayload, TaskStatus,
};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};

type TasksClient = RunningService<RoleClient, ClientConfig>;

/// Runs become tasks after 1 s in these tests.
const TASK_AFTER: (&str, &str) = ("PYTHON_DOCKER_MCP_TASK_AFTER", "1s");

/// A client that declares the tasks extension.
fn tasks_client_info() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::builder().enable_tasks().build(),
        Implementation::new("tasks-test", "0.1"),
    )
}

/// A daemon over stdio whose client declares the tasks extension.
struct StdioTasks {
    child: tokio::process::Child,
    pid: u32,
    home: PathBuf,
    client: Option<TasksClient>,
    /// When it was started (unix seconds), for `common::named_leftovers`.
    since: f64,
    /// [`StdioTasks::finish`] ran; without it `Drop` fails the test.
    finished: bool,
}

impl StdioTasks {
    async fn start(env: &[(&str, &str)]) -> StdioTasks {
        let home = fresh_dir("tasks-home");
        let since = common::unix_now();
        let mut cmd = command(&home, &["serve"], env);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn python-docker-mcp");
        let pid = child.id().expect("pid");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take().expect("stdin");
        let client = tokio::time::timeout(
            Duration::from_secs(30),
            tasks_client_info().serve((stdout, stdin)),
        )
        .await
        .expect("MCP initialize timed out")
        .expect("MCP initialize failed");
        StdioTasks {
            child,
            pid,
            home,
            client: Some(client),
            since,
            finished: false,
        }
    }

    fn client(&self) -> &TasksClient {
        self.client.as_ref().expect("open")
    }

    /// How a test ends: close the client (EOF); the daemon removes what it made and exits
    /// with success, leaving nothing by label or by name.
    async fn finish(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), client.cancel()).await;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "the daemon exits cleanly at EOF: {status:?}"
        );
        let left = common::leftovers(self.pid);
        assert!(left.is_empty(), "nothing left behind: {left:?}");
        let named = common::named_leftovers(self.pid, self.since);
        assert!(named.is_empty(), "nothing left by name: {named:?}");
        self.finished = true;
    }
}

impl Drop for StdioTasks {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.start_kill();
            std::thread::sleep(Duration::from_millis(500));
        }
        let left = if self.finished || std::thread::panicking() {
            common::Leftovers::default()
        } else {
            common::leftovers(self.pid)
        };
        remove_leftovers(self.pid);
        let _ = std::fs::remove_dir_all(&self.home);
        common::unfinished("StdioTasks", self.pid, self.finished, &left);
    }
}

fn params(tool: &str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool.to_string())
        .with_arguments(args.as_object().expect("an object").clone())
}

/// One `tools/call`, answered with a result or a task.
async fn call_once(client: &TasksClient, tool: &str, args: Value) -> CallToolResponse {
    tokio::time::timeout(
        common::CALL_LIMIT,
        client.call_tool_once(params(tool, args)),
    )
    .await
    .expect("the call answers")
    .expect("no protocol error")
}

fn complete(response: CallToolResponse) -> CallToolResult {
    match response {
        CallToolResponse::Complete(r) => r,
        other => panic!("expected a result, got {other:?}"),
    }
}

/// The result of a call that may or may not have become a task (starting a session takes
/// a cold sandbox start, which can outlast `server.task_after`).
async fn settle(client: &TasksClient, response: CallToolResponse) -> CallToolResult {
    match response {
        CallToolResponse::Complete(r) => r,
        CallToolResponse::Task(t) => result_of(&poll(client, &t.task.task_id).await.1),
        other => panic!("expected a result or a task, got {other:?}"),
    }
}

/// Start a session with `code`; its id.
async fn new_session(client: &TasksClient, code: &str) -> String {
    let r = call_once(client, "execute-persistent", json!({ "code": code })).await;
    let r = settle(client, r).await;
    assert!(!is_error(&r), "{}", text(&r));
    field(&r, "session_id").as_str().unwrap().to_string()
}

fn task_id(response: CallToolResponse) -> String {
    match response {
        CallToolResponse::Task(t) => t.task.task_id,
        other => panic!("expected a task, got {other:?}"),
    }
}

/// Poll a task until it ends; returns every working `statusMessage` seen, in order, and
/// the final state.
async fn poll(client: &TasksClient, id: &str) -> (Vec<String>, rmcp::model::DetailedTask) {
    let mut seen = Vec::new();
    for _ in 0..600 {
        let got = client
            .peer()
            .get_task(GetTaskParams::new(id.to_string()))
            .await
            .expect("tasks/get answers");
        if got.task.status().is_terminal() {
            return (seen, got.task);
        }
        if let Some(m) = got.task.task.status_message.clone() {
            seen.push(m);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("task {id} did not end");
}

fn result_of(task: &rmcp::model::DetailedTask) -> CallToolResult {
    match &task.payload {
        TaskPayload::Completed { result } => {
            serde_json::from_value(Value::Object(result.clone())).expect("a tool result")
        }
        other => panic!("expected a completed task, got {other:?}"),
    }
}

const TEN_SECOND_LOOP: &str = "import time\nfor i in range(10):\n    print(f'tick {i}', flush=True)\n    time.sleep(1)\n'done'";

#[tokio::test]
async fn a_long_run_becomes_a_task_that_shows_its_output_then_its_result() {
    let daemon = StdioTasks::start(&[TASK_AFTER]).await;
    let client = daemon.client();

    // A quick call is answered at once, even for a client that declares tasks.
    let session = new_session(client, "import time").await;
    let quick = complete(
        call_once(
            client,
            "execute-persistent",
            json!({"code": "x = 41", "session_id": session}),
        )
        .await,
    );
    assert!(!is_error(&quick), "{}", text(&quick));

    let id = task_id(
        call_once(
            client,
            "execute-persistent",
            json!({"code": TEN_SECOND_LOOP, "session_id": session, "timeout": 60}),
        )
        .await,
    );
    let (working, done) = poll(client, &id).await;
    assert!(
        working.iter().any(|m| m.contains("tick ")),
        "tasks/get showed output while the run worked: {working:?}"
    );
    let first_with_output = working.iter().position(|m| m.contains("tick ")).unwrap();
    assert!(
        !working[first_with_output].contains("tick 9"),
        "partial output came before the end: {working:?}"
    );
    assert_eq!(done.status(), TaskStatus::Completed);
    let result = result_of(&done);
    assert!(!is_error(&result), "{}", text(&result));
    let out = stdout(&result);
    for i in 0..10 {
        assert!(out.contains(&format!("tick {i}")), "{out}");
    }
    assert_eq!(field(&result, "value"), "'done'");
    assert_eq!(field(&result, "session_id"), session.as_str());
    assert!(text(&result).starts_with(&format!("Session ID: {session}")));
    daemon.finish().await;
}

#[tokio::test]
async fn tasks_cancel_interrupts_the_run_and_the_session_keeps_its_variables() {
    let daemon = StdioTasks::start(&[TASK_AFTER]).await;
    let client = daemon.client();
    let session = new_session(client, "x = 41").await;

    let id = task_id(
        call_once(
            client,
            "execute-persistent",
            json!({"session_id": session, "timeout": 120,
                   "code": "import time\nfor i in range(1000):\n    print(f'step {i}', flush=True)\n    time.sleep(0.2)"}),
        )
        .await,
    );
    // Wait for output, so the cancel lands while the code runs.
    let mut saw_output = false;
    for _ in 0..100 {
        let got = client
            .peer()
            .get_task(GetTaskParams::new(id.clone()))
            .await
            .unwrap();
        if got
            .task
            .task
            .status_message
            .is_some_and(|m| m.contains("step 1"))
        {
            saw_output = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_output, "the task showed output");
    client
        .peer()
        .cancel_task(CancelTaskParams::new(id.clone()))
        .await
        .expect("tasks/cancel answers");
    let (_, done) = poll(client, &id).await;
    assert_eq!(done.status(), TaskStatus::Cancelled);
    let message = done.task.status_message.clone().unwrap_or_default();
    assert!(
        message.contains("step 0") && message.contains("step 1"),
        "the output before the interrupt is kept: {message}"
    );
    assert!(message.contains("interrupted"), "{message}");

    let after = complete(
        call_once(
            client,
            "execute-persistent",
            json!({"session_id": session, "code": "x + 1"}),
        )
        .await,
    );
    assert_eq!(
        field(&after, "value"),
        "42",
        "the session kept x: {}",
        text(&after)
    );
    daemon.finish().await;
}

/// A client holds at most `MAX_TASKS_PER_CLIENT` (16, src/tasks.rs) tasks, running or
/// kept: 16 runs that outlast `server.task_after` become tasks, and the 17th, while they
/// are all kept (`server.task_ttl` is its default, 10 min), blocks and answers with its
/// result, as for a client without the extension.
#[tokio::test]
async fn a_client_holds_at_most_16_tasks_and_the_17th_call_blocks() {
    const CAP: usize = 16;
    let daemon = StdioTasks::start(&[TASK_AFTER]).await;
    let client = daemon.client();
    // Starting the session may itself become a task (a cold sandbox start can outlast
    // task_after): that task counts towards the 16 too.
    let first = call_once(client, "execute-persistent", json!({"code": "n = 0"})).await;
    let held = usize::from(matches!(first, CallToolResponse::Task(_)));
    let started = settle(client, first).await;
    let session = field(&started, "session_id").as_str().unwrap().to_string();
    // Each run sleeps past task_after (1 s), so each becomes a task; they queue on the
    // session, one after another.
    let slow = |i: usize| json!({"session_id": session, "code": format!("import time\ntime.sleep(1.2)\nn += 1\n{i}")});
    let mut ids = Vec::new();
    for i in 0..CAP - held {
        match call_once(client, "execute-persistent", slow(i)).await {
            CallToolResponse::Task(t) => ids.push(t.task.task_id),
            other => panic!("call {i} of {CAP} should be a task: {other:?}"),
        }
    }
    // The 17th blocks and answers with the result itself.
    let r = complete(call_once(client, "execute-persistent", slow(CAP - held)).await);
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(
        field(&r, "value"),
        (CAP - held).to_string().as_str(),
        "{}",
        text(&r)
    );
    // Every task ran and is kept with its result.
    for (i, id) in ids.iter().enumerate() {
        let (_, done) = poll(client, id).await;
        assert_eq!(done.status(), TaskStatus::Completed, "task {i}");
        assert_eq!(field(&result_of(&done), "value"), i.to_string().as_str());
    }
    let r = complete(
        call_once(
            client,
            "execute-persistent",
            json!({"session_id": session, "code": "n"}),
        )
        .await,
    );
    assert_eq!(field(&r, "value"), (CAP - held + 1).to_string().as_str());
    daemon.finish().await;
}

/// `server.task_ttl` end to end: a finished task's result is kept, then freed, after which
/// its id is exactly as unknown as one that never existed.
#[tokio::test]
async fn a_finished_tasks_result_is_freed_after_task_ttl() {
    let daemon = StdioTasks::start(&[TASK_AFTER, ("PYTHON_DOCKER_MCP_TASK_TTL", "3s")]).await;
    let client = daemon.client();
    let id = task_id(
        call_once(
            client,
            "execute-transient",
            json!({"code": "import time\ntime.sleep(2)\n'kept'"}),
        )
        .await,
    );
    let (_, done) = poll(client, &id).await;
    assert_eq!(done.status(), TaskStatus::Completed);
    // Kept: asked again at once, the same result.
    let again = client
        .peer()
        .get_task(GetTaskParams::new(id.clone()))
        .await
        .expect("kept within task_ttl");
    assert_eq!(field(&result_of(&again.task), "value"), "'kept'");
    // Freed: expected 3 s after the run ended; 30 s only catches a result never freed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let gone = loop {
        match client.peer().get_task(GetTaskParams::new(id.clone())).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the result is still kept 30 s after it ended, with task_ttl 3 s"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let never = client
        .peer()
        .get_task(GetTaskParams::new("no-such-task".to_string()))
        .await
        .expect_err("unknown");
    assert_eq!(
        gone.to_string().replace(&id, "ID"),
        never.to_string().replace("no-such-task", "ID")
    );
    daemon.finish().await;
}

/// `tasks/cancel` on an install does not interrupt it (README, "Tasks"): the install runs
/// to its end and its task completes with the install's own result. The index is a server
/// on the test's own network that never answers, so the install ends at its time-out,
/// long after the cancel.
#[tokio::test]
async fn an_install_cannot_be_cancelled_its_task_completes() {
    let mut net = common::net::TestNet::create();
    let (index, index_host) = net.silent_index();
    let daemon = StdioTasks::start(&[
        TASK_AFTER,
        ("PYTHON_DOCKER_MCP_INSTALL_TIMEOUT", "8s"),
        ("PYTHON_DOCKER_MCP_INDEX_URL", &index),
        ("PYTHON_DOCKER_MCP_TRUSTED_HOSTS", &index_host),
        ("PYTHON_DOCKER_MCP_EGRESS_NETWORK", &net.name),
    ])
    .await;
    let client = daemon.client();
    let id = task_id(
        call_once(
            client,
            "install-package",
            json!({"package_name": "pdm-never-cached-probe"}),
        )
        .await,
    );
    client
        .peer()
        .cancel_task(CancelTaskParams::new(id.clone()))
        .await
        .expect("tasks/cancel answers");
    // Still working after the cancel: the install goes on.
    let now = client
        .peer()
        .get_task(GetTaskParams::new(id.clone()))
        .await
        .expect("tasks/get");
    assert_eq!(now.task.status(), TaskStatus::Working, "{now:?}");
    let (_, done) = poll(client, &id).await;
    assert_eq!(
        done.status(),
        TaskStatus::Completed,
        "the install ran to its end: {done:?}"
    );
    let result = result_of(&done);
    assert!(is_error(&result), "the silent index fails the install");
    assert!(
        text(&result).contains("took longer than the install time-out"),
        "the install ended at its own time-out, not at the cancel: {}",
        text(&result)
    );
    daemon.finish().await;
    net.remove();
}

#[tokio::test]
async fn a_client_without_the_extension_blocks_and_gets_the_result() {
    let mut daemon = Daemon::start_with(&[TASK_AFTER]).await;
    let r = daemon
        .call(
            "execute-transient",
            json!({"code": "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1)\n'done'", "timeout": 30}),
        )
        .await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(field(&r, "value"), "'done'");
    // tasks/* need the extension declared.
    let refused = daemon
        .client()
        .peer()
        .get_task(GetTaskParams::new("anything".to_string()))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    daemon.finish().await;
}

#[tokio::test]
async fn a_calls_timeout_works_below_the_cap_and_is_refused_above_it() {
    let mut daemon = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_TIMEOUT", "1s"),
        ("PYTHON_DOCKER_MCP_MAX_TIMEOUT", "10s"),
    ])
    .await;
    let sleep = "import time\ntime.sleep(2.5)\n'slept'";
    // The default (1 s) interrupts it...
    let short = daemon
        .call("execute-transient", json!({"code": sleep}))
        .await;
    assert_eq!(field(&short, "timed_out"), true, "{}", text(&short));
    // ...its own timeout, under the cap, lets it finish.
    let long = daemon
        .call("execute-transient", json!({"code": sleep, "timeout": 8}))
        .await;
    assert!(!is_error(&long), "{}", text(&long));
    assert_eq!(field(&long, "value"), "'slept'");
    // Above the cap: refused, the cap named.
    let above = daemon
        .call("execute-persistent", json!({"code": "1", "timeout": 11}))
        .await;
    assert!(is_error(&above));
    let message = text(&above);
    assert!(
        message.contains("docker.max_timeout") && message.contains("10s"),
        "{message}"
    );
    let zero = daemon
        .call("execute-transient", json!({"code": "1", "timeout": 0}))
        .await;
    assert!(is_error(&zero), "{}", text(&zero));
    daemon.finish().await;
}

#[tokio::test]
async fn output_printed_before_an_interrupt_is_in_the_result() {
    let mut daemon = Daemon::start().await;
    let code = "import sys\nprint('first line', flush=True)\nsys.stdout.write('no newline yet')\nsys.stderr.write('to stderr')\nwhile True:\n    pass";
    for tool in ["execute-transient", "execute-persistent"] {
        let r = daemon
            .call(tool, json!({"code": code, "timeout": 1.5}))
            .await;
        assert_eq!(field(&r, "timed_out"), true, "{tool}: {}", text(&r));
        let out = stdout(&r);
        assert!(
            out.contains("first line") && out.contains("no newline yet"),
            "{tool}: {out}"
        );
        assert!(
            common::stderr(&r).contains("to stderr"),
            "{tool}: {}",
            text(&r)
        );
        assert!(text(&r).contains("first line"), "{}", text(&r));
    }
    daemon.finish().await;
}

#[tokio::test]
async fn each_run_reports_its_cpu_seconds_and_peak_memory() {
    let mut daemon = Daemon::start().await;
    let busy = daemon
        .persistent(
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 1:\n    pass",
            None,
        )
        .await;
    assert!(!is_error(&busy), "{}", text(&busy));
    let session = common::session_id(&busy);
    let cpu = field(&busy, "cpu_seconds").as_f64().unwrap();
    assert!(cpu >= 1.0, "cpu_seconds {cpu}");
    assert!(text(&busy).contains("s CPU"), "{}", text(&busy));

    // A run that holds 100 MB peaks above it; the next, small run of the same session
    // peaks below it: the peak is the run's own.
    let big = daemon
        .persistent_ok(
            "b = bytearray(100_000_000)\nb[::4096] = b'x' * len(b[::4096])\ndel b",
            &session,
        )
        .await;
    assert_eq!(field(&big, "peak_memory_scope"), "run", "{}", text(&big));
    let big_peak = field(&big, "peak_memory_bytes").as_u64().unwrap();
    assert!(big_peak >= 100_000_000, "{big_peak}");
    let small = daemon.persistent_ok("y = 1", &session).await;
    let small_peak = field(&small, "peak_memory_bytes").as_u64().unwrap();
    assert!(small_peak < big_peak, "{small_peak} < {big_peak}");
    let idle_cpu = field(&small, "cpu_seconds").as_f64().unwrap();
    assert!(idle_cpu < cpu, "{idle_cpu} < {cpu}");
    assert!(field(&small, "duration_ms").as_f64().is_some());
    daemon.finish().await;
}

/// `cpu_seconds` counts the child processes the run waited for, not only the helper; and
/// when the helper cannot reset the kernel's high-water mark before a run, the peak is
/// labelled `session`: it may come from an earlier run (README, "Cost"). The refusal is
/// made by the session's own code, which replaces the `open` the helper uses for
/// `/proc/self/clear_refs` (the helper is `__main__` in the sandbox), as a kernel that
/// refuses the write would.
#[tokio::test]
async fn cpu_seconds_count_waited_children_and_an_unreset_peak_is_the_sessions() {
    let mut daemon = Daemon::start().await;
    let r = daemon
        .persistent(
            "import subprocess, sys\n\
             subprocess.run([sys.executable, '-c', \
             'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 1:\\n    pass'], \
             check=True)",
            None,
        )
        .await;
    assert!(!is_error(&r), "{}", text(&r));
    let session = common::session_id(&r);
    let cpu = field(&r, "cpu_seconds").as_f64().unwrap();
    assert!(cpu >= 1.0, "the child's second of CPU is counted: {cpu}");

    let patch = daemon
        .persistent_ok(
            "import __main__ as helper, builtins\n\
             def refusing_open(path, *args, **kwargs):\n\
             \x20   if str(path) == '/proc/self/clear_refs':\n\
             \x20       raise PermissionError(13, 'refused')\n\
             \x20   return builtins.open(path, *args, **kwargs)\n\
             helper.open = refusing_open",
            &session,
        )
        .await;
    assert_eq!(
        field(&patch, "peak_memory_scope"),
        "run",
        "{}",
        text(&patch)
    );
    let big = daemon
        .persistent_ok(
            "b = bytearray(100_000_000)\nb[::4096] = b'x' * len(b[::4096])\ndel b",
            &session,
        )
        .await;
    assert_eq!(
        field(&big, "peak_memory_scope"),
        "session",
        "{}",
        text(&big)
    );
    // The next small run reports the session's peak: the big run's, not its own.
    let small = daemon.persistent_ok("y = 1", &session).await;
    assert_eq!(field(&small, "peak_memory_scope"), "session");
    let peak = field(&small, "peak_memory_bytes").as_u64().unwrap();
    assert!(peak >= 100_000_000, "the session's peak so far: {peak}");
    assert!(
        text(&small).contains("(session so far)"),
        "{}",
        text(&small)
    );
    // With the helper's own open back, the peak is the run's own again.
    daemon.persistent_ok("del helper.open", &session).await;
    let own = daemon.persistent_ok("z = 1", &session).await;
    assert_eq!(field(&own, "peak_memory_scope"), "run");
    let own_peak = field(&own, "peak_memory_bytes").as_u64().unwrap();
    assert!(own_peak < 100_000_000, "{own_peak}");
    assert!(text(&own).contains("(this run)"), "{}", text(&own));
    daemon.finish().await;
}

/// An rmcp client over streamable HTTP that declares tasks, with a bearer token.
async fn http_tasks_client(daemon: &HttpDaemon, token: &str) -> TasksClient {
    let config = StreamableHttpClientTransportConfig::with_uri(daemon.mcp_url())
        .auth_header(token.to_string());
    let transport = StreamableHttpClientTransport::from_config(config);
    tokio::time::timeout(
        Duration::from_secs(30),
        tasks_client_info().serve(transport),
    )
    .await
    .expect("connect timed out")
    .expect("connect failed")
}

#[tokio::test]
async fn over_http_a_task_is_its_clients_alone() {
    let tokens = tokens_file();
    let tokens = tokens.to_str().unwrap();
    let mut daemon =
        HttpDaemon::start(&[TASK_AFTER, ("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens)]).await;
    let alice = http_tasks_client(&daemon, ALICE).await;
    let bob = http_tasks_client(&daemon, BOB).await;
    let id = task_id(
        call_once(
            &alice,
            "execute-transient",
            json!({"code": "import time\ntime.sleep(3)\n'alice'"}),
        )
        .await,
    );
    let theirs = bob
        .peer()
        .get_task(GetTaskParams::new(id.clone()))
        .await
        .expect_err("bob does not see alice's task");
    let never = bob
        .peer()
        .get_task(GetTaskParams::new("no-such-task".to_string()))
        .await
        .expect_err("unknown");
    assert_eq!(
        theirs.to_string().replace(&id, "ID"),
        never.to_string().replace("no-such-task", "ID")
    );
    assert!(bob
        .peer()
        .cancel_task(CancelTaskParams::new(id.clone()))
        .await
        .is_err());
    let (_, done) = poll(&alice, &id).await;
    assert_eq!(field(&result_of(&done), "value"), "'alice'");
    let _ = alice.cancel().await;
    let _ = bob.cancel().await;
    daemon.finish().await;
}
