//! Arrival order of calls to one session.
//!
//! rmcp runs each request in a task of its own, and tasks start in no particular order:
//! two calls written back to back on stdio could reach a session's lock the other way
//! round. So the stdio transport hands out a [`Turn`] as each `tools/call` naming a
//! `session_id` arrives, in the order the lines were read, and the tool layer waits for
//! its turn ([`Turn::wait`]) before it asks the engine to work on the session. A turn
//! comes when every earlier turn for the same session is gone; a turn is gone when its
//! request is dropped (answered, refused by rmcp, or cancelled), so no path can leave a
//! session waiting. `cleanup-session` takes no turn: it ends a busy session at once.
//!
//! The legacy SSE transport ([`crate::sse`]) stamps each stream's POSTs the same way: a
//! stream is one ordered channel, like a pipe. Over streamable HTTP, concurrent requests
//! have no order to keep; each still runs one at a time.
//! Memory is bounded by the calls in flight: a session's queue goes when its last turn
//! does.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use rmcp::model::{ClientRequest, JsonRpcMessage};
use rmcp::service::{RoleServer, RxJsonRpcMessage};
use tokio::sync::Notify;

/// Session ids longer than this are not real ones (they are uuids): no turn for them.
const MAX_ID: usize = 128;

/// The queues of turns, per session id. Clone it freely.
#[derive(Clone, Default)]
pub struct Arrivals {
    inner: Arc<Mutex<HashMap<String, Queue>>>,
}

#[derive(Default)]
struct Queue {
    next: u64,
    live: BTreeSet<u64>,
    changed: Arc<Notify>,
}

/// A call's place in its session's line. Cheap to clone; the place is given up when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Turn(Arc<Place>);

struct Place {
    arrivals: Arrivals,
    session: String,
    n: u64,
}

impl Arrivals {
    /// The next place in `session`'s line.
    pub fn enter(&self, session: &str) -> Option<Turn> {
        if session.is_empty() || session.len() > MAX_ID {
            return None;
        }
        let mut queues = self.inner.lock().expect("arrivals lock");
        let queue = queues.entry(session.to_string()).or_default();
        let n = queue.next;
        queue.next += 1;
        queue.live.insert(n);
        Some(Turn(Arc::new(Place {
            arrivals: self.clone(),
            session: session.to_string(),
            n,
        })))
    }

    /// Sessions with calls in line (for tests).
    pub fn queued(&self) -> usize {
        self.inner.lock().expect("arrivals lock").len()
    }
}

/// Give a `tools/call` that names a session its place in that session's line, in the order
/// the transport read it (stdio, and each legacy SSE stream). `cleanup-session` takes no
/// turn: it ends a busy session at once.
pub fn stamp(arrivals: &Arrivals, message: &mut RxJsonRpcMessage<RoleServer>) {
    let JsonRpcMessage::Request(request) = message else {
        return;
    };
    let ClientRequest::CallToolRequest(call) = &mut request.request else {
        return;
    };
    if call.params.name == "cleanup-session" {
        return;
    }
    let session = call
        .params
        .arguments
        .as_ref()
        .and_then(|a| a.get("session_id"))
        .and_then(|v| v.as_str());
    if let Some(turn) = session.and_then(|id| arrivals.enter(id)) {
        call.extensions.insert::<Turn>(turn);
    }
}

impl Turn {
    /// Wait until every call that arrived earlier for this session is done.
    pub async fn wait(&self) {
        loop {
            let changed = {
                let queues = self.0.arrivals.inner.lock().expect("arrivals lock");
                let Some(queue) = queues.get(&self.0.session) else {
                    return;
                };
                if queue.live.first() == Some(&self.0.n) {
                    return;
                }
                queue.changed.clone()
            };
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Checked again after registering, so a change in between is not missed.
            {
                let queues = self.0.arrivals.inner.lock().expect("arrivals lock");
                if queues
                    .get(&self.0.session)
                    .is_none_or(|q| q.live.first() == Some(&self.0.n))
                {
                    return;
                }
            }
            notified.await;
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut queues = self.arrivals.inner.lock().expect("arrivals lock");
        if let Some(queue) = queues.get_mut(&self.session) {
            queue.live.remove(&self.n);
            queue.changed.notify_waiters();
            if queue.live.is_empty() {
                queues.remove(&self.session);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn turns_come_in_arrival_order_whatever_order_they_wait_in() {
        let arrivals = Arrivals::default();
        let turns: Vec<Turn> = (0..4).map(|_| arrivals.enter("s").unwrap()).collect();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // The latest arrival starts waiting first.
        for (i, turn) in turns.into_iter().enumerate().rev() {
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                turn.wait().await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(turn);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(
            arrivals.queued(),
            0,
            "nothing is kept once the line is empty"
        );
    }

    #[tokio::test]
    async fn a_dropped_turn_lets_the_next_go_and_sessions_do_not_wait_for_each_other() {
        let arrivals = Arrivals::default();
        let first = arrivals.enter("a").unwrap();
        let second = arrivals.enter("a").unwrap();
        let other = arrivals.enter("b").unwrap();
        tokio::time::timeout(Duration::from_secs(1), other.wait())
            .await
            .expect("another session's line is its own");
        let waiting = tokio::spawn(async move { second.wait().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the next turn comes")
            .unwrap();
        assert!(arrivals.enter(&"x".repeat(200)).is_none());
    }
}
