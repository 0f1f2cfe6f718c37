//! The daemon a bench drives: a python-docker-mcp binary (this crate's release build unless
//! the bench names another) started with a clean environment, no inherited
//! `PYTHON_DOCKER_MCP_*` variables and a `HOME` of its own, so a run measures the defaults
//! plus what the bench sets, never the caller's settings or config file. [`Daemon`] is
//! such a process with an rmcp client on it, over stdio or streamable HTTP.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

/// rmcp's client, as every bench holds it.
pub type Client = RunningService<RoleClient, ()>;

/// How long a bench waits for one tool call before it calls the daemon hung.
pub const CALL_BOUND: Duration = Duration::from_secs(60);

/// This crate's release binary (`cargo build --release`).
pub fn release_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/python-docker-mcp")
}

/// A new empty directory under the temp dir, for one daemon's `HOME`.
pub fn fresh_home(bench: &str) -> std::io::Result<PathBuf> {
    let home = std::env::temp_dir().join(format!(
        "pdm-bench-{bench}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&home)?;
    Ok(home)
}

/// `bin` with no inherited `PYTHON_DOCKER_MCP_*` variable and `HOME` set to `home`.
pub fn std_command(bin: &Path, home: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PYTHON_DOCKER_MCP_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("HOME", home);
    cmd
}

/// [`std_command`] for tokio, killed when dropped.
pub fn command(bin: &Path, home: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::from(std_command(bin, home));
    cmd.kill_on_drop(true);
    cmd
}

/// Initialise an rmcp client on a daemon spawned with piped stdin and stdout.
pub async fn connect_stdio(
    child: &mut tokio::process::Child,
    within: Duration,
) -> anyhow::Result<Client> {
    let stdout = child.stdout.take().context("the daemon's stdout")?;
    let stdin = child.stdin.take().context("the daemon's stdin")?;
    tokio::time::timeout(within, ().serve((stdout, stdin)))
        .await
        .context("no initialize answer")?
        .context("MCP initialize")
}

/// Initialise an rmcp streamable HTTP client on `url` (`http://HOST:PORT/mcp`), with a
/// bearer token when one is given.
pub async fn connect_http(
    url: &str,
    token: Option<&str>,
    within: Duration,
) -> anyhow::Result<Client> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_string());
    if let Some(token) = token {
        config = config.auth_header(token.to_string());
    }
    let transport = StreamableHttpClientTransport::from_config(config);
    tokio::time::timeout(within, ().serve(transport))
        .await
        .context("no initialize answer")?
        .context("MCP initialize over HTTP")
}

/// One daemon process and the rmcp client connected to it.
pub struct Daemon {
    pub child: tokio::process::Child,
    pub client: Client,
}

impl Daemon {
    /// `cmd serve` over stdio (stderr as `cmd` has it), with a client on it.
    pub async fn stdio(mut cmd: tokio::process::Command) -> anyhow::Result<Daemon> {
        cmd.arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().context("spawning the daemon")?;
        let client = connect_stdio(&mut child, CALL_BOUND).await?;
        Ok(Daemon { child, client })
    }

    /// `cmd serve --http 127.0.0.1:0` (log level info, since the bound URL is logged
    /// there), with a client on the URL read from its stderr; the rest of its stderr is
    /// read and dropped.
    pub async fn http(mut cmd: tokio::process::Command) -> anyhow::Result<Daemon> {
        cmd.args(["serve", "--http", "127.0.0.1:0"])
            .env("PYTHON_DOCKER_MCP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawning the daemon")?;
        let stderr = child.stderr.take().context("the daemon's stderr")?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let url = loop {
            let line = lines.next_line().await?.context("the daemon exited")?;
            if let Some(rest) = line.split("url=").nth(1) {
                break rest.split_whitespace().next().unwrap_or("").to_string();
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let client = connect_http(&url, None, CALL_BOUND).await?;
        Ok(Daemon { child, client })
    }

    /// The daemon's pid (0 once it was reaped).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// One tool call, bounded by [`CALL_BOUND`]; an `isError` result is an error.
    pub async fn call_ok(&self, tool: &str, arguments: Value) -> anyhow::Result<CallToolResult> {
        let params = CallToolRequestParams::new(tool.to_string())
            .with_arguments(arguments.as_object().cloned().unwrap_or_default());
        let r = tokio::time::timeout(CALL_BOUND, self.client.call_tool(params))
            .await
            .with_context(|| format!("a call took over {} s", CALL_BOUND.as_secs()))??;
        if r.is_error == Some(true) {
            bail!("the call failed: {:?}", r.content);
        }
        Ok(r)
    }

    /// Send `signal` (`TERM`, `KILL`, ...) and wait up to `within` for the exit.
    pub async fn signal_and_wait(&mut self, signal: &str, within: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(within, self.child.wait()).await;
    }
}
