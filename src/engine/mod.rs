//! The core: the operations behind the tools, and the daemon's lifetime.
//!
//! [`Engine`] is a cheap-to-clone handle over shared state: the configuration, the runtime
//! seam ([`Backend`]), the session registry and the owner identity every container is
//! labelled with. A durable session that another daemon left is adopted here when a call
//! names it ([`Engine::adopt`], see [`crate::durable`]).
//! Each operation returns a typed result or an operation-specific error whose message says
//! what failed and what to do. [`Engine::shutdown`] removes everything this daemon created.
//!
//! Every operation acts for a [`Client`] (over stdio, `local`). A session belongs to the
//! client that created it: to every other client its id is unknown, with exactly the
//! error an id that never existed gets ([`ExecError::NoSuchSession`],
//! [`CleanupError::NoSuchSession`]).
//!
//! When several clients share the daemon, each has its own shared environment: a client's
//! first install without a session gives it a pool of its own whose sandboxes mount its
//! package volume ([`Pool::for_client`]); its later runs and new sessions come from there.
//!
//! Every operation is admitted through [`Calls`] and counted while it runs. A shutdown
//! first [`Engine::drain`]s: no call is admitted any more, the running ones may finish
//! within `server.drain_timeout`, and those still running are named in the log. Then
//! [`Engine::shutdown`] interrupts them and removes everything but durable sessions, which
//! it leaves, released, for the next daemon.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;
use tokio::sync::{mpsc, Mutex, OnceCell};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod files;
pub use files::{FileList, FileOpError};
#[cfg(test)]
mod tests_fake;

use crate::calls::{CallGuard, Calls, Operation, Running, ShuttingDown};
use crate::client::Client;
use crate::config::{human_bytes, Config};
use crate::durable::{self, Holder, OwnerKey, SessionName};
use crate::egress::daemon::{AskUser, Egress, EgressError, NetworkReport};
use crate::egress::policy::List;
use crate::files::{FileChange, FileData, FileError};
use crate::install::{self, Requirement, RequirementError};
use crate::pool::{AcquireError, Pool, PoolStats};
use crate::profile::ProfileError;
use crate::repl::{
    ExecLimits, Interrupt, Outcome, OutputChunk, Package, PeakScope, PyError, Repl, ReplError,
    Reply, Variable,
};
use crate::runtime::{Backend, RuntimeError, Sweep, Swept};
use crate::sandbox::{self, Owner};
use crate::session::{EndReason, Registry, Session, SessionGuard, SlotRefusal, Slots, State};
use crate::text::clip;

/// How many figures one call returns, and how large each may be.
const MAX_FIGURES: u64 = 4;
const MAX_FIGURE_BYTES: u64 = 2 * 1024 * 1024;
/// How long a reset or a variable listing may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an adopted session's helper may take to stop its egress forwarder (a helper
/// older than egress never answers; its session has no grant anyway).
const ADOPTED_NETWORK_OFF: Duration = Duration::from_secs(2);

/// What the tool layer passes with each call: the client's cancellation, and where to
/// send output while the code runs (when the client asked for progress).
#[derive(Debug, Default, Clone)]
pub struct CallContext {
    pub cancel: CancellationToken,
    /// Bounded: output the relay cannot take at once is dropped from progress (the result
    /// carries all of it).
    pub progress: Option<mpsc::Sender<OutputChunk>>,
    /// The call's own time-out in seconds, as the client asked (`timeout`); checked
    /// against `docker.max_timeout`. None: `docker.timeout`.
    pub timeout: Option<f64>,
    /// Asks the call's user a yes/no question (`network.ask`), when the client declared
    /// MCP elicitation.
    pub ask: Option<AskUser>,
    /// The call's `network` list, as the client wrote it (`None`: no network; a session
    /// keeps its list).
    pub network: Option<Vec<String>>,
    /// The sandbox profile the call asked for (`profile`); None: `default`, or a
    /// session's own. See [`crate::profile`].
    pub profile: Option<String>,
}

/// The structured result of an execution (`execute-transient`, `execute-persistent`).
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct ExecResult {
    /// The session the code ran in (persistent runs only). Pass it back to keep working there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Everything written to standard output (print, os.write, child processes).
    pub stdout: String,
    /// Everything written to standard error (warnings, logging, child processes).
    pub stderr: String,
    /// `repr` of the last expression's value, when the code ends with an expression.
    pub value: Option<String>,
    /// The exception the code raised, if any.
    pub error: Option<PyError>,
    /// True when the code ran past the time-out and was stopped.
    pub timed_out: bool,
    /// True when the client cancelled the call and the code was stopped.
    pub cancelled: bool,
    /// True when the sandbox is gone (killed or crashed); a session must be started anew.
    pub sandbox_lost: bool,
    /// Wall-clock run time of the code inside the sandbox, in milliseconds.
    pub duration_ms: f64,
    /// CPU time the run used: user plus system time of the sandbox's Python process and the
    /// child processes it waited for, in seconds (0 when the sandbox was lost).
    pub cpu_seconds: f64,
    /// Peak resident memory in bytes: of this run when `peak_memory_scope` is `run`, of the
    /// session so far when it is `session`; absent when the sandbox was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// What `peak_memory_bytes` covers: `run` (this run alone) or `session`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_memory_scope: Option<PeakScope>,
    /// Bytes of stdout dropped beyond the output limit.
    pub stdout_dropped: u64,
    /// Bytes of stderr dropped beyond the output limit.
    pub stderr_dropped: u64,
    /// Transient runs: the JSON-serialisable top-level variables after the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Map<String, serde_json::Value>>,
    /// Transient runs: variables left out of `state` because they are not JSON, with their types.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_skipped: Option<BTreeMap<String, String>>,
    /// Images returned in the result's content: matplotlib figures (PNG), and the last
    /// expression when it is an image (PNG or JPEG bytes such as a screenshot, or a PIL
    /// image), which comes first.
    pub figures: usize,
    /// Figures left out: over the count or size cap, or not renderable.
    pub figures_dropped: u64,
    /// Distributions installed for this call (its `packages` argument), as `name-version`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub packages_installed: Vec<String>,
    /// A note for the caller about what happened to the sandbox, if anything did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// The first call on a session adopted after a server restart: what became of the
    /// call that was in flight when the previous server went away (its result, or that it
    /// was cut off, and when).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_call: Option<String>,
    /// The images, base64 PNG or JPEG; sent as image content, not in the structured result.
    #[serde(skip)]
    pub images: Vec<String>,
    /// Files of the working directory the run created or modified. A session's are
    /// resources (`uri`); a transient run's come back embedded, up to docker.file_limit in all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_changed: Vec<FileChange>,
    /// True when the working directory held more than 2000 files: changes may be missing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub files_changed_truncated: bool,
    /// A transient run's changed files, sent as embedded resources.
    #[serde(skip)]
    pub files: Vec<FileData>,
    /// Runs with a `network` list: what the egress proxy let through and refused, by
    /// `host:port` (each refusal is also a `blocked: HOST:PORT (REASON)` line in the text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkReport>,
}

impl crate::metrics::RunReport for ExecResult {
    /// The time-out wins over a cancel, a cancel over a lost sandbox, that over an exception.
    fn outcome(&self) -> crate::metrics::Outcome {
        use crate::metrics::Outcome;
        if self.timed_out {
            Outcome::Timeout
        } else if self.cancelled {
            Outcome::Cancelled
        } else if self.sandbox_lost {
            Outcome::SandboxLost
        } else if self.error.is_some() {
            Outcome::Error
        } else {
            Outcome::Ok
        }
    }

    fn output_bytes(&self) -> (usize, usize) {
        (self.stdout.len(), self.stderr.len())
    }
}

impl ExecResult {
    /// Whether the tool result should carry `isError`.
    pub fn is_error(&self) -> bool {
        self.error.is_some() || self.timed_out || self.cancelled || self.sandbox_lost
    }

    fn from_reply(reply: Reply) -> ExecResult {
        ExecResult {
            session_id: None,
            stdout: reply.stdout,
            stderr: reply.stderr,
            value: reply.value,
            error: reply.error,
            timed_out: false,
            cancelled: false,
            sandbox_lost: false,
            duration_ms: reply.duration_ms,
            cpu_seconds: reply.cpu_seconds,
            peak_memory_bytes: reply.peak_memory_bytes,
            peak_memory_scope: reply.peak_memory_scope,
            stdout_dropped: reply.stdout_dropped,
            stderr_dropped: reply.stderr_dropped,
            state: reply.state,
            state_skipped: reply.state_skipped.filter(|s| !s.is_empty()),
            figures: reply.images.len(),
            figures_dropped: reply.images_dropped,
            packages_installed: Vec::new(),
            notice: None,
            previous_call: None,
            images: reply.images,
            files_changed: reply.files_changed,
            files_changed_truncated: reply.files_changed_truncated,
            files: Vec::new(),
            network: None,
        }
    }

    /// `survived` is added to the notice when an interrupted sandbox lives on.
    fn from_outcome(outcome: Outcome, survived: &str) -> ExecResult {
        match outcome {
            Outcome::Completed(reply) => ExecResult::from_reply(reply),
            Outcome::Interrupted(reply, why) => {
                let mut r = ExecResult::from_reply(reply);
                r.timed_out = matches!(why, Interrupt::Timeout(_));
                r.cancelled = why == Interrupt::Cancelled;
                r.notice = Some(format!(
                    "The code {why} and was interrupted with KeyboardInterrupt.{survived}"
                ));
                r
            }
        }
    }

    fn lost(why: String, started: Instant, error: &ReplError) -> ExecResult {
        ExecResult {
            timed_out: matches!(error, ReplError::Killed(Interrupt::Timeout(_))),
            cancelled: matches!(error, ReplError::Killed(Interrupt::Cancelled)),
            sandbox_lost: true,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            notice: Some(why),
            ..ExecResult::default()
        }
    }
}

/// The structured result of `install-package`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct InstallResult {
    /// The requirements as installed.
    pub requirements: Vec<String>,
    /// Where it went: `session <id>` or `shared environment`.
    pub target: String,
    /// Distributions installed, as `name-version`.
    pub installed: Vec<String>,
    /// Files taken from the download cache instead of the network.
    pub cached: Vec<String>,
    /// The installer that ran (`uv` or `pip`).
    pub installer: String,
    /// How long the install took, in milliseconds.
    pub duration_ms: f64,
}

/// Why an execution could not even start.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("could not get a sandbox: {0}")]
    Sandbox(#[from] AcquireError),
    #[error("no such session `{0}`: no session of yours has this id (it never existed, it ended, or it expired). Call list-sessions to see yours, or execute-persistent without session_id to start a new one")]
    NoSuchSession(String),
    #[error("session `{id}` is held by another python-docker-mcp that is still running ({holder}): one server at a time uses a session. Use that server, or stop it: its sessions are then adopted by the next server that names them")]
    Held { id: String, holder: String },
    #[error("session `{id}` could not be adopted from the server that ran it before: {why}")]
    Adoption { id: String, why: String },
    #[error("session `{id}` has ended: {why}. Call execute-persistent without session_id to start a new one")]
    Ended { id: String, why: EndReason },
    #[error("could not install the requested packages: {0}")]
    Packages(Box<InstallError>),
    #[error("session `{0}` did not answer: {1}")]
    Broken(String, String),
    #[error("there are already {0} sessions (session.max_sessions). End one with cleanup-session, or raise the limit")]
    TooManySessions(usize),
    #[error("client `{client}` already has {max} sessions (session.max_sessions_per_client). End one with cleanup-session, or ask the operator to raise the limit")]
    TooManySessionsForClient { client: Client, max: usize },
    #[error(transparent)]
    ShuttingDown(#[from] ShuttingDown),
    #[error(transparent)]
    Timeout(#[from] TimeoutError),
    /// A transient run's `files` could not be written.
    #[error("could not write the run's files: {0}")]
    Files(Box<FileError>),
    /// The call's `network` list is refused, or the egress proxy cannot serve it.
    #[error(transparent)]
    Network(Box<EgressError>),
    /// The call named a profile this server does not have, or another one than its
    /// session's.
    #[error(transparent)]
    Profile(#[from] ProfileError),
}

impl From<EgressError> for ExecError {
    fn from(e: EgressError) -> Self {
        ExecError::Network(Box::new(e))
    }
}

/// The key a profile's memory limit comes from, for messages.
fn memory_key(profile: &Config) -> String {
    match profile.profile.as_str() {
        crate::profile::DEFAULT => "docker.memory_limit".into(),
        name => match profile.profiles.get(name).and_then(|p| p.memory_limit) {
            Some(_) => format!("profiles.{name}.memory_limit"),
            None => "docker.memory_limit".into(),
        },
    }
}

/// A per-call `timeout` the server will not use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimeoutError {
    #[error("`timeout` must be a number of seconds greater than zero, not {0}")]
    NotPositive(f64),
    #[error("`timeout` {asked} s is above this server's cap of {} s (docker.max_timeout = {}); ask for at most {} s, or ask the operator to raise docker.max_timeout", cap.as_secs_f64(), humantime::format_duration(*cap), cap.as_secs_f64())]
    AboveCap { asked: f64, cap: Duration },
}

/// The time-out of one execution: the call's own `timeout` (seconds) if it gave one, at
/// most `cap`; otherwise `default`. A request above the cap is refused, not clamped, so a
/// model never believes it has more time than it gets.
pub fn run_timeout(
    asked: Option<f64>,
    default: Duration,
    cap: Duration,
) -> Result<Duration, TimeoutError> {
    let Some(asked) = asked else {
        return Ok(default);
    };
    if !asked.is_finite() || asked <= 0.0 {
        return Err(TimeoutError::NotPositive(asked));
    }
    if asked > cap.as_secs_f64() {
        return Err(TimeoutError::AboveCap { asked, cap });
    }
    Ok(Duration::from_secs_f64(asked))
}

impl From<RequirementError> for ExecError {
    fn from(e: RequirementError) -> Self {
        ExecError::Packages(Box::new(e.into()))
    }
}

/// Now, in seconds since the epoch (installer containers report their phases on the same
/// clock).
fn epoch_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Why an install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Requirement(#[from] RequirementError),
    #[error(transparent)]
    Session(#[from] ExecError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("installing `{requirement}` failed:\n{summary}")]
    Failed {
        requirement: String,
        summary: String,
    },
    #[error("installing `{requirement}` took longer than the install time-out ({timeout:?}) and was stopped; nothing was changed. Raise package.timeout (PYTHON_DOCKER_MCP_INSTALL_TIMEOUT) for large packages")]
    TimedOut {
        requirement: String,
        timeout: Duration,
    },
    #[error(transparent)]
    ShuttingDown(#[from] ShuttingDown),
}

/// Why a cleanup failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("no such session `{0}`: nothing to clean up")]
    NoSuchSession(String),
    #[error("session `{id}` had already ended: {why}")]
    AlreadyEnded { id: String, why: EndReason },
    /// A durable session of an earlier server could not be taken over to be ended.
    #[error(transparent)]
    Adoption(Box<ExecError>),
    #[error(transparent)]
    ShuttingDown(#[from] ShuttingDown),
}

/// A handle on the daemon's core; clone it freely.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    /// What runs the sandboxes (Docker, Podman, ...): the only way to the engine.
    backend: Backend,
    /// Labels every container, volume and name with this daemon instance.
    owner: Owner,
    sessions: Registry,
    /// Every sandbox comes from the pool (pool off: created on demand, same path).
    pool: Pool,
    /// Several clients share the daemon: each installs into a shared environment of its own.
    several: bool,
    /// The pools of clients with a shared environment of their own (sync lock, never held
    /// across an `.await`).
    client_pools: std::sync::Mutex<HashMap<Client, Pool>>,
    /// Installs into the shared environment run one at a time.
    shared_install: Mutex<()>,
    /// The download cache volume exists (created on the first install).
    cache_volume: OnceCell<()>,
    /// Background tasks (pool refill and reaper, removals); shutdown waits for them.
    tasks: TaskTracker,
    /// Live sessions plus sessions being created, in all (`session.max_sessions`) and per
    /// client (`session.max_sessions_per_client`).
    slots: Slots,
    /// The pools of named profiles, made on first use (see [`crate::profile`]).
    profile_pools: crate::profile::Pools,
    /// Arrival order of calls to each session (see [`crate::order`]).
    arrivals: crate::order::Arrivals,
    /// Stops the engine's own background task (idle expiry).
    stop: CancellationToken,
    /// The tool calls in flight; closed to new ones when shutdown begins.
    calls: Arc<Calls>,
    /// Sessions outlive this daemon (`session.durable`, on a backend that can).
    durable: bool,
    /// This daemon as the holder of durable sessions.
    holder: Holder,
    /// The OS user: with the scope and the client, a session's owner (see `durable`).
    uid: u32,
    /// One adoption at a time: two calls naming the same unknown id must not race for it.
    adopting: Mutex<()>,
    /// The egress proxy and the grants, when the operator set a ceiling (`network.allow`).
    egress: Option<Egress>,
}

impl Engine {
    /// An engine for one client (stdio, or HTTP with one client).
    pub fn new(config: Config) -> Engine {
        Engine::for_clients(config, false)
    }

    /// An engine shared by several clients when `several` (it sets the default of
    /// `session.max_sessions_per_client`).
    pub fn for_clients(config: Config, several: bool) -> Engine {
        let backend = Backend::from_config(&config);
        Engine::with_backend(config, several, backend)
    }

    /// [`Engine::for_clients`] on a given backend.
    pub fn with_backend(mut config: Config, several: bool, backend: Backend) -> Engine {
        if config.session.durable {
            if let Err(e) = backend.durable() {
                tracing::warn!("{e}; sessions end with this daemon");
                config.session.durable = false;
            }
        }
        let durable = config.session.durable;
        let owner = Owner::new();
        let tasks = TaskTracker::new();
        let pool = Pool::new(
            config.clone(),
            backend.clone(),
            owner.clone(),
            tasks.clone(),
        );
        let slots = Slots::new(
            config.session.max_sessions as usize,
            config.session.per_client_limit(several) as usize,
        );
        let egress = Egress::new(&config, backend.clone(), owner.clone());
        Engine {
            shared: Arc::new(Shared {
                config,
                backend,
                owner,
                sessions: Registry::default(),
                pool,
                several,
                client_pools: Default::default(),
                shared_install: Mutex::new(()),
                cache_volume: OnceCell::new(),
                tasks,
                slots,
                profile_pools: Default::default(),
                arrivals: Default::default(),
                stop: CancellationToken::new(),
                calls: Arc::default(),
                durable,
                holder: Holder::me(),
                uid: durable::uid(),
                adopting: Mutex::new(()),
                egress,
            }),
        }
    }

    /// Start warming the pool in the background (returns at once).
    pub fn start(&self) {
        let engine = self.clone();
        self.shared.tasks.spawn(engine.expire_idle_sessions());
        if let Some(egress) = self.shared.egress.clone() {
            // The proxy starts now, off any call's path; a call that finds it dead (or
            // never started) starts it again.
            self.shared.tasks.spawn(async move {
                if let Err(e) = egress.warm().await {
                    tracing::warn!("{e}");
                }
            });
        }
        let d = &self.shared.config.docker;
        if d.pool_enabled {
            tracing::info!(
                pool_size = d.pool_size,
                max_concurrent_creations = d.max_concurrent_creations,
                max_age = %humantime::format_duration(d.pool_max_age),
                warm_imports = ?d.warm_imports,
                "warming the sandbox pool in the background"
            );
            self.shared.pool.start();
            // A profile that keeps sandboxes warm warms now; the others on first use.
            let c = &self.shared.config;
            for name in c.profiles.keys() {
                let profile = c.for_profile(name).expect("a known name");
                if profile.docker.pool_size > 0 {
                    tracing::info!(profile = %name, pool_size = profile.docker.pool_size, "warming the profile's pool");
                    let s = &self.shared;
                    s.profile_pools.get(&s.pool, None, &profile);
                }
            }
        } else {
            tracing::info!("pool disabled: sandboxes are created per request");
        }
    }

    /// The pools' counters, summed over the main pool and every client's own.
    pub fn pool_stats(&self) -> PoolStats {
        self.pools()
            .iter()
            .map(Pool::stats)
            .fold(PoolStats::default(), |a, b| PoolStats {
                warm: a.warm + b.warm,
                creating: a.creating + b.creating,
                waiting: a.waiting + b.waiting,
                checked_out: a.checked_out + b.checked_out,
                retired: a.retired + b.retired,
                creation_failures: a.creation_failures + b.creation_failures,
            })
    }

    /// The main pool, every client's own and every profile's.
    fn pools(&self) -> Vec<Pool> {
        let s = &self.shared;
        let clients = s.client_pools.lock().expect("client pools lock");
        std::iter::once(s.pool.clone())
            .chain(clients.values().cloned())
            .chain(s.profile_pools.all())
            .collect()
    }

    /// The configuration a call's sandbox runs with: its profile's (`default` unless
    /// `asked`), or the error that lists the profiles.
    fn profile_config(&self, asked: Option<&str>) -> Result<Config, ProfileError> {
        self.shared
            .config
            .for_profile(asked.unwrap_or(crate::profile::DEFAULT))
    }

    /// Where `client`'s sandboxes of a profile come from: for `default` as
    /// [`Engine::pool_for`] says; for a named profile its own pool, drawing on the same
    /// environment (made on first use).
    fn pool_for_profile(&self, client: &Client, profile: &Config) -> Pool {
        let s = &self.shared;
        if profile.profile == crate::profile::DEFAULT {
            return self.pool_for(client);
        }
        let own = s
            .client_pools
            .lock()
            .expect("client pools lock")
            .get(client)
            .cloned();
        match own {
            Some(base) => s.profile_pools.get(&base, Some(client), profile),
            None => s.profile_pools.get(&s.pool, None, profile),
        }
    }

    /// Where `client`'s sandboxes come from: its own pool once it has a shared environment
    /// of its own, the main pool otherwise.
    fn pool_for(&self, client: &Client) -> Pool {
        let s = &self.shared;
        let clients = s.client_pools.lock().expect("client pools lock");
        clients.get(client).unwrap_or(&s.pool).clone()
    }

    /// The pool whose shared volume `client`'s installs without a session go to: with
    /// several clients its own, made on first use; otherwise the main pool.
    fn shared_environment_of(&self, client: &Client) -> Pool {
        let s = &self.shared;
        if !s.several {
            return s.pool.clone();
        }
        let mut clients = s.client_pools.lock().expect("client pools lock");
        let n = clients.len();
        let pool = clients.entry(client.clone()).or_insert_with(|| {
            tracing::info!(%client, "the client gets a shared environment of its own");
            s.pool.for_client(client, s.owner.client_volume(n))
        });
        pool.start();
        pool.clone()
    }

    /// Live sessions per client that has any (for `pdm_sessions`).
    pub fn sessions_per_client(&self) -> std::collections::HashMap<Client, usize> {
        let mut per_client = std::collections::HashMap::new();
        for session in self.shared.sessions.all() {
            *per_client.entry(session.owner.clone()).or_insert(0) += 1;
        }
        per_client
    }

    /// The turns of calls to each session, handed out by the stdio transport.
    pub fn arrivals(&self) -> crate::order::Arrivals {
        self.shared.arrivals.clone()
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn backend(&self) -> &Backend {
        &self.shared.backend
    }

    /// This daemon's instance id (the value of its `instance` label).
    pub fn instance(&self) -> &str {
        &self.shared.owner.instance
    }

    /// Admit a call of `operation`, unless shutdown has begun; it counts as running until
    /// the guard is dropped.
    fn admit(
        &self,
        operation: Operation,
        session: Option<&str>,
        client: &Client,
    ) -> Result<CallGuard, ShuttingDown> {
        self.shared.calls.admit(operation, session, client)
    }

    /// A token fired when shutdown begins, for work that must stop with the engine (the
    /// task sweeper).
    pub fn stopping(&self) -> CancellationToken {
        self.shared.stop.child_token()
    }

    /// The calls in flight, oldest first.
    pub fn running(&self) -> Vec<Running> {
        self.shared.calls.running()
    }

    /// The limits of one execution; its time-out is the call's own when it asked for one.
    fn limits(&self, call: &CallContext, profile: &Config) -> Result<ExecLimits, TimeoutError> {
        let d = &profile.docker;
        Ok(ExecLimits {
            timeout: run_timeout(call.timeout, d.timeout, d.max_timeout)?,
            output_limit: d.output_limit,
            max_figures: MAX_FIGURES,
            max_figure_bytes: MAX_FIGURE_BYTES,
            track_files: true,
            lease: None,
        })
    }

    /// Why a sandbox died, in words, naming the limit when the engine says it was hit.
    fn lost_reason(&self, e: &ReplError) -> String {
        self.lost_reason_in(e, &self.shared.config)
    }

    /// [`Engine::lost_reason`] for a sandbox of `profile`, naming its memory limit.
    fn lost_reason_in(&self, e: &ReplError, profile: &Config) -> String {
        match e {
            ReplError::OutOfMemory => format!(
                "{e}: {} ({}). Files in /tmp and the working directory count toward it",
                human_bytes(profile.docker.memory_limit),
                memory_key(profile)
            ),
            _ => e.to_string(),
        }
    }

    /// A `MemoryError` in the cell: say which limit it hit.
    fn explain_memory_error(&self, result: &mut ExecResult, survived: &str, profile: &Config) {
        let hit = result
            .error
            .as_ref()
            .is_some_and(|e| e.kind.contains("MemoryError"));
        if hit && result.notice.is_none() {
            let d = &profile.docker;
            result.notice = Some(format!(
                "The code ran out of memory: the sandbox may hold about {} of data \
                 ({} {} less room for the helper; files in /tmp and the working \
                 directory count toward it).{survived}",
                human_bytes(sandbox::data_limit(d.memory_limit)),
                memory_key(profile),
                human_bytes(d.memory_limit)
            ));
        }
    }

    /// Run code once in a fresh container that nothing else uses, removed afterwards.
    /// `packages` are installed into that sandbox first.
    pub async fn execute_transient(
        &self,
        code: &str,
        state: Option<&serde_json::Map<String, serde_json::Value>>,
        packages: &[String],
        files: &BTreeMap<String, Vec<u8>>,
        client: &Client,
        call: &CallContext,
    ) -> Result<ExecResult, ExecError> {
        let _call = self.admit(Operation::RunTransient, None, client)?;
        let requirements = run_requirements(packages)?;
        let profile = self.profile_config(call.profile.as_deref())?;
        let limits = self.limits(call, &profile)?;
        let list = self.admit_network(call.network.as_deref())?;
        let inputs = self
            .transient_inputs(files)
            .map_err(|e| ExecError::Files(Box::new(e)))?;
        tracing::debug!(%client, "transient run");
        let started = Instant::now();
        let pool = self.pool_for_profile(client, &profile);
        let mut sandbox = pool.acquire(client).await?;
        let installed = match self
            .install_for_run(&requirements, &sandbox.volume, None, "this run")
            .await
        {
            Ok(installed) => installed,
            Err(e) => {
                pool.discard(sandbox);
                return Err(ExecError::Packages(Box::new(e)));
            }
        };
        if let Err(e) = self.write_inputs(&mut sandbox.repl, &inputs).await {
            pool.discard(sandbox);
            return Err(match e {
                FileOpError::File(e) => ExecError::Files(Box::new(e)),
                FileOpError::Session(e) => e,
            });
        }
        // A run with a list: a grant of its own, revoked when the run is done.
        let key = uuid::Uuid::new_v4().to_string();
        if let Some(list) = list.clone() {
            if let Err(e) = self
                .open_network(&mut sandbox.repl, &key, list, client)
                .await
            {
                pool.discard(sandbox);
                return Err(e.into());
            }
            if let Some(egress) = &self.shared.egress {
                egress.attend(&key, call.ask.clone());
            }
        }
        let outcome = sandbox
            .repl
            .execute(
                code,
                state,
                true,
                &limits,
                &call.cancel,
                call.progress.as_ref(),
            )
            .await;
        let mut result = match outcome {
            Ok(outcome) => ExecResult::from_outcome(outcome, ""),
            Err(e) => ExecResult::lost(self.lost_reason_in(&e, &profile), started, &e),
        };
        // The sandbox goes next: its changed files come back embedded.
        if !result.sandbox_lost {
            self.collect_outputs(&mut sandbox.repl, &mut result).await;
        }
        // Single use: whatever happened, this sandbox is never used again.
        pool.discard(sandbox);
        if let (Some(egress), Some(_)) = (&self.shared.egress, &list) {
            result.network = Some(egress.report(&key).await);
            egress.revoke(&key);
        }
        self.explain_memory_error(&mut result, "", &profile);
        result.packages_installed = installed;
        Ok(result)
    }

    /// A call's `network` list held to the operator's ceiling; `None` (or an empty list):
    /// no network. Without a ceiling every pattern is refused, naming `network.allow`.
    fn admit_network(&self, network: Option<&[String]>) -> Result<Option<List>, EgressError> {
        let Some(asked) = network.filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        match &self.shared.egress {
            Some(egress) => egress.admit(asked).map(Some),
            None => Ok(Some(List::admit(&List::default(), List::parse(asked)?)?)),
        }
    }

    /// Grant `key` its list and start the sandbox's forwarder with the grant's secret.
    async fn open_network(
        &self,
        repl: &mut Repl,
        key: &str,
        list: List,
        client: &Client,
    ) -> Result<(), EgressError> {
        let egress = self
            .shared
            .egress
            .as_ref()
            .expect("a list is only admitted with a ceiling");
        let secret = egress.grant(key, list, client).await?;
        let socket = egress.socket_in_sandbox();
        match repl
            .network(Some((&socket, key, &secret)), CONTROL_TIMEOUT)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                egress.revoke(key);
                Err(EgressError::Forwarder(e.to_string()))
            }
        }
    }

    /// Install a run's `packages` into `volume`; nothing to do without any.
    async fn install_for_run(
        &self,
        requirements: &[Requirement],
        volume: &str,
        session: Option<&str>,
        target: &str,
    ) -> Result<Vec<String>, InstallError> {
        if requirements.is_empty() {
            return Ok(Vec::new());
        }
        let r = self
            .run_installer(requirements, volume, session, target.to_string())
            .await?;
        Ok(r.installed)
    }

    /// Run code in a session; without an id, start a new session first.
    pub async fn execute_persistent(
        &self,
        code: &str,
        session_id: Option<&str>,
        packages: &[String],
        client: &Client,
        call: &CallContext,
    ) -> Result<ExecResult, ExecError> {
        let admitted = self.admit(Operation::RunInSession, session_id, client)?;
        let requirements = run_requirements(packages)?;
        let asked = call.profile.as_deref();
        // A session keeps the profile of its first call.
        let profile = self.profile_config(asked)?;
        // A new session's list is held to the ceiling before anything is made.
        let network = call.network.as_deref();
        let first = match session_id {
            None => self.admit_network(network)?,
            Some(_) => None,
        };
        let session = match session_id {
            Some(id) => self.session(id, client).await?,
            None => self.new_session(client, &profile).await?,
        };
        let profile = match asked {
            Some(asked) if asked != session.profile => {
                return Err(ProfileError::Switch {
                    session: session.id.clone(),
                    has: session.profile.clone(),
                    asked: clip(asked).into(),
                }
                .into())
            }
            _ if session.profile != profile.profile => self
                .profile_config(Some(&session.profile))
                // An adopted session of a profile this server does not know.
                .unwrap_or(profile),
            _ => profile,
        };
        let limits = self.limits(call, &profile)?;
        admitted.set_session(&session.id);
        let mut limits = limits;
        if session_id.is_none() {
            // A durable sandbox ends itself as a session would (the helper's timer).
            limits.lease = self.lease_of(&session);
        }
        // A new session kept a warm sandbox; replace it once this first call is done.
        let _replenish = session_id
            .is_none()
            .then(|| Replenish(self.pool_for_profile(client, &profile)));
        let started = Instant::now();
        let mut guard = session.lock().await;
        let target = format!("session {}", session.id);
        // Packages first (holding the lock: no code runs while they change). An install
        // is not stopped by an end request; the end waits for it.
        self.live(&session, &mut guard)?;
        let installed = self
            .install_for_run(&requirements, &session.volume, Some(&session.id), &target)
            .await
            .map_err(|e| ExecError::Packages(Box::new(e)))?;
        // The session's list: set by its first call, narrowed by a later one, kept by a
        // call without `network`.
        let asked = network.filter(|n| !n.is_empty());
        let granted = match (first, asked, session_id) {
            (Some(list), _, None) => {
                let repl = self.live(&session, &mut guard)?;
                self.open_network(repl, &session.id, list, client)
                    .await
                    .map(|_| ())
            }
            (_, Some(asked), Some(_)) => match &self.shared.egress {
                Some(egress) => match egress.narrow(&session.id, asked) {
                    Ok(list) => egress.grant(&session.id, list, client).await.map(|_| ()),
                    Err(e) => Err(e),
                },
                None => self.admit_network(Some(asked)).map(|_| ()),
            },
            // A session with a list: its proxy must run (a dead one starts again, and gets
            // every grant).
            _ => match &self.shared.egress {
                Some(egress) if egress.has_grant(&session.id) => egress.warm().await,
                _ => Ok(()),
            },
        };
        if let Err(e) = granted {
            if session_id.is_none() {
                // Nobody has this session's id yet: it goes with the error.
                let why = EndReason::Lost(format!("its network could not be set up: {e}"));
                self.end_session(&session, &mut guard, why);
            }
            return Err(e.into());
        }
        if let Some(egress) = &self.shared.egress {
            egress.attend(&session.id, call.ask.clone());
        }
        let repl = self.live(&session, &mut guard)?;
        let outcome = tokio::select! {
            outcome = repl.execute(code, None, false, &limits, &call.cancel, call.progress.as_ref()) => Some(outcome),
            // Cleanup or shutdown: the sandbox goes now, the call reports why.
            _ = session.ending() => None,
            // Shutdown of a durable session's daemon: the code goes on in the sandbox.
            _ = session.detached() => {
                return Ok(ExecResult {
                    session_id: Some(session.id.clone()),
                    cancelled: true,
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                    notice: Some(format!(
                        "The server shut down while this code ran. The session lives on (the \
                         code too, until it ends or times out): call execute-persistent with \
                         session_id {} on the next server to get this call's result and \
                         continue with every variable.",
                        session.id
                    )),
                    ..ExecResult::default()
                });
            }
        };
        let survived = " The session is still alive with every variable defined before.";
        let network = match &self.shared.egress {
            Some(egress) if egress.has_grant(&session.id) => Some(egress.report(&session.id).await),
            _ => None,
        };
        let mut result = match outcome {
            Some(Ok(outcome)) => ExecResult::from_outcome(outcome, survived),
            failed => {
                let error = match failed {
                    Some(Err(e)) => e,
                    _ => ReplError::Died("the session was asked to end".into()),
                };
                let why = session
                    .end_requested()
                    .unwrap_or_else(|| EndReason::Lost(self.lost_reason_in(&error, &profile)));
                self.end_session(&session, &mut guard, why.clone());
                ExecResult::lost(
                    format!("Session {} is gone: {why}. Variables are lost; call execute-persistent without session_id to start a new session.", session.id),
                    started,
                    &error,
                )
            }
        };
        self.explain_memory_error(&mut result, survived, &profile);
        for change in &mut result.files_changed {
            change.uri = Some(crate::files::session_uri(&session.id, &change.path));
        }
        result.session_id = Some(session.id.clone());
        result.packages_installed = installed;
        result.previous_call = session.take_notice();
        result.network = network;
        drop(guard);
        self.restamp(&session);
        Ok(result)
    }

    /// Forget a session's variables and imports; its sandbox, files and packages stay.
    pub async fn reset_session(&self, id: &str, client: &Client) -> Result<(), ExecError> {
        let _call = self.admit(Operation::ResetSession, Some(id), client)?;
        let session = self.session(id, client).await?;
        let mut guard = session.lock().await;
        let repl = self.live(&session, &mut guard)?;
        repl.reset(CONTROL_TIMEOUT)
            .await
            .map_err(|e| ExecError::Broken(clip(id).into(), e.to_string()))
    }

    /// A session's variables with their types and short reprs.
    pub async fn list_variables(
        &self,
        id: &str,
        client: &Client,
    ) -> Result<Vec<Variable>, ExecError> {
        let _call = self.admit(Operation::ListVariables, Some(id), client)?;
        let session = self.session(id, client).await?;
        let mut guard = session.lock().await;
        let repl = self.live(&session, &mut guard)?;
        repl.variables(CONTROL_TIMEOUT)
            .await
            .map_err(|e| ExecError::Broken(clip(id).into(), e.to_string()))
    }

    /// `client`'s session `id`. Another client's session is unknown, like one that never
    /// existed: the same error, the same text. A durable session this daemon does not hold
    /// is adopted (see [`Engine::adopt`]).
    async fn session(&self, id: &str, client: &Client) -> Result<Arc<Session>, ExecError> {
        let s = &self.shared;
        if let Some(session) = s.sessions.get(id, client) {
            // Every call is a use: the name's deadline follows (at most every so often).
            self.restamp(&session);
            return Ok(session);
        }
        if !s.durable
            || !durable::is_session_id(id)
            || s.sessions.ended_because(id, client).is_some()
        {
            return Err(self.ended(id, client));
        }
        let _one = s.adopting.lock().await;
        if let Some(session) = s.sessions.get(id, client) {
            return Ok(session);
        }
        self.adopt(id, client).await
    }

    /// Whose sessions `client`'s are, across daemons: the scope, the OS user, the client.
    fn owner_key(&self, client: &Client) -> OwnerKey {
        OwnerKey::new(&self.shared.config.session.scope, self.shared.uid, client)
    }

    /// How a durable session's sandbox ends itself: `session.idle_timeout` after its last
    /// request, and at its hard end.
    fn lease_of(&self, session: &Session) -> Option<crate::repl::Lease> {
        let c = &self.shared.config.session;
        session.durable.as_ref().map(|_| crate::repl::Lease {
            idle: c.idle_timeout,
            until: session.started_at.saturating_add(c.max_lifetime.as_secs()),
        })
    }

    /// Take over `client`'s durable session `id` from the daemon that held it before (it
    /// exited or died): find its container by name, check the owner (another owner's is
    /// unknown, exactly like an id that never existed) and that no live daemon holds it,
    /// claim it in the helper's `hello` (of two daemons, one wins; see [`Repl::take`]),
    /// rename it, and hear from the helper what the previous daemon missed.
    async fn adopt(&self, id: &str, client: &Client) -> Result<Arc<Session>, ExecError> {
        let s = &self.shared;
        let unknown = || ExecError::NoSuchSession(clip(id).into());
        let adoption = |why: String| ExecError::Adoption {
            id: clip(id).into(),
            why,
        };
        let key = self.owner_key(client);
        let found = s
            .backend
            .named(&format!("{}{id}.", durable::PREFIX))
            .await
            .map_err(|e| adoption(e.to_string()))?;
        let Some((container, name)) = found.into_iter().filter(|c| c.running).find_map(|c| {
            let n = SessionName::parse(&c.name)?;
            (n.session == id && n.owner == key.as_str()).then_some((c, n))
        }) else {
            return Err(unknown());
        };
        if let Some(h) = name
            .holder
            .as_ref()
            .filter(|h| **h != s.holder && h.alive(&s.holder))
        {
            return Err(ExecError::Held {
                id: clip(id).into(),
                holder: h.to_string(),
            });
        }
        self.reserve_slot(client)?;
        let taken = self.take_over(id, client, &container, &name).await;
        if taken.is_err() {
            s.slots.release(client);
        }
        taken
    }

    async fn take_over(
        &self,
        id: &str,
        client: &Client,
        container: &crate::runtime::Named,
        name: &SessionName,
    ) -> Result<Arc<Session>, ExecError> {
        let s = &self.shared;
        let c = &s.config.session;
        let started = Instant::now();
        let adoption = |why: String| ExecError::Adoption {
            id: clip(id).into(),
            why,
        };
        let now = durable::now();
        let claimed = SessionName {
            holder: Some(s.holder.clone()),
            until: durable::until(now, c.idle_timeout, container.created, c.max_lifetime),
            ..name.clone()
        }
        .render();
        // The helper decides which of two adopting daemons wins; the name follows.
        let token = durable::ClaimedName::new(&s.holder).render();
        let (mut repl, resumed) =
            match Repl::take(&s.backend, &container.id, &token, CONTROL_TIMEOUT, |by| {
                durable::claim_gone(by, &s.holder)
            })
            .await
            {
                Ok(taken) => taken,
                Err(ReplError::Claimed(by)) => {
                    let holder = by
                        .as_deref()
                        .and_then(durable::ClaimedName::parse)
                        .map(|c| c.holder.to_string())
                        .unwrap_or_else(|| "another server, which adopted it a moment ago".into());
                    return Err(ExecError::Held {
                        id: clip(id).into(),
                        holder,
                    });
                }
                Err(e) => return Err(adoption(e.to_string())),
            };
        // Won: the name says so (for the sweep and for `cleanup`), and the package
        // volume is found, while the helper is asked about the call cut off.
        let (renamed, volume) = tokio::join!(
            s.backend.rename(&container.name, &claimed),
            s.backend
                .volume_at(&container.id, sandbox::SESSION_PACKAGES)
        );
        let claimed = match renamed {
            Ok(true) => claimed,
            Ok(false) => return Err(adoption("its container went away".into())),
            // The helper's claim is what holds it; the name is only late.
            Err(e) => {
                tracing::warn!(session_id = %id, error = %e, "could not rename an adopted session's container");
                container.name.clone()
            }
        };
        let volume = match volume {
            Ok(v) => v.unwrap_or_default(),
            // Left held by this daemon: its next attempt, or anyone's once it is gone, takes it.
            Err(e) => {
                return Err(adoption(format!(
                    "its package volume could not be found: {e}"
                )))
            }
        };
        let hard_end = container.created.saturating_add(c.max_lifetime.as_secs());
        // The call cut off first: until it stops, the helper runs nothing else.
        let lease = crate::repl::Lease {
            idle: c.idle_timeout,
            until: hard_end,
        };
        let recovered = match recover_cut_off(&mut repl, resumed).await {
            Ok(notice) => repl.lease(&lease, CONTROL_TIMEOUT).await.map(|()| notice),
            Err(e) => Err(e),
        };
        let notice = match recovered {
            Ok(notice) => notice,
            Err(e) => {
                repl.kill().await;
                return Err(adoption(format!(
                    "its sandbox was lost while the call cut off by the restart was stopped: {}",
                    self.lost_reason(&e)
                )));
            }
        };
        // Its grant was the earlier server's: an adopted session keeps no network (fail
        // closed). The forwarder goes, and with it the proxy variables.
        if s.egress.is_some() {
            if let Err(e) = repl.network(None, ADOPTED_NETWORK_OFF).await {
                tracing::debug!(session_id = %id, error = %e, "could not stop an adopted session's forwarder");
            }
        }
        tracing::info!(session_id = %id, %client, container = %claimed,
            adopt_ms = started.elapsed().as_millis() as u64, "session adopted from an earlier server");
        let session = Arc::new(
            Session::new(
                id.into(),
                client.clone(),
                container.id.clone(),
                volume,
                repl,
            )
            .durable(claimed, now)
            .adopted(container.created, notice)
            .with_profile(
                container
                    .labels
                    .get(sandbox::labels::PROFILE)
                    .map_or(crate::profile::DEFAULT, String::as_str),
            ),
        );
        s.sessions.insert(session.clone());
        Ok(session)
    }

    /// Rename a durable session's container: held by this daemon (`held`) or by none, its
    /// deadline stamped from its last use. False when the engine refused or it is gone.
    async fn rename_session(&self, session: &Session, held: bool) -> bool {
        let s = &self.shared;
        let Some(d) = &session.durable else {
            return false;
        };
        let c = &s.config.session;
        let mut name = d.name.lock().await;
        let last_use = durable::now().saturating_sub(session.idle_secs() as u64);
        let to = SessionName {
            session: session.id.clone(),
            owner: self.owner_key(&session.owner).as_str().into(),
            holder: held.then(|| s.holder.clone()),
            until: durable::until(last_use, c.idle_timeout, session.started_at, c.max_lifetime),
        }
        .render();
        match s.backend.rename(&name, &to).await {
            Ok(true) => {
                *name = to;
                d.stamped
                    .store(last_use.max(1), std::sync::atomic::Ordering::Relaxed);
                true
            }
            Ok(false) => {
                tracing::warn!(session_id = %session.id, container = %name, "the session's container is gone");
                false
            }
            Err(e) => {
                tracing::warn!(session_id = %session.id, error = %e, "could not rename the session's container");
                false
            }
        }
    }

    /// Renew a durable session's deadline in its name when it is a quarter of
    /// `idle_timeout` old: off the reply path, one rename at most every so often.
    fn restamp(&self, session: &Arc<Session>) {
        let Some(d) = &session.durable else {
            return;
        };
        let now = durable::now();
        let stamped = d.stamped.load(std::sync::atomic::Ordering::Relaxed);
        // 0: not claimed yet (the claim stamps it).
        if stamped == 0 || !durable::stale(stamped, now, self.shared.config.session.idle_timeout) {
            return;
        }
        d.stamped.store(now, std::sync::atomic::Ordering::Relaxed);
        let (engine, session) = (self.clone(), session.clone());
        self.shared
            .tasks
            .spawn(async move { engine.rename_session(&session, true).await });
    }

    /// `client`'s sessions: those this daemon holds, and durable ones no live daemon
    /// holds (adopted at their next call), or another live daemon holds.
    pub async fn list_sessions(&self, client: &Client) -> Result<Vec<SessionInfo>, ExecError> {
        let _call = self.admit(Operation::ListSessions, None, client)?;
        let s = &self.shared;
        let now = durable::now();
        let mut out = Vec::new();
        for session in s.sessions.all().into_iter().filter(|x| &x.owner == client) {
            let variables = match session.try_peek() {
                Some(mut guard) => match guard.repl() {
                    Ok(repl) => repl
                        .variables(Duration::from_secs(2))
                        .await
                        .ok()
                        .map(|v| v.len()),
                    Err(_) => continue,
                },
                None => None,
            };
            out.push(SessionInfo {
                session_id: session.id.clone(),
                age_seconds: now.saturating_sub(session.started_at),
                idle_seconds: Some((session.idle_secs() * 10.0).round() / 10.0),
                variables,
                adopted: session.adopted,
                held_by: "this server".into(),
            });
        }
        if s.durable {
            let key = self.owner_key(client);
            let found = s
                .backend
                .named(durable::PREFIX)
                .await
                .map_err(|e| ExecError::Sandbox(e.into()))?;
            for (c, n) in found
                .into_iter()
                .filter(|c| c.running)
                .filter_map(|c| SessionName::parse(&c.name).map(|n| (c, n)))
            {
                if n.owner != key.as_str() || out.iter().any(|i| i.session_id == n.session) {
                    continue;
                }
                let held_by = match &n.holder {
                    Some(h) if h.alive(&s.holder) => format!("another running server ({h})"),
                    _ => "no server: adopted by the next call that names it".into(),
                };
                out.push(SessionInfo {
                    session_id: n.session,
                    age_seconds: now.saturating_sub(c.created),
                    idle_seconds: None,
                    variables: None,
                    adopted: false,
                    held_by,
                });
            }
        }
        out.sort_by_key(|i| std::cmp::Reverse(i.age_seconds));
        Ok(out)
    }

    fn ended(&self, id: &str, client: &Client) -> ExecError {
        match self.shared.sessions.ended_because(id, client) {
            Some(why) => ExecError::Ended {
                id: clip(id).into(),
                why,
            },
            None => ExecError::NoSuchSession(clip(id).into()),
        }
    }

    /// The session's REPL, holding its lock. A session asked to end is ended here, by
    /// the first call to get the lock after the request; an ended one says why.
    fn live<'g>(
        &self,
        session: &Session,
        guard: &'g mut SessionGuard<'_>,
    ) -> Result<&'g mut Repl, ExecError> {
        if let Some(why) = session.end_requested() {
            self.end_session(session, guard, why);
        }
        guard.repl().map_err(|why| ExecError::Ended {
            id: clip(&session.id).into(),
            why,
        })
    }

    /// Reserve a session slot for `client` (a new or an adopted session).
    fn reserve_slot(&self, client: &Client) -> Result<(), ExecError> {
        self.shared
            .slots
            .reserve(client)
            .map_err(|refused| match refused {
                SlotRefusal::Total(max) => ExecError::TooManySessions(max),
                SlotRefusal::PerClient(max) => ExecError::TooManySessionsForClient {
                    client: client.clone(),
                    max,
                },
            })
    }

    async fn new_session(
        &self,
        client: &Client,
        profile: &Config,
    ) -> Result<Arc<Session>, ExecError> {
        let s = &self.shared;
        // Reserve a slot first so concurrent creations cannot overshoot either limit.
        self.reserve_slot(client)?;
        let sandbox = match self.pool_for_profile(client, profile).acquire(client).await {
            Ok(sandbox) => sandbox,
            Err(e) => {
                s.slots.release(client);
                return Err(e.into());
            }
        };
        let id = uuid::Uuid::new_v4().to_string();
        // Off the reply path, and no `.await` here: a call cancelled between the pool's
        // hand-over and the insert below would otherwise leak the sandbox and the slot.
        let (backend, container, claimed) =
            (s.backend.clone(), sandbox.repl.id.clone(), id.clone());
        s.tasks
            .spawn(async move { backend.claim(&container, &claimed).await });
        tracing::info!(session_id = %id, %client, container = %sandbox.repl.name, python = %sandbox.repl.python, "session started");
        let warm_name = sandbox.repl.name.clone();
        let renamed = sandbox.renamed;
        let mut session = Session::new(
            id,
            client.clone(),
            sandbox.repl.id.clone(),
            sandbox.volume,
            sandbox.repl,
        )
        .with_profile(&profile.profile);
        if s.durable {
            session = session.durable(warm_name, 0);
        }
        let session = Arc::new(session);
        s.sessions.insert(session.clone());
        if s.durable {
            // The claim: the warm sandbox's name becomes the session's (off the reply path),
            // once the pool's own rename of it is done.
            let (engine, claimed) = (self.clone(), session.clone());
            s.tasks.spawn(async move {
                if let Some(renamed) = renamed {
                    let _ = renamed.await;
                }
                engine.rename_session(&claimed, true).await
            });
        }
        Ok(session)
    }

    /// End a session: the one place a session's life ends, and it needs the session's
    /// lock. The first call does everything, exactly once: the state becomes `Ended(why)`,
    /// the id is remembered with `why`, the slot is freed, and the container and then the
    /// volume are removed (the returned task). Later calls do nothing.
    fn end_session(
        &self,
        session: &Session,
        guard: &mut SessionGuard<'_>,
        why: EndReason,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let state = guard.state_mut();
        if matches!(state, State::Ended(_)) {
            return None;
        }
        let State::Live(repl) = std::mem::replace(state, State::Ended(why.clone())) else {
            unreachable!("checked above")
        };
        self.shared.sessions.forget(session, &why);
        self.shared.slots.release(&session.owner);
        if let Some(egress) = &self.shared.egress {
            egress.revoke(&session.id);
        }
        tracing::info!(session_id = %session.id, client = %session.owner, %why, "session ended");
        let backend = self.shared.backend.clone();
        let (container, volume) = (session.container.clone(), session.volume.clone());
        // Close the connection first: a reader that stopped reading (its caller went
        // away) would otherwise keep the engine from finishing the container.
        drop(repl);
        // An adopted session mounted its first daemon's shared volume: once the session is
        // gone, nothing may use it any more, and the sweep takes it (and anything else a
        // dead daemon left) now rather than at the next periodic sweep.
        let sweep = session.adopted.then(|| self.clone());
        Some(self.shared.tasks.spawn(async move {
            backend.remove(&container).await;
            backend.remove_volume(&volume).await;
            if let Some(engine) = sweep {
                let _ = engine.sweep(false, false).await;
            }
        }))
    }

    /// End sessions nobody has used for `session.idle_timeout`, until shutdown.
    async fn expire_idle_sessions(self) {
        let limit = self.shared.config.session.idle_timeout;
        let every = (limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        // The backstop sweep (durable sessions past their expiry, whoever made them).
        let sweep_every = (limit / 2).clamp(Duration::from_secs(2), Duration::from_secs(60));
        let mut swept = Instant::now();
        loop {
            tokio::select! {
                _ = self.shared.stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if self.shared.durable && swept.elapsed() >= sweep_every {
                swept = Instant::now();
                match self.sweep(false, false).await {
                    Ok(found) if found.containers + found.volumes > 0 => tracing::info!(
                        containers = found.containers, volumes = found.volumes, names = ?found.removed,
                        "removed expired sessions and what dead daemons left"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "the backstop sweep could not list"),
                }
            }
            for session in self.shared.sessions.all() {
                if session.idle_for() <= limit {
                    continue;
                }
                // Idle means nobody holds it; if someone just took it, it is not idle.
                if let Some(mut guard) = session.try_lock() {
                    self.end_session(&session, &mut guard, EndReason::Idle(limit));
                }
            }
        }
    }

    /// End a session: its container and volume are removed; later calls are told so. A
    /// call running in it is stopped at once; an install into it is waited for.
    pub async fn cleanup_session(&self, id: &str, client: &Client) -> Result<(), CleanupError> {
        let _call = self.admit(Operation::EndSession, Some(id), client)?;
        // A durable session this daemon does not hold is adopted first, then ended.
        let session = match self.session(id, client).await {
            Ok(session) => session,
            Err(ExecError::Ended { why, .. }) => {
                return Err(CleanupError::AlreadyEnded {
                    id: clip(id).into(),
                    why,
                })
            }
            Err(ExecError::NoSuchSession(_)) => {
                return Err(CleanupError::NoSuchSession(clip(id).into()))
            }
            Err(e) => return Err(CleanupError::Adoption(Box::new(e))),
        };
        session.request_end(EndReason::CleanedUp);
        let mut guard = session.lock().await;
        let why = session.end_requested().expect("requested above");
        // None: a call that held the lock ended it first, for this same request.
        if let Some(removal) = self.end_session(&session, &mut guard, why) {
            drop(guard);
            let _ = removal.await;
        }
        Ok(())
    }

    /// Install a requirement into a session, or into the shared environment that
    /// transient runs and sessions see.
    pub async fn install_package(
        &self,
        packages: &[String],
        session_id: Option<&str>,
        client: &Client,
    ) -> Result<InstallResult, InstallError> {
        let _call = self.admit(Operation::Install, session_id, client)?;
        let requirements = parse_requirements(packages)?;
        match session_id {
            Some(id) => {
                let session = self.session(id, client).await?;
                // Holding the session's lock: no code runs in it while packages change, and
                // an ended session's volume is never touched again.
                let mut guard = session.lock().await;
                self.live(&session, &mut guard)?;
                let target = format!("session {id}");
                self.run_installer(&requirements, &session.volume, Some(id), target)
                    .await
            }
            None => {
                let pool = self.shared_environment_of(client);
                let volume = pool.shared_volume().await?.to_string();
                let _one_at_a_time = self.shared.shared_install.lock().await;
                self.run_installer(&requirements, &volume, None, "shared environment".into())
                    .await
            }
        }
    }

    /// Installed distributions as a session sees them (its own, shared, the image's), or,
    /// without a session, as a new sandbox sees them (shared and the image's).
    pub async fn list_packages(
        &self,
        session_id: Option<&str>,
        client: &Client,
    ) -> Result<Vec<Package>, ExecError> {
        let _call = self.admit(Operation::ListPackages, session_id, client)?;
        match session_id {
            Some(id) => {
                let session = self.session(id, client).await?;
                let mut guard = session.lock().await;
                let repl = self.live(&session, &mut guard)?;
                repl.packages(CONTROL_TIMEOUT)
                    .await
                    .map_err(|e| ExecError::Broken(clip(id).into(), e.to_string()))
            }
            None => {
                let pool = self.pool_for(client);
                let mut sandbox = pool.acquire(client).await?;
                let listed = sandbox.repl.packages(CONTROL_TIMEOUT).await;
                pool.discard(sandbox);
                listed.map_err(|e| ExecError::Broken("(new sandbox)".into(), e.to_string()))
            }
        }
    }

    async fn run_installer(
        &self,
        requirements: &[Requirement],
        volume: &str,
        session: Option<&str>,
        target: String,
    ) -> Result<InstallResult, InstallError> {
        let c = &self.shared.config;
        let wanted = || {
            requirements
                .iter()
                .map(|r| r.spec.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        self.shared
            .cache_volume
            .get_or_try_init(|| async {
                let labels = Owner::cache_labels();
                self.shared
                    .backend
                    .create_volume(sandbox::CACHE_VOLUME, &labels)
                    .await
            })
            .await?;
        let cmd = install::installer_command(&c.package, requirements);
        let spec = sandbox::installer_spec(c, &self.shared.owner, session, volume, cmd);
        let started = Instant::now();
        let begun = epoch_seconds();
        tracing::info!(requirements = %wanted(), %target, "installing");
        let finished = match self
            .shared
            .backend
            .run_until_exit(&spec, c.package.timeout)
            .await
        {
            Ok((f, id)) if f.exit_code == 0 => {
                // It has exited: its removal need not delay a success.
                let backend = self.shared.backend.clone();
                self.shared
                    .tasks
                    .spawn(async move { backend.remove(&id).await });
                f
            }
            Ok((f, id)) => {
                // A failure is reported with its installer already gone, so a caller
                // that looks finds nothing left, and a retry starts clean.
                self.shared.backend.remove(&id).await;
                f
            }
            Err(RuntimeError::Timeout(timeout)) => {
                return Err(InstallError::TimedOut {
                    requirement: wanted(),
                    timeout,
                });
            }
            Err(e) => return Err(e.into()),
        };
        tracing::debug!(
            requirements = %wanted(),
            %target,
            exit_code = finished.exit_code,
            timing = %install::timing_breakdown(&finished.stdout, begun, epoch_seconds()),
            "install timing"
        );
        if finished.exit_code != 0 {
            let mut summary = install::pip_failure_summary(&finished.stdout, &finished.stderr);
            if let Some(hint) = install::failure_hint(&summary, c.package.only_binary) {
                summary = format!("{summary}\n{hint}");
            }
            return Err(InstallError::Failed {
                requirement: wanted(),
                summary,
            });
        }
        let output = format!("{}\n{}", finished.stdout, finished.stderr);
        Ok(InstallResult {
            requirements: requirements.iter().map(|r| r.spec.clone()).collect(),
            target,
            installed: install::installed_from_pip_output(&output),
            cached: install::cached_from_output(&output),
            installer: install::installer_used(&finished.stdout),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// Remove containers and volumes left by earlier daemons on this host that are no
    /// longer running (killed with SIGKILL, or a crash). Live daemons' objects, other
    /// hosts' objects and anything without our labels are left alone.
    pub async fn reap_orphans(&self) -> Result<usize, RuntimeError> {
        let swept = self.sweep_orphans(false).await?;
        let removed = swept.containers + swept.volumes;
        if removed > 0 {
            tracing::info!(
                containers = swept.containers,
                volumes = swept.volumes,
                "removed containers and volumes of daemons that are gone"
            );
        }
        Ok(removed)
    }

    /// Find the containers and volumes of daemons that are gone (by the backend's orphan
    /// policy), and remove them unless `dry_run` (`python-docker-mcp cleanup`).
    pub async fn sweep_orphans(&self, dry_run: bool) -> Result<Swept, RuntimeError> {
        self.sweep(dry_run, false).await
    }

    /// One line per container any daemon left on this engine: its name, role, who owns
    /// or holds it, and when it ends (for `cleanup`).
    pub async fn inventory(&self) -> Result<Vec<String>, RuntimeError> {
        let s = &self.shared;
        let now = durable::now();
        let c = &s.config;
        let mut lines = Vec::new();
        for item in s.backend.named("").await? {
            let role = item
                .labels
                .get(sandbox::labels::ROLE)
                .map_or("?", String::as_str);
            let line = match SessionName::parse(&item.name) {
                Some(n) => {
                    let held = match &n.holder {
                        Some(h) if h.alive(&s.holder) => format!("held by {h}"),
                        Some(_) => "held by a server that is gone".to_string(),
                        None => "free".to_string(),
                    };
                    let end = n.until.min(
                        item.created
                            .saturating_add(c.session.max_lifetime.as_secs()),
                    );
                    format!(
                        "session  {}  owner {}  {held}  expires in {}",
                        n.session,
                        n.owner,
                        seconds(end.saturating_sub(now))
                    )
                }
                None if durable::WarmName::parse(&item.name).is_some() => {
                    let end =
                        item.created + (c.docker.pool_max_age + sandbox::WARM_EXIT_SLACK).as_secs();
                    format!(
                        "warm     {}  the host's pool, no server's  ends by itself within {}",
                        item.name,
                        seconds(end.saturating_sub(now))
                    )
                }
                None if role == sandbox::Role::Egress.as_str() => {
                    let pid = item
                        .labels
                        .get(sandbox::labels::PID)
                        .map_or("?", String::as_str);
                    format!(
                        "{role:<8} {}  made by pid {pid}  ends with its server (its stdin closes), else by the sweep",
                        item.name
                    )
                }
                None => {
                    let pid = item
                        .labels
                        .get(sandbox::labels::PID)
                        .map_or("?", String::as_str);
                    let end =
                        item.created + (c.docker.pool_max_age + sandbox::WARM_EXIT_SLACK).as_secs();
                    format!(
                        "{role:<8} {}  made by pid {pid}  ends by itself within {}",
                        item.name,
                        seconds(end.saturating_sub(now))
                    )
                }
            };
            lines.push(line);
        }
        Ok(lines)
    }

    /// The sweep: orphans of dead daemons, and durable sessions past their expiry that no
    /// live daemon holds (the backstop); with `all`, everything of this host.
    pub async fn sweep(&self, dry_run: bool, all: bool) -> Result<Swept, RuntimeError> {
        let s = &self.shared;
        let sweep = Sweep {
            holder: &s.holder,
            max_lifetime: s.config.session.max_lifetime,
            warm_max_age: s.config.docker.pool_max_age + sandbox::WARM_EXIT_SLACK * 2,
            dry_run,
            all,
        };
        s.backend.sweep_orphans(&s.owner, &sweep).await
    }

    /// A one-line summary of the limits sandboxes run under, for logs and docs.
    pub fn describe_sandbox(&self) -> String {
        let d = &self.shared.config.docker;
        format!(
            "image {}, user {}, memory {}, cpus {}, pids {}, network {}, root {}",
            d.image,
            d.user,
            human_bytes(d.memory_limit),
            d.cpu_limit,
            d.pids_limit,
            if d.network_disabled { "none" } else { "bridge" },
            if d.read_only { "read-only" } else { "writable" },
        )
    }

    /// The first step of a shutdown: admit no new call, and let the running ones finish
    /// for up to `timeout`, or until `cut` completes (a second signal; the client gone),
    /// whichever comes first. Each call still running then is logged with its tool,
    /// session and how long it ran, and returned; [`Engine::shutdown`] interrupts them.
    pub async fn drain(
        &self,
        timeout: Duration,
        cut: impl Future<Output = String>,
    ) -> Vec<Running> {
        let calls = &self.shared.calls;
        calls.close();
        let running = calls.running();
        if running.is_empty() {
            return running;
        }
        tracing::info!(
            calls = running.len(),
            drain_timeout = %humantime::format_duration(timeout),
            "draining: no new calls; waiting for the running ones to finish"
        );
        let started = Instant::now();
        let why = tokio::select! {
            _ = calls.idle() => None,
            _ = tokio::time::sleep(timeout) => Some(format!(
                "server.drain_timeout ({}) passed",
                humantime::format_duration(timeout)
            )),
            why = cut => Some(why),
        };
        let left = calls.running();
        match why {
            _ if left.is_empty() => tracing::info!(
                waited_ms = started.elapsed().as_millis() as u64,
                "drained: every running call finished"
            ),
            why => {
                let why = why.unwrap_or_else(|| "the drain ended".into());
                for call in &left {
                    tracing::warn!(
                        operation = %call.operation,
                        session_id = call.session.as_deref().unwrap_or("-"),
                        client = %call.client,
                        ran_for = %format!("{:.1}s", call.elapsed().as_secs_f64()),
                        "cut short by shutdown: {why}"
                    );
                }
            }
        }
        left
    }

    /// Remove every container and volume this daemon created, interrupting whatever
    /// still runs (after [`Engine::drain`], or at once). Bounded by `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let s = &self.shared;
        s.calls.close();
        s.stop.cancel();
        let pools = self.pools();
        for pool in &pools {
            pool.close();
        }
        let sessions = s.sessions.all();
        // Durable sessions stay, released (their names say no daemon holds them), with
        // their volumes and the shared ones they mount; everything else goes.
        let mut keep = std::collections::HashSet::new();
        if s.durable {
            for session in &sessions {
                keep.insert(session.container.clone());
                keep.insert(session.volume.clone());
            }
            // Sessions and the host pool's warm sandboxes mount the shared volumes.
            if !sessions.is_empty() || pools.iter().any(Pool::shared_by_host) {
                keep.extend(pools.iter().map(|p| p.volume_name().to_string()));
            }
        } else {
            for session in &sessions {
                session.request_end(EndReason::ShutDown);
            }
        }
        if s.durable {
            for session in &sessions {
                session.detach();
            }
        }
        let work = async {
            if let Some(egress) = &s.egress {
                egress.shutdown().await;
            }
            if s.durable {
                let released = futures::future::join_all(
                    sessions.iter().map(|x| self.rename_session(x, false)),
                )
                .await;
                let kept = released.iter().filter(|r| **r).count();
                if kept > 0 {
                    tracing::info!(
                        sessions = kept,
                        "left the sessions running for the next server to adopt (session.durable)"
                    );
                }
            }
            // Only talk to Docker if this daemon ever did. Removing the containers first
            // also stops installs, so no session's lock is held for long.
            if pools.iter().any(Pool::used_docker) {
                match s.backend.remove_instance(&s.owner.instance, &keep).await {
                    Ok(n) => tracing::info!(containers = n, "removed this instance's containers"),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not list containers to remove at shutdown")
                    }
                }
            }
            // Running calls stop at the request; each session is then ended by its owner.
            if !s.durable {
                for session in &sessions {
                    let mut guard = session.lock().await;
                    self.end_session(session, &mut guard, EndReason::ShutDown);
                }
            }
            s.tasks.close();
            s.tasks.wait().await;
            // A creation that was under way when the instance's volumes were removed may
            // have mounted a shared volume by name after it went, and Docker then makes
            // one, unlabelled. Every task is done now: remove them by name once more.
            if pools.iter().any(Pool::used_docker) && (keep.is_empty() || sessions.is_empty()) {
                for pool in pools.iter().filter(|p| !p.shared_by_host()) {
                    s.backend.remove_volume(pool.volume_name()).await;
                }
            }
        };
        if tokio::time::timeout(grace, work).await.is_err() {
            tracing::warn!(?grace, "shutdown cleanup did not finish in time; some containers may remain (they exit on their own when their stdin closes)");
        }
    }
}

/// One of a client's sessions (`list-sessions`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionInfo {
    pub session_id: String,
    /// Seconds since the session started.
    pub age_seconds: u64,
    /// Seconds since its last call ended (0 while one runs); null when this server does
    /// not hold it.
    pub idle_seconds: Option<f64>,
    /// How many variables it holds; null when it is busy or held elsewhere.
    pub variables: Option<usize>,
    /// This server took it over from an earlier one (a restart).
    pub adopted: bool,
    /// `this server`; no server (the next call that names it adopts it); or another
    /// running server, named.
    pub held_by: String,
}

/// What became of the call a previous daemon had in flight, as a line for the next
/// result: its kept result, or what it had produced when it was stopped now.
async fn recover_cut_off(
    repl: &mut Repl,
    resumed: crate::repl::Resumed,
) -> Result<Option<String>, ReplError> {
    let (at, running) = match (resumed.running, resumed.kept) {
        (Some(r), _) => (r.at, true),
        (None, Some(k)) => (k.at, false),
        (None, None) => return Ok(None),
    };
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs_f64(at.max(0.0)),
    );
    Ok(Some(match repl.recover(resumed).await? {
        Some(reply) if running => format!(
            "The call that was running when the previous server stopped (it started at {when}) \
             was cut off by the restart and has been interrupted. What it produced:\n{}",
            summary(&ExecResult::from_reply(reply))
        ),
        Some(reply) => format!(
            "The previous server stopped before it returned its last call's result (the call \
             finished at {when}). That result:\n{}",
            summary(&ExecResult::from_reply(reply))
        ),
        None => format!(
            "A call in flight when the previous server stopped ({when}) was cut off by the \
             restart; its result was not kept."
        ),
    }))
}

/// A duration in whole seconds, for people.
fn seconds(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// A short account of a result: its output's last 4000 characters, value and error.
fn summary(r: &ExecResult) -> String {
    let mut parts = Vec::new();
    let out = r.stdout.trim_end();
    if !out.is_empty() {
        let skip = out.chars().count().saturating_sub(4000);
        let tail: String = out.chars().skip(skip).collect();
        parts.push(format!("stdout:\n{tail}"));
    }
    if let Some(v) = &r.value {
        parts.push(format!("Result: {v}"));
    }
    if let Some(e) = &r.error {
        parts.push(format!("Error: {}: {}", e.kind, e.message));
    }
    if parts.is_empty() {
        parts.push("(no output)".into());
    }
    parts.join("\n")
}

/// Refills the pool when dropped, after the call that took a sandbox has finished.
struct Replenish(Pool);

impl Drop for Replenish {
    fn drop(&mut self) {
        self.0.replenish();
    }
}

/// The `packages` of an execution, validated; none is fine.
fn run_requirements(packages: &[String]) -> Result<Vec<Requirement>, ExecError> {
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    Ok(parse_requirements(packages)?)
}

/// Validate every requirement before anything runs; at least one is needed.
fn parse_requirements(packages: &[String]) -> Result<Vec<Requirement>, RequirementError> {
    if packages.is_empty() {
        return Err(RequirementError::Empty);
    }
    packages
        .iter()
        .map(|p| install::parse_requirement(p))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_execution_has_one_outcome_and_the_time_out_wins() {
        use crate::metrics::{Outcome, RunReport as _};
        let mut r = super::ExecResult::default();
        assert_eq!(r.outcome(), Outcome::Ok);
        r.error = Some(crate::repl::PyError {
            kind: "ZeroDivisionError".into(),
            message: "division by zero".into(),
            traceback: String::new(),
        });
        assert_eq!(r.outcome(), Outcome::Error);
        r.sandbox_lost = true;
        assert_eq!(r.outcome(), Outcome::SandboxLost);
        r.timed_out = true;
        assert_eq!(r.outcome(), Outcome::Timeout);
    }

    use super::*;

    #[test]
    fn a_calls_timeout_is_used_up_to_the_cap_and_refused_above_it() {
        let (default, cap) = (Duration::from_secs(30), Duration::from_secs(1800));
        assert_eq!(run_timeout(None, default, cap), Ok(default));
        assert_eq!(
            run_timeout(Some(2.5), default, cap),
            Ok(Duration::from_millis(2500))
        );
        assert_eq!(run_timeout(Some(1800.0), default, cap), Ok(cap));
        let above = run_timeout(Some(1801.0), default, cap).unwrap_err();
        let text = above.to_string();
        assert!(
            text.contains("docker.max_timeout") && text.contains("30m") && text.contains("1800"),
            "{text}"
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(run_timeout(Some(bad), default, cap).is_err(), "{bad}");
        }
    }
}
