//! The core: the operations behind the tools, and the daemon's lifetime.
//!
//! [`Engine`] is a cheap-to-clone handle over shared state: the configuration, the runtime
//! seam ([`Backend`]: Docker, Podman, Kubernetes or the fake), the session registry and the
//! owner identity every container is labelled with. This file holds that state, its
//! assembly and the small accessors; the operations live beside it, one file per concern:
//!
//! - [`exec`]: `execute-transient` and `execute-persistent`, with their results and errors;
//! - [`sessions`]: finding, adopting, resetting, listing and ending sessions;
//! - [`install`]: `install-package`, `list-packages` and the installer container;
//! - [`files`]: the file operations and a transient run's files;
//! - [`lifecycle`]: start, drain, shutdown and the sweep of what dead daemons left.
//!
//! Each operation returns a typed result or an operation-specific error whose message says
//! what failed and what to do. Every operation acts for a [`Client`] (over stdio, `local`):
//! a session belongs to the client that created it, and to every other client its id is
//! unknown, with exactly the error an id that never existed gets
//! ([`ExecError::NoSuchSession`], [`CleanupError::NoSuchSession`]).
//!
//! When several clients share the daemon, each has its own shared environment: a client's
//! first install without a session gives it a pool of its own whose sandboxes mount its
//! package volume ([`Pool::for_client`]); its later runs and new sessions come from there.
//! Every operation is admitted through [`Calls`] as a [`crate::calls::Operation`] and
//! counted while it runs, which is what [`Engine::drain`] waits for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OnceCell};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod exec;
mod files;
mod install;
mod lifecycle;
mod probe;
pub use probe::{InstallerProbeError, ProbeError, ProbeSandbox};
mod sessions;
#[cfg(test)]
mod tests_fake;

pub use exec::{run_timeout, AdoptionError, CallContext, ExecError, ExecResult, TimeoutError};
pub use files::{FileList, FileOpError};
pub use install::{InstallError, InstallResult, InstallTarget};
pub use sessions::{CleanupError, SessionInfo};

use crate::calls::{CallGuard, Calls, Operation, Running, ShuttingDown};
use crate::client::Client;
use crate::config::{human_bytes, Config};
use crate::durable::{self, Holder};
use crate::egress::daemon::Egress;
use crate::pool::{Pool, PoolStats};
use crate::profile::ProfileError;
use crate::runtime::Backend;
use crate::sandbox::Owner;
use crate::session::{Registry, Slots};

/// How long a reset or a variable listing may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

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
    profile_pools: crate::pool::Pools,
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
}
