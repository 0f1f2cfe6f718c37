//! The session registry: `session_id` -> a long-lived REPL container.
//!
//! Calls to one session run one at a time, in arrival order: each session's REPL sits
//! behind a fair (FIFO) async mutex. Different sessions never share a lock. Ids that were
//! cleaned up or lost are remembered (bounded) so a later call can say what happened.

use std::sync::Arc;
use std::time::Instant;

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
    pub created: Instant,
    /// The live REPL; `None` once the sandbox was lost. A tokio mutex because it is held
    /// across the whole execution; tokio's is fair, which gives arrival order.
    pub repl: tokio::sync::Mutex<Option<Repl>>,
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

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
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
        Arc::new(Session {
            id: id.into(),
            container: "c".into(),
            volume: "v".into(),
            created: Instant::now(),
            repl: tokio::sync::Mutex::new(None),
        })
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
