//! The HTTP daemon for end-to-end tests: the real binary serving streamable HTTP on a port
//! of its choosing, its log, rmcp clients with bearer tokens, a raw HTTP client, and a venv
//! with the official MCP Python SDK.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use super::{fresh_dir, remove_leftovers, unix_now, BIN, CALL_LIMIT};

pub const ALICE: &str = "alice-token-0123456789abcdef";
pub const BOB: &str = "bob-token-0123456789abcdef00";

/// A tokens file for alice and bob, with a comment and a blank line.
pub fn tokens_file() -> PathBuf {
    let path = fresh_dir("tokens").join("tokens");
    std::fs::write(
        &path,
        format!("# the team\nalice {ALICE}\n\nbob {BOB}  # laptop\n"),
    )
    .expect("write the tokens file");
    path
}

/// A daemon serving HTTP on a port of its choosing, which it logs; its log is kept.
pub struct HttpDaemon {
    pub child: tokio::process::Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub log: Arc<Mutex<String>>,
    pub home: PathBuf,
    /// When it was started (unix seconds), for [`super::named_leftovers`].
    since: f64,
    /// [`HttpDaemon::finish`] ran: `Drop` only cleans up. Without it, `Drop` fails the test.
    finished: bool,
}

/// The command, isolated like the stdio tests' daemons: a fresh HOME, none of the
/// developer's settings, the pool off unless the test turns it on.
pub fn command(home: &Path, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("PYTHON_DOCKER_MCP_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("HOME", home)
        .env("PYTHON_DOCKER_MCP_LOG", "info")
        .env("PYTHON_DOCKER_MCP_POOL_ENABLED", "false")
        .env("PYTHON_DOCKER_MCP_SESSION_DURABLE", "false");
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
    pub async fn start(env: &[(&str, &str)]) -> HttpDaemon {
        let home = fresh_dir("http-home");
        let since = unix_now();
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
            since,
            finished: false,
        }
    }

    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// An rmcp client over streamable HTTP, with this bearer token (or none).
    pub async fn connect(&self, token: Option<&str>) -> RunningService<RoleClient, ClientConfig> {
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

    /// Stop with SIGTERM and wait for the exit status (the test still ends with
    /// [`HttpDaemon::finish`]).
    pub async fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.pid, "TERM");
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// How every test with an HTTP daemon ends: SIGTERM (unless it has exited already),
    /// the exit within 30 s with success, and nothing left behind by label or by name.
    #[track_caller]
    pub fn finish(&mut self) -> impl std::future::Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            let status = self
                .stop()
                .await
                .unwrap_or_else(|| panic!("{caller}: the daemon did not exit within 30 s"));
            assert!(
                status.success(),
                "{caller}: the daemon exited with {status}; its log:\n{}",
                self.log()
            );
            let left = super::leftovers(self.pid);
            assert!(
                left.is_empty(),
                "{caller}: the HTTP daemon {} left containers or volumes behind: {left:?}",
                self.pid
            );
            let named = super::named_leftovers(self.pid, self.since);
            assert!(
                named.is_empty(),
                "{caller}: the HTTP daemon {} left containers or volumes named as its own: \
                 {named:?}",
                self.pid
            );
            self.finished = true;
        }
    }
}

/// A test that did not [`HttpDaemon::finish`] its daemon fails here, after the clean-up:
/// SIGTERM, SIGKILL after 10 s, and removal of whatever carries its pid label.
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
        let left = if self.finished || std::thread::panicking() {
            super::Leftovers::default()
        } else {
            super::leftovers(self.pid)
        };
        remove_leftovers(self.pid);
        let _ = std::fs::remove_dir_all(&self.home);
        super::unfinished("HttpDaemon", self.pid, self.finished, &left);
    }
}

pub fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

pub async fn call(
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
pub async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
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

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// An `initialize` request body, as a client's first POST.
pub fn initialize() -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}
        }
    })
}

/// A venv with the official MCP Python SDK, under the target dir; installed only when
/// missing (`pip install mcp` into a CPython 3.11 venv).
pub fn python_sdk() -> PathBuf {
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
