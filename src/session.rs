//! The session registry: `session_id` -> a long-lived REPL container, and each session's
//! life.
//!
//! A session is [`State::Live`] (it holds its REPL) or [`State::Ended`] (it says why). The
//! state sits behind the session's fair (FIFO) async mutex, so calls to one session run one
//! at a time, in arrival order, and the state can only change while that lock is held. The
//! one function that ends a session is `Engine::end_session` (it needs the lock guard);
//! it frees the slot and removes the container and volume, exactly once. Something that
//! wants a busy session to end (cleanup, shutdown) asks with [`Session::request_end`]:
//! the call holding the lock is stopped, and whoever takes the lock next ends the session.
//! Ended ids are remembered (bounded) so a later call can say what happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::repl::Repl;

/// How many ended sessions are remembered for their explanation.
const TOMBSTONES: usize = 10_000;

/// Where a session is in its life.
pub enum State {
    /// It has a sandbox and takes calls.
    Live(Repl),
    /// It is over; the text says why (for the caller's error).
    Ended(String),
}

/// One persistent session.
pub struct Session {
    pub id: String,
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
    end_requested: std::sync::Mutex<Option<String>>,
    /// Fired with `end_requested`: stops the call that holds the lock.
    ending: CancellationToken,
}

impl Session {
    pub fn new(id: String, container: String, volume: String, repl: Repl) -> Session {
        Session {
            id,
            container,
            volume,
            last_used: std::sync::Mutex::new(Instant::now()),
            state: tokio::sync::Mutex::new(State::Live(repl)),
            end_requested: std::sync::Mutex::new(None),
            ending: CancellationToken::new(),
        }
    }

    /// Wait for this session's turn (calls are served in arrival order). The session counts
    /// as in use until the guard is dropped.
    pub async fn lock(&self) -> SessionGuard<'_> {
        SessionGuard {
            state: self.state.lock().await,
            session: self,
        }
    }

    /// The lock, if nobody holds it now.
    pub fn try_lock(&self) -> Option<SessionGuard<'_>> {
        self.state.try_lock().ok().map(|state| SessionGuard {
            state,
            session: self,
        })
    }

    /// Ask the session to end because of `why`: the call holding it is stopped, and the
    /// next holder of the lock ends it. The first reason wins.
    pub fn request_end(&self, why: impl Into<String>) {
        let mut requested = self.end_requested.lock().expect("end lock");
        if requested.is_none() {
            *requested = Some(why.into());
        }
        self.ending.cancel();
    }

    /// Why the session was asked to end, if it was.
    pub fn end_requested(&self) -> Option<String> {
        self.end_requested.lock().expect("end lock").clone()
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
}

impl SessionGuard<'_> {
    /// The session's state. Only `Engine::end_session` changes it (through `state_mut`).
    pub fn state(&self) -> &State {
        &self.state
    }

    pub(crate) fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// The live REPL, or why the session ended.
    pub fn repl(&mut self) -> Result<&mut Repl, String> {
        match &mut *self.state {
            State::Live(repl) => Ok(repl),
            State::Ended(why) => Err(why.clone()),
        }
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        *self.session.last_used.lock().expect("last_used lock") = Instant::now();
    }
}

/// All live sessions, and why ended ones ended.
#[derive(Default)]
pub struct Registry {
    /// Never hold a guard of this map across an `.await`: clone the `Arc` out first.
    live: DashMap<String, Arc<Session>>,
    ended: DashMap<String, String>,
}

impl Registry {
    pub fn insert(&self, session: Arc<Session>) {
        self.live.insert(session.id.clone(), session);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.live.get(id).map(|s| s.value().clone())
    }

    /// Move a session from the live map to the remembered ended ones. Only
    /// `Engine::end_session` calls this, under the session's lock.
    pub(crate) fn forget(&self, id: &str, why: &str) {
        self.live.remove(id);
        if self.ended.len() >= TOMBSTONES {
            self.ended.clear();
        }
        self.ended.insert(id.to_string(), why.to_string());
    }

    /// Why a session that is not live has ended, if it ever existed.
    pub fn ended_because(&self, id: &str) -> Option<String> {
        self.ended.get(id).map(|w| w.value().clone())
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.live.iter().map(|e| e.value().clone()).collect()
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}
