//! The `python-docker-mcp` binary: CLI, tracing to stderr, config, serve until shutdown.
//!
//! Shutdown, in both transports: the first SIGTERM or SIGINT stops accepting (HTTP: new
//! MCP sessions get 503) and drains the engine (no new calls; running ones may finish within
//! `server.drain_timeout`; a second signal, or over stdio the client leaving, cuts it
//! short). Then the engine shuts down (interrupting what is left, removing every container
//! and volume), and last the transport closes once the answers have gone out. A client
//! that closes stdin is gone: no drain, straight to shutdown.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use python_docker_mcp::config::{self, Config, Layers};
use python_docker_mcp::stdio::Stdio;
use python_docker_mcp::{demo, doctor, http, image, Engine, Server};
use rmcp::ServiceExt;
use tokio::signal::unix::{signal, Signal, SignalKind};

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
    /// Check that this host can serve: Docker, the image, and in one sandbox started with
    /// the configured limits: the helper answers, no network, non-root, the installer
    /// works; with --http, that the address can be bound. Exits non-zero if a check fails.
    Doctor {
        /// Also check that this address can be bound, e.g. 127.0.0.1:8002 (server.http).
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
    /// List what python-docker-mcp left running on this engine (durable sessions, warm
    /// sandboxes) with owner, role and expiry; then remove what daemons that are gone
    /// left behind and sessions past their expiry, and print how many.
    Cleanup {
        /// Count them without removing anything.
        #[arg(long)]
        dry_run: bool,
        /// Remove everything any daemon of this host made, now: durable sessions too.
        #[arg(long)]
        all: bool,
    },
    /// Start this server as a child, drive it with a real MCP client, print what happens.
    /// Builds the sandbox image first if it is missing.
    Demo {
        /// Base for that build (as `image build --base`), for a machine that cannot pull
        /// the default.
        #[arg(long, value_name = "IMAGE", default_value = image::DEFAULT_BASE)]
        base: String,
    },
    /// The sandbox image.
    Image {
        #[command(subcommand)]
        action: ImageAction,
    },
    /// The egress proxy, run by the daemon inside its proxy container: serves sandboxes on
    /// the Unix socket PATH, takes control messages on stdin, writes events to stdout, and
    /// ends when stdin closes.
    #[command(hide = true)]
    EgressProxy {
        /// The Unix socket to listen on (a stale file there is replaced).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImageAction {
    /// Build the sandbox image through the Docker engine, from the Dockerfile embedded in
    /// this binary (nothing from the repository is needed). Shows the build's progress.
    Build {
        /// Base image with python3 (the Dockerfile's BASE_IMAGE). On a machine that cannot
        /// pull the default, name a local one, e.g. python-docker-mcp-base:bookworm.
        #[arg(long, value_name = "IMAGE", default_value = image::DEFAULT_BASE)]
        base: String,
        /// Tag to give the image (default: the configured docker.image; with --browser,
        /// python-docker-mcp:browser).
        #[arg(long, value_name = "TAG")]
        tag: Option<String>,
        /// Build the browser image instead: the sandbox image (docker.image, built first
        /// if missing) plus Debian's Chromium, a font set and Playwright for Python, with
        /// no browser download. Use it through a profile, e.g. `profiles: {browser:
        /// {image: python-docker-mcp:browser, memory_limit: 1g, shm_size: 256m}}`.
        #[arg(long)]
        browser: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    // The proxy container has no config file and needs none.
    if let Some(Command::EgressProxy { socket }) = &cli.command {
        return egress_proxy(socket);
    }
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
    let command = cli.command.unwrap_or(Command::Serve { http: None });
    let result = runtime.block_on(dispatch(command, config, http, demo_args));
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

/// Tracing to stderr (stdout is the MCP channel), filtered by `PYTHON_DOCKER_MCP_LOG`.
fn init_tracing(cli: &Cli) {
    // The demo prints its own story on stdout; its log stays quiet unless asked.
    let default_log = if matches!(cli.command, Some(Command::Demo { .. })) {
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
}

/// Run one subcommand with the loaded configuration (and, for `serve`, the HTTP plan).
async fn dispatch(
    command: Command,
    config: Config,
    http: Option<http::Plan>,
    demo_args: Vec<OsString>,
) -> anyhow::Result<()> {
    match command {
        Command::Serve { .. } => serve(config, http).await,
        Command::Config { .. } => {
            print!("{}", config.describe());
            Ok(())
        }
        Command::Doctor { .. } => match doctor::run(config).await {
            failed if failed.is_empty() => Ok(()),
            failed => Err(anyhow::anyhow!(
                "{} check(s) failed (each FAIL line on stdout says how to fix it):\n{}",
                failed.len(),
                failed.join("\n")
            )),
        },
        Command::Cleanup { dry_run, all } => cleanup(config, dry_run, all).await,
        Command::Demo { base } => demo::run(&config, &base, demo_args).await,
        Command::Image {
            action: ImageAction::Build { base, tag, browser },
        } => {
            let sandbox = config.docker.image.clone();
            match browser {
                false => build_image(&base, &tag.unwrap_or(sandbox)).await,
                true => {
                    let tag = tag.unwrap_or_else(|| image::BROWSER_TAG.into());
                    build_browser_image(&base, &sandbox, &tag).await
                }
            }
        }
        Command::EgressProxy { .. } => unreachable!("handled before the config is loaded"),
    }
}

/// `egress-proxy --socket PATH`: serve until stdin closes or a signal arrives, then remove
/// the socket.
fn egress_proxy(socket: &std::path::Path) -> ExitCode {
    use python_docker_mcp::egress::proxy;
    // Few threads, whatever the host's core count: the container has a small pids limit.
    // Name resolution runs on the blocking pool (its time-out includes the wait for one).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(proxy::BLOCKING_THREADS)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        let listener = proxy::bind(socket)?;
        tracing::info!(socket = %socket.display(), "egress proxy listening");
        // As PID 1 of its container, SIGTERM would otherwise be ignored.
        let shutdown = tokio_util::sync::CancellationToken::new();
        match Signals::new() {
            Ok(mut signals) => {
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    let signal = signals.next().await;
                    tracing::info!(%signal, "egress proxy stopping");
                    stop.cancel();
                });
            }
            Err(e) => tracing::warn!(error = %e, "egress proxy: signals are not caught"),
        }
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        proxy::serve(listener, stdin, tokio::io::stdout(), shutdown).await
    });
    let _ = std::fs::remove_file(socket);
    // stdin is read on a blocking thread that a signal does not end.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("python-docker-mcp egress-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `image build --browser`: the sandbox image `sandbox` first if it is missing (on
/// `base`), then the browser layer on it as `tag`.
async fn build_browser_image(base: &str, sandbox: &str, tag: &str) -> anyhow::Result<()> {
    let docker = python_docker_mcp::runtime::docker::Docker::new();
    if !docker.image_present(sandbox).await? {
        eprintln!("python-docker-mcp: the sandbox image {sandbox} is missing; building it on {base} first");
        image::build(&docker, base, sandbox, |line| eprintln!("  {line}")).await?;
    }
    let started = std::time::Instant::now();
    eprintln!("python-docker-mcp: building {tag} on {sandbox} (Chromium, fonts, Playwright; no browser download)");
    image::build_browser(&docker, sandbox, tag, |line| eprintln!("  {line}")).await?;
    eprintln!(
        "python-docker-mcp: {tag} is ready ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    docker.close();
    Ok(())
}

/// `image build`: build `tag` on `base`, the engine's lines on stderr.
async fn build_image(base: &str, tag: &str) -> anyhow::Result<()> {
    let docker = python_docker_mcp::runtime::docker::Docker::new();
    eprintln!("python-docker-mcp: building {tag} on {base}");
    image::build(&docker, base, tag, |line| eprintln!("  {line}")).await?;
    eprintln!("python-docker-mcp: {tag} is ready");
    docker.close();
    Ok(())
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
    })
    | Some(Command::Doctor {
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
    // Signals are caught from the start, so a SIGTERM during start-up still cleans up.
    let mut signals = Signals::new()?;
    let listener = match &http {
        Some(plan) => Some(http::bind(plan).await?),
        None => None,
    };
    let several = http.as_ref().is_some_and(http::Plan::several_clients);
    let drain_timeout = config.server.drain_timeout;
    let engine = Engine::for_clients(config, several);
    let transport = if http.is_some() { "HTTP" } else { "stdio" };
    tracing::info!(instance = %engine.instance(), sandbox = %engine.describe_sandbox(), "python-docker-mcp starting on {transport}");
    // Tell the operator early if Docker or the image is missing; never block start-up on it.
    let probe = engine.clone();
    let probe = tokio::spawn(async move {
        match probe.backend().engine().await {
            Ok(v) => {
                if let Err(e) = probe.reap_orphans().await {
                    tracing::warn!(error = %e, "could not look for containers of earlier daemons");
                }
                match probe
                    .backend()
                    .image_present(&probe.config().docker.image)
                    .await
                {
                    Ok(true) => tracing::info!(engine = %v, "the container engine is ready"),
                    Ok(false) => tracing::warn!(
                        "{}",
                        python_docker_mcp::runtime::RuntimeError::ImageMissing {
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
    let outcome = match (http, listener) {
        (Some(plan), Some(listener)) => {
            serve_http(&engine, plan, listener, &mut signals, drain_timeout).await
        }
        _ => serve_stdio(&engine, &mut signals, drain_timeout).await,
    };
    probe.abort();
    engine.backend().close();
    outcome
}

/// Serve streamable HTTP until a signal, then drain, shut the engine down, and close.
async fn serve_http(
    engine: &Engine,
    plan: http::Plan,
    listener: tokio::net::TcpListener,
    signals: &mut Signals,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let mut serving = match http::start(engine.clone(), plan, listener).await {
        Ok(serving) => serving,
        Err(e) => {
            engine.shutdown(SHUTDOWN_GRACE).await;
            return Err(e);
        }
    };
    tokio::select! {
        failed = serving.failed() => {
            engine.shutdown(SHUTDOWN_GRACE).await;
            return failed;
        }
        signal = signals.next() => {
            serving.drain();
            tracing::info!(%signal, "shutting down: draining (existing MCP sessions are served, new ones get 503)");
        }
    }
    engine
        .drain(drain_timeout, async {
            format!("a second signal ({}) arrived", signals.next().await)
        })
        .await;
    engine.shutdown(SHUTDOWN_GRACE).await;
    serving.close().await;
    Ok(())
}

/// Serve stdio until the client closes stdin (shut down at once: the client is gone) or
/// a signal (drain first, then shut down).
async fn serve_stdio(
    engine: &Engine,
    signals: &mut Signals,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    // The handshake waits for the client; a signal meanwhile shuts down at once.
    let service = tokio::select! {
        service = Server::new(engine.clone()).serve(Stdio::new(python_docker_mcp::files::message_limit(engine.config()), engine.arrivals())) => match service {
            Ok(service) => service,
            Err(e) => {
                engine.shutdown(SHUTDOWN_GRACE).await;
                return Err(e.into());
            }
        },
        signal = signals.next() => {
            tracing::info!(%signal, "shutting down");
            engine.shutdown(SHUTDOWN_GRACE).await;
            return Ok(());
        }
    };
    let stop = service.cancellation_token();
    let mut running = std::pin::pin!(service.waiting());
    let mut ended = false;
    tokio::select! {
        r = &mut running => {
            tracing::info!("client disconnected");
            engine.shutdown(SHUTDOWN_GRACE).await;
            r?;
            return Ok(());
        }
        signal = signals.next() => tracing::info!(%signal, "shutting down"),
    }
    engine
        .drain(drain_timeout, async {
            tokio::select! {
                signal = signals.next() => format!("a second signal ({signal}) arrived"),
                _ = &mut running => {
                    ended = true;
                    "the client disconnected".to_string()
                }
            }
        })
        .await;
    engine.shutdown(SHUTDOWN_GRACE).await;
    // Answers already made are sent before the service stops (rmcp drains them).
    stop.cancel();
    if !ended
        && tokio::time::timeout(Duration::from_secs(3), &mut running)
            .await
            .is_err()
    {
        tracing::warn!("the MCP service did not stop within 3 s");
    }
    Ok(())
}

/// SIGTERM and SIGINT, caught for the whole life of the daemon: the first starts the
/// shutdown, the second cuts its drain short.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// `cleanup [--dry-run] [--all]`: what is left, then the orphans of daemons on this host
/// that are gone and sessions past their expiry (with `--all`, everything of this host).
async fn cleanup(config: Config, dry_run: bool, all: bool) -> anyhow::Result<()> {
    let engine = Engine::new(config);
    let listed = engine.inventory().await;
    let swept = match listed {
        Ok(left) => {
            if left.is_empty() {
                println!("nothing of python-docker-mcp is running on this engine");
            }
            for line in left {
                println!("{line}");
            }
            engine.sweep(dry_run, all).await
        }
        Err(e) => Err(e),
    };
    engine.backend().close();
    let swept = swept?;
    let counts = format!("{} containers, {} volumes", swept.containers, swept.volumes);
    if dry_run {
        println!("would remove: {counts} (dry run: nothing was removed)");
    } else {
        println!("removed: {counts}");
    }
    Ok(())
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
