//! The `python-docker-mcp` binary: CLI, tracing to stderr, config, serve until shutdown.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use python_docker_mcp::config::{self, Config, Layers};
use python_docker_mcp::{demo, Engine, Server};
use rmcp::ServiceExt;

/// How long shutdown may spend removing containers.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

#[derive(Parser)]
#[command(
    name = "python-docker-mcp",
    version,
    about = "MCP server: sandboxed Python in Docker for AI agents"
)]
struct Cli {
    /// Config file (default: $PYTHON_DOCKER_MCP_CONFIG, then ~/.python-docker-mcp/config.yaml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Sandbox image (docker.image).
    #[arg(long, global = true)]
    image: Option<String>,
    /// Execution time-out, e.g. 30s (docker.timeout).
    #[arg(long, global = true)]
    timeout: Option<String>,
    /// Memory limit per sandbox, e.g. 512m (docker.memory_limit).
    #[arg(long, global = true)]
    memory_limit: Option<String>,
    /// Set any setting: --set docker.cpu_limit=1 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP over stdin/stdout (the default).
    Serve,
    /// Print the effective configuration and where each value came from.
    Config {
        /// Print a config file with every key and its default instead.
        #[arg(long)]
        example: bool,
    },
    /// Check that Docker answers and the sandbox image is present.
    Doctor,
    /// Start this server as a child, drive it with a real MCP client, print what happens.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story on stdout; its log stays quiet unless asked.
    let default_log = if matches!(cli.command, Some(Command::Demo)) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PYTHON_DOCKER_MCP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .init();

    if let Some(Command::Config { example: true }) = cli.command {
        print!("{}", Config::example_yaml());
        return ExitCode::SUCCESS;
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("python-docker-mcp: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Config { .. } => {
                print!("{}", config.describe());
                Ok(())
            }
            Command::Doctor => doctor(config).await,
            Command::Demo => {
                demo::run(
                    std::env::args_os()
                        .skip(1)
                        .filter(|a| a != "demo")
                        .collect(),
                )
                .await
            }
        }
    });
    // stdin is read on a blocking thread that cannot be cancelled; after a signal it may
    // still be waiting for a client that never closes it. Do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("python-docker-mcp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, config::ConfigError> {
    let mut layers = Layers::from_process(cli.config.as_deref())?;
    let named = [
        ("docker.image", "--image", &cli.image),
        ("docker.timeout", "--timeout", &cli.timeout),
        ("docker.memory_limit", "--memory-limit", &cli.memory_limit),
    ];
    for (key, flag, value) in named {
        if let Some(v) = value {
            layers.flags.push((key.into(), v.clone(), flag.into()));
        }
    }
    for kv in &cli.set {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        layers
            .flags
            .push((k.trim().into(), v.trim().into(), format!("--set {k}")));
    }
    config::resolve(&layers)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let engine = Engine::new(config);
    tracing::info!(instance = %engine.instance(), sandbox = %engine.describe_sandbox(), "python-docker-mcp starting on stdio");
    // Tell the operator early if Docker or the image is missing; never block start-up on it.
    let probe = engine.clone();
    let probe = tokio::spawn(async move {
        match probe.docker().ping().await {
            Ok(v) => {
                if let Err(e) = probe.reap_orphans().await {
                    tracing::warn!(error = %e, "could not look for containers of earlier daemons");
                }
                match probe
                    .docker()
                    .image_present(&probe.config().docker.image)
                    .await
                {
                    Ok(true) => tracing::info!(engine = %v, "Docker is ready"),
                    Ok(false) => tracing::warn!(
                        "{}",
                        python_docker_mcp::docker::DockerError::ImageMissing {
                            image: probe.config().docker.image.clone()
                        }
                    ),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
    });

    // Warm the pool in the background; `initialize` never waits for it.
    engine.start();
    let server = Server::new(engine.clone());
    let running = async {
        let service = server.serve(rmcp::transport::stdio()).await?;
        service.waiting().await?;
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        r = running => {
            tracing::info!("client disconnected");
            r
        }
        signal = shutdown_signal() => {
            tracing::info!(%signal, "shutting down");
            Ok(())
        }
    };
    probe.abort();
    engine.shutdown(SHUTDOWN_GRACE).await;
    outcome
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

async fn doctor(config: Config) -> anyhow::Result<()> {
    let engine = Engine::new(config);
    let version = engine.docker().ping().await?;
    println!("Docker engine {version} answers");
    let image = &engine.config().docker.image;
    if engine.docker().image_present(image).await? {
        println!("image {image} is present");
        println!("sandboxes: {}", engine.describe_sandbox());
        Ok(())
    } else {
        Err(python_docker_mcp::docker::DockerError::ImageMissing {
            image: image.clone(),
        }
        .into())
    }
}
