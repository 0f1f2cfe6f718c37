//! `install-package` as an agent meets it (issue 11, "Installs"): a small package already
//! in the download cache into a new session; packages this bench never installed before
//! into a session and into the shared environment (no `session_id`); then cached ones
//! into the shared environment. Our daemon only: the original runs its installs inside
//! sandboxes without network.
//!
//! "Not cached" needs packages that are not in the engine's download cache volume
//! (`sandbox::CACHE_VOLUME`), which outlives daemons and is shared by every checkout on
//! the machine. Before the phase the bench lists the volume (read-only, from a throwaway
//! container without network) and takes, in order from `UNCACHED`, packages whose
//! wheel or unpacked `NAME-VERSION` is not in it; each run uses them up.

use serde_json::json;

use python_docker_mcp::sandbox::CACHE_VOLUME;

use crate::plan::Plan;
use crate::references::docker;
use crate::samples::{ms_since, Series};
use crate::servers::{call, session_id, Client};
use crate::IMAGE;

/// Small pure-Python wheels, pinned, that neither the tests nor the image use. A run
/// takes the first ones not in the download cache; when all are, add more.
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
    "tomli==2.0.0",
    "termcolor==2.2.0",
    "colorama==0.4.5",
    "wcwidth==0.2.12",
    "wcwidth==0.2.10",
    "wcwidth==0.2.8",
    "zipp==3.15.0",
    "zipp==3.14.0",
    "text-unidecode==1.2",
    "tabulate==0.8.9",
    "mccabe==0.6.1",
    "inflection==0.5.0",
    "jmespath==0.10.0",
    "sortedcontainers==2.3.0",
    "more-itertools==10.0.0",
    "more-itertools==9.1.0",
    "platformdirs==4.0.0",
    "platformdirs==3.11.0",
    "filelock==3.13.0",
    "filelock==3.12.4",
    "tomlkit==0.12.2",
    "tomlkit==0.12.1",
    "semver==3.0.0",
    "cachetools==5.3.0",
    "blinker==1.6.3",
    "blinker==1.6.2",
    "itsdangerous==2.1.1",
    "async-timeout==4.0.2",
    "pathspec==0.12.0",
    "pathspec==0.11.2",
    "tomli-w==1.1.0",
    "iniconfig==1.1.0",
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
    /// Which packages went where.
    pub notes: Vec<String>,
}

/// One install, timed: a sample, or a failure. Whether it worked.
async fn install(c: &Client, s: &mut Series, package: &str, session: Option<&str>) -> bool {
    let mut args = json!({ "package_name": package });
    if let Some(id) = session {
        args["session_id"] = json!(id);
    }
    let name = package.split("==").next().unwrap_or(package).to_string();
    let t = std::time::Instant::now();
    match call(c, "install-package", args, &name).await {
        Ok(_) => {
            s.ms.push(ms_since(t));
            true
        }
        Err(e) => {
            s.fail(e);
            false
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

/// Every path in the download cache volume, lowercased (empty if it does not exist yet).
async fn cache_listing() -> Result<String, String> {
    let volume = format!("{CACHE_VOLUME}:/cache:ro");
    let args = [
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &volume,
        IMAGE,
        "find",
        "/cache",
    ];
    match docker(&["volume", "inspect", CACHE_VOLUME]).await {
        Err(_) => Ok(String::new()),
        Ok(_) => docker(&args)
            .await
            .map(|s| s.to_lowercase())
            .map_err(|e| format!("listing the download cache: {e:#}")),
    }
}

/// Whether the cache holds `name==version`: a wheel `name-version-…` or an unpacked
/// `name-version.dist-info` (names with `_` for `-`, as in wheel file names).
fn in_cache(listing: &str, package: &str) -> bool {
    let (name, version) = package.split_once("==").unwrap_or((package, ""));
    let stem = format!("{}-{version}", name.to_lowercase().replace('-', "_"));
    listing.lines().any(|l| {
        let file = l.rsplit('/').next().unwrap_or(l);
        file.starts_with(&format!("{stem}-")) || file.starts_with(&format!("{stem}."))
    })
}

/// Up to `n` installs of packages not in the cache (`taken` are this run's already), into
/// a new session each or (no session) the shared environment. Returns those measured.
async fn uncached(
    c: &Client,
    n: usize,
    into_session: bool,
    listing: &str,
    taken: &mut Vec<&'static str>,
    s: &mut Series,
) -> Vec<&'static str> {
    let mut measured = Vec::new();
    let mut left = UNCACHED.iter().copied().filter(|p| !in_cache(listing, p));
    // A candidate that fails (a version without a wheel) counts as a failure; the next
    // one is tried, a few times at most.
    let mut attempts = 0;
    while measured.len() < n && attempts < n + 3 {
        let Some(package) = left.find(|p| !taken.contains(p)) else {
            s.fail(format!(
                "every package of UNCACHED in benches/e2e/install.rs is in the download \
                 cache ({CACHE_VOLUME}): add new ones (small pure-Python wheels, pinned)"
            ));
            break;
        };
        taken.push(package);
        attempts += 1;
        let session = if into_session {
            match new_session(c).await {
                Ok(id) => Some(id),
                Err(e) => {
                    s.fail(e);
                    continue;
                }
            }
        } else {
            None
        };
        if install(c, s, package, session.as_deref()).await {
            measured.push(package);
        }
        if let Some(id) = &session {
            cleanup(c, id).await;
        }
    }
    measured
}

pub async fn measure(c: &Client, plan: Plan) -> Installs {
    let mut r = Installs::default();
    let listing = match cache_listing().await {
        Ok(l) => l,
        Err(e) => {
            r.uncached_session.fail(e);
            return r;
        }
    };
    let fresh = UNCACHED.iter().filter(|p| !in_cache(&listing, p)).count();
    progress!(
        "    download cache: {} paths; {fresh} of the {} candidates not in it",
        listing.lines().count(),
        UNCACHED.len()
    );
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
    for _ in 0..plan.install_cached {
        match new_session(c).await {
            Ok(id) => {
                install(c, &mut r.cached_session, CACHED, Some(&id)).await;
                cleanup(c, &id).await;
            }
            Err(e) => r.cached_session.fail(e),
        }
    }

    progress!(
        "    install-package, not cached: ×{} into a session, ×{} into the shared environment",
        plan.install_uncached_session,
        plan.install_uncached_shared
    );
    let mut taken = Vec::new();
    let into_sessions = uncached(
        c,
        plan.install_uncached_session,
        true,
        &listing,
        &mut taken,
        &mut r.uncached_session,
    )
    .await;
    let into_shared = uncached(
        c,
        plan.install_uncached_shared,
        false,
        &listing,
        &mut taken,
        &mut r.uncached_shared,
    )
    .await;

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
