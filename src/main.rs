//! The `python-docker-mcp` binary: CLI, tracing to stderr, config, serve until shutdown.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use python_docker_mcp::config::{self, Config, Layers};
use python_docker_mcp::docker::Docker;
use python_docker_mcp::repl::Repl;
use python_docker_mcp::sandbox::{self, Owner, Role};
use python_docker_mcp::{demo, http, Engine, Server};
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
    /// Serve MCP over stdin/stdout (the default), or over streamable HTTP with --http.
    Serve {
        /// Serve streamable HTTP at this address instead of stdio, e.g. 127.0.0.1:8002
        /// (server.http). Off loopback it needs server.tokens_file.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
    /// Print the effective configuration and where each value came from.
    Config {
        /// Print a config file with every key and its default instead.
        #[arg(long)]
        example: bool,
    },
    /// Check that Docker answers, the sandbox image is present and a sandbox starts.
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
    // Who may call over HTTP is decided before anything binds or starts.
    let http = match cli.command {
        None | Some(Command::Serve { .. }) => match http::plan(&config.server) {
            Ok(plan) => plan,
            Err(e) => {
                eprintln!("python-docker-mcp: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    // The demo's child server gets the same settings: the global options, re-serialised.
    let demo_args = global_args(&cli);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve { http: None }) {
            Command::Serve { .. } => serve(config, http).await,
            Command::Config { .. } => {
                print!("{}", config.describe());
                Ok(())
            }
            Command::Doctor => doctor(config).await,
            Command::Demo => demo::run(demo_args).await,
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

/// The global options as parsed, as command-line arguments again (without the
/// subcommand): what the demo passes to the server it starts.
fn global_args(cli: &Cli) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    if let Some(path) = &cli.config {
        out.extend(["--config".into(), path.into()]);
    }
    let named = [
        ("--image", &cli.image),
        ("--timeout", &cli.timeout),
        ("--memory-limit", &cli.memory_limit),
    ];
    for (flag, value) in named {
        if let Some(v) = value {
            out.extend([flag.into(), v.into()]);
        }
    }
    for kv in &cli.set {
        out.extend(["--set".into(), kv.into()]);
    }
    out
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
    if let Some(Command::Serve {
        http: Some(addr), ..
    }) = &cli.command
    {
        layers
            .flags
            .push(("server.http".into(), addr.clone(), "--http".into()));
    }
    config::resolve(&layers)
}

async fn serve(config: Config, http: Option<http::Plan>) -> anyhow::Result<()> {
    let listener = match &http {
        Some(plan) => Some(http::bind(plan).await?),
        None => None,
    };
    let several = http.as_ref().is_some_and(http::Plan::several_clients);
    let engine = Engine::for_clients(config, several);
    let transport = if http.is_some() { "HTTP" } else { "stdio" };
    tracing::info!(instance = %engine.instance(), sandbox = %engine.describe_sandbox(), "python-docker-mcp starting on {transport}");
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
    if let (Some(plan), Some(listener)) = (http, listener) {
        let outcome = http::serve(engine.clone(), plan, listener, shutdown_signal()).await;
        probe.abort();
        engine.shutdown(SHUTDOWN_GRACE).await;
        engine.docker().close();
        return outcome;
    }
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
    engine.docker().close();
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
    let docker = engine.docker();
    let version = docker.ping().await?;
    println!("Docker engine {version} answers");
    let image = &engine.config().docker.image;
    if !docker.image_present(image).await? {
        return Err(python_docker_mcp::docker::DockerError::ImageMissing {
            image: image.clone(),
        }
        .into());
    }
    println!("image {image} is present");
    println!("sandboxes: {}", engine.describe_sandbox());
    let result = start_one_sandbox(docker, engine.config()).await;
    docker.close();
    match result {
        Ok(took) => {
            println!("a sandbox starts and answers in {} ms", took.as_millis());
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("a sandbox does not start: {e}")),
    }
}

/// Start one real sandbox exactly as the pool does (same spec, same volumes), ping its
/// helper, and remove everything again. Returns how long start and answer took.
async fn start_one_sandbox(docker: &Docker, config: &Config) -> anyhow::Result<Duration> {
    let owner = Owner::new();
    let shared = owner.shared_volume();
    let name = owner.name(Role::Sandbox);
    let own = format!("{name}-packages");
    let spec = sandbox::repl_spec(config, &owner, name, &shared, &own);
    println!("log driver of every container: {}", spec.log_driver);
    let started = Instant::now();
    let outcome = async {
        docker
            .create_volume(&shared, &owner.labels(Role::Packages, None))
            .await?;
        docker
            .create_volume(&own, &owner.labels(Role::Sandbox, None))
            .await?;
        let mut repl = Repl::start(docker, &spec).await?;
        let answered = repl.ping(Duration::from_secs(5)).await;
        let took = started.elapsed();
        repl.kill().await;
        if answered {
            Ok(took)
        } else {
            Err(anyhow::anyhow!(
                "the helper started but did not answer a ping within 5 s"
            ))
        }
    }
    .await;
    if let Err(e) = docker.remove_instance(&owner.instance).await {
        eprintln!("python-docker-mcp: could not remove the doctor's sandbox: {e}");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_args_of(argv: &[&str]) -> Vec<String> {
        let cli = Cli::try_parse_from(argv).expect("parses");
        global_args(&cli)
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect()
    }

    #[test]
    fn the_demo_keeps_an_option_whose_value_is_demo() {
        assert_eq!(
            demo_args_of(&["python-docker-mcp", "--image", "demo", "demo"]),
            ["--image", "demo"]
        );
        assert_eq!(
            demo_args_of(&[
                "python-docker-mcp",
                "demo",
                "--image=demo",
                "--set",
                "a=demo"
            ]),
            ["--image", "demo", "--set", "a=demo"]
        );
    }

    #[test]
    fn every_global_option_reaches_the_demo() {
        assert_eq!(
            demo_args_of(&[
                "python-docker-mcp",
                "--config",
                "/c.yaml",
                "--timeout",
                "5s",
                "demo",
                "--memory-limit",
                "512m",
                "--set",
                "docker.cpu_limit=1",
                "--set",
                "docker.pool_size=2",
            ]),
            [
                "--config",
                "/c.yaml",
                "--timeout",
                "5s",
                "--memory-limit",
                "512m",
                "--set",
                "docker.cpu_limit=1",
                "--set",
                "docker.pool_size=2",
            ]
        );
        assert!(demo_args_of(&["python-docker-mcp", "demo"]).is_empty());
    }
}
