//! `install-package` as an agent meets it (issue 11, "Installs"): a small package already
//! in the download cache into a new session; packages this bench never installed before
//! into a session and into the shared environment (no `session_id`); then cached ones
//! into the shared environment. Our daemon only: the original runs its installs inside
//! sandboxes without network.
//!
//! "Not cached" needs packages no earlier run put in the engine's download cache volume,
//! which outlives daemons. The bench takes them in order from `UNCACHED`, each only once:
//! the ones it used are listed in `target/bench-e2e/installed-once.txt`. A result that
//! says files came from the cache anyway (another run, a test) is left out of the
//! series, noted, and the next package is taken.

use std::path::Path;

use serde_json::{json, Value};

use crate::plan::Plan;
use crate::samples::{ms_since, Series};
use crate::servers::{call, call_result, session_id, Client};

/// Small pure-Python wheels, pinned, that neither the tests nor the image use.
const UNCACHED: &[&str] = &[
    "iniconfig==2.0.0",
    "tomli==2.0.1",
    "toml==0.10.2",
    "termcolor==2.4.0",
    "colorama==0.4.6",
    "wcwidth==0.2.13",
    "zipp==3.17.0",
    "text-unidecode==1.3",
    "tabulate==0.9.0",
    "appdirs==1.4.4",
    "mccabe==0.7.0",
    "inflection==0.5.1",
    "webencodings==0.5.1",
    "jmespath==1.0.1",
    "sortedcontainers==2.4.0",
    "more-itertools==10.1.0",
    "platformdirs==4.1.0",
    "filelock==3.13.1",
    "tomlkit==0.12.3",
    "semver==3.0.2",
    "cachetools==5.3.2",
    "blinker==1.7.0",
    "itsdangerous==2.1.2",
    "async-timeout==4.0.3",
    "mypy-extensions==1.0.0",
    "pathspec==0.12.1",
    "tomli-w==1.0.0",
    "iniconfig==1.1.1",
    "toml==0.10.1",
    "termcolor==2.3.0",
    "tabulate==0.8.10",
    "jmespath==1.0.0",
    "semver==3.0.1",
    "cachetools==5.3.1",
    "zipp==3.16.2",
    "appdirs==1.4.3",
];

/// The cached package every series starts from.
const CACHED: &str = "six";

#[derive(Default)]
pub struct Installs {
    /// `install-package six` into a new session, six in the cache.
    pub cached_session: Series,
    /// A package never installed before, into a new session (one install each).
    pub uncached_session: Series,
    /// The same into the shared environment.
    pub uncached_shared: Series,
    /// Cached packages (six and those of `uncached_session`) into the shared environment.
    pub cached_shared: Series,
    /// Which packages went where, and any left out because they came from the cache.
    pub notes: Vec<String>,
}

/// Files the result says came from the download cache (None: it does not say).
fn cached_files(structured: &Option<Value>) -> Option<usize> {
    structured
        .as_ref()
        .and_then(|v| v.get("cached"))
        .and_then(Value::as_array)
        .map(Vec::len)
}

/// One install, timed; `Ok(cached files)` with the sample pushed, or a failure.
async fn install(
    c: &Client,
    s: &mut Series,
    package: &str,
    session: Option<&str>,
) -> Option<Option<usize>> {
    let mut args = json!({ "package_name": package });
    if let Some(id) = session {
        args["session_id"] = json!(id);
    }
    let name = package.split("==").next().unwrap_or(package).to_string();
    let t = std::time::Instant::now();
    match call_result(c, "install-package", args, &name).await {
        Ok((_, structured)) => {
            let ms = ms_since(t);
            s.ms.push(ms);
            Some(cached_files(&structured))
        }
        Err(e) => {
            s.fail(e);
            None
        }
    }
}

async fn new_session(c: &Client) -> Result<String, String> {
    let text = call(
        c,
        "execute-persistent",
        json!({"code": "x = 1"}),
        "Session ID",
    )
    .await?;
    session_id(&text).ok_or_else(|| format!("no session id in {text:?}"))
}

async fn cleanup(c: &Client, id: &str) {
    if let Err(e) = call(c, "cleanup-session", json!({"session_id": id}), "").await {
        progress!("    warning: {e}");
    }
}

/// The packages of `UNCACHED` not yet used, in order.
fn unused(record: &Path) -> Vec<&'static str> {
    let used = std::fs::read_to_string(record).unwrap_or_default();
    UNCACHED
        .iter()
        .copied()
        .filter(|p| !used.lines().any(|l| l.trim() == *p))
        .collect()
}

fn mark_used(record: &Path, package: &str) {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(record);
    if let Err(e) = file.and_then(|mut f| writeln!(f, "{package}")) {
        progress!("    warning: {}: {e}", record.display());
    }
}

/// Up to `n` installs of unused packages, into a new session each or (no session) the
/// shared environment. Returns the packages measured.
async fn uncached(
    c: &Client,
    n: usize,
    into_session: bool,
    record: &Path,
    s: &mut Series,
    notes: &mut Vec<String>,
) -> Vec<&'static str> {
    let mut measured = Vec::new();
    let mut left = unused(record).into_iter();
    while measured.len() < n {
        let Some(package) = left.next() else {
            s.fail(format!(
                "no package left that this bench never installed: add some to UNCACHED in \
                 benches/e2e/install.rs, or delete {} if the download cache volume was removed",
                record.display()
            ));
            break;
        };
        mark_used(record, package);
        let session = if into_session {
            match new_session(c).await {
                Ok(id) => Some(id),
                Err(e) => {
                    s.fail(e);
                    break;
                }
            }
        } else {
            None
        };
        let mut probe = Series::default();
        let result = install(c, &mut probe, package, session.as_deref()).await;
        if let Some(id) = &session {
            cleanup(c, id).await;
        }
        match result {
            Some(Some(cached)) if cached > 0 => notes.push(format!(
                "{package} came from the download cache ({cached} files): left out"
            )),
            Some(_) => {
                s.ms.extend(probe.ms);
                measured.push(package);
            }
            None => s.failures.extend(probe.failures),
        }
    }
    measured
}

pub async fn measure(c: &Client, plan: Plan, record: &Path) -> Installs {
    let mut r = Installs::default();
    progress!("    install-package {CACHED} into a new session (untimed: fills the cache)");
    match new_session(c).await {
        Ok(id) => {
            let mut warm = Series::default();
            install(c, &mut warm, CACHED, Some(&id)).await;
            r.cached_session.failures.extend(warm.failures);
            cleanup(c, &id).await;
        }
        Err(e) => r.cached_session.fail(e),
    }

    progress!(
        "    install-package {CACHED} (cached) into a new session ×{}",
        plan.install_cached
    );
    let mut not_from_cache = 0;
    for _ in 0..plan.install_cached {
        let id = match new_session(c).await {
            Ok(id) => id,
            Err(e) => {
                r.cached_session.fail(e);
                continue;
            }
        };
        if let Some(Some(0)) = install(c, &mut r.cached_session, CACHED, Some(&id)).await {
            not_from_cache += 1;
        }
        cleanup(c, &id).await;
    }
    if not_from_cache > 0 {
        r.notes.push(format!(
            "{not_from_cache} of the cached {CACHED} installs did not report the download cache"
        ));
    }

    progress!(
        "    install-package, not cached: ×{} into a session, ×{} into the shared environment",
        plan.install_uncached_session,
        plan.install_uncached_shared
    );
    let mut notes = Vec::new();
    let into_sessions = uncached(
        c,
        plan.install_uncached_session,
        true,
        record,
        &mut r.uncached_session,
        &mut notes,
    )
    .await;
    let into_shared = uncached(
        c,
        plan.install_uncached_shared,
        false,
        record,
        &mut r.uncached_shared,
        &mut notes,
    )
    .await;
    r.notes.extend(notes);

    // Now in the cache, not yet in the shared environment.
    let cached: Vec<&str> = std::iter::once(CACHED)
        .chain(into_sessions.iter().copied())
        .collect();
    progress!(
        "    install-package (cached) into the shared environment: {}",
        cached.join(", ")
    );
    for package in &cached {
        install(c, &mut r.cached_shared, package, None).await;
    }
    r.notes.push(format!(
        "not cached, into sessions: {}; into the shared environment: {}; cached into the \
         shared environment: {}",
        list(&into_sessions),
        list(&into_shared),
        cached.join(", ")
    ));
    r
}

fn list(packages: &[&str]) -> String {
    if packages.is_empty() {
        "none".into()
    } else {
        packages.join(", ")
    }
}
