//! The session registry: `session_id` -> a long-lived REPL container, and each session's
//! life.
//!
//! A session is [`State::Live`] (it holds its REPL) or [`State::Ended`] (it says why). The
//! state sits behind the session's fair (FIFO) async mutex, so calls to one session run one
//! at a time (in the order they arrived: [`crate::order`] lines them up before the lock),
//! and the state can only change while that lock is held. The
//! one function that ends a session is `Engine::end_session` (it needs the lock guard);
//! it frees the slot and removes the container and volume, exactly once. Something that
//! wants a busy session to end (cleanup, shutdown) asks with [`Session::request_end`]:
//! the call holding the lock is stopped, and whoever takes the lock next ends the session.
//! Ended ids are remembered (bounded) so a later call can say what happened.
//!
//! **Ownership.** Every session belongs to the [`Client`] that created it. The registry
//! only finds a session, live or ended, for its owner: to anyone else an id is unknown,
//! so another client cannot even learn that it existed. [`Slots`] counts sessions per
//! client for `session.max_sessions_per_client` and in all for `session.max_sessions`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::config::human_bytes;
use crate::egress::daemon::EgressError;
use crate::repl::{Repl, ReplError};

/// How many ended sessions are remembered for their explanation.
const TOMBSTONES: usize = 10_000;

/// Where a session is in its life.
pub enum State {
    /// It has a sandbox and takes calls.
    Live(Repl),
    /// It is over, and why (for the caller's error).
    Ended(EndReason),
}

/// Why a session ended. Its `Display` is the clause a caller reads ("session `ID` has
/// ended: ...").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// `cleanup-session` ended it.
    CleanedUp,
    /// Nobody used it for `session.idle_timeout`.
    Idle(Duration),
    /// The daemon shut down (sessions that are not durable).
    ShutDown,
    /// Its sandbox died, broke the protocol, or could not be given its network.
    Lost(Lost),
}

/// How a session's sandbox was lost. Its `Display` completes "its sandbox was lost: ...".
#[derive(Debug, Clone)]
pub enum Lost {
    /// Its helper died, broke the protocol, or was killed (the REPL's error).
    Repl(Arc<ReplError>),
    /// The kernel killed it for memory: the limit, and the setting it comes from.
    OutOfMemory { limit: u64, key: String },
    /// A new session's network could not be set up.
    Network(Arc<EgressError>),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Repl(e) => write!(f, "{e}"),
            Lost::OutOfMemory { limit, key } => write!(
                f,
                "{}: {} ({key}). Files in /tmp and the working directory count toward it",
                ReplError::OutOfMemory,
                human_bytes(*limit)
            ),
            Lost::Network(e) => write!(f, "its network could not be set up: {e}"),
        }
    }
}

/// Two losses are the same when they read the same (the errors they carry have no
/// equality of their own).
impl PartialEq for Lost {
    fn eq(&self, other: &Lost) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Lost {}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::CleanedUp => write!(f, "it was cleaned up with cleanup-session"),
            EndReason::Idle(limit) => write!(
                f,
                "it was idle for more than {} (session.idle_timeout)",
                humantime::format_duration(*limit)
            ),
            EndReason::ShutDown => write!(f, "the server shut down"),
            EndReason::Lost(how) => write!(f, "its sandbox was lost: {how}"),
        }
    }
}

/// One persistent session.
pub struct Session {
    pub id: String,
    /// The client that created it; nobody else can see it.
    pub owner: Client,
    /// Container id, readable without the lock so an end request can stop a busy session.
    pub container: String,
    /// The session's package volume (installs go here).
    pub volume: String,
    /// When a call last finished with this session; for idle expiry. A std mutex: it is
    /// never held across an `.await`.
    last_used: std::sync::Mutex<Instant>,
    /// The session's life. A tokio mutex because it is held across the whole execution;
    /// tokio's is fair, which gives arrival order.
    state: tokio::sync::Mutex<State>,
    /// Why someone asked this session to end, set once (first reason wins). A std mutex:
    /// never held across an `.await`.
    end_requested: std::sync::Mutex<Option<EndReason>>,
    /// Fired with `end_requested`: stops the call that holds the lock.
    ending: CancellationToken,
    /// Fired when this daemon leaves a durable session to the next one (shutdown): the
    /// call that holds the lock answers at once, and the code goes on in the sandbox.
    detaching: CancellationToken,
    /// When the session started (its sandbox was created, for an adopted one), epoch
    /// seconds: its age, and its hard end (`session.max_lifetime`).
    pub started_at: u64,
    /// A later daemon took it over from the one that started it.
    pub adopted: bool,
    /// The sandbox profile of its first call, kept for its life (see `profile.rs`).
    pub profile: String,
    /// The engine's record of a durable session (`None`: it ends with this daemon).
    pub durable: Option<Durable>,
    /// Said once, with the next result: what happened to the call that was in flight when
    /// the previous daemon went away. A std mutex: never held across an `.await`.
    notice: std::sync::Mutex<Option<String>>,
}

/// What the engine records about a durable session: its container's current name, which
/// says who owns and holds it and until when it may live (see [`crate::durable`]).
pub struct Durable {
    /// The container's name now. A tokio mutex: a rename holds it across the engine call,
    /// so renames of one session (claim, restamp, release) never race.
    pub name: tokio::sync::Mutex<String>,
    /// When the name's deadline was last stamped, epoch seconds (0: not yet).
    pub stamped: std::sync::atomic::AtomicU64,
}

impl Session {
    pub fn new(
        id: String,
        owner: Client,
        container: String,
        volume: String,
        repl: Repl,
    ) -> Session {
        Session {
            id,
            owner,
            container,
            volume,
            last_used: std::sync::Mutex::new(Instant::now()),
            state: tokio::sync::Mutex::new(State::Live(repl)),
            end_requested: std::sync::Mutex::new(None),
            ending: CancellationToken::new(),
            detaching: CancellationToken::new(),
            started_at: crate::durable::now(),
            adopted: false,
            profile: crate::profile::DEFAULT.into(),
            durable: None,
            notice: std::sync::Mutex::new(None),
        }
    }

    /// This session's sandbox was made for profile `name`.
    pub fn with_profile(mut self, name: &str) -> Session {
        self.profile = name.into();
        self
    }

    /// This session is durable: its container is called `name` (renamed later).
    pub fn durable(mut self, name: String, stamped: u64) -> Session {
        self.durable = Some(Durable {
            name: tokio::sync::Mutex::new(name),
            stamped: std::sync::atomic::AtomicU64::new(stamped),
        });
        self
    }

    /// This session was adopted from an earlier daemon: it started at `started_at`, and
    /// `notice` (if any) goes out with the next result.
    pub fn adopted(mut self, started_at: u64, notice: Option<String>) -> Session {
        self.started_at = started_at;
        self.adopted = true;
        self.notice = std::sync::Mutex::new(notice);
        self
    }

    /// The notice for the next result, once.
    pub fn take_notice(&self) -> Option<String> {
        self.notice.lock().expect("notice lock").take()
    }

    /// Seconds since a call last finished (zero while one runs).
    pub fn idle_secs(&self) -> f64 {
        self.idle_for().as_secs_f64()
    }

    /// Wait for this session's turn (calls are served in arrival order). The session counts
    /// as in use until the guard is dropped.
    pub async fn lock(&self) -> SessionGuard<'_> {
        SessionGuard {
            state: self.state.lock().await,
            session: self,
            used: true,
        }
    }

    /// The lock, if nobody holds it now.
    pub fn try_lock(&self) -> Option<SessionGuard<'_>> {
        self.state.try_lock().ok().map(|state| SessionGuard {
            state,
            session: self,
            used: true,
        })
    }

    /// The lock, if nobody holds it now, for a look that is not a use: the session's idle
    /// time goes on (`list-sessions` must not keep every session alive).
    pub fn try_peek(&self) -> Option<SessionGuard<'_>> {
        self.try_lock().map(|mut guard| {
            guard.used = false;
            guard
        })
    }

    /// Ask the session to end because of `why`: the call holding it is stopped, and the
    /// next holder of the lock ends it. The first reason wins.
    pub fn request_end(&self, why: EndReason) {
        let mut requested = self.end_requested.lock().expect("end lock");
        if requested.is_none() {
            *requested = Some(why);
        }
        self.ending.cancel();
    }

    /// Why the session was asked to end, if it was.
    pub fn end_requested(&self) -> Option<EndReason> {
        self.end_requested.lock().expect("end lock").clone()
    }

    /// This daemon leaves the session to the next one: a running call answers now.
    pub fn detach(&self) {
        self.detaching.cancel();
    }

    /// Completes when the daemon leaves the session to the next one.
    pub async fn detached(&self) {
        self.detaching.cancelled().await
    }

    /// Completes when someone asks the session to end.
    pub async fn ending(&self) {
        self.ending.cancelled().await
    }

    /// How long the session has been idle; zero while a call holds it.
    pub fn idle_for(&self) -> Duration {
        match self.state.try_lock() {
            Ok(_) => self.last_used.lock().expect("last_used lock").elapsed(),
            Err(_) => Duration::ZERO,
        }
    }
}

/// Exclusive use of a session; marks the session used when dropped.
pub struct SessionGuard<'a> {
    state: tokio::sync::MutexGuard<'a, State>,
    session: &'a Session,
    /// Dropping it marks the session used (false for a peek).
    used: bool,
}

impl SessionGuard<'_> {
    /// The session's state, for `Engine::end_session`, the only code that changes it.
    pub(crate) fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// The live REPL, or why the session ended.
    pub fn repl(&mut self) -> Result<&mut Repl, EndReason> {
        match &mut *self.state {
            State::Live(repl) => Ok(repl),
            State::Ended(why) => Err(why.clone()),
        }
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if self.used {
            *self.session.last_used.lock().expect("last_used lock") = Instant::now();
        }
    }
}

/// All live sessions, and why ended ones ended.
#[derive(Default)]
pub struct Registry {
    /// Never hold a guard of this map across an `.await`: clone the `Arc` out first.
    live: DashMap<String, Arc<Session>>,
    /// Keyed by owner and id: only the owner is told that an id existed.
    ended: DashMap<(Client, String), EndReason>,
}

impl Registry {
    pub fn insert(&self, session: Arc<Session>) {
        self.live.insert(session.id.clone(), session);
    }

    /// The live session `id` if `owner` owns it. Another client's session is `None`,
    /// exactly like an id that never existed.
    pub fn get(&self, id: &str, owner: &Client) -> Option<Arc<Session>> {
        self.live
            .get(id)
            .filter(|s| &s.owner == owner)
            .map(|s| s.value().clone())
    }

    /// Move a session from the live map to the remembered ended ones. Only
    /// `Engine::end_session` calls this, under the session's lock.
    pub(crate) fn forget(&self, session: &Session, why: &EndReason) {
        self.live.remove(&session.id);
        if self.ended.len() >= TOMBSTONES {
            self.ended.clear();
        }
        self.ended
            .insert((session.owner.clone(), session.id.clone()), why.clone());
    }

    /// Why `owner`'s session `id`, no longer live, has ended, if it ever existed.
    pub fn ended_because(&self, id: &str, owner: &Client) -> Option<EndReason> {
        self.ended
            .get(&(owner.clone(), id.to_string()))
            .map(|w| w.value().clone())
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.live.iter().map(|e| e.value().clone()).collect()
    }
}

/// Why a session slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// `session.max_sessions` live or starting sessions in all.
    Total(usize),
    /// `session.max_sessions_per_client` live or starting sessions of this client.
    PerClient(usize),
}

/// Session slots: live sessions plus sessions being created, in all and per client. A
/// slot is reserved before a sandbox is taken, so concurrent creations cannot overshoot
/// either limit; `Engine::end_session` (or a failed creation) releases it.
#[derive(Debug)]
pub struct Slots {
    max_total: usize,
    max_per_client: usize,
    /// A std mutex: held for a few instructions, never across an `.await`.
    taken: std::sync::Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Taken {
    total: usize,
    /// Clients with at least one slot; a client's entry goes when its count reaches 0.
    per_client: HashMap<Client, usize>,
}

impl Slots {
    pub fn new(max_total: usize, max_per_client: usize) -> Slots {
        Slots {
            max_total,
            max_per_client,
            taken: std::sync::Mutex::new(Taken::default()),
        }
    }

    /// Take a slot for `client`, or say which limit is reached.
    pub fn reserve(&self, client: &Client) -> Result<(), SlotRefusal> {
        let mut taken = self.taken.lock().expect("slots lock");
        let mine = taken.per_client.get(client).copied().unwrap_or(0);
        if mine >= self.max_per_client {
            return Err(SlotRefusal::PerClient(self.max_per_client));
        }
        if taken.total >= self.max_total {
            return Err(SlotRefusal::Total(self.max_total));
        }
        taken.total += 1;
        *taken.per_client.entry(client.clone()).or_insert(0) += 1;
        Ok(())
    }

    /// Give back a slot `client` reserved.
    pub fn release(&self, client: &Client) {
        let mut taken = self.taken.lock().expect("slots lock");
        taken.total = taken.total.saturating_sub(1);
        if let Some(n) = taken.per_client.get_mut(client) {
            *n -= 1;
            if *n == 0 {
                taken.per_client.remove(client);
            }
        }
    }

    /// Slots taken by `client` now.
    pub fn of(&self, client: &Client) -> usize {
        let taken = self.taken.lock().expect("slots lock");
        taken.per_client.get(client).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hold_both_limits_and_free_per_client() {
        let slots = Slots::new(3, 2);
        let (a, b) = (Client::new("a"), Client::new("b"));
        slots.reserve(&a).unwrap();
        slots.reserve(&a).unwrap();
        assert_eq!(slots.reserve(&a), Err(SlotRefusal::PerClient(2)));
        slots.reserve(&b).unwrap();
        assert_eq!(slots.reserve(&b), Err(SlotRefusal::Total(3)));
        slots.release(&a);
        assert_eq!(slots.of(&a), 1);
        slots.reserve(&b).unwrap();
        assert_eq!(slots.of(&b), 2);
        assert_eq!(slots.reserve(&a), Err(SlotRefusal::Total(3)));
        for c in [&a, &b, &b] {
            slots.release(c);
        }
        assert_eq!((slots.of(&a), slots.of(&b)), (0, 0));
        assert!(slots.taken.lock().unwrap().per_client.is_empty());
    }
}
