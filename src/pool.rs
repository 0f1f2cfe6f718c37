//! The warm pool: sandboxes started ahead of time, helper ready, handed out once.
//!
//! Every sandbox comes from here, pool on or off. A refill task keeps `pool_size` ready
//! sandboxes, plus one being made for each waiting request. A semaphore bounds creations
//! across all of it, and a reaper retires sandboxes older than `pool_max_age`. Requests
//! are served in arrival order: a request that finds the pool empty joins a FIFO of
//! waiters, and the next sandbox to become ready goes to the first waiter. A sandbox is
//! pinged before it is handed out; one that does not answer is removed, never handed out.
//! With `pool_enabled: false` the target is just the number of waiters: creation on demand.
//! A refill is started after the call that used a sandbox, and, while sandboxes remain
//! ready and nobody waits, a quarter second later: a burst of calls runs on an idle CPU.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;
use tokio::sync::{oneshot, Notify, OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::docker::{Docker, DockerError};
use crate::repl::{Repl, ReplError};
use crate::sandbox::{self, Owner, Role};

/// How long a health ping may take before the sandbox is discarded.
const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// How long refills wait for a burst of calls to pass while the pool still has sandboxes.
const REFILL_SETTLE: Duration = Duration::from_millis(250);
/// Longest pause between refill attempts after creations keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A started sandbox: a ready REPL and the package volume it mounts.
pub struct Sandbox {
    pub repl: Repl,
    /// This sandbox's own package volume (a session installs into it).
    pub volume: String,
    pub created: Instant,
}

/// Why no sandbox could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AcquireError {
    /// Docker could not create one (unreachable, image missing, refused).
    #[error("{0}")]
    Create(Arc<str>),
    /// None became ready in time.
    #[error(
        "no sandbox became ready within {waited:?}: the warm pool was exhausted and Docker could not \
         start one in time ({creating} being created, at most {max_creations} at once{last_error}). \
         Raise docker.pool_size or docker.max_concurrent_creations, or docker.pool_wait_timeout if \
         the host is slow"
    )]
    Exhausted {
        waited: Duration,
        creating: usize,
        max_creations: usize,
        last_error: String,
    },
    #[error("the server is shutting down")]
    Closed,
}

/// The pool's counters, for logs and (later) health and metrics endpoints.
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

#[derive(Default)]
struct State {
    ready: VecDeque<Sandbox>,
    waiters: VecDeque<oneshot::Sender<Delivery>>,
    creating: usize,
    stats: PoolStats,
    /// Creation failures in a row, for back-off.
    failing: u32,
    /// The latest creation failure, to explain an exhausted pool.
    last_error: Option<String>,
    closed: bool,
}

impl State {
    fn snapshot(&self) -> PoolStats {
        PoolStats {
            warm: self.ready.len(),
            creating: self.creating,
            waiting: self.waiters.iter().filter(|w| !w.is_closed()).count(),
            ..self.stats.clone()
        }
    }
}

struct Inner {
    config: Config,
    docker: Docker,
    owner: Owner,
    /// The shared package volume every sandbox mounts, created (labelled) on first use.
    shared_volume: OnceCell<String>,
    /// The refill and reaper tasks are started once, by the first `start` or `acquire`.
    started: std::sync::Once,
    /// A sync mutex: never held across an `.await`.
    state: Mutex<State>,
    /// Bounds creations of every kind (refill, on demand, sessions).
    creations: Semaphore,
    /// Wakes the refill task after a checkout, a creation or a retirement.
    refill: Notify,
    /// Stops the refill and reaper tasks.
    stop: CancellationToken,
    /// Creation and removal tasks; shutdown waits for them.
    tasks: TaskTracker,
}

/// A handle on the pool; clone it freely.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// A pool that does nothing until [`Pool::start`] or the first [`Pool::acquire`].
    pub fn new(config: Config, docker: Docker, owner: Owner, tasks: TaskTracker) -> Pool {
        let max = config.docker.max_concurrent_creations as usize;
        Pool {
            inner: Arc::new(Inner {
                config,
                docker,
                owner,
                shared_volume: OnceCell::new(),
                started: std::sync::Once::new(),
                state: Mutex::new(State::default()),
                creations: Semaphore::new(max),
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

    /// Whether this pool ever asked Docker for anything (shutdown skips Docker otherwise).
    pub fn used_docker(&self) -> bool {
        self.inner.shared_volume.initialized() || self.inner.started.is_completed()
    }

    /// The shared package volume (installs without a session go here).
    pub async fn shared_volume(&self) -> Result<&str, DockerError> {
        let i = &self.inner;
        i.shared_volume
            .get_or_try_init(|| async {
                let name = i.owner.shared_volume();
                i.docker
                    .create_volume(&name, &i.owner.labels(Role::Packages, None))
                    .await?;
                Ok::<_, DockerError>(name)
            })
            .await
            .map(String::as_str)
    }

    fn target(&self) -> usize {
        let d = &self.inner.config.docker;
        if d.pool_enabled {
            d.pool_size as usize
        } else {
            0
        }
    }

    pub fn stats(&self) -> PoolStats {
        self.inner.state.lock().expect("pool lock").snapshot()
    }

    /// Take a ready sandbox, waiting (in arrival order) up to `pool_wait_timeout`.
    pub async fn acquire(&self) -> Result<Sandbox, AcquireError> {
        self.start();
        let wait = self.inner.config.docker.pool_wait_timeout;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let taken = {
                let mut st = self.inner.state.lock().expect("pool lock");
                if st.closed {
                    return Err(AcquireError::Closed);
                }
                // Do not jump the queue: take from `ready` only when no one waits before us.
                let first_in_line = st.waiters.iter().all(|w| w.is_closed());
                match st.ready.pop_front().filter(|_| first_in_line) {
                    Some(sb) => Ok(sb),
                    None => {
                        let (tx, rx) = oneshot::channel();
                        st.waiters.push_back(tx);
                        Err(rx)
                    }
                }
            };
            // A waiter needs a creation now. A sandbox taken from the pool is replaced once
            // the call is done (`discard`, `replenish`), so the replacement's start does not
            // compete with the call it serves.
            if taken.is_err() {
                self.inner.refill.notify_one();
            }
            let sandbox = match taken {
                Ok(sb) => sb,
                Err(rx) => match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(delivery)) => delivery?,
                    Ok(Err(_)) => return Err(AcquireError::Closed),
                    Err(_) => {
                        let st = self.inner.state.lock().expect("pool lock");
                        return Err(AcquireError::Exhausted {
                            waited: wait,
                            creating: st.creating,
                            max_creations: self.inner.config.docker.max_concurrent_creations
                                as usize,
                            last_error: st
                                .last_error
                                .as_ref()
                                .map(|e| format!("; last failure: {e}"))
                                .unwrap_or_default(),
                        });
                    }
                },
            };
            let mut sandbox = sandbox;
            if sandbox.repl.ping(PING_TIMEOUT).await {
                self.inner
                    .state
                    .lock()
                    .expect("pool lock")
                    .stats
                    .checked_out += 1;
                return Ok(sandbox);
            }
            tracing::warn!(container = %sandbox.repl.name, "a warm sandbox did not answer; removing it");
            self.inner.state.lock().expect("pool lock").stats.retired += 1;
            self.discard(sandbox);
        }
    }

    /// Remove a sandbox and its volume in the background, and refill the pool.
    pub fn discard(&self, sandbox: Sandbox) {
        let docker = self.inner.docker.clone();
        self.inner.tasks.spawn(async move {
            docker.remove(&sandbox.repl.id).await;
            drop(sandbox.repl);
            docker.remove_volume(&sandbox.volume).await;
        });
        self.replenish();
    }

    /// Refill the pool (after a sandbox was kept by a session, say).
    pub fn replenish(&self) {
        self.inner.refill.notify_one();
    }

    /// Hand a new sandbox to the first live waiter, or keep it warm.
    fn deliver(&self, mut sandbox: Sandbox) {
        let mut st = self.inner.state.lock().expect("pool lock");
        if st.closed {
            drop(st);
            self.discard(sandbox);
            return;
        }
        while let Some(waiter) = st.waiters.pop_front() {
            match waiter.send(Ok(sandbox)) {
                Ok(()) => return,
                Err(Ok(back)) => sandbox = back,
                Err(Err(_)) => unreachable!("we sent Ok"),
            }
        }
        st.ready.push_back(sandbox);
    }

    /// Tell the first live waiter why its sandbox could not be made.
    fn fail(&self, error: AcquireError) {
        let mut st = self.inner.state.lock().expect("pool lock");
        while let Some(waiter) = st.waiters.pop_front() {
            if waiter.send(Err(error.clone())).is_ok() {
                return;
            }
        }
    }

    async fn refill_loop(&self) {
        let mut last = PoolStats::default();
        let mut settled = false;
        loop {
            let (spawn, backoff, settle) = {
                let mut st = self.inner.state.lock().expect("pool lock");
                st.waiters.retain(|w| !w.is_closed());
                let want = self.target() + st.waiters.len();
                let have = st.ready.len() + st.creating;
                // While sandboxes are still ready and nobody waits, let a burst of calls
                // finish before replacements start competing with them for the CPU.
                let settle =
                    !settled && want > have && st.waiters.is_empty() && !st.ready.is_empty();
                let spawn = if settle { 0 } else { want.saturating_sub(have) };
                st.creating += spawn;
                // After repeated failures, refill slowly unless someone is waiting.
                let backoff = if st.failing > 0 && st.waiters.is_empty() {
                    Some(Duration::from_millis(250 * 2u64.pow(st.failing.min(7))).min(MAX_BACKOFF))
                } else {
                    None
                };
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
                    last = stats;
                }
                (spawn, backoff, settle)
            };
            if settle {
                self.settle().await;
                if self.inner.stop.is_cancelled() {
                    return;
                }
                settled = true;
                continue;
            }
            settled = false;
            for _ in 0..spawn {
                let p = self.clone();
                self.inner.tasks.spawn(async move { p.create_one().await });
            }
            if let Some(pause) = backoff {
                tokio::select! {
                    _ = self.inner.stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = self.inner.refill.notified() => {}
            }
        }
    }

    /// Wait `REFILL_SETTLE`, or less if a request starts waiting or the pool closes.
    async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + REFILL_SETTLE;
        loop {
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = self.inner.refill.notified() => {
                    if self.stats().waiting > 0 {
                        return;
                    }
                }
            }
        }
    }

    async fn create_one(&self) {
        let result = match self.inner.creations.acquire().await {
            Ok(_permit) if !self.inner.stop.is_cancelled() => Some(self.create().await),
            _ => None, // closing
        };
        {
            let mut st = self.inner.state.lock().expect("pool lock");
            st.creating -= 1;
            match &result {
                Some(Ok(_)) => st.failing = 0,
                Some(Err(_)) if self.inner.stop.is_cancelled() => {}
                Some(Err(e)) => {
                    st.failing += 1;
                    st.stats.creation_failures += 1;
                    st.last_error = Some(e.to_string());
                }
                None => {}
            }
        }
        match result {
            Some(Ok(sandbox)) => self.deliver(sandbox),
            // Shutdown removed it while it started: nothing to report.
            Some(Err(_)) if self.inner.stop.is_cancelled() => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "could not create a sandbox");
                // Docker refused (image missing, engine down): that will not pass, so the
                // first waiter hears it now. A container that died while starting (killed,
                // say) is just retried; waiters keep waiting for the next one.
                if let ReplError::Docker(_) = e {
                    self.fail(AcquireError::Create(e.to_string().into()));
                }
            }
            None => {}
        }
        self.inner.refill.notify_one();
    }

    async fn create(&self) -> Result<Sandbox, ReplError> {
        let i = &self.inner;
        let name = i.owner.name(Role::Sandbox);
        let volume = format!("{name}-packages");
        i.docker
            .create_volume(&volume, &i.owner.labels(Role::Sandbox, None))
            .await?;
        let shared = self.shared_volume().await?;
        let spec = sandbox::repl_spec(&i.config, &i.owner, name, shared, &volume);
        match Repl::start(&i.docker, &spec).await {
            Ok(repl) => Ok(Sandbox {
                repl,
                volume,
                created: Instant::now(),
            }),
            Err(e) => {
                i.docker.remove_volume(&volume).await;
                Err(e)
            }
        }
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
            for w in st.waiters.drain(..) {
                let _ = w.send(Err(AcquireError::Closed));
            }
            st.ready.drain(..).collect()
        };
        for sandbox in ready {
            self.discard(sandbox);
        }
    }
}

impl From<DockerError> for AcquireError {
    fn from(e: DockerError) -> Self {
        AcquireError::Create(e.to_string().into())
    }
}
