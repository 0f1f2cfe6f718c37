//! `python-docker-mcp demo`: start this binary as an MCP server over stdio, talk to it
//! with rmcp's client exactly as an agent would, and print each call and its answer.

use std::ffi::OsString;
use std::time::Instant;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};

use crate::runtime::docker::Docker;
use crate::{image, Config};

type Client = RunningService<RoleClient, ()>;

/// Build `tag` on `base` (as `python-docker-mcp image build` does) if the engine lacks it.
/// An engine that cannot be asked is left to the server, whose calls say what is wrong.
async fn ensure_image(tag: &str, base: &str) -> anyhow::Result<()> {
    let docker = Docker::new();
    if docker.image_present(tag).await.unwrap_or(true) {
        return Ok(());
    }
    println!(
        "the sandbox image {tag} is missing; building it (`python-docker-mcp image build`), \
         progress on stderr"
    );
    let started = Instant::now();
    image::build(&docker, base, tag, |line| eprintln!("  {line}")).await?;
    docker.close();
    println!("built {tag} in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn call(
    client: &Client,
    tool: &'static str,
    args: serde_json::Value,
) -> anyhow::Result<CallToolResult> {
    println!("\n>>> {tool} {args}");
    let started = Instant::now();
    let params = CallToolRequestParams::new(tool)
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    let result = client.call_tool(params).await?;
    let text: Vec<String> = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    let flag = if result.is_error == Some(true) {
        " (isError)"
    } else {
        ""
    };
    println!(
        "<<< {:.0} ms{flag}\n{}",
        started.elapsed().as_secs_f64() * 1000.0,
        text.join("\n")
    );
    Ok(result)
}

/// Run the demo; `server_args` are passed to the child server (e.g. `--config`). When the
/// configured image is missing, it is built first on `base`, as `image build` does.
pub async fn run(config: &Config, base: &str, server_args: Vec<OsString>) -> anyhow::Result<()> {
    ensure_image(&config.docker.image, base).await?;
    let started = Instant::now();
    let client = connect(server_args, started).await?;
    tour(&client).await?;
    client.cancel().await?;
    println!(
        "\ndemo finished in {:.1} s; the server removed its containers on exit",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Spawn this binary as the server, connect, and print who answered and its tools.
async fn connect(server_args: Vec<OsString>, started: Instant) -> anyhow::Result<Client> {
    let exe = std::env::current_exe()?;
    let transport = TokioChildProcess::new(tokio::process::Command::new(exe).configure(|cmd| {
        cmd.args(&server_args).arg("serve");
        // The server's own log goes to this terminal's stderr; keep it to warnings.
        if std::env::var_os("PYTHON_DOCKER_MCP_LOG").is_none() {
            cmd.env("PYTHON_DOCKER_MCP_LOG", "warn");
        }
    }))?;
    let client = ().serve(transport).await?;
    let info = client.peer_info().and_then(|i| {
        i.server_info
            .as_ref()
            .map(|s| format!("{} {}", s.name, s.version))
    });
    println!(
        "connected to {} in {:.0} ms",
        info.unwrap_or_default(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    let tools = client.list_all_tools().await?;
    println!(
        "tools: {}",
        tools
            .iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(client)
}

/// The calls an agent would make: a transient run with state, a session that keeps its
/// variables, an exception, no network, an install, the session's end.
async fn tour(client: &Client) -> anyhow::Result<()> {
    call(client, "execute-transient", serde_json::json!({"code": "import sys\ntotal = sum(range(n))\nprint(f'Python {sys.version.split()[0]}: sum of range({n}) = {total}')", "state": {"n": 10}})).await?;
    let first = call(client, "execute-persistent", serde_json::json!({"code": "import math\nradius = 2\narea = math.pi * radius ** 2\nprint(f'area = {area:.3f}')"})).await?;
    let session = first
        .structured_content
        .as_ref()
        .and_then(|s| s.get("session_id"))
        .and_then(|s| s.as_str())
        .ok_or_else(|| anyhow::anyhow!("execute-persistent returned no session_id"))?
        .to_string();
    call(client, "execute-persistent", serde_json::json!({"code": "print('still here:', radius, round(area, 3))\narea * 2", "session_id": session})).await?;
    call(
        client,
        "execute-persistent",
        serde_json::json!({"code": "1 / 0", "session_id": session}),
    )
    .await?;
    // 192.0.2.1 is TEST-NET-1 (RFC 5737): an address, so no name lookup is involved; without
    // a network the connect fails at once with "Network is unreachable".
    call(client, "execute-transient", serde_json::json!({"code": "import socket\nsocket.create_connection(('192.0.2.1', 443), timeout=3)"})).await?;
    let install = call(
        client,
        "install-package",
        serde_json::json!({"package_name": "tomli-w", "session_id": session}),
    )
    .await?;
    if install.is_error != Some(true) {
        call(
            client,
            "execute-persistent",
            serde_json::json!({"code": "import tomli_w\nprint(tomli_w.dumps({\"radius\": radius, \"area\": round(area, 3)}))", "session_id": session}),
        )
        .await?;
    }
    call(
        client,
        "cleanup-session",
        serde_json::json!({"session_id": session}),
    )
    .await?;
    call(
        client,
        "execute-persistent",
        serde_json::json!({"code": "radius", "session_id": session}),
    )
    .await?;
    Ok(())
}
