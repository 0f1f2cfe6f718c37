//! The warm pool: sandboxes started ahead of time, helper ready, handed out once.
//!
//! Every sandbox comes from here, pool on or off. **Demand comes first, and warming never
//! competes with it:**
//! - A request that finds no ready sandbox joins the waiters and gets a creation of its
//!   own at once, unless a creation already in flight will serve it: every new sandbox
//!   goes to the first waiter. So the first call after spawn gets the first sandbox the
//!   pool makes, no later than a cold start on demand would.
//! - The refill keeps `pool_size` sandboxes ready, **one creation at a time**, and only
//!   while no other background engine work runs (removing used sandboxes takes the same
//!   single turn, [`Limits::background`]). While calls keep taking sandboxes (from the
//!   ready queue or as they are made), it waits until they pause for `REFILL_SETTLE` (at
//!   most `REFILL_DEFER_MAX`), so the sandbox just handed out runs its call on an idle CPU.
//!   Background work thus takes at most about one core from the calls in flight.
//! - A semaphore bounds all creations, `max_concurrent_creations`, across every pool of
//!   the daemon. With `pool_enabled: false` the target is zero: creation on demand.
//!
//! The next sandbox to become ready goes to a waiter: **round-robin across clients**, in
//! arrival order within a client, so one client's burst of fifty runs cannot make another
//! client's single call wait behind all fifty. A sandbox is pinged before it is handed
//! out; one that does not answer is removed, never handed out. A reaper retires sandboxes
//! older than `pool_max_age`.
//!
//! **When creations fail.** One container that dies while starting (killed by someone) is
//! retried at once and nobody hears of it; so are several that die together. After any
//! failure, creations run one at a time until one succeeds. The pool counts as *broken* after an engine refusal (`AcquireError::Create`: engine unreachable, image missing) or when a
//! creation started after a failure fails too: two failures in a row (say an image whose
//! `python3` exits at once). Then:
//! - every waiting request is told the failure at once (`AcquireError::Create` or `Start`);
//! - at most one creation runs at a time, the next one `BACKOFF_FIRST` after the last
//!   failure, doubling per failure up to `BACKOFF_MAX`, whether or not anyone waits;
//! - a new request gets the last failure at once, unless a creation is running (it waits
//!   for that one) or the last failure is older than the back-off or `PROBE_AFTER`,
//!   whichever is shorter: then it asks for one probe creation and waits for its outcome.
//!
//! So a broken image costs one creation every few seconds, not one per waiting call, and
//! once the engine or image is fixed the next call (at most `PROBE_AFTER` later) succeeds
//! without a restart. Any success ends the broken state.
//!
//! **Environments.** Every sandbox of a pool mounts the pool's shared package volume
//! read-only. The daemon's main pool has one; when several clients share the daemon, a
//! client that installs into its shared environment gets a pool of its own
//! ([`Pool::for_client`]) whose sandboxes mount that client's volume, so no client sees or
//! changes another's imports. Such a pool keeps at most one sandbox warm.
//!
//! **The host pool.** With `session.durable` on Docker, warm sandboxes live on the
//! engine and belong to no daemon: every daemon of the host with the same fingerprint
//! shares them, and together they keep at most `pool_size` ([`host`]). Then the `ready`
//! queue stays empty: a request claims a warm sandbox from the engine first and waits
//! (as above) only when there is none, and a new sandbox nobody waits for is parked on
//! the engine instead. Their shared package volume is the owner's (`pdm-env.`), mounted
//! only once something was installed into it.
//!
//! **No volume left behind.** A sandbox owns a package volume, so it is never just dropped:
//! a sandbox on its way to a caller that went away (time-out, cancelled call, pool closed)
//! is discarded, which removes the container and the volume.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;
use tokio::sync::{oneshot, Notify, OnceCell, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::Client;
use crate::config::Config;
use crate::durable::{self, ClaimedName, Holder};
use crate::repl::{Repl, ReplError};
use crate::runtime::{Backend, Named, RuntimeError};
use crate::sandbox::{self, Owner, Role};

#[path = "pool/host.rs"]
pub mod host;
use host::HostPool;

/// How many ready sandboxes a pool of the host pool holds attached (`Pool::hold`).
const HOLD: usize = 1;
/// How often a pool of the host pool looks at the engine for slots that others freed.
const HOST_POLL: Duration = Duration::from_secs(10);

/// How long a health ping may take before the sandbox is discarded.
const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// How long after the latest checkout a refill waits: a burst of calls, or the call just
/// handed a sandbox, runs on an idle CPU.
const REFILL_SETTLE: Duration = Duration::from_millis(250);
/// The longest a refill waits for calls to stop coming.
const REFILL_DEFER_MAX: Duration = Duration::from_secs(2);
/// Pause after the first failure of a broken pool; it doubles with each failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// Longest pause between creations while they keep failing.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a claim waits for the refill task's first census before it lists the engine
/// itself: a listing takes 5 to 60 ms, so this only bounds a census stuck on a slow engine.
const FIRST_CENSUS_WAIT: Duration = Duration::from_secs(2);
/// A request finding the pool broken may ask for a probe creation once the last failure
/// is this old (or older than the back-off, if that is shorter): the bound on how long a
/// fixed engine or image goes unnoticed while calls keep coming.
const PROBE_AFTER: Duration = Duration::from_secs(3);

/// A started sandbox: a ready REPL and the package volume it mounts.
pub struct Sandbox {
    pub repl: Repl,
    /// This sandbox's own package volume (a session installs into it).
    pub volume: String,
    pub created: Instant,
    /// A claimed sandbox of the host pool is renamed to `repl.name` off the reply path
    /// (the name only tells the sweep and other daemons; the helper decided the claim):
    /// whoever renames it again waits for this first.
    pub renamed: Option<tokio::task::JoinHandle<()>>,
}

/// Why no sandbox could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AcquireError {
    /// The engine could not create one (unreachable, image missing, refused).
    #[error("{0}")]
    Create(Arc<RuntimeError>),
    /// One was created, but its helper did not start (the image is broken, or the
    /// container was killed while it started).
    #[error("{0}")]
    Start(Arc<ReplError>),
    /// Creations keep failing, and the last failure is not known any more.
    #[error("creating a sandbox keeps failing")]
    KeepsFailing,
    /// None became ready in time.
    #[error(
        "no sandbox became ready within {waited:?}: the warm pool was exhausted and the engine could not \
         start one in time ({creating} being created, at most {max_creations} at once{last}). \
         Raise docker.pool_size or docker.max_concurrent_creations, or docker.pool_wait_timeout if \
         the host is slow",
        last = LastFailure(last_error.as_deref())
    )]
    Exhausted {
        waited: Duration,
        creating: usize,
        max_creations: usize,
        /// The last creation failure, if there was one.
        last_error: Option<Box<AcquireError>>,
    },
    #[error("the server is shutting down")]
    Closed,
}

/// `; last failure: ...` in [`AcquireError::Exhausted`]'s message, when there was one.
struct LastFailure<'a>(Option<&'a AcquireError>);

impl std::fmt::Display for LastFailure<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(e) => write!(f, "; last failure: {e}"),
            None => Ok(()),
        }
    }
}

/// The pool's counters, for logs, `/ready` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize, JsonSchema, PartialEq, Eq)]
pub struct PoolStats {
    /// Ready sandboxes waiting to be handed out.
    pub warm: usize,
    /// Sandboxes being created now.
    pub creating: usize,
    /// Requests waiting for a sandbox.
    pub waiting: usize,
    /// Sandboxes handed out since start.
    pub checked_out: u64,
    /// Sandboxes retired for age or failed health since start.
    pub retired: u64,
    /// Creations that failed since start.
    pub creation_failures: u64,
}

type Delivery = Result<Sandbox, AcquireError>;

/// Requests waiting for a sandbox: FIFO per client, clients served in turn.
#[derive(Default)]
struct Waiters {
    queue: VecDeque<(Client, oneshot::Sender<Delivery>)>,
    /// Clients with waiting requests, the one to serve next first.
    turn: VecDeque<Client>,
}

impl Waiters {
    fn push(&mut self, client: &Client, tx: oneshot::Sender<Delivery>) {
        if !self.turn.contains(client) {
            self.turn.push_back(client.clone());
        }
        self.queue.push_back((client.clone(), tx));
    }

    /// Forget requests whose caller went away.
    fn retain_live(&mut self) {
        self.queue.retain(|(_, tx)| !tx.is_closed());
        let queue = &self.queue;
        self.turn.retain(|c| queue.iter().any(|(w, _)| w == c));
    }

    fn len(&self) -> usize {
        self.queue.iter().filter(|(_, tx)| !tx.is_closed()).count()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next request to serve: the earliest of the client whose turn it is; that client
    /// goes to the back of the line if it has more.
    fn next(&mut self) -> Option<oneshot::Sender<Delivery>> {
        self.retain_live();
        let client = self.turn.pop_front()?;
        let at = self.queue.iter().position(|(w, _)| *w == client)?;
        let (_, tx) = self.queue.remove(at)?;
        if self.queue.iter().any(|(w, _)| *w == client) {
            self.turn.push_back(client);
        }
        Some(tx)
    }

    fn drain(&mut self) -> impl Iterator<Item = oneshot::Sender<Delivery>> + '_ {
        self.turn.clear();
        self.queue.drain(..).map(|(_, tx)| tx)
    }
}

#[derive(Default)]
struct State {
    ready: VecDeque<Sandbox>,
    waiters: Waiters,
    /// Creation tasks spawned and not finished (waiting for a permit, or creating).
    creating: usize,
    /// Of those, the ones creating now (holding a permit and past the broken check).
    attempting: usize,
    stats: PoolStats,
    /// Creation failures in a row, for back-off; a success resets it. Attempts that
    /// started before a failure was known and fail with it do not add to it.
    failing: u32,
    /// Creations are known to fail (see the module doc); a success clears it.
    broken: bool,
    /// After a failure: one creation may start. Set by the refill task (at once for the
    /// first retry; while broken, when the back-off has passed or a request asked for a
    /// probe); taken by the creation that starts.
    probe: bool,
    /// When the latest sandbox was handed out.
    last_checkout: Option<Instant>,
    /// Since when the refill has been waiting for checkouts to pause.
    deferring_since: Option<Instant>,
    /// When the latest failed creation ended.
    last_failure: Option<Instant>,
    /// The latest creation failure: told to requests while broken, and explains an
    /// exhausted pool.
    last_error: Option<AcquireError>,
    closed: bool,
    /// Host pool: warm sandboxes of this fingerprint on the engine, and free slots, at
    /// the last look.
    host_warm: usize,
    host_free: usize,
}

impl State {
    /// The pause after the latest failure before a background creation may start.
    fn backoff(&self) -> Duration {
        let doublings = self.failing.saturating_sub(1).min(6);
        (BACKOFF_FIRST * 2u32.pow(doublings)).min(BACKOFF_MAX)
    }

    /// When a background creation may start again, while broken.
    fn next_creation(&self) -> Instant {
        self.last_failure
            .map_or_else(Instant::now, |t| t + self.backoff())
    }

    /// Whether a request finding the pool broken may ask for a probe creation now.
    fn probe_due(&self) -> bool {
        self.last_failure
            .is_none_or(|t| t.elapsed() >= self.backoff().min(PROBE_AFTER))
    }

    /// Why no sandbox can be made: the last failure.
    fn failure(&self) -> AcquireError {
        self.last_error
            .clone()
            .unwrap_or(AcquireError::KeepsFailing)
    }

    /// Tell every waiting request why no sandbox can be made.
    fn fail_waiters(&mut self, error: &AcquireError) {
        for waiter in self.waiters.drain() {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    fn checked_out(&mut self) {
        self.stats.checked_out += 1;
        self.last_checkout = Some(Instant::now());
    }

    /// While calls keep taking sandboxes, when a refill may start (at most
    /// `REFILL_DEFER_MAX` after it first waited); `None`: now. Also when none remains:
    /// a call that finds none gets a creation of its own at once, no later than a cold
    /// start, while a refill started now would slow the call just handed a sandbox.
    fn refill_after(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let quiet = self.last_checkout.map(|t| t + REFILL_SETTLE)?;
        let since = *self.deferring_since.get_or_insert(now);
        if quiet <= now || now - since >= REFILL_DEFER_MAX {
            self.deferring_since = None;
            return None;
        }
        Some(quiet.min(since + REFILL_DEFER_MAX))
    }

    fn snapshot(&self) -> PoolStats {
        PoolStats {
            warm: self.ready.len() + self.host_warm,
            creating: self.creating,
            waiting: self.waiters.len(),
            ..self.stats.clone()
        }
    }
}

/// Bounds on the engine work pools do, shared by every pool of the daemon.
struct Limits {
    /// Creations of every kind (refill, on demand), at most `max_concurrent_creations`.
    creations: Semaphore,
    /// Work nobody waits for (a refill creation, removing a used sandbox): one at a time,
    /// so it never takes more than a core from calls in flight.
    background: Arc<Semaphore>,
}

struct Inner {
    config: Config,
    backend: Backend,
    owner: Owner,
    /// The shared package volume every sandbox of this pool mounts: its name, and the
    /// client it belongs to (none: the daemon's main pool).
    environment: (String, Option<Client>),
    /// That volume, once created (labelled) on first use.
    shared_volume: OnceCell<String>,
    /// How many sandboxes to keep warm.
    target: usize,
    /// The refill and reaper tasks are started once, by the first `start` or `acquire`.
    started: std::sync::Once,
    /// A sync mutex: never held across an `.await`.
    state: Mutex<State>,
    /// Bounds on engine work, shared by every pool of the daemon.
    limits: Arc<Limits>,
    /// Wakes the refill task after a checkout, a creation or a retirement.
    refill: Notify,
    /// Stops the refill and reaper tasks.
    stop: CancellationToken,
    /// Creation and removal tasks; shutdown waits for them.
    tasks: TaskTracker,
    /// Durable mode on Docker: warm sandboxes are the host's (module doc).
    host: Option<HostMode>,
}

/// What a pool of the host pool knows.
struct HostMode {
    holder: Holder,
    /// The pool's fingerprint, once the image's id is known; dropped when the shared
    /// volume appears (the sandboxes mount it from then on).
    pool: Mutex<Option<HostPool>>,
    /// Whether the shared package volume exists (then sandboxes mount it).
    env: std::sync::atomic::AtomicBool,
    /// Sandboxes this daemon claimed whose rename is still under way: the engine still
    /// lists them as warm, and a claim skips them. A sync lock, never held across an
    /// `.await`.
    renaming: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The warm sandboxes the last census saw and no claim of this daemon tried yet: a
    /// claim tries them first and lists the engine again only when none was had (a list
    /// costs dockerd more than a lost claim). A sync lock, never held across an `.await`.
    seen: std::sync::Mutex<Vec<Named>>,
    /// True once the refill task's first census has ended (well or not). A claim made
    /// before that waits for it, at most [`FIRST_CENSUS_WAIT`], instead of listing the
    /// engine a second time at once: a daemon's first call comes a few milliseconds after
    /// its spawn, while that census is under way, and two listings at once slow both.
    censused: tokio::sync::watch::Sender<bool>,
}

/// A handle on the pool; clone it freely.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// The daemon's main pool; it does nothing until [`Pool::start`] or the first
    /// [`Pool::acquire`].
    pub fn new(config: Config, backend: Backend, owner: Owner, tasks: TaskTracker) -> Pool {
        let max = config.docker.max_concurrent_creations as usize;
        let d = &config.docker;
        let target = if d.pool_enabled {
            d.pool_size as usize
        } else {
            0
        };
        let host_env = durable::fingerprint([
            config.session.scope.as_str(),
            &durable::uid().to_string(),
            "",
        ]);
        let environment = match config.session.durable {
            true => (format!("pdm-env.{host_env}"), None),
            false => (owner.shared_volume(), None),
        };
        Pool::build(
            config,
            backend,
            owner,
            tasks,
            environment,
            target,
            Arc::new(Limits {
                creations: Semaphore::new(max),
                background: Arc::new(Semaphore::new(1)),
            }),
        )
    }

    /// A pool for `client`'s own shared environment (volume `volume`): same settings and
    /// creation limit as this one, at most one sandbox warm.
    pub fn for_client(&self, client: &Client, volume: String) -> Pool {
        let i = &self.inner;
        let volume = match i.config.session.durable {
            true => format!(
                "pdm-env.{}",
                durable::fingerprint([
                    i.config.session.scope.as_str(),
                    &durable::uid().to_string(),
                    client.name(),
                ])
            ),
            false => volume,
        };
        Pool::build(
            i.config.clone(),
            i.backend.clone(),
            i.owner.clone(),
            i.tasks.clone(),
            (volume, Some(client.clone())),
            i.target.min(1),
            i.limits.clone(),
        )
    }

    /// A pool for another profile (`config`, from [`Config::for_profile`]) drawing on this
    /// pool's shared environment and creation limit, keeping the profile's `pool_size`
    /// warm. Its sandboxes are the profile's own: a pool hands out only what it made, and
    /// in the host pool the profile is part of the fingerprint (the spec names it).
    pub fn for_profile(&self, config: Config) -> Pool {
        let i = &self.inner;
        let target = match config.docker.pool_enabled {
            true => config.docker.pool_size as usize,
            false => 0,
        };
        Pool::build(
            config,
            i.backend.clone(),
            i.owner.clone(),
            i.tasks.clone(),
            i.environment.clone(),
            target,
            i.limits.clone(),
        )
    }

    /// The profile this pool's sandboxes are made for.
    pub fn profile(&self) -> &str {
        &self.inner.config.profile
    }

    fn build(
        config: Config,
        backend: Backend,
        owner: Owner,
        tasks: TaskTracker,
        environment: (String, Option<Client>),
        target: usize,
        limits: Arc<Limits>,
    ) -> Pool {
        let host = config.session.durable.then(|| HostMode {
            holder: Holder::me(),
            pool: Mutex::new(None),
            env: Default::default(),
            renaming: Default::default(),
            seen: Default::default(),
            censused: tokio::sync::watch::Sender::new(false),
        });
        Pool {
            inner: Arc::new(Inner {
                host,
                config,
                backend,
                owner,
                environment,
                shared_volume: OnceCell::new(),
                target,
                started: std::sync::Once::new(),
                state: Mutex::new(State::default()),
                limits,
                refill: Notify::new(),
                stop: CancellationToken::new(),
                tasks,
            }),
        }
    }

    /// Start filling in the background; returns at once.
    pub fn start(&self) {
        self.inner.started.call_once(|| {
            let p = self.clone();
            self.inner.tasks.spawn(async move { p.refill_loop().await });
            let p = self.clone();
            self.inner.tasks.spawn(async move { p.reap_loop().await });
        });
    }

    /// Whether this pool ever asked the engine for anything (shutdown skips the engine
    /// otherwise).
    pub fn used_docker(&self) -> bool {
        self.inner.shared_volume.initialized() || self.inner.started.is_completed()
    }

    /// The shared package volume (installs without a session go here).
    pub async fn shared_volume(&self) -> Result<&str, RuntimeError> {
        let i = &self.inner;
        i.shared_volume
            .get_or_try_init(|| async {
                let (name, client) = &i.environment;
                let mut labels = i.owner.labels(Role::Packages, None);
                if let Some(client) = client {
                    labels.insert(sandbox::labels::CLIENT.into(), client.name().into());
                }
                i.backend.create_volume(name, &labels).await?;
                if let Some(h) = &i.host {
                    // New sandboxes mount it: another fingerprint.
                    h.env.store(true, std::sync::atomic::Ordering::Relaxed);
                    *h.pool.lock().expect("host pool lock") = None;
                }
                Ok::<_, RuntimeError>(name.clone())
            })
            .await
            .map(String::as_str)
    }

    /// Whether this pool's warm sandboxes are the host's (they and its shared volume stay
    /// when the daemon exits).
    pub fn shared_by_host(&self) -> bool {
        self.inner.host.is_some()
    }

    /// The host pool this pool draws from, its fingerprint computed on first use; `None`
    /// off durable mode or on an engine without it (Podman, whose sandboxes need named
    /// volumes: they keep a pool of their own).
    async fn host_pool(&self) -> Result<Option<HostPool>, RuntimeError> {
        let i = &self.inner;
        let Some(h) = &i.host else {
            return Ok(None);
        };
        if let Some(p) = h.pool.lock().expect("host pool lock").clone() {
            return Ok(Some(p));
        }
        if !i.backend.unnamed_volumes().await {
            return Ok(None);
        }
        let volume = &i.environment.0;
        if !h.env.load(std::sync::atomic::Ordering::Relaxed)
            && i.backend.volume_exists(volume).await?
        {
            h.env.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let image = i.backend.image_id(&i.config.docker.image).await?;
        let p = HostPool {
            fingerprint: host_fingerprint(&image, &i.config, self.spec(String::new())),
            slots: self.target() as u32,
            max_age: i.config.docker.pool_max_age,
        };
        tracing::debug!(fingerprint = %p.fingerprint, slots = p.slots, "host pool");
        *h.pool.lock().expect("host pool lock") = Some(p.clone());
        Ok(Some(p))
    }

    /// The spec of this pool's sandboxes, named `name`: in durable mode their own
    /// package volume is one the engine makes, and the shared one is mounted once it
    /// exists.
    fn spec(&self, name: String) -> sandbox::SandboxSpec {
        let i = &self.inner;
        let shared = match &i.host {
            Some(h) if !h.env.load(std::sync::atomic::Ordering::Relaxed) => "",
            _ => i.environment.0.as_str(),
        };
        sandbox::repl_spec(&i.config, &i.owner, name, shared, "")
    }

    /// Claim a warm sandbox of the host pool, if there is one.
    async fn claim_from_host(&self) -> Option<Sandbox> {
        let i = &self.inner;
        let started = Instant::now();
        let host = self.host_pool().await.ok()??;
        let holder = &i.host.as_ref()?.holder;
        let mode = i.host.as_ref()?;
        let unclaimed = |warm: &mut Vec<Named>| {
            let renaming = mode.renaming.lock().expect("renaming lock");
            warm.retain(|c| !renaming.contains(&c.id));
        };
        // The first census of the refill task, if it is still under way.
        let mut first = mode.censused.subscribe();
        let _ = tokio::time::timeout(FIRST_CENSUS_WAIT, first.wait_for(|done| *done)).await;
        // What the last census saw first; then the engine, listed again.
        let mut listed = Duration::ZERO;
        let mut warm = std::mem::take(&mut *mode.seen.lock().expect("seen lock"));
        unclaimed(&mut warm);
        let mut claimed = host
            .claim(&i.backend, holder, &mut warm, sandbox::SESSION_PACKAGES)
            .await;
        if claimed.is_none() {
            let census = host.census(&i.backend, holder).await.ok()?;
            listed = started.elapsed();
            warm = census.warm;
            unclaimed(&mut warm);
            claimed = host
                .claim(&i.backend, holder, &mut warm, sandbox::SESSION_PACKAGES)
                .await;
        }
        // What was not tried is left for the next claim (once: a census may have
        // listed it again meanwhile).
        {
            let mut seen = mode.seen.lock().expect("seen lock");
            warm.retain(|c| !seen.iter().any(|s| s.id == c.id));
            seen.extend(warm);
        }
        let (mut sandbox, from) = claimed?;
        tracing::debug!(
            list_ms = listed.as_secs_f64() * 1e3,
            claim_ms = (started.elapsed() - listed).as_secs_f64() * 1e3,
            container = %sandbox.repl.name,
            "claimed a warm sandbox of the host pool"
        );
        {
            let mut st = i.state.lock().expect("pool lock");
            st.host_warm = st.host_warm.saturating_sub(1);
            st.checked_out();
        }
        i.refill.notify_one();
        self.rename_later(&mut sandbox, from);
        Some(sandbox)
    }

    /// Rename a sandbox this daemon claimed from `from` to its `repl.name`, off the reply
    /// path (a rename costs dockerd 5 to 50 ms; see [`Sandbox::renamed`]).
    fn rename_later(&self, sandbox: &mut Sandbox, from: String) {
        let pool = self.clone();
        let (id, to) = (sandbox.repl.id.clone(), sandbox.repl.name.clone());
        if let Some(h) = &self.inner.host {
            h.renaming.lock().expect("renaming lock").insert(id.clone());
        }
        sandbox.renamed = Some(self.inner.tasks.spawn(async move {
            match pool.inner.backend.rename(&from, &to).await {
                Ok(true) => {}
                Ok(false) => tracing::debug!(container = %to, "a claimed sandbox went before it was renamed"),
                Err(e) => tracing::warn!(container = %from, error = %e, "could not rename a claimed sandbox"),
            }
            if let Some(h) = &pool.inner.host {
                h.renaming.lock().expect("renaming lock").remove(&id);
            }
        }));
    }

    /// The name of this pool's shared package volume (made or not).
    pub fn volume_name(&self) -> &str {
        &self.inner.environment.0
    }

    fn target(&self) -> usize {
        self.inner.target
    }

    pub fn stats(&self) -> PoolStats {
        self.inner.state.lock().expect("pool lock").snapshot()
    }

    /// Take a ready sandbox for `client`, waiting (its turn among clients, see the module
    /// doc) up to `pool_wait_timeout`. While creations keep failing, fails at once with the
    /// last failure.
    pub async fn acquire(&self, client: &Client) -> Result<Sandbox, AcquireError> {
        self.start();
        if self.inner.host.is_some() {
            if self.inner.state.lock().expect("pool lock").closed {
                return Err(AcquireError::Closed);
            }
            if let Some(sandbox) = self.claim_from_host().await {
                return Ok(sandbox);
            }
        }
        let wait = self.inner.config.docker.pool_wait_timeout;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let sandbox = self.next_sandbox(client, wait, deadline).await?;
            // From here until it is returned, a cancelled call discards the sandbox.
            let mut hand = InHand {
                pool: self,
                sandbox: Some(sandbox),
            };
            if self.inner.state.lock().expect("pool lock").closed {
                return Err(AcquireError::Closed);
            }
            if self.answers(hand.sandbox.as_mut().expect("in hand")).await {
                self.inner.state.lock().expect("pool lock").checked_out();
                return Ok(hand.sandbox.take().expect("in hand"));
            }
            self.inner.state.lock().expect("pool lock").stats.retired += 1;
            drop(hand);
        }
    }

    /// The next sandbox for `client`: a ready one when nobody waits before it, otherwise
    /// the one delivered to it as a waiter by `deadline` (`wait` after the call came).
    async fn next_sandbox(
        &self,
        client: &Client,
        wait: Duration,
        deadline: tokio::time::Instant,
    ) -> Result<Sandbox, AcquireError> {
        let taken = {
            let mut st = self.inner.state.lock().expect("pool lock");
            if st.closed {
                return Err(AcquireError::Closed);
            }
            // Do not jump the queue: take from `ready` only when no one waits before us.
            let first_in_line = st.waiters.is_empty();
            match st.ready.pop_front().filter(|_| first_in_line) {
                Some(sb) => Ok(sb),
                None => {
                    if st.broken && st.attempting == 0 && !st.probe {
                        if !st.probe_due() {
                            return Err(st.failure());
                        }
                        st.probe = true;
                    }
                    let (tx, rx) = oneshot::channel();
                    st.waiters.push(client, tx);
                    Err(Waiting { pool: self, rx })
                }
            }
        };
        let mut waiting = match taken {
            Ok(sb) => return Ok(sb),
            Err(waiting) => waiting,
        };
        // A waiter needs a creation now. A sandbox taken from the pool is replaced once
        // the call is done (`discard`, `replenish`), so the replacement's start does not
        // compete with the call it serves.
        self.inner.refill.notify_one();
        match tokio::time::timeout_at(deadline, &mut waiting.rx).await {
            Ok(Ok(delivery)) => delivery,
            Ok(Err(_)) => Err(AcquireError::Closed),
            Err(_) => {
                // A sandbox sent just as the time ran out is still ours: use it.
                waiting.rx.close();
                match waiting.rx.try_recv() {
                    Ok(delivery) => delivery,
                    Err(_) => Err(self.exhausted(wait)),
                }
            }
        }
    }

    /// Whether a sandbox about to be handed out answers a ping. One held ready in the host
    /// pool is marked used (a claimed name) as it is pinged.
    async fn answers(&self, sandbox: &mut Sandbox) -> bool {
        let used = match &self.inner.host {
            Some(h) if durable::HeldName::parse(&sandbox.repl.name).is_some() => {
                Some(ClaimedName::new(&h.holder).render())
            }
            _ => None,
        };
        if !sandbox.repl.ping(PING_TIMEOUT).await {
            tracing::warn!(container = %sandbox.repl.name, "a warm sandbox did not answer; removing it");
            return false;
        }
        if let Some(to) = used {
            let from = std::mem::replace(&mut sandbox.repl.name, to);
            self.rename_later(sandbox, from);
        }
        true
    }

    fn exhausted(&self, waited: Duration) -> AcquireError {
        let st = self.inner.state.lock().expect("pool lock");
        AcquireError::Exhausted {
            waited,
            creating: st.creating,
            max_creations: self.inner.config.docker.max_concurrent_creations as usize,
            last_error: st.last_error.clone().map(Box::new),
        }
    }

    /// Remove a sandbox and its volume in the background, and refill the pool.
    pub fn discard(&self, sandbox: Sandbox) {
        // Outside a runtime (a future dropped while the runtime shuts down) nothing can be
        // spawned; shutdown's removal by instance label and the next start's orphan sweep
        // remove what is left.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let Sandbox { repl, volume, .. } = sandbox;
        let container = repl.id.clone();
        // Close the connection first (see `Engine::end_session`), then remove: in the
        // background, one removal or refill at a time (at shutdown, all at once).
        drop(repl);
        let pool = self.clone();
        self.inner.tasks.spawn(async move {
            let i = &pool.inner;
            let _turn = match i.stop.is_cancelled() {
                true => None,
                false => i.limits.background.acquire().await.ok(),
            };
            i.backend.remove(&container).await;
            i.backend.remove_volume(&volume).await;
            drop(_turn);
            pool.replenish();
        });
    }

    /// Refill the pool (after a sandbox was kept by a session, say).
    pub fn replenish(&self) {
        self.inner.refill.notify_one();
    }

    /// Hand a new sandbox to the first live waiter, or keep it warm (in the host pool:
    /// park it on the engine).
    async fn deliver(&self, mut sandbox: Sandbox) {
        let host = match &self.inner.host {
            Some(_) => self.host_pool().await.ok().flatten(),
            None => None,
        };
        let Some(host) = host else {
            if let Some(back) = self.hand_over(sandbox) {
                self.inner
                    .state
                    .lock()
                    .expect("pool lock")
                    .ready
                    .push_back(back);
            }
            return;
        };
        let waiting = !self
            .inner
            .state
            .lock()
            .expect("pool lock")
            .waiters
            .is_empty();
        if waiting {
            // Taken from its slot (the claim), so it is no longer the host's.
            if host.filling_slot(&sandbox.repl.name).is_some() {
                let to = ClaimedName::new(&self.inner.host.as_ref().expect("host").holder).render();
                match self.inner.backend.rename(&sandbox.repl.name, &to).await {
                    Ok(true) => sandbox.repl.name = to,
                    _ => return self.discard(sandbox),
                }
            }
            match self.hand_over(sandbox) {
                None => return,
                Some(back) => sandbox = back,
            }
        }
        let (held, closed) = {
            let st = self.inner.state.lock().expect("pool lock");
            (st.ready.len(), st.closed)
        };
        let slot = host.filling_slot(&sandbox.repl.name);
        if let (Some(slot), false, true) = (slot, closed, held < self.hold()) {
            // Held ready here: the next call gets it at once.
            let me = &self.inner.host.as_ref().expect("host").holder;
            let to = host.held_name(slot, me);
            match self.inner.backend.rename(&sandbox.repl.name, &to).await {
                Ok(true) => {
                    sandbox.repl.name = to;
                    self.inner
                        .state
                        .lock()
                        .expect("pool lock")
                        .ready
                        .push_back(sandbox);
                }
                _ => self.discard(sandbox),
            }
            return;
        }
        self.park(sandbox, &host).await;
    }

    /// How many ready sandboxes a pool of the host pool holds attached: one. The rest
    /// are anyone's: a daemon holding more would starve the others (they cannot claim
    /// what a live daemon holds, and its slots are not free to refill).
    fn hold(&self) -> usize {
        HOLD
    }

    /// Give a sandbox to the first live waiter; back when none waits (discarded when
    /// the pool is closed).
    fn hand_over(&self, mut sandbox: Sandbox) -> Option<Sandbox> {
        let mut st = self.inner.state.lock().expect("pool lock");
        if st.closed {
            drop(st);
            self.discard(sandbox);
            return None;
        }
        while let Some(waiter) = st.waiters.next() {
            match waiter.send(Ok(sandbox)) {
                Ok(()) => {
                    // The call runs on it from now: a refill started at this moment would
                    // compete with it (the refill waits for calls to pause, see below).
                    st.last_checkout = Some(Instant::now());
                    return None;
                }
                Err(Ok(back)) => sandbox = back,
                Err(Err(_)) => unreachable!("we sent Ok"),
            }
        }
        Some(sandbox)
    }

    /// Leave a ready sandbox warm on the engine for any daemon: let go of the attach and
    /// name it for its slot. Removed when no slot is free.
    async fn park(&self, sandbox: Sandbox, host: &HostPool) {
        let i = &self.inner;
        let me = &i.host.as_ref().expect("a host pool").holder;
        let slot = match host.slot_of(&sandbox.repl.name) {
            Some(slot) => Some(slot),
            None => host
                .census(&i.backend, me)
                .await
                .ok()
                .and_then(|c| c.free.first().copied()),
        };
        let Some(slot) = slot else {
            return self.discard(sandbox);
        };
        let (id, from) = (sandbox.repl.id.clone(), sandbox.repl.name.clone());
        // The attach goes first: no daemon may claim it while this one still listens.
        drop(sandbox);
        match i.backend.rename(&from, &host.warm_name(slot)).await {
            Ok(true) => {
                i.state.lock().expect("pool lock").host_warm += 1;
            }
            _ => i.backend.remove(&id).await,
        }
    }

    /// The refill task: after each wake-up (a call took or returned a sandbox, a creation
    /// ended, a back-off passed), look at the host pool, decide how many creations to
    /// start, start them, and sleep until the next reason to look.
    async fn refill_loop(&self) {
        let mut last = PoolStats::default();
        loop {
            let host = self.census_host().await;
            let (spawn, wake_at, mut background) = {
                let mut st = self.inner.state.lock().expect("pool lock");
                let plan = self.plan_refill(&mut st, host.is_some());
                self.log_change(&st, &mut last);
                plan
            };
            for _ in 0..spawn {
                let p = self.clone();
                let permit = background.take();
                self.inner
                    .tasks
                    .spawn(async move { p.create_one(permit).await });
            }
            // The host pool changes without this daemon: look again now and then.
            let wake_at = match (&host, wake_at) {
                (Some(_), None) => Some(Instant::now() + HOST_POLL),
                (_, at) => at,
            };
            let backoff = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = self.inner.refill.notified() => {}
                _ = backoff => {}
            }
        }
    }

    /// In the host pool: count its warm and free slots into the state (and say the first
    /// census is done). `None` outside the host pool, or when it cannot be set up.
    async fn census_host(&self) -> Option<HostPool> {
        let h = self.inner.host.as_ref()?;
        let host = self.host_pool().await.ok().flatten();
        if let Some(host) = &host {
            if let Ok(c) = host.census(&self.inner.backend, &h.holder).await {
                let mut st = self.inner.state.lock().expect("pool lock");
                st.host_warm = c.warm.len();
                st.host_free = c.free.len();
                *h.seen.lock().expect("seen lock") = c.warm;
            }
        }
        h.censused.send_replace(true);
        host
    }

    /// How many creations to start now (counted as creating), when to look again without
    /// a wake-up, and the background turn a refill creation holds.
    fn plan_refill(
        &self,
        st: &mut State,
        in_host_pool: bool,
    ) -> (usize, Option<Instant>, Option<OwnedSemaphorePermit>) {
        st.waiters.retain_live();
        let want = self.target() + st.waiters.len();
        let have = st.ready.len() + st.host_warm + st.creating;
        // In the host pool, a refill needs a free slot (others fill too).
        let room = !in_host_pool || st.host_free > st.creating;
        let mut wake_at = None;
        let mut spawn = 0;
        let mut background = None;
        if st.broken || st.failing > 0 {
            // After a failure, one creation at a time: at once for the first retry,
            // then after the back-off or when a request asked for a probe.
            // Creations spawned earlier and still queued for a permit give up by
            // themselves (`create_one`); wait for them first.
            if want > have && st.creating == 0 {
                let due = if st.broken {
                    st.next_creation()
                } else {
                    Instant::now()
                };
                if st.probe || Instant::now() >= due {
                    st.probe = true;
                    spawn = 1;
                } else {
                    wake_at = Some(due);
                }
            }
        } else if st.waiters.len() > st.creating {
            // Demand first: a waiter no creation in flight will serve gets one now.
            spawn = st.waiters.len() - st.creating;
        } else if want > have && st.creating == 0 && room {
            // Refill: one creation at a time, and only when the engine does no
            // other background work (removals wake this loop when done). While
            // sandboxes are still ready, let a burst of calls finish first.
            wake_at = st.refill_after();
            if wake_at.is_none() {
                background = self
                    .inner
                    .limits
                    .background
                    .clone()
                    .try_acquire_owned()
                    .ok();
                spawn = usize::from(background.is_some());
                // Another pool (a profile's, a client's) holds the turn, and its
                // release wakes only that pool: look again shortly.
                if background.is_none() {
                    wake_at = Some(Instant::now() + REFILL_SETTLE);
                }
            }
        }
        st.creating += spawn;
        (spawn, wake_at, background)
    }

    /// Log the counters when the pool became full or empty, or a creation failed.
    fn log_change(&self, st: &State, last: &mut PoolStats) {
        let stats = st.snapshot();
        if stats.warm != last.warm && (stats.warm == self.target() || stats.warm == 0)
            || stats.creation_failures != last.creation_failures
        {
            tracing::info!(
                warm = stats.warm,
                creating = stats.creating,
                waiting = stats.waiting,
                checked_out = stats.checked_out,
                retired = stats.retired,
                creation_failures = stats.creation_failures,
                "pool"
            );
            *last = stats;
        }
    }

    /// `_background`: held by a refill creation nobody waits for, until it is done.
    async fn create_one(&self, _background: Option<OwnedSemaphorePermit>) {
        let permit = self.inner.limits.creations.acquire().await;
        // `seen`: failures in a row when this attempt started. Attempts that started
        // together and fail together (two starting containers killed at once) are one
        // failure; a retry started after a failure that fails too is the second.
        let (go, seen) = match &permit {
            Ok(_) if !self.inner.stop.is_cancelled() => {
                let mut st = self.inner.state.lock().expect("pool lock");
                // After a failure only the probe runs; creations queued before give up.
                let go = (!st.broken && st.failing == 0) || std::mem::take(&mut st.probe);
                st.attempting += usize::from(go);
                (go, st.failing)
            }
            _ => (false, 0), // closing
        };
        let started = Instant::now();
        let background = _background.is_some();
        let result = if go {
            Some(self.create(background).await)
        } else {
            None
        };
        // A refill that found every slot of the host pool taken (others filled it first):
        // no failure, nothing made.
        let result = match result {
            Some(Err(ReplError::Runtime(RuntimeError::NameInUse { .. }))) => None,
            r => r.map(|r| r.map_err(AcquireError::from)),
        };
        drop(permit);
        let closing = self.inner.stop.is_cancelled();
        if let Some(r) = result.as_ref().filter(|_| !closing) {
            crate::metrics::sandbox_created(r.is_ok(), started.elapsed());
        }
        {
            let mut st = self.inner.state.lock().expect("pool lock");
            st.creating -= 1;
            st.attempting -= usize::from(go);
            match &result {
                Some(Ok(_)) => {
                    st.failing = 0;
                    st.broken = false;
                    st.probe = false;
                }
                // Shutdown removed it while it started: nothing to report.
                Some(Err(_)) if closing => {}
                Some(Err(e)) => {
                    st.failing = st.failing.max(seen + 1);
                    st.stats.creation_failures += 1;
                    st.last_failure = Some(Instant::now());
                    st.last_error = Some(e.clone());
                    // The engine refused (image missing, engine down): that will not pass. A
                    // container that died while starting (killed, say) is retried before
                    // anyone is told; a retry that fails too means the image is broken.
                    if matches!(e, AcquireError::Create(_)) || seen >= 1 {
                        st.broken = true;
                        st.fail_waiters(e);
                    }
                }
                None => {}
            }
        }
        match result {
            Some(Ok(sandbox)) => self.deliver(sandbox).await,
            Some(Err(e)) if !closing => {
                tracing::warn!(error = %e, "could not create a sandbox");
            }
            _ => {}
        }
        self.inner.refill.notify_one();
    }

    /// `background`: a refill, which takes a free slot of the host pool (in durable mode);
    /// a creation for a waiter is claimed from the start.
    async fn create(&self, background: bool) -> Result<Sandbox, ReplError> {
        let i = &self.inner;
        if let Some(host) = self.host_pool().await? {
            let name = match (background, &i.host) {
                (true, Some(h)) => match host.census(&i.backend, &h.holder).await?.free.first() {
                    Some(slot) => host.filling_name(*slot),
                    None => {
                        return Err(ReplError::Runtime(RuntimeError::NameInUse {
                            name: host.warm_name(0),
                        }))
                    }
                },
                (false, Some(h)) => ClaimedName::new(&h.holder).render(),
                (_, None) => unreachable!("host pools have a holder"),
            };
            return self.create_durable(self.spec(name)).await;
        }
        // The shared volume first: a failure there must not strand this sandbox's volume.
        let shared = self.shared_volume().await?;
        let name = i.owner.name(Role::Sandbox);
        if i.config.session.durable && i.backend.unnamed_volumes().await {
            let spec = sandbox::repl_spec(&i.config, &i.owner, name, shared, "");
            return self.create_durable(spec).await;
        }
        let volume = format!("{name}-packages");
        i.backend
            .create_volume(&volume, &i.owner.labels(Role::Sandbox, None))
            .await?;
        let spec = sandbox::repl_spec(&i.config, &i.owner, name, shared, &volume);
        match Repl::start(&i.backend, &spec).await {
            Ok(repl) => Ok(Sandbox {
                repl,
                volume,
                created: Instant::now(),
                renamed: None,
            }),
            Err(e) => {
                i.backend.remove_volume(&volume).await;
                Err(e)
            }
        }
    }

    /// A durable sandbox may end itself with no daemon around: its own volume is one the
    /// engine makes for it and removes with it.
    async fn create_durable(&self, spec: sandbox::SandboxSpec) -> Result<Sandbox, ReplError> {
        let i = &self.inner;
        let repl = Repl::start(&i.backend, &spec).await?;
        let volume = match i
            .backend
            .volume_at(&repl.id, sandbox::SESSION_PACKAGES)
            .await
        {
            Ok(Some(volume)) => volume,
            Ok(None) => String::new(),
            Err(e) => {
                i.backend.remove(&repl.id).await;
                return Err(e.into());
            }
        };
        Ok(Sandbox {
            repl,
            volume,
            created: Instant::now(),
            renamed: None,
        })
    }

    async fn reap_loop(&self) {
        let max_age = self.inner.config.docker.pool_max_age;
        let every = (max_age / 4).clamp(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let expired: Vec<Sandbox> = {
                let mut st = self.inner.state.lock().expect("pool lock");
                let (old, young): (Vec<_>, Vec<_>) = st
                    .ready
                    .drain(..)
                    .partition(|s| s.created.elapsed() >= max_age);
                st.ready = young.into();
                st.stats.retired += old.len() as u64;
                old
            };
            if !expired.is_empty() {
                tracing::debug!(
                    retired = expired.len(),
                    "retiring warm sandboxes past pool_max_age"
                );
                for sandbox in expired {
                    self.discard(sandbox);
                }
                self.inner.refill.notify_one();
            }
        }
    }

    /// Stop refilling, fail waiters, and remove every warm sandbox.
    pub fn close(&self) {
        self.inner.stop.cancel();
        let ready: Vec<Sandbox> = {
            let mut st = self.inner.state.lock().expect("pool lock");
            st.closed = true;
            for w in st.waiters.drain() {
                let _ = w.send(Err(AcquireError::Closed));
            }
            st.ready.drain(..).collect()
        };
        let host = self
            .inner
            .host
            .as_ref()
            .and_then(|h| h.pool.lock().expect("host pool lock").clone());
        for sandbox in ready {
            match &host {
                // Held ready: left warm for the next daemon.
                Some(host) if host.slot_of(&sandbox.repl.name).is_some() => {
                    let (pool, host) = (self.clone(), host.clone());
                    self.inner
                        .tasks
                        .spawn(async move { pool.park(sandbox, &host).await });
                }
                _ => self.discard(sandbox),
            }
        }
    }
}

/// A waiting request's end of its delivery. Dropped (the call was cancelled), it closes
/// the channel and discards a sandbox that was sent anyway, so its volume is removed.
struct Waiting<'a> {
    pool: &'a Pool,
    rx: oneshot::Receiver<Delivery>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(Ok(sandbox)) = self.rx.try_recv() {
            self.pool.discard(sandbox);
        }
    }
}

/// A sandbox being checked before it is handed out; discarded if the call goes away or
/// the check fails.
struct InHand<'a> {
    pool: &'a Pool,
    sandbox: Option<Sandbox>,
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            self.pool.discard(sandbox);
        }
    }
}

impl From<RuntimeError> for AcquireError {
    fn from(e: RuntimeError) -> Self {
        AcquireError::Create(Arc::new(e))
    }
}

impl From<ReplError> for AcquireError {
    /// The engine's refusal stays one; anything else went wrong in the new sandbox.
    fn from(e: ReplError) -> Self {
        match e {
            ReplError::Runtime(e) => e.into(),
            e => AcquireError::Start(Arc::new(e)),
        }
    }
}

/// What makes two warm sandboxes of the host pool interchangeable: the image's id, the
/// scope, the OS user and the whole spec but its labels (which name the daemon that made
/// it). The egress mount is part of the spec, so sandboxes of a daemon with a ceiling
/// (`network.allow`) and of one without never mix.
fn host_fingerprint(image: &str, config: &Config, mut spec: sandbox::SandboxSpec) -> String {
    spec.labels.clear();
    durable::fingerprint([
        image,
        config.session.scope.as_str(),
        &durable::uid().to_string(),
        &format!("{spec:?}"),
    ])
}

/// The engine's pools of named profiles, made on first use (or at start for a profile
/// that keeps sandboxes warm). Keyed by the environment they draw from (the client with
/// a shared environment of its own, or none: the main one) and the profile's name.
#[derive(Default)]
pub struct Pools {
    /// A sync lock, never held across an `.await`.
    pools: std::sync::Mutex<HashMap<(Option<Client>, String), Pool>>,
}

impl Pools {
    /// The pool of profile `config.profile` drawing on `base`'s environment, made (and
    /// started) on first use.
    pub fn get(&self, base: &Pool, client: Option<&Client>, config: &Config) -> Pool {
        let mut pools = self.pools.lock().expect("profile pools lock");
        let key = (client.cloned(), config.profile.clone());
        let pool = pools.entry(key).or_insert_with(|| {
            tracing::info!(profile = %config.profile, client = ?client.map(Client::name), "a pool for the profile");
            base.for_profile(config.clone())
        });
        pool.start();
        pool.clone()
    }

    /// Every profile pool made so far.
    pub fn all(&self) -> Vec<Pool> {
        let pools = self.pools.lock().expect("profile pools lock");
        pools.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_pools_fingerprint_changes_with_the_egress_ceiling() {
        let mut config = Config::defaults();
        let owner = Owner::new();
        let spec = |c: &Config| sandbox::repl_spec(c, &owner, "n".into(), "", "");
        let without = host_fingerprint("sha256:1", &config, spec(&config));
        assert_eq!(
            without,
            host_fingerprint("sha256:1", &config, spec(&config))
        );
        config.network.allow = vec!["allowed.test".into()];
        let with = host_fingerprint("sha256:1", &config, spec(&config));
        assert_ne!(
            with, without,
            "sandboxes with and without the mount never mix"
        );
        // A narrower or wider ceiling mounts the same directory: the same pool.
        config.network.allow.push("*.example.com".into());
        assert_eq!(with, host_fingerprint("sha256:1", &config, spec(&config)));
    }

    fn waiter(w: &mut Waiters, name: &str) -> oneshot::Receiver<Delivery> {
        let (tx, rx) = oneshot::channel();
        w.push(&Client::new(name), tx);
        rx
    }

    /// Which waiter `next` picks, by the receiver it would deliver to.
    fn served(w: &mut Waiters, rxs: &mut [(&str, oneshot::Receiver<Delivery>)]) -> String {
        w.next()
            .expect("a waiter")
            .send(Err(AcquireError::Closed))
            .unwrap_or_else(|_| panic!("live"));
        let at = rxs
            .iter_mut()
            .position(|(_, rx)| rx.try_recv().is_ok())
            .expect("one was served");
        rxs[at].0.to_string()
    }

    #[test]
    fn clients_take_turns_and_each_is_served_in_arrival_order() {
        let mut w = Waiters::default();
        let mut rxs = vec![
            ("a1", waiter(&mut w, "a")),
            ("a2", waiter(&mut w, "a")),
            ("a3", waiter(&mut w, "a")),
            ("b1", waiter(&mut w, "b")),
            ("c1", waiter(&mut w, "c")),
            ("b2", waiter(&mut w, "b")),
        ];
        let order: Vec<String> = (0..6).map(|_| served(&mut w, &mut rxs)).collect();
        assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3"]);
        assert!(w.next().is_none());
        assert!(w.turn.is_empty());
    }

    #[test]
    fn callers_that_went_away_are_skipped_and_a_client_without_callers_loses_its_turn() {
        let mut w = Waiters::default();
        drop(waiter(&mut w, "a"));
        let mut rxs = vec![("b1", waiter(&mut w, "b")), ("a2", waiter(&mut w, "a"))];
        drop(waiter(&mut w, "c"));
        let mut c2 = waiter(&mut w, "c");
        drop(waiter(&mut w, "d"));
        assert_eq!(w.len(), 3);
        assert_eq!(served(&mut w, &mut rxs), "a2");
        assert_eq!(served(&mut w, &mut rxs), "b1");
        let c = w.next().expect("c's live caller");
        assert!(c.send(Err(AcquireError::Closed)).is_ok());
        assert!(c2.try_recv().is_ok());
        assert!(w.next().is_none(), "d has nobody waiting");
        assert!(w.is_empty());
    }
}

#[cfg(test)]
#[path = "pool/tests_fake.rs"]
pub(crate) mod tests_fake;
