//! The two ways to run code: `execute-transient` (a fresh sandbox, used once) and
//! `execute-persistent` (a session's sandbox), with their result ([`ExecResult`]), their
//! error ([`ExecError`]), the per-call time-out and the call's network list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;
use tokio::sync::mpsc;

use super::files::Input;
use super::install::parse_requirements;
use super::{Engine, FileOpError, InstallError, CONTROL_TIMEOUT};
use crate::calls::{Operation, ShuttingDown};
use crate::client::Client;
use crate::config::{human_bytes, Config};
use crate::egress::daemon::{AskUser, EgressError, NetworkReport};
use crate::egress::policy::List;
use crate::files::{FileChange, FileData, FileError};
use crate::install::{Requirement, RequirementError};
use crate::pool::{AcquireError, Pool, Sandbox};
use crate::profile::ProfileError;
use crate::repl::{
    Died, ExecLimits, Interrupt, Outcome, OutputChunk, PeakScope, PyError, Repl, ReplError, Reply,
};
use crate::runtime::RuntimeError;
use crate::sandbox::{self};
use crate::session::{EndReason, Lost, Session, SessionGuard};
use crate::text::clip;
use tokio_util::sync::CancellationToken;

/// How many figures one call returns, and how large each may be.
pub(super) const MAX_FIGURES: u64 = 4;
pub(super) const MAX_FIGURE_BYTES: u64 = 2 * 1024 * 1024;

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

    pub(super) fn from_reply(reply: Reply) -> ExecResult {
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
    pub(super) fn from_outcome(outcome: Outcome, survived: &str) -> ExecResult {
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

    /// A result whose sandbox is gone (`why`), after a time-out or a cancel that killed it
    /// (see [`killed`]).
    pub(super) fn lost(
        why: String,
        started: Instant,
        timed_out: bool,
        cancelled: bool,
    ) -> ExecResult {
        ExecResult {
            timed_out,
            cancelled,
            sandbox_lost: true,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            notice: Some(why),
            ..ExecResult::default()
        }
    }
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
    Adoption { id: String, why: AdoptionError },
    #[error("session `{id}` has ended: {why}. Call execute-persistent without session_id to start a new one")]
    Ended { id: String, why: EndReason },
    #[error("could not install the requested packages: {0}")]
    Packages(Box<InstallError>),
    /// The session's helper failed a request (`id`: the session, or `(new sandbox)`).
    #[error("session `{id}` did not answer: {why}")]
    Broken { id: String, why: ReplError },
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
    Network(Arc<EgressError>),
    /// The call named a profile this server does not have, or another one than its
    /// session's.
    #[error(transparent)]
    Profile(#[from] ProfileError),
}

impl From<EgressError> for ExecError {
    fn from(e: EgressError) -> Self {
        ExecError::Network(Arc::new(e))
    }
}

/// Whether a lost sandbox was killed after a time-out, or after a cancel.
fn killed(e: &ReplError) -> (bool, bool) {
    (
        matches!(e, ReplError::Killed(Interrupt::Timeout(_))),
        matches!(e, ReplError::Killed(Interrupt::Cancelled)),
    )
}

/// The key a profile's memory limit comes from, for messages.
pub(super) fn memory_key(profile: &Config) -> String {
    match profile.profile.as_str() {
        crate::profile::DEFAULT => "docker.memory_limit".into(),
        name => match profile.profiles.get(name).and_then(|p| p.memory_limit) {
            Some(_) => format!("profiles.{name}.memory_limit"),
            None => "docker.memory_limit".into(),
        },
    }
}

/// Why a durable session an earlier server left could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum AdoptionError {
    /// The engine could not list the session's container.
    #[error("{0}")]
    List(RuntimeError),
    /// Its helper could not be attached to or did not answer the claim.
    #[error("{0}")]
    Claim(ReplError),
    /// Its container went away while it was claimed.
    #[error("its container went away")]
    Gone,
    /// The engine could not say which package volume it mounts.
    #[error("its package volume could not be found: {0}")]
    Volume(RuntimeError),
    /// It was lost while the call cut off by the restart was stopped.
    #[error("its sandbox was lost while the call cut off by the restart was stopped: {0}")]
    CutOffCall(Lost),
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

impl Engine {
    /// The limits of one execution; its time-out is the call's own when it asked for one.
    pub(super) fn limits(
        &self,
        call: &CallContext,
        profile: &Config,
    ) -> Result<ExecLimits, TimeoutError> {
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

    /// How a sandbox was lost, naming the limit when the engine says it was hit.
    pub(super) fn lost(&self, e: ReplError) -> Lost {
        self.lost_in(e, &self.shared.config)
    }

    /// [`Engine::lost`] for a sandbox of `profile`, naming its memory limit.
    pub(super) fn lost_in(&self, e: ReplError, profile: &Config) -> Lost {
        match e {
            ReplError::OutOfMemory => Lost::OutOfMemory {
                limit: profile.docker.memory_limit,
                key: memory_key(profile),
            },
            e => Lost::Repl(Arc::new(e)),
        }
    }

    /// A `MemoryError` in the cell: say which limit it hit.
    pub(super) fn explain_memory_error(
        &self,
        result: &mut ExecResult,
        survived: &str,
        profile: &Config,
    ) {
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
        // A run with a list: a grant of its own, revoked when the run is done.
        let key = uuid::Uuid::new_v4().to_string();
        let prepared = self
            .prepare_transient(
                &mut sandbox,
                &requirements,
                &inputs,
                list.clone(),
                &key,
                client,
            )
            .await;
        let installed = match prepared {
            Ok(installed) => installed,
            Err(e) => {
                pool.discard(sandbox);
                return Err(e);
            }
        };
        if let (Some(egress), Some(_)) = (&self.shared.egress, &list) {
            egress.attend(&key, call.ask.clone());
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
            Err(e) => {
                let (timed_out, cancelled) = killed(&e);
                let why = self.lost_in(e, &profile).to_string();
                ExecResult::lost(why, started, timed_out, cancelled)
            }
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

    /// Ready a transient run's sandbox: its `packages` installed (returned), its input
    /// files written, and its network list granted under `key`. On an error the caller
    /// discards the sandbox.
    async fn prepare_transient(
        &self,
        sandbox: &mut Sandbox,
        requirements: &[Requirement],
        inputs: &[Input<'_>],
        list: Option<List>,
        key: &str,
        client: &Client,
    ) -> Result<Vec<String>, ExecError> {
        let installed = self
            .install_for_run(requirements, &sandbox.volume, None)
            .await
            .map_err(|e| ExecError::Packages(Box::new(e)))?;
        self.write_inputs(&mut sandbox.repl, inputs)
            .await
            .map_err(|e| match e {
                FileOpError::File(e) => ExecError::Files(Box::new(e)),
                FileOpError::Session(e) => e,
            })?;
        if let Some(list) = list {
            self.open_network(&mut sandbox.repl, key, list, client)
                .await?;
        }
        Ok(installed)
    }

    /// A call's `network` list held to the operator's ceiling; `None` (or an empty list):
    /// no network. Without a ceiling every pattern is refused, naming `network.allow`.
    pub(super) fn admit_network(
        &self,
        network: Option<&[String]>,
    ) -> Result<Option<List>, EgressError> {
        let Some(asked) = network.filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        match &self.shared.egress {
            Some(egress) => egress.admit(asked).map(Some),
            None => Ok(Some(List::admit(&List::default(), List::parse(asked)?)?)),
        }
    }

    /// Grant `key` its list and start the sandbox's forwarder with the grant's secret.
    pub(super) async fn open_network(
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
                Err(EgressError::Forwarder(Arc::new(e)))
            }
        }
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
        let profile = self.session_profile(&session, asked, profile)?;
        let mut limits = self.limits(call, &profile)?;
        admitted.set_session(&session.id);
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
        // Packages first (holding the lock: no code runs while they change). An install
        // is not stopped by an end request; the end waits for it.
        self.live(&session, &mut guard)?;
        let installed = self
            .install_for_run(&requirements, &session.volume, Some(&session.id))
            .await
            .map_err(|e| ExecError::Packages(Box::new(e)))?;
        self.network_of(
            &session,
            &mut guard,
            first,
            network,
            session_id.is_none(),
            call,
        )
        .await?;
        let run = Run {
            code,
            limits: &limits,
            call,
            profile: &profile,
            started,
        };
        let mut result = match self.run_in_session(&session, &mut guard, run).await? {
            Ran::Done(result) => result,
            Ran::Detached(result) => return Ok(result),
        };
        for change in &mut result.files_changed {
            change.uri = Some(crate::files::session_uri(&session.id, &change.path));
        }
        result.session_id = Some(session.id.clone());
        result.packages_installed = installed;
        result.previous_call = session.take_notice();
        drop(guard);
        self.restamp(&session);
        Ok(result)
    }

    /// The profile a call on `session` runs with: the session's own. A call that asks
    /// for another one is refused; `profile` is the one the call asked for (or `default`).
    fn session_profile(
        &self,
        session: &Session,
        asked: Option<&str>,
        profile: Config,
    ) -> Result<Config, ProfileError> {
        match asked {
            Some(asked) if asked != session.profile => Err(ProfileError::Switch {
                session: session.id.clone(),
                has: session.profile.clone(),
                asked: clip(asked).into(),
            }),
            _ if session.profile != profile.profile => Ok(self
                .profile_config(Some(&session.profile))
                // An adopted session of a profile this server does not know.
                .unwrap_or(profile)),
            _ => Ok(profile),
        }
    }

    /// The session's list: set by its first call (`first`, already held to the ceiling),
    /// narrowed by a later one, kept by a call without `network`. A new session whose
    /// network cannot be set up ends with the error: nobody has its id yet.
    async fn network_of(
        &self,
        session: &Session,
        guard: &mut SessionGuard<'_>,
        first: Option<List>,
        network: Option<&[String]>,
        new: bool,
        call: &CallContext,
    ) -> Result<(), ExecError> {
        let client = &session.owner;
        let granted = match first {
            Some(list) => {
                let repl = self.live(session, guard)?;
                self.open_network(repl, &session.id, list, client).await
            }
            None => {
                let asked = network.filter(|n| !n.is_empty());
                self.session_network(session, asked, client).await
            }
        };
        if let Err(e) = granted {
            let e = Arc::new(e);
            if new {
                // Nobody has this session's id yet: it goes with the error.
                let why = EndReason::Lost(Lost::Network(e.clone()));
                self.end_session(session, guard, why);
            }
            return Err(ExecError::Network(e));
        }
        if let Some(egress) = &self.shared.egress {
            egress.attend(&session.id, call.ask.clone());
        }
        Ok(())
    }

    /// A later call's list narrows the session's (`asked`); a call without one keeps it,
    /// and a session with a list gets its proxy running (a dead one starts again, and
    /// gets every grant).
    async fn session_network(
        &self,
        session: &Session,
        asked: Option<&[String]>,
        client: &Client,
    ) -> Result<(), EgressError> {
        match (asked, &self.shared.egress) {
            (Some(asked), Some(egress)) => {
                let list = egress.narrow(&session.id, asked)?;
                egress.grant(&session.id, list, client).await.map(|_| ())
            }
            (Some(asked), None) => self.admit_network(Some(asked)).map(|_| ()),
            (None, Some(egress)) if egress.has_grant(&session.id) => egress.warm().await,
            (None, _) => Ok(()),
        }
    }

    /// Run the code in the session, holding its lock. A lost sandbox, or an end request
    /// that stopped the call, ends the session and the result says so; a shutdown that
    /// leaves the durable session running answers at once ([`Ran::Detached`]).
    async fn run_in_session(
        &self,
        session: &Session,
        guard: &mut SessionGuard<'_>,
        run: Run<'_>,
    ) -> Result<Ran, ExecError> {
        let Run {
            code,
            limits,
            call,
            profile,
            started,
        } = run;
        let repl = self.live(session, guard)?;
        let outcome = tokio::select! {
            outcome = repl.execute(code, None, false, limits, &call.cancel, call.progress.as_ref()) => Some(outcome),
            // Cleanup or shutdown: the sandbox goes now, the call reports why.
            _ = session.ending() => None,
            // Shutdown of a durable session's daemon: the code goes on in the sandbox.
            _ = session.detached() => return Ok(Ran::Detached(detached(session, started))),
        };
        let network = match &self.shared.egress {
            Some(egress) if egress.has_grant(&session.id) => Some(egress.report(&session.id).await),
            _ => None,
        };
        let mut result = match outcome {
            Some(Ok(outcome)) => ExecResult::from_outcome(outcome, SURVIVED),
            failed => {
                let error = match failed {
                    Some(Err(e)) => e,
                    _ => ReplError::Died(Died::EndRequested),
                };
                let (timed_out, cancelled) = killed(&error);
                let why = session
                    .end_requested()
                    .unwrap_or_else(|| EndReason::Lost(self.lost_in(error, profile)));
                self.end_session(session, guard, why.clone());
                ExecResult::lost(
                    format!("Session {} is gone: {why}. Variables are lost; call execute-persistent without session_id to start a new session.", session.id),
                    started,
                    timed_out,
                    cancelled,
                )
            }
        };
        self.explain_memory_error(&mut result, SURVIVED, profile);
        result.network = network;
        Ok(Ran::Done(result))
    }
}

/// The session's note when an interrupted run leaves it alive.
const SURVIVED: &str = " The session is still alive with every variable defined before.";

/// One run in a session, as [`Engine::execute_persistent`] prepared it.
struct Run<'a> {
    code: &'a str,
    limits: &'a ExecLimits,
    call: &'a CallContext,
    profile: &'a Config,
    started: Instant,
}

/// How a run in a session came back.
enum Ran {
    /// With its result (the session may have ended: the result says so).
    Done(ExecResult),
    /// The daemon shut down and left the durable session, code and all, to the next one.
    Detached(ExecResult),
}

/// The answer of a call whose durable session this daemon left running at shutdown.
fn detached(session: &Session, started: Instant) -> ExecResult {
    ExecResult {
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
    }
}

/// Refills the pool when dropped, after the call that took a sandbox has finished.
struct Replenish(Pool);

impl Drop for Replenish {
    fn drop(&mut self) {
        self.0.replenish();
    }
}

/// The `packages` of an execution, validated; none is fine.
pub(super) fn run_requirements(packages: &[String]) -> Result<Vec<Requirement>, ExecError> {
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    Ok(parse_requirements(packages)?)
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
