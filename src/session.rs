//! The session registry: `session_id` -> a long-lived REPL container.
//!
//! Calls to one session run one at a time, in arrival order: each session's REPL sits
//! behind a fair (FIFO) async mutex. Different sessions never share a lock. Ids that were
//! cleaned up or lost are remembered (bounded) so a later call can say what happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::repl::Repl;

/// How many ended sessions are remembered for their explanation.
const TOMBSTONES: usize = 10_000;

/// One persistent session.
pub struct Session {
    pub id: String,
    /// Container id, readable without the lock so cleanup can kill a busy session.
    pub container: String,
    /// The session's package volume (installs go here).
    pub volume: String,
    /// When a call last finished with this session; for idle expiry. A std mutex: it is
    /// never held across an `.await`.
    last_used: std::sync::Mutex<Instant>,
    /// The live REPL; `None` once the sandbox was lost. A tokio mutex because it is held
    /// across the whole execution; tokio's is fair, which gives arrival order.
    repl: tokio::sync::Mutex<Option<Repl>>,
}

impl Session {
    pub fn new(id: String, container: String, volume: String, repl: Option<Repl>) -> Session {
        Session {
            id,
            container,
            volume,
            last_used: std::sync::Mutex::new(Instant::now()),
            repl: tokio::sync::Mutex::new(repl),
        }
    }

    /// Wait for this session's turn (calls are served in arrival order). The session counts
    /// as in use until the guard is dropped.
    pub async fn lock(&self) -> SessionGuard<'_> {
        SessionGuard {
            repl: self.repl.lock().await,
            session: self,
        }
    }

    /// How long the session has been idle; zero while a call holds it.
    pub fn idle_for(&self) -> Duration {
        match self.repl.try_lock() {
            Ok(_) => self.last_used.lock().expect("last_used lock").elapsed(),
            Err(_) => Duration::ZERO,
        }
    }
}

/// Exclusive use of a session's REPL; marks the session used when dropped.
pub struct SessionGuard<'a> {
    repl: tokio::sync::MutexGuard<'a, Option<Repl>>,
    session: &'a Session,
}

impl std::ops::Deref for SessionGuard<'_> {
    type Target = Option<Repl>;
    fn deref(&self) -> &Option<Repl> {
        &self.repl
    }
}

impl std::ops::DerefMut for SessionGuard<'_> {
    fn deref_mut(&mut self) -> &mut Option<Repl> {
        &mut self.repl
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

    /// Remove a session, remembering why; returns it if it was live.
    pub fn end(&self, id: &str, why: impl Into<String>) -> Option<Arc<Session>> {
        let removed = self.live.remove(id).map(|(_, s)| s);
        if removed.is_some() {
            if self.ended.len() >= TOMBSTONES {
                self.ended.clear();
            }
            self.ended.insert(id.to_string(), why.into());
        }
        removed
    }

    /// Why a session that is not live has ended, if it ever existed.
    pub fn ended_because(&self, id: &str) -> Option<String> {
        self.ended.get(id).map(|w| w.value().clone())
    }

    /// Ids of live sessions idle for longer than `limit`.
    pub fn idle_longer_than(&self, limit: Duration) -> Vec<String> {
        self.live
            .iter()
            .filter(|e| e.value().idle_for() > limit)
            .map(|e| e.key().clone())
            .collect()
    }

    /// Ids of every live session.
    pub fn ids(&self) -> Vec<String> {
        self.live.iter().map(|e| e.key().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str) -> Arc<Session> {
        Arc::new(Session::new(id.into(), "c".into(), "v".into(), None))
    }

    #[tokio::test]
    async fn a_session_is_idle_only_while_nobody_uses_it() {
        let r = Registry::default();
        let s = session("a");
        r.insert(s.clone());
        let guard = s.lock().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            r.idle_longer_than(Duration::from_millis(10)).is_empty(),
            "busy is not idle"
        );
        drop(guard);
        assert!(
            r.idle_longer_than(Duration::from_millis(10)).is_empty(),
            "just used"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            r.idle_longer_than(Duration::from_millis(10)),
            vec!["a".to_string()]
        );
    }

    #[test]
    fn ended_sessions_say_why() {
        let r = Registry::default();
        r.insert(session("a"));
        assert!(r.get("a").is_some());
        assert!(r.end("a", "cleaned up").is_some());
        assert!(r.get("a").is_none());
        assert_eq!(r.ended_because("a").as_deref(), Some("cleaned up"));
        assert!(r.end("a", "again").is_none(), "ending twice is a no-op");
        assert_eq!(r.ended_because("a").as_deref(), Some("cleaned up"));
        assert_eq!(r.ended_because("never"), None);
    }
}
