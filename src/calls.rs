//! The calls in flight: which operations are running (operation, session, client, since when),
//! admission of new ones until shutdown begins, and waiting for the running ones to end.
//!
//! Every engine operation enters through [`Calls::admit`] and holds the returned
//! [`CallGuard`] while it works. A shutdown first [`Calls::close`]s admission (new calls
//! are told [`ShuttingDown`]), then waits on [`Calls::idle`] for the drain, and names the
//! calls [`Calls::running`] still lists when it has to cut them short.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::client::Client;

/// A call refused because the daemon is shutting down.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the server is shutting down and accepts no new calls; retry once it is back (running calls may still finish)")]
pub struct ShuttingDown;

/// What a call does: the core's operations. The tool layer maps its tools onto these;
/// the core never names an MCP tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A run in a sandbox of its own, removed afterwards.
    RunTransient,
    /// A run in a session, made by this call when it names none.
    RunInSession,
    ResetSession,
    ListVariables,
    ListSessions,
    EndSession,
    Install,
    ListPackages,
    PutFile,
    GetFile,
    ListFiles,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::RunTransient => "transient run",
            Operation::RunInSession => "session run",
            Operation::ResetSession => "session reset",
            Operation::ListVariables => "variable listing",
            Operation::ListSessions => "session listing",
            Operation::EndSession => "session end",
            Operation::Install => "install",
            Operation::ListPackages => "package listing",
            Operation::PutFile => "file upload",
            Operation::GetFile => "file download",
            Operation::ListFiles => "file listing",
        })
    }
}

/// One call in flight, as the shutdown log names it.
#[derive(Debug, Clone)]
pub struct Running {
    pub operation: Operation,
    /// The session it acts on, once known (a new session's id is known after creation).
    pub session: Option<String>,
    pub client: Client,
    pub started: Instant,
}

impl Running {
    /// How long it has run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The registry. Shared by the engine and every [`CallGuard`].
#[derive(Debug, Default)]
pub struct Calls {
    /// A std mutex: held for a few map operations, never across an `.await`.
    inner: Mutex<Inner>,
    /// Woken whenever the last running call ends, for [`Calls::idle`].
    idle: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// Set by [`Calls::close`]; admission is refused from then on.
    closed: bool,
    /// The next call's key.
    next: u64,
    /// Keyed by admission order, so listings come out oldest first.
    running: BTreeMap<u64, Running>,
}

impl Calls {
    /// Admit a call, unless shutdown has begun. Dropping the guard ends the call.
    pub fn admit(
        self: &Arc<Self>,
        operation: Operation,
        session: Option<&str>,
        client: &Client,
    ) -> Result<CallGuard, ShuttingDown> {
        let mut inner = self.inner.lock().expect("calls lock");
        if inner.closed {
            return Err(ShuttingDown);
        }
        let key = inner.next;
        inner.next += 1;
        inner.running.insert(
            key,
            Running {
                operation,
                session: session.map(str::to_string),
                client: client.clone(),
                started: Instant::now(),
            },
        );
        Ok(CallGuard {
            calls: self.clone(),
            key,
        })
    }

    /// Refuse every call from now on. Calls already admitted go on.
    pub fn close(&self) {
        self.inner.lock().expect("calls lock").closed = true;
    }

    /// The calls in flight, oldest first.
    pub fn running(&self) -> Vec<Running> {
        let inner = self.inner.lock().expect("calls lock");
        inner.running.values().cloned().collect()
    }

    /// Returns once no call is in flight (at once if none is).
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so an end between the check and the wait
            // is not missed.
            notified.as_mut().enable();
            if self.inner.lock().expect("calls lock").running.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// A call in flight; it ends when this is dropped.
#[derive(Debug)]
pub struct CallGuard {
    calls: Arc<Calls>,
    key: u64,
}

impl CallGuard {
    /// Name the session the call acts on (a new session's id, once created).
    pub fn set_session(&self, id: &str) {
        let mut inner = self.calls.inner.lock().expect("calls lock");
        if let Some(call) = inner.running.get_mut(&self.key) {
            call.session = Some(id.to_string());
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut inner = self.calls.inner.lock().expect("calls lock");
        inner.running.remove(&self.key);
        if inner.running.is_empty() {
            self.calls.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admission_stops_at_close_and_idle_waits_for_the_running() {
        let calls = Arc::new(Calls::default());
        let me = Client::local();
        let a = calls.admit(Operation::RunTransient, None, &me).unwrap();
        let b = calls.admit(Operation::RunInSession, None, &me).unwrap();
        b.set_session("s1");
        calls.close();
        assert!(calls.admit(Operation::Install, None, &me).is_err());
        let running = calls.running();
        assert_eq!(running.len(), 2);
        assert_eq!(running[0].operation, Operation::RunTransient);
        assert_eq!(running[1].session.as_deref(), Some("s1"));

        let waiter = tokio::spawn({
            let calls = calls.clone();
            async move { calls.idle().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one call still runs");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("idle once the last call ends")
            .unwrap();
        assert!(calls.running().is_empty());
        calls.idle().await;
    }
}
