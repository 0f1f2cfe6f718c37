//! `python-docker-mcp doctor`: can this host serve? Each check prints a verdict and, when
//! it fails, the fix.
//!
//! The engine must answer and the image must be there; then the engine starts one sandbox
//! exactly as its pool starts one (`Engine::probe_sandbox`: same spec, limits and
//! volumes; the doctor assembles nothing itself), and the doctor checks that its helper
//! answers, that it has no network (unless `docker.network_disabled` is off), that it runs
//! as non-root, and that the installer container runs pip and reaches the package index.
//! With an HTTP address (`--http`, `server.http`) it checks that the address can be bound,
//! and that the tokens rule lets the daemon start there. Everything it creates is removed.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{BackendKind, Config, PackageConfig};
use crate::engine::{InstallerProbeError, ProbeError};
use crate::install::ProbeReport;
use crate::repl::{ExecLimits, Outcome, Repl};
use crate::runtime::{Finished, RuntimeError};
use crate::{http, Engine};

/// The address a sandbox without network cannot reach (TEST-NET-1, never routed).
const UNREACHABLE: &str = "192.0.2.1:80";
/// How long the probe's connection attempt may wait. Without a network it fails at once.
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// A failure slower than this means packets went somewhere: there is a network.
const AT_ONCE: f64 = 1.0;

/// One check's outcome.
#[derive(Debug)]
pub enum Verdict {
    Ok(String),
    Fail {
        what: String,
        fix: String,
    },
    /// Not run, and why (an earlier check failed, or nothing to check).
    Skip(String),
}

/// What the sandbox says about itself: who it runs as, its interfaces, and what happened
/// to a connection attempt.
#[derive(Debug, Deserialize)]
struct SandboxFacts {
    uid: u32,
    gid: u32,
    interfaces: Option<Vec<String>>,
    connect: String,
    seconds: f64,
}

/// The verdicts so far: each printed on stdout as it comes, the failures kept for the
/// summary.
#[derive(Default)]
struct Report {
    failed: Vec<String>,
}

impl Report {
    fn check(&mut self, name: &str, verdict: Verdict) {
        match verdict {
            Verdict::Ok(what) => println!("ok    {name}: {what}"),
            Verdict::Skip(why) => println!("skip  {name}: {why}"),
            Verdict::Fail { what, fix } => {
                println!("FAIL  {name}: {what}");
                println!("      fix: {fix}");
                self.failed.push(format!("{name}: {what}"));
            }
        }
    }
}

/// Run every check, printing each verdict as it comes on stdout. Returns the failed
/// checks as `name: what failed`, for a summary on stderr; empty when all passed.
pub async fn run(config: Config) -> Vec<String> {
    let mut report = Report::default();
    let engine = Engine::new(config.clone());
    let ready = engine_and_image(&engine, &mut report).await;
    let checks = ["helper", "network", "user", "installer"];
    if ready {
        println!("      sandboxes: {}", engine.describe_sandbox());
        if config.runtime.backend == BackendKind::Docker {
            println!(
                "      log driver of every container: {}",
                crate::runtime::docker::LOG_DRIVER
            );
        }
        for (name, verdict) in checks.iter().zip(sandbox_checks(&engine).await) {
            report.check(name, verdict);
        }
    } else {
        for name in checks {
            report.check(
                name,
                Verdict::Skip("needs the engine and the image (see above)".into()),
            );
        }
    }
    report.check("http", http_check(&config).await);
    engine.backend().close();

    if report.failed.is_empty() {
        println!("all checks passed");
    } else {
        println!("{} check(s) failed", report.failed.len());
    }
    report.failed
}

/// The engine answers (named after the backend; Docker's line is unchanged) and has the
/// image. Whether the sandbox checks can run.
async fn engine_and_image(engine: &Engine, report: &mut Report) -> bool {
    let config = engine.config();
    let backend = engine.backend();
    let image = &config.docker.image;
    let (engine_check, address) = match config.runtime.backend {
        BackendKind::Docker => ("Docker", crate::runtime::docker::host()),
        BackendKind::Kubernetes => (
            "Kubernetes",
            "the cluster KUBECONFIG (or the pod's service account) names".to_string(),
        ),
    };
    match backend.engine().await {
        Ok(engine) => report.check(
            engine_check,
            Verdict::Ok(format!("engine {engine} answers at {address}")),
        ),
        Err(e) => {
            report.check(
                engine_check,
                Verdict::Fail {
                    what: "the engine does not answer".into(),
                    fix: e.to_string(),
                },
            );
            return false;
        }
    }
    if let Some(runtime) = &config.docker.runtime {
        println!("      OCI runtime of sandboxes (docker.runtime): {runtime}");
    }
    let verdict = match backend.image_present(image).await {
        Ok(true) => Verdict::Ok(format!("{image} is present")),
        Ok(false) => Verdict::Fail {
            what: format!("{image} is not present on this engine"),
            fix: fix_of(&RuntimeError::ImageMissing {
                image: image.clone(),
            }),
        },
        Err(e) => Verdict::Fail {
            what: format!("could not look for {image}"),
            fix: e.to_string(),
        },
    };
    let present = matches!(verdict, Verdict::Ok(_));
    report.check("image", verdict);
    present
}

/// The fix part of an error message: everything after the first sentence that says
/// what failed (the messages of [`RuntimeError`] say both).
fn fix_of(e: &RuntimeError) -> String {
    let text = e.to_string();
    match text.split_once(". ") {
        Some((_, fix)) => fix.to_string(),
        None => text,
    }
}

/// Have the engine start one sandbox as its pool does and run the four sandbox checks in
/// it: the helper answers, no network, non-root, the installer works. Removes everything
/// the engine made for them again.
async fn sandbox_checks(engine: &Engine) -> [Verdict; 4] {
    let skip = || Verdict::Skip("needs a sandbox that answers".to_string());
    let started = Instant::now();
    let verdicts = match engine.probe_sandbox().await {
        Err(ProbeError::Volumes(e)) => [
            Verdict::Fail {
                what: "could not create the sandbox's volumes".into(),
                fix: e.to_string(),
            },
            skip(),
            skip(),
            skip(),
        ],
        Err(e @ ProbeError::Start(_)) => [
            Verdict::Fail {
                what: e.to_string(),
                fix: "check that the image runs python3 (on Docker: `docker run --rm IMAGE \
                      python3 -c 1`) and the limits above; the log \
                      (PYTHON_DOCKER_MCP_LOG=debug) has the engine's answer"
                    .into(),
            },
            skip(),
            skip(),
            skip(),
        ],
        Ok(probe) => in_sandbox(engine, probe.repl, &probe.shared_volume, started).await,
    };
    if let Err(e) = engine.probe_cleanup().await {
        eprintln!("python-docker-mcp: could not remove the doctor's sandbox: {e}");
    }
    verdicts
}

/// The checks in a started sandbox, then the installer's (into its shared volume).
async fn in_sandbox(
    engine: &Engine,
    mut repl: Repl,
    shared_volume: &str,
    started: Instant,
) -> [Verdict; 4] {
    let helper = if repl.ping(Duration::from_secs(5)).await {
        Verdict::Ok(format!(
            "a sandbox starts and answers in {} ms (Python {})",
            started.elapsed().as_millis(),
            repl.python
        ))
    } else {
        Verdict::Fail {
            what: "the helper started but did not answer a ping within 5 s".into(),
            fix: "the host may be overloaded; run the doctor again, and raise \
                  docker.cpu_limit if it keeps failing"
                .into(),
        }
    };
    let (network, user) = match facts(&mut repl).await {
        Ok(facts) => (
            network_verdict(engine.config(), &facts),
            user_verdict(&facts),
        ),
        Err(why) => {
            let fail = || Verdict::Fail {
                what: format!("could not ask the sandbox: {why}"),
                fix: "allowed_modules / blocked_modules must let the check import \
                      os, socket and json; otherwise see the helper check"
                    .into(),
            };
            (fail(), fail())
        }
    };
    repl.kill().await;
    let installer = installer_check(engine, shared_volume).await;
    [helper, network, user, installer]
}

/// Ask the sandbox who it runs as and try a connection out, as user code.
async fn facts(repl: &mut Repl) -> Result<SandboxFacts, String> {
    let code = format!(
        r#"
import json, os, socket, time
started = time.monotonic()
try:
    socket.create_connection(("{host}", {port}), timeout={wait}).close()
    connect = "connected"
except OSError as e:
    connect = f"{{type(e).__name__}}: {{e}}"
try:
    interfaces = sorted(os.listdir("/sys/class/net"))
except OSError:
    interfaces = None
print(json.dumps({{"uid": os.getuid(), "gid": os.getgid(), "interfaces": interfaces,
                  "connect": connect, "seconds": time.monotonic() - started}}))
"#,
        host = UNREACHABLE.split(':').next().unwrap_or_default(),
        port = UNREACHABLE.split(':').nth(1).unwrap_or("80"),
        wait = CONNECT_WAIT.as_secs(),
    );
    let limits = ExecLimits {
        timeout: CONNECT_WAIT + Duration::from_secs(10),
        output_limit: 64 * 1024,
        max_figures: 0,
        max_figure_bytes: 0,
        track_files: false,
        lease: None,
    };
    let outcome = repl
        .execute(&code, None, false, &limits, &CancellationToken::new(), None)
        .await
        .map_err(|e| e.to_string())?;
    let reply = match outcome {
        Outcome::Completed(reply) => reply,
        Outcome::Interrupted(_, why) => return Err(format!("the check {why}")),
    };
    if let Some(e) = reply.error {
        return Err(format!("{}: {}", e.kind, e.message));
    }
    serde_json::from_str(reply.stdout.trim())
        .map_err(|e| format!("unexpected answer {:?} ({e})", reply.stdout.trim()))
}

fn network_verdict(config: &Config, f: &SandboxFacts) -> Verdict {
    let interfaces = match &f.interfaces {
        Some(list) => list.join(", "),
        None => "unknown".into(),
    };
    let attempt = format!(
        "a connection to {UNREACHABLE} gave {} after {:.2} s; interfaces: {interfaces}",
        f.connect, f.seconds
    );
    if !config.docker.network_disabled {
        return Verdict::Ok(format!(
            "the sandbox has network, as configured (docker.network_disabled: false); {attempt}"
        ));
    }
    let only_loopback = f
        .interfaces
        .as_ref()
        .is_none_or(|list| list.iter().all(|i| i == "lo"));
    if f.connect != "connected" && f.seconds < AT_ONCE && only_loopback {
        Verdict::Ok(format!("none: {attempt}"))
    } else {
        Verdict::Fail {
            what: format!("the sandbox seems to have a network: {attempt}"),
            fix: "sandboxes get `network_mode: none` when docker.network_disabled is true; \
                  check that nothing (a Docker daemon default, a plugin) gives containers a \
                  network anyway"
                .into(),
        }
    }
}

fn user_verdict(f: &SandboxFacts) -> Verdict {
    if f.uid == 0 {
        Verdict::Fail {
            what: "code runs as root (uid 0)".into(),
            fix: "the image or the engine overrides the user; set docker.user to a non-root \
                  uid:gid such as 1000:1000, and check the engine for user-namespace settings"
                .into(),
        }
    } else {
        Verdict::Ok(format!("code runs as uid {}, gid {}", f.uid, f.gid))
    }
}

/// Have the engine run the installer probe in an installer container, exactly where
/// installs run.
async fn installer_check(engine: &Engine, volume: &str) -> Verdict {
    match engine.probe_installer(volume).await {
        Err(InstallerProbeError::Cache(e)) => Verdict::Fail {
            what: "could not create the download cache volume".into(),
            fix: e.to_string(),
        },
        Err(e @ InstallerProbeError::Run(_)) => Verdict::Fail {
            what: e.to_string(),
            fix: "raise package.timeout (PYTHON_DOCKER_MCP_INSTALL_TIMEOUT) if the host is \
                  slow; otherwise see the engine's answer above"
                .into(),
        },
        Ok(finished) => installer_verdict(&engine.config().package, &finished),
    }
}

/// What the probe's report (its last line of output) says: pip runs, which installer
/// installs, and whether the index answers.
fn installer_verdict(package: &PackageConfig, finished: &Finished) -> Verdict {
    let line = finished.stdout.lines().last().unwrap_or_default();
    let Ok(probe) = serde_json::from_str::<ProbeReport>(line) else {
        return Verdict::Fail {
            what: format!(
                "the installer container exited with {} without a report: {}",
                finished.exit_code,
                finished.stderr.trim()
            ),
            fix: "check that the image has python3".into(),
        };
    };
    let installer = match (&package.installer[..], probe.uv) {
        ("uv", true) => "uv",
        ("uv", false) => {
            "pip (the image has no uv, so installs are slower: rebuild it with \
             `python-docker-mcp image build`)"
        }
        _ => "pip",
    };
    match probe {
        ProbeReport {
            pip: Some(pip),
            index: true,
            ..
        } => Verdict::Ok(format!(
            "{pip}, installs run with {installer}; the package index answers"
        )),
        ProbeReport {
            pip: None, error, ..
        } => Verdict::Fail {
            what: format!(
                "pip does not run in the image: {}",
                error.unwrap_or_default()
            ),
            fix: "installs need pip in the image (python3-pip); build it with \
                  `python-docker-mcp image build`"
                .into(),
        },
        ProbeReport {
            pip: Some(pip),
            error,
            ..
        } => Verdict::Fail {
            what: format!(
                "{pip} runs, but no package index is reachable from the installer container: {}",
                error.unwrap_or_default()
            ),
            fix: "installs need the index: check the host's network and proxy, or set \
                  package.index_url (PYTHON_DOCKER_MCP_INDEX_URL) to a reachable mirror; code \
                  still runs without it"
                .into(),
        },
    }
}

/// With an HTTP address: the daemon may start there (the tokens rule) and can bind it.
async fn http_check(config: &Config) -> Verdict {
    let plan = match http::plan(&config.server) {
        Ok(Some(plan)) => plan,
        Ok(None) => {
            return Verdict::Skip(
                "no address to check (pass --http ADDR, or set server.http)".into(),
            )
        }
        Err(e) => {
            return Verdict::Fail {
                what: "the HTTP service would not start".into(),
                fix: e.to_string(),
            }
        }
    };
    match http::bind(&plan).await {
        Ok(listener) => match listener.local_addr() {
            Ok(bound) if bound != plan.addr => {
                Verdict::Ok(format!("{} can be bound (as {bound})", plan.addr))
            }
            _ => Verdict::Ok(format!("{} can be bound", plan.addr)),
        },
        Err(e) => Verdict::Fail {
            what: format!("{e:#}"),
            fix: "choose a free port, or stop what listens there (`ss -ltnp`); ports below \
                  1024 need root"
                .into(),
        },
    }
}
