//! Shared helpers for the end-to-end tests: spawn the real `python-docker-mcp` binary as an
//! MCP server over stdio, talk to it with rmcp's client, read results, and look at what the
//! daemon left in Docker.
//!
//! Every daemon runs with a fresh `HOME`, no inherited `PYTHON_DOCKER_MCP_*` variables and
//! only the settings the test passes. The test owns the child process (rather than handing
//! it to `TokioChildProcess`), so closing the client closes the daemon's stdin and nothing
//! else: rmcp does not escalate to SIGTERM behind the test's back, and the test can read the
//! daemon's exit status. Dropping a [`Daemon`] stops it (SIGTERM, then SIGKILL) and removes
//! whatever still carries its pid label, so a failing test leaves nothing behind. That
//! clean-up would hide a leak, so every test ends with [`Daemon::finish`] (or
//! [`Daemon::finish_as`] for a daemon the test stopped itself), which asserts the daemon's
//! exit status and that it left no container and no volume, by its pid label and by the
//! names it gives them ([`named_leftovers`]). A handle dropped without that check fails the
//! test from `Drop`, after cleaning up (unless the test is already failing). [`RawDaemon`]
//! and [`http::HttpDaemon`] work the same way.
#![allow(dead_code)]

pub mod http;
pub mod net;
pub mod node;

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResult, ProgressNotificationParam};
use rmcp::service::{RunningService, ServiceError};
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;

pub type Client = RunningService<RoleClient, Recorder>;

/// The test client's handler: records the progress notifications the server sends, and
/// the instant each one arrived (so a test can order them against a call's result).
#[derive(Clone, Default)]
pub struct Recorder {
    pub progress: std::sync::Arc<std::sync::Mutex<Vec<ProgressNotificationParam>>>,
    /// When each entry of `progress` arrived, same index: the instant, and the wall clock
    /// (which code in a sandbox reads too: containers share the host's clock).
    pub arrived: std::sync::Arc<std::sync::Mutex<Vec<(Instant, std::time::SystemTime)>>>,
}

impl rmcp::ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        // One lock order (progress, then arrived) keeps the two lists the same length.
        let mut progress = self.progress.lock().expect("progress lock");
        self.arrived
            .lock()
            .expect("arrival lock")
            .push((Instant::now(), std::time::SystemTime::now()));
        progress.push(params);
    }
}

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_python-docker-mcp");

/// Label keys the daemon puts on every container and volume.
pub const PID_LABEL: &str = "python-docker-mcp.pid";
pub const HOST_LABEL: &str = "python-docker-mcp.host";

/// How long one tool call may take before the test gives up on it (a hang is a failure).
pub const CALL_LIMIT: Duration = Duration::from_secs(120);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty directory under the system temp dir (no tempfile crate here).
pub fn fresh_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "pdm-e2e-{tag}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Apply the isolation every spawned binary gets: fresh HOME, none of the developer's
/// `PYTHON_DOCKER_MCP_*` settings, quiet logs; then the test's own variables.
fn isolate(cmd: &mut tokio::process::Command, home: &PathBuf, env: &[(&str, &str)]) {
    // The pool is off unless a test turns it on: container counts then mean what they say.
    // Sessions end with their daemon unless a test turns durability on (tests/durable.rs):
    // every other test checks that its daemon left nothing behind.
    let cmd = clean_env(cmd.as_std_mut(), home)
        .env("PYTHON_DOCKER_MCP_POOL_ENABLED", "false")
        .env("PYTHON_DOCKER_MCP_SESSION_DURABLE", "false");
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// A fresh HOME, none of the developer's `PYTHON_DOCKER_MCP_*` settings, quiet logs.
fn clean_env<'a>(
    cmd: &'a mut std::process::Command,
    home: &PathBuf,
) -> &'a mut std::process::Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("PYTHON_DOCKER_MCP_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("HOME", home).env("PYTHON_DOCKER_MCP_LOG", "warn")
}

/// Run the binary to completion (for subcommands such as `config`), isolated like a daemon.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let home = fresh_dir("cli");
    let mut cmd = std::process::Command::new(BIN);
    clean_env(&mut cmd, &home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.args(args).output().expect("run python-docker-mcp");
    let _ = std::fs::remove_dir_all(&home);
    out
}

/// One running daemon and the MCP client connected to it.
pub struct Daemon {
    client: Option<Client>,
    child: tokio::process::Child,
    /// The daemon's process id (the value of its containers' pid label).
    pub pid: u32,
    home: PathBuf,
    exited: Option<ExitStatus>,
    /// Where the daemon's stderr goes, when the test measures it ([`Daemon::start_logged`]).
    log: Option<PathBuf>,
    /// When the daemon was started (unix seconds), for [`named_leftovers`].
    since: f64,
    /// [`Daemon::finish`] or [`Daemon::finish_as`] ran: `Drop` only cleans up. Without it,
    /// `Drop` fails the test.
    finished: bool,
}

impl Daemon {
    /// Start a daemon with default settings.
    pub async fn start() -> Daemon {
        Daemon::start_with(&[]).await
    }

    /// Start a daemon with extra environment variables (settings, DOCKER_HOST, ...).
    pub async fn start_with(env: &[(&str, &str)]) -> Daemon {
        let stderr = if std::env::var_os("PDM_E2E_DAEMON_STDERR").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        Daemon::spawn(env, stderr, None).await
    }

    /// Start a daemon whose stderr (its log) goes to a file the test can measure with
    /// [`Daemon::log_len`] and read with [`Daemon::log_text`].
    pub async fn start_logged(env: &[(&str, &str)]) -> Daemon {
        let path = fresh_dir("log").join("daemon.log");
        let file = std::fs::File::create(&path).expect("create the daemon's log file");
        Daemon::spawn(env, Stdio::from(file), Some(path)).await
    }

    async fn spawn(env: &[(&str, &str)], stderr: Stdio, log: Option<PathBuf>) -> Daemon {
        let home = fresh_dir("home");
        let since = unix_now();
        let mut cmd = tokio::process::Command::new(BIN);
        isolate(&mut cmd, &home, env);
        cmd.arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn python-docker-mcp");
        let pid = child.id().expect("daemon pid");
        let stdout = child.stdout.take().expect("daemon stdout");
        let stdin = child.stdin.take().expect("daemon stdin");
        let client = tokio::time::timeout(
            Duration::from_secs(30),
            Recorder::default().serve((stdout, stdin)),
        )
        .await
        .expect("MCP initialize timed out")
        .expect("MCP initialize failed");
        Daemon {
            client: Some(client),
            child,
            pid,
            home,
            exited: None,
            log,
            since,
            finished: false,
        }
    }

    /// The size of the daemon's log so far, in bytes (for a daemon from `start_logged`).
    pub fn log_len(&self) -> u64 {
        let path = self
            .log
            .as_ref()
            .expect("start the daemon with start_logged");
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// The daemon's log so far (for a daemon from `start_logged`).
    pub fn log_text(&self) -> String {
        let path = self
            .log
            .as_ref()
            .expect("start the daemon with start_logged");
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    }

    /// The daemon's resident memory now, in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        proc_status_bytes(self.pid, "VmRSS")
    }

    /// The daemon's peak resident memory so far, in bytes (`VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        proc_status_bytes(self.pid, "VmHWM")
    }

    /// Where a reliability case starts from: the daemon serves, its containers and volumes
    /// have settled (a filling pool has filled), and its memory. Pair with [`Daemon::recovered`].
    pub async fn baseline(&self) -> Baseline {
        self.assert_serves().await;
        let pid = self.pid;
        // Settled: the same counts on two looks a second apart (a transient run's container
        // is removed in the background; a pool refills in the background).
        let mut last = counted(pid);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = counted(pid);
            if now == last || Instant::now() > deadline {
                last = now;
                break;
            }
            last = now;
        }
        Baseline {
            containers: last.0,
            volumes: last.1,
            rss: self.rss(),
        }
    }

    /// Transient `1 + 1` answers `2`.
    pub async fn assert_serves(&self) {
        let r = self.transient("1 + 1").await;
        assert_eq!(
            value(&r).as_deref(),
            Some("2"),
            "the daemon still serves: {}",
            describe(&r)
        );
    }

    /// The three checks every reliability case ends with: (1) the daemon still serves;
    /// (2) its containers and volumes are back to the baseline, plus the `kept` sessions the
    /// case deliberately keeps (one container and one volume each); (3) its resident memory
    /// is within [`MEMORY_SLACK`] of the baseline's.
    pub async fn assert_recovered(&self, base: &Baseline, kept: usize) {
        self.assert_serves().await;
        let pid = self.pid;
        let want = (base.containers + kept, base.volumes + kept);
        let settled = eventually(Duration::from_secs(30), || counted(pid) == want).await;
        assert!(
            settled,
            "containers and volumes (without the shared package volume) are back to \
             {want:?}, baseline {base:?} plus {kept} kept session(s); now {:?}: {:?}\n{}",
            counted(pid),
            leftovers(pid),
            docker_lines(&[
                "ps",
                "-a",
                "--filter",
                &format!("label={PID_LABEL}={pid}"),
                "--format",
                "{{.ID}} {{.Names}} {{.Status}} {{.Label \"python-docker-mcp.role\"}}",
            ])
            .join("\n")
        );
        let limit = base.rss + MEMORY_SLACK;
        let fits = eventually(Duration::from_secs(10), || self.rss() <= limit).await;
        assert!(
            fits,
            "the daemon's RSS is {} MiB, more than 64 MiB above its {} MiB at the start",
            self.rss() >> 20,
            base.rss >> 20
        );
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("client already closed")
    }

    /// The messages of every progress notification received so far.
    pub fn progress_messages(&self) -> Vec<String> {
        let recorder = self.client().service();
        let seen = recorder.progress.lock().expect("progress lock");
        seen.iter().filter_map(|p| p.message.clone()).collect()
    }

    /// Every progress notification received so far with when it arrived (see
    /// [`Recorder::arrived`]).
    pub fn progress_arrivals(&self) -> Vec<((Instant, std::time::SystemTime), String)> {
        let recorder = self.client().service();
        let seen = recorder.progress.lock().expect("progress lock");
        let arrived = recorder.arrived.lock().expect("arrival lock");
        arrived
            .iter()
            .zip(seen.iter())
            .map(|(at, p)| (*at, p.message.clone().unwrap_or_default()))
            .collect()
    }

    /// Call a tool; a JSON-RPC error comes back as `Err`.
    pub async fn try_call(&self, tool: &str, args: Value) -> Result<CallToolResult, ServiceError> {
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(
            args.as_object()
                .expect("tool arguments are a JSON object")
                .clone(),
        );
        tokio::time::timeout(CALL_LIMIT, self.client().call_tool(params))
            .await
            .unwrap_or_else(|_| panic!("{tool} did not answer within {CALL_LIMIT:?}"))
    }

    /// Call a tool that must answer with a result (which may still carry `isError`).
    pub async fn call(&self, tool: &str, args: Value) -> CallToolResult {
        match self.try_call(tool, args.clone()).await {
            Ok(r) => r,
            Err(e) => panic!("{tool} {args} failed at the protocol level: {e}"),
        }
    }

    pub async fn transient(&self, code: &str) -> CallToolResult {
        self.call("execute-transient", serde_json::json!({ "code": code }))
            .await
    }

    pub async fn transient_with_state(&self, code: &str, state: Value) -> CallToolResult {
        self.call(
            "execute-transient",
            serde_json::json!({ "code": code, "state": state }),
        )
        .await
    }

    pub async fn persistent(&self, code: &str, session: Option<&str>) -> CallToolResult {
        let args = match session {
            Some(id) => serde_json::json!({ "code": code, "session_id": id }),
            None => serde_json::json!({ "code": code }),
        };
        self.call("execute-persistent", args).await
    }

    /// Run code in a session; the call must succeed (no exception, no time-out).
    pub async fn persistent_ok(&self, code: &str, session: &str) -> CallToolResult {
        let r = self.persistent(code, Some(session)).await;
        assert_ok(&r);
        r
    }

    /// Start a session by running `code` in it; returns the session id.
    pub async fn new_session(&self, code: &str) -> String {
        let r = self.persistent(code, None).await;
        assert_ok(&r);
        session_id(&r)
    }

    pub async fn install(&self, package: &str, session: Option<&str>) -> CallToolResult {
        let args = match session {
            Some(id) => serde_json::json!({ "package_name": package, "session_id": id }),
            None => serde_json::json!({ "package_name": package }),
        };
        self.call("install-package", args).await
    }

    pub async fn cleanup(&self, session: &str) -> CallToolResult {
        self.call(
            "cleanup-session",
            serde_json::json!({ "session_id": session }),
        )
        .await
    }

    /// Close the client (the daemon sees EOF on stdin) and wait for the daemon to exit.
    /// Returns its exit status, or `None` if it was still running after `within`.
    pub async fn close(&mut self, within: Duration) -> Option<ExitStatus> {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), client.cancel()).await;
        }
        self.wait_exit(within).await
    }

    /// How every end-to-end test ends: close the client, see the daemon exit with success
    /// within 30 s, and assert that it left nothing behind, by label and by name
    /// ([`Daemon::assert_left_nothing`]). The `Drop` clean-up stays as a safety net for
    /// failing tests; this is the check, and a test that skips it fails in `Drop`.
    #[track_caller]
    pub fn finish(&mut self) -> impl std::future::Future<Output = ()> + '_ {
        self.finish_as(Exit::Success)
    }

    /// [`Daemon::finish`] for a daemon that ends some other way than with success: one the
    /// test killed or signalled, or one that must fail. Closes the client if it is still
    /// open, waits up to 30 s for the exit, asserts that the status is `expected`, then
    /// that nothing is left by label and by name.
    #[track_caller]
    pub fn finish_as(&mut self, expected: Exit) -> impl std::future::Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            let status = self.close(Duration::from_secs(30)).await;
            let status =
                status.unwrap_or_else(|| panic!("{caller}: the daemon did not exit within 30 s"));
            assert!(
                expected.matches(status),
                "{caller}: the daemon exited with {status}, expected {expected:?}"
            );
            self.assert_left_nothing_at(caller);
            self.finished = true;
        }
    }

    /// No container and no volume carries this daemon's pid label, and none is named as
    /// this daemon names them (the shared download cache carries neither on purpose). Call
    /// it once the daemon has exited, or once its sessions have ended and its pool is off.
    #[track_caller]
    pub fn assert_left_nothing(&self) {
        self.assert_left_nothing_at(std::panic::Location::caller());
    }

    fn assert_left_nothing_at(&self, caller: &std::panic::Location<'_>) {
        let left = self.leftovers();
        assert!(
            left.is_empty(),
            "{caller}: daemon {} left containers {:?} and volumes {:?}",
            self.pid,
            left.containers,
            left.volumes
        );
        let named = named_leftovers(self.pid, self.since);
        assert!(
            named.is_empty(),
            "{caller}: daemon {} left containers {:?} and volumes {:?} named as its own",
            self.pid,
            named.containers,
            named.volumes
        );
    }

    /// Wait for the daemon process to exit (after a signal, say).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Ok(status)) = tokio::time::timeout(within, self.child.wait()).await {
                self.exited = Some(status);
            }
        }
        self.exited
    }

    /// Send a signal (`TERM`, `KILL`, ...) to the daemon with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// Containers and volumes that carry this daemon's pid label right now.
    pub fn leftovers(&self) -> Leftovers {
        leftovers(self.pid)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Let the daemon clean up after itself if it still can (EOF, then SIGTERM), then
        // make sure: SIGKILL, and remove whatever still carries its label.
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            drop(self.client.take());
            let wait = |child: &mut tokio::process::Child, secs: u64| {
                let deadline = Instant::now() + Duration::from_secs(secs);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            };
            wait(&mut self.child, 5);
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(self.pid.to_string())
                    .status();
                wait(&mut self.child, 10);
            }
            let _ = self.child.start_kill();
            let _ = self.child.try_wait();
        }
        let left = if self.finished || std::thread::panicking() {
            Leftovers::default()
        } else {
            leftovers(self.pid)
        };
        remove_leftovers(self.pid);
        let _ = std::fs::remove_dir_all(&self.home);
        unfinished("Daemon", self.pid, self.finished, &left);
    }
}

/// How a test expects a daemon to have exited ([`Daemon::finish_as`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit code 0.
    Success,
    /// This exit code.
    Code(i32),
    /// Killed by this signal (9 for SIGKILL).
    Signal(i32),
}

impl Exit {
    pub fn matches(self, status: ExitStatus) -> bool {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Exit::Success => status.success(),
            Exit::Code(code) => status.code() == Some(code),
            Exit::Signal(signal) => status.signal() == Some(signal),
        }
    }
}

/// The end of every daemon handle's `Drop`, after its clean-up: a handle the test did not
/// finish fails the test, naming what was left (unless the test is already failing: a
/// second panic would abort the run).
pub fn unfinished(what: &str, pid: u32, finished: bool, left: &Leftovers) {
    if finished || std::thread::panicking() {
        return;
    }
    panic!(
        "the test ended without finishing its {what} (pid {pid}): end it with finish(), \
         which checks its exit status and that it left nothing; it had left containers \
         {:?} and volumes {:?} (removed now)",
        left.containers, left.volumes
    );
}

/// How far the daemon's memory may move during one reliability case.
pub const MEMORY_SLACK: u64 = 64 << 20;

/// What a reliability case starts from (see [`Daemon::baseline`]).
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    /// Containers carrying the daemon's pid label.
    pub containers: usize,
    /// Its volumes, without the shared package volume (made on first use, kept until exit).
    pub volumes: usize,
    /// Its resident memory in bytes (`VmRSS`).
    pub rss: u64,
}

/// A `/proc/PID/status` field given in kB, in bytes (0 when the process is gone).
pub fn proc_status_bytes(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Containers and volumes of `pid`, without the shared package volume.
pub fn counted(pid: u32) -> (usize, usize) {
    let packages = volumes_with_role(pid, "packages").len();
    (
        containers_of(pid).len(),
        volumes_of(pid).len().saturating_sub(packages),
    )
}

// ----- raw JSON-RPC over stdio -----

/// The binary spoken to line by line, for traffic rmcp's client will not send (invalid JSON,
/// messages of the wrong shape). Isolated like a [`Daemon`]; dropping it kills the process
/// and removes what carries its label.
pub struct RawDaemon {
    child: tokio::process::Child,
    /// `None` once [`RawDaemon::finish`] closed it.
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    pub pid: u32,
    home: PathBuf,
    /// When it was started (unix seconds), for [`named_leftovers`].
    since: f64,
    /// [`RawDaemon::finish`] ran; without it `Drop` fails the test.
    finished: bool,
}

impl RawDaemon {
    /// Start the daemon and complete the MCP handshake (`initialize`, then
    /// `notifications/initialized`).
    pub async fn start(env: &[(&str, &str)]) -> RawDaemon {
        use tokio::io::AsyncBufReadExt;
        let home = fresh_dir("raw");
        let since = unix_now();
        let mut cmd = tokio::process::Command::new(BIN);
        isolate(&mut cmd, &home, env);
        cmd.arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn python-docker-mcp");
        let pid = child.id().expect("daemon pid");
        let stdin = child.stdin.take().expect("stdin");
        let lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut raw = RawDaemon {
            child,
            stdin: Some(stdin),
            lines,
            pid,
            home,
            since,
            finished: false,
        };
        raw.send_json(&serde_json::json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw-test", "version": "0"}
            }
        }))
        .await;
        let init = raw.response(0, Duration::from_secs(30)).await;
        assert!(init.get("result").is_some(), "initialize: {init}");
        raw.send_json(&serde_json::json!({
            "jsonrpc": "2.0", "method": "notifications/initialized"
        }))
        .await;
        raw
    }

    /// Write one line as is (a newline is added).
    pub async fn send_line(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin.write_all(line.as_bytes()).await.expect("write");
        stdin.write_all(b"\n").await.expect("write");
        stdin.flush().await.expect("flush");
    }

    /// How a test with a raw daemon ends: close its stdin, see it exit with success within
    /// 30 s, and assert that it left nothing, by label and by name.
    #[track_caller]
    pub fn finish(&mut self) -> impl std::future::Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            drop(self.stdin.take());
            let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
                .await
                .unwrap_or_else(|_| panic!("{caller}: the daemon did not exit within 30 s"))
                .expect("wait for the daemon");
            assert!(
                status.success(),
                "{caller}: the daemon exited with {status}"
            );
            let left = leftovers(self.pid);
            assert!(
                left.is_empty(),
                "{caller}: daemon {} left {left:?}",
                self.pid
            );
            let named = named_leftovers(self.pid, self.since);
            assert!(
                named.is_empty(),
                "{caller}: daemon {} left {named:?} named as its own",
                self.pid
            );
            self.finished = true;
        }
    }

    pub async fn send_json(&mut self, message: &Value) {
        self.send_line(&message.to_string()).await;
    }

    /// The next message the daemon writes, or `None` if none comes within `within`.
    pub async fn next_message(&mut self, within: Duration) -> Option<Value> {
        match tokio::time::timeout(within, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => Some(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("the daemon wrote a line that is not JSON ({e})")),
            ),
            Ok(Ok(None)) => panic!("the daemon closed its stdout"),
            Ok(Err(e)) => panic!("reading the daemon's stdout: {e}"),
            Err(_) => None,
        }
    }

    /// The response to request `id`, skipping notifications; a hang is a failure.
    pub async fn response(&mut self, id: u64, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self
                .next_message(left)
                .await
                .unwrap_or_else(|| panic!("no response to request {id} within {within:?}"));
            if message.get("id") == Some(&serde_json::json!(id)) {
                return message;
            }
        }
    }

    /// `tools/call` and its response (a `result` or an `error`).
    pub async fn call_tool(&mut self, id: u64, tool: &str, arguments: Value) -> Value {
        self.send_json(&serde_json::json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}
        }))
        .await;
        self.response(id, CALL_LIMIT).await
    }
}

impl Drop for RawDaemon {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = if self.finished || std::thread::panicking() {
            Leftovers::default()
        } else {
            leftovers(self.pid)
        };
        remove_leftovers(self.pid);
        let _ = std::fs::remove_dir_all(&self.home);
        unfinished("RawDaemon", self.pid, self.finished, &left);
    }
}

// ----- results -----

/// All text content of a result, joined by newlines.
pub fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn is_error(r: &CallToolResult) -> bool {
    r.is_error == Some(true)
}

/// The structured content; every tool publishes an output schema, so it must be there.
pub fn structured(r: &CallToolResult) -> &Value {
    r.structured_content
        .as_ref()
        .unwrap_or_else(|| panic!("result has no structuredContent: {}", text(r)))
}

/// One top-level field of the structured content (`Value::Null` when absent).
pub fn field<'a>(r: &'a CallToolResult, name: &str) -> &'a Value {
    structured(r).get(name).unwrap_or(&Value::Null)
}

pub fn stdout(r: &CallToolResult) -> String {
    field(r, "stdout").as_str().unwrap_or_default().to_string()
}

pub fn stderr(r: &CallToolResult) -> String {
    field(r, "stderr").as_str().unwrap_or_default().to_string()
}

/// The `value` (repr of the last expression), if any.
pub fn value(r: &CallToolResult) -> Option<String> {
    field(r, "value").as_str().map(str::to_string)
}

/// The exception type of a failed execution, if any.
pub fn error_type(r: &CallToolResult) -> Option<String> {
    field(r, "error")
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub fn session_id(r: &CallToolResult) -> String {
    field(r, "session_id")
        .as_str()
        .unwrap_or_else(|| panic!("no session_id in result: {}", text(r)))
        .to_string()
}

/// A short description of a result for assertion messages (long parts are clipped).
pub fn describe(r: &CallToolResult) -> String {
    format!(
        "isError={:?}\ntext:\n{}\nstructured: {}",
        r.is_error,
        clip(&text(r)),
        clip(
            &r.structured_content
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_else(|| "-".into())
        )
    )
}

/// At most about 2 KB of `s`, saying how much was left out.
pub fn clip(s: &str) -> String {
    const KEEP: usize = 2000;
    if s.len() <= KEEP {
        return s.to_string();
    }
    let mut end = KEEP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [{} more bytes]", &s[..end], s.len() - end)
}

/// The call ran to completion without an exception, a time-out or a lost sandbox.
#[track_caller]
pub fn assert_ok(r: &CallToolResult) {
    assert!(!is_error(r), "expected success, got {}", describe(r));
}

/// The call is a tool error (isError true) whose text mentions `needle`.
#[track_caller]
pub fn assert_tool_error(r: &CallToolResult, needle: &str) {
    assert!(is_error(r), "expected isError, got {}", describe(r));
    assert!(
        text(r).contains(needle),
        "expected the error text to mention {needle:?}, got {}",
        describe(r)
    );
}

// ----- docker -----

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    cli_lines("docker", args)
}

/// The non-empty lines an engine's CLI (`docker`, `podman`) prints; it must succeed.
pub fn cli_lines(program: &str, args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run the {program} CLI: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// What carries one daemon's pid (and this host's) label.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.volumes.is_empty()
    }
}

pub fn containers_of(pid: u32) -> Vec<String> {
    let pid_filter = format!("label={PID_LABEL}={pid}");
    let host_filter = format!("label={HOST_LABEL}={}", hostname());
    docker_lines(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &pid_filter,
        "--filter",
        &host_filter,
    ])
}

pub fn volumes_of(pid: u32) -> Vec<String> {
    let pid_filter = format!("label={PID_LABEL}={pid}");
    let host_filter = format!("label={HOST_LABEL}={}", hostname());
    docker_lines(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &pid_filter,
        "--filter",
        &host_filter,
    ])
}

pub fn leftovers(pid: u32) -> Leftovers {
    Leftovers {
        containers: containers_of(pid),
        volumes: volumes_of(pid),
    }
}

/// The instance ids (the `instance` label) of the containers daemon `pid` of this host
/// created since `since` (unix seconds), from the engine's event log: it sees containers
/// that are gone again.
pub fn instances_of(pid: u32, since: f64) -> Vec<String> {
    let since = format!("{:.3}", since - 1.0);
    let until = format!("{:.3}", unix_now());
    let pid_filter = format!("label={PID_LABEL}={pid}");
    let host_filter = format!("label={HOST_LABEL}={}", hostname());
    let mut ids = docker_lines(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        &pid_filter,
        "--filter",
        &host_filter,
        "--format",
        "{{index .Actor.Attributes \"python-docker-mcp.instance\"}}",
    ]);
    ids.sort();
    ids.dedup();
    ids
}

/// Containers and volumes named as daemon `pid` (started at `since`) names them, whatever
/// their labels say: `pdm-<instance>-...` for each instance it ran as, and the durable
/// names that carry its holder (`<host>x<pid>x<start>`). This finds what lost its labels,
/// such as a volume the engine made unlabelled for a mount whose volume was gone.
pub fn named_leftovers(pid: u32, since: f64) -> Leftovers {
    let mut patterns: Vec<String> = instances_of(pid, since)
        .iter()
        .filter(|id| id.len() >= 8)
        .map(|id| format!("^/?pdm-{}-", &id[..8]))
        .collect();
    patterns.push(format!("{}x{pid}x", hostname()));
    let mut left = Leftovers::default();
    for pattern in &patterns {
        let filter = format!("name={pattern}");
        left.containers.extend(docker_lines(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &filter,
        ]));
        left.volumes
            .extend(docker_lines(&["volume", "ls", "-q", "--filter", &filter]));
    }
    left.containers.sort();
    left.containers.dedup();
    left.volumes.sort();
    left.volumes.dedup();
    left
}

/// Containers of `pid` with a given role label.
pub fn containers_with_role(pid: u32, role: &str) -> Vec<String> {
    let pid_filter = format!("label={PID_LABEL}={pid}");
    let role_filter = format!("label=python-docker-mcp.role={role}");
    docker_lines(&[
        "ps",
        "-aq",
        "--filter",
        &pid_filter,
        "--filter",
        &role_filter,
    ])
}

/// Volumes of `pid` with a given role label.
pub fn volumes_with_role(pid: u32, role: &str) -> Vec<String> {
    let pid_filter = format!("label={PID_LABEL}={pid}");
    let role_filter = format!("label=python-docker-mcp.role={role}");
    docker_lines(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &pid_filter,
        "--filter",
        &role_filter,
    ])
}

/// Force-remove everything that carries `pid`'s label (test hygiene only).
/// It runs from `Drop`, so an engine that does not answer is no reason to panic.
pub fn remove_leftovers(pid: u32) {
    let engine_answers = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !engine_answers {
        return;
    }
    let left = leftovers(pid);
    if !left.containers.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&left.containers)
            .output();
    }
    if !left.volumes.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["volume", "rm", "-f"])
            .args(&left.volumes)
            .output();
    }
}

/// Poll `f` every 200 ms until it returns true or `within` passes; returns the last answer.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state is the field after the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Seconds since the epoch, as the docker CLI's `--since`/`--until` take them.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Ids of containers with `role` that `pid`'s daemon created since `since` (unix seconds),
/// from Docker's event log: this sees containers that are already gone again.
pub fn containers_created_since(pid: u32, role: &str, since: f64) -> Vec<String> {
    let since = format!("{:.3}", since - 1.0);
    let until = format!("{:.3}", unix_now());
    let pid_filter = format!("label={PID_LABEL}={pid}");
    let role_filter = format!("label=python-docker-mcp.role={role}");
    docker_lines(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        &pid_filter,
        "--filter",
        &role_filter,
        "--format",
        "{{.ID}}",
    ])
}

/// Docker events (`die`, `kill`, `destroy`, ...) for one container since `since`.
pub fn container_events(id: &str, since: f64) -> Vec<String> {
    let since = format!("{:.3}", since);
    let until = format!("{:.3}", unix_now());
    let id_filter = format!("container={id}");
    docker_lines(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=container",
        "--filter",
        &id_filter,
        "--format",
        "{{.Action}}",
    ])
}
