//! Sessions seen from the engine: finding a client's session (and adopting a durable one
//! an earlier daemon left), starting one, resetting it, listing its variables, listing a
//! client's sessions, and ending one (cleanup, idle expiry, a lost sandbox) through the one
//! function that ends a session, `end_session`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;

use super::{AdoptionError, Engine, ExecError, ExecResult, CONTROL_TIMEOUT};
use crate::calls::{Operation, ShuttingDown};
use crate::client::Client;
use crate::config::Config;
use crate::durable::{self, OwnerKey, SessionName};
use crate::repl::{Repl, ReplError, Resumed, Variable};
use crate::sandbox;
use crate::session::{EndReason, Session, SessionGuard, SlotRefusal, State};
use crate::text::clip;

/// How long an adopted session's helper may take to stop its egress forwarder (a helper
/// older than egress never answers; its session has no grant anyway).
pub(super) const ADOPTED_NETWORK_OFF: Duration = Duration::from_secs(2);

/// Why a cleanup failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("no such session `{0}`: nothing to clean up")]
    NoSuchSession(String),
    #[error("session `{id}` had already ended: {why}")]
    AlreadyEnded { id: String, why: EndReason },
    /// A durable session of an earlier server could not be taken over to be ended.
    #[error(transparent)]
    Adoption(Box<ExecError>),
    #[error(transparent)]
    ShuttingDown(#[from] ShuttingDown),
}

impl Engine {
    /// Forget a session's variables and imports; its sandbox, files and packages stay.
    pub async fn reset_session(&self, id: &str, client: &Client) -> Result<(), ExecError> {
        let _call = self.admit(Operation::ResetSession, Some(id), client)?;
        let session = self.session(id, client).await?;
        let mut guard = session.lock().await;
        let repl = self.live(&session, &mut guard)?;
        repl.reset(CONTROL_TIMEOUT)
            .await
            .map_err(|e| ExecError::Broken {
                id: clip(id).into(),
                why: e,
            })
    }

    /// A session's variables with their types and short reprs.
    pub async fn list_variables(
        &self,
        id: &str,
        client: &Client,
    ) -> Result<Vec<Variable>, ExecError> {
        let _call = self.admit(Operation::ListVariables, Some(id), client)?;
        let session = self.session(id, client).await?;
        let mut guard = session.lock().await;
        let repl = self.live(&session, &mut guard)?;
        repl.variables(CONTROL_TIMEOUT)
            .await
            .map_err(|e| ExecError::Broken {
                id: clip(id).into(),
                why: e,
            })
    }

    /// `client`'s session `id`. Another client's session is unknown, like one that never
    /// existed: the same error, the same text. A durable session this daemon does not hold
    /// is adopted (see [`Engine::adopt`]).
    pub(super) async fn session(
        &self,
        id: &str,
        client: &Client,
    ) -> Result<Arc<Session>, ExecError> {
        let s = &self.shared;
        if let Some(session) = s.sessions.get(id, client) {
            // Every call is a use: the name's deadline follows (at most every so often).
            self.restamp(&session);
            return Ok(session);
        }
        if !s.durable
            || !durable::is_session_id(id)
            || s.sessions.ended_because(id, client).is_some()
        {
            return Err(self.ended(id, client));
        }
        let _one = s.adopting.lock().await;
        if let Some(session) = s.sessions.get(id, client) {
            return Ok(session);
        }
        self.adopt(id, client).await
    }

    /// Whose sessions `client`'s are, across daemons: the scope, the OS user, the client.
    pub(super) fn owner_key(&self, client: &Client) -> OwnerKey {
        OwnerKey::new(&self.shared.config.session.scope, self.shared.uid, client)
    }

    /// How a durable session's sandbox ends itself: `session.idle_timeout` after its last
    /// request, and at its hard end.
    pub(super) fn lease_of(&self, session: &Session) -> Option<crate::repl::Lease> {
        let c = &self.shared.config.session;
        session.durable.as_ref().map(|_| crate::repl::Lease {
            idle: c.idle_timeout,
            until: session.started_at.saturating_add(c.max_lifetime.as_secs()),
        })
    }

    /// Take over `client`'s durable session `id` from the daemon that held it before (it
    /// exited or died): find its container by name, check the owner (another owner's is
    /// unknown, exactly like an id that never existed) and that no live daemon holds it,
    /// claim it in the helper's `hello` (of two daemons, one wins; see [`Repl::take`]),
    /// rename it, and hear from the helper what the previous daemon missed.
    pub(super) async fn adopt(&self, id: &str, client: &Client) -> Result<Arc<Session>, ExecError> {
        let s = &self.shared;
        let unknown = || ExecError::NoSuchSession(clip(id).into());
        let key = self.owner_key(client);
        let found = s
            .backend
            .named(&format!("{}{id}.", durable::PREFIX))
            .await
            .map_err(|e| adoption(id, AdoptionError::List(e)))?;
        let Some((container, name)) = found.into_iter().filter(|c| c.running).find_map(|c| {
            let n = SessionName::parse(&c.name)?;
            (n.session == id && n.owner == key.as_str()).then_some((c, n))
        }) else {
            return Err(unknown());
        };
        if let Some(h) = name
            .holder
            .as_ref()
            .filter(|h| **h != s.holder && h.alive(&s.holder))
        {
            return Err(ExecError::Held {
                id: clip(id).into(),
                holder: h.to_string(),
            });
        }
        self.reserve_slot(client)?;
        let taken = self.take_over(id, client, &container, &name).await;
        if taken.is_err() {
            s.slots.release(client);
        }
        taken
    }

    /// Take over the durable session `id` whose container `adopt` found: claim it in the
    /// helper, rename it, find its volume, stop the call cut off by the restart, and
    /// register it.
    pub(super) async fn take_over(
        &self,
        id: &str,
        client: &Client,
        container: &crate::runtime::Named,
        name: &SessionName,
    ) -> Result<Arc<Session>, ExecError> {
        let s = &self.shared;
        let c = &s.config.session;
        let started = Instant::now();
        let now = durable::now();
        let claimed = SessionName {
            holder: Some(s.holder.clone()),
            until: durable::until(now, c.idle_timeout, container.created, c.max_lifetime),
            ..name.clone()
        }
        .render();
        let (mut repl, resumed) = self.claim(id, &container.id).await?;
        // Won: the name says so (for the sweep and for `cleanup`), and the package
        // volume is found, while the helper is asked about the call cut off.
        let (renamed, volume) = tokio::join!(
            s.backend.rename(&container.name, &claimed),
            s.backend
                .volume_at(&container.id, sandbox::SESSION_PACKAGES)
        );
        let claimed = match renamed {
            Ok(true) => claimed,
            Ok(false) => return Err(adoption(id, AdoptionError::Gone)),
            // The helper's claim is what holds it; the name is only late.
            Err(e) => {
                tracing::warn!(session_id = %id, error = %e, "could not rename an adopted session's container");
                container.name.clone()
            }
        };
        let volume = match volume {
            Ok(v) => v.unwrap_or_default(),
            // Left held by this daemon: its next attempt, or anyone's once it is gone, takes it.
            Err(e) => return Err(adoption(id, AdoptionError::Volume(e))),
        };
        let notice = self
            .settle(id, &mut repl, resumed, container.created)
            .await?;
        tracing::info!(session_id = %id, %client, container = %claimed,
            adopt_ms = started.elapsed().as_millis() as u64, "session adopted from an earlier server");
        let profile = container
            .labels
            .get(sandbox::labels::PROFILE)
            .map_or(crate::profile::DEFAULT, String::as_str);
        let session = Session::new(
            id.into(),
            client.clone(),
            container.id.clone(),
            volume,
            repl,
        )
        .durable(claimed, now)
        .adopted(container.created, notice)
        .with_profile(profile);
        let session = Arc::new(session);
        self.shared.sessions.insert(session.clone());
        Ok(session)
    }

    /// Claim the durable session `id`'s sandbox (`container`) in its helper: of two
    /// adopting daemons, the helper decides which one wins.
    async fn claim(&self, id: &str, container: &str) -> Result<(Repl, Resumed), ExecError> {
        let s = &self.shared;
        let token = durable::ClaimedName::new(&s.holder).render();
        let taken = Repl::take(&s.backend, container, &token, CONTROL_TIMEOUT, |by| {
            durable::claim_gone(by, &s.holder)
        })
        .await;
        match taken {
            Ok(taken) => Ok(taken),
            Err(ReplError::Claimed(by)) => {
                let holder = by
                    .as_deref()
                    .and_then(durable::ClaimedName::parse)
                    .map(|c| c.holder.to_string())
                    .unwrap_or_else(|| "another server, which adopted it a moment ago".into());
                Err(ExecError::Held {
                    id: clip(id).into(),
                    holder,
                })
            }
            Err(e) => Err(adoption(id, AdoptionError::Claim(e))),
        }
    }

    /// An adopted sandbox made ready for calls: the call cut off by the restart stopped
    /// (what became of it is returned, for the next result), its lease set from its
    /// creation (`created`), and no network kept.
    async fn settle(
        &self,
        id: &str,
        repl: &mut Repl,
        resumed: Resumed,
        created: u64,
    ) -> Result<Option<String>, ExecError> {
        let s = &self.shared;
        let c = &s.config.session;
        // The call cut off first: until it stops, the helper runs nothing else.
        let lease = crate::repl::Lease {
            idle: c.idle_timeout,
            until: created.saturating_add(c.max_lifetime.as_secs()),
        };
        let recovered = match recover_cut_off(repl, resumed).await {
            Ok(notice) => repl.lease(&lease, CONTROL_TIMEOUT).await.map(|()| notice),
            Err(e) => Err(e),
        };
        let notice = match recovered {
            Ok(notice) => notice,
            Err(e) => {
                repl.kill().await;
                return Err(adoption(id, AdoptionError::CutOffCall(self.lost(e))));
            }
        };
        // Its grant was the earlier server's: an adopted session keeps no network (fail
        // closed). The forwarder goes, and with it the proxy variables.
        if s.egress.is_some() {
            if let Err(e) = repl.network(None, ADOPTED_NETWORK_OFF).await {
                tracing::debug!(session_id = %id, error = %e, "could not stop an adopted session's forwarder");
            }
        }
        Ok(notice)
    }

    /// Rename a durable session's container: held by this daemon (`held`) or by none, its
    /// deadline stamped from its last use. False when the engine refused or it is gone.
    pub(super) async fn rename_session(&self, session: &Session, held: bool) -> bool {
        let s = &self.shared;
        let Some(d) = &session.durable else {
            return false;
        };
        let c = &s.config.session;
        let mut name = d.name.lock().await;
        let last_use = durable::now().saturating_sub(session.idle_secs() as u64);
        let to = SessionName {
            session: session.id.clone(),
            owner: self.owner_key(&session.owner).as_str().into(),
            holder: held.then(|| s.holder.clone()),
            until: durable::until(last_use, c.idle_timeout, session.started_at, c.max_lifetime),
        }
        .render();
        match s.backend.rename(&name, &to).await {
            Ok(true) => {
                *name = to;
                d.stamped
                    .store(last_use.max(1), std::sync::atomic::Ordering::Relaxed);
                true
            }
            Ok(false) => {
                tracing::warn!(session_id = %session.id, container = %name, "the session's container is gone");
                false
            }
            Err(e) => {
                tracing::warn!(session_id = %session.id, error = %e, "could not rename the session's container");
                false
            }
        }
    }

    /// Renew a durable session's deadline in its name when it is a quarter of
    /// `idle_timeout` old: off the reply path, one rename at most every so often.
    pub(super) fn restamp(&self, session: &Arc<Session>) {
        let Some(d) = &session.durable else {
            return;
        };
        let now = durable::now();
        let stamped = d.stamped.load(std::sync::atomic::Ordering::Relaxed);
        // 0: not claimed yet (the claim stamps it).
        if stamped == 0 || !durable::stale(stamped, now, self.shared.config.session.idle_timeout) {
            return;
        }
        d.stamped.store(now, std::sync::atomic::Ordering::Relaxed);
        let (engine, session) = (self.clone(), session.clone());
        self.shared
            .tasks
            .spawn(async move { engine.rename_session(&session, true).await });
    }

    /// `client`'s sessions: those this daemon holds, and durable ones no live daemon
    /// holds (adopted at their next call), or another live daemon holds.
    pub async fn list_sessions(&self, client: &Client) -> Result<Vec<SessionInfo>, ExecError> {
        let _call = self.admit(Operation::ListSessions, None, client)?;
        let s = &self.shared;
        let now = durable::now();
        let mut out = Vec::new();
        for session in s.sessions.all().into_iter().filter(|x| &x.owner == client) {
            let variables = match session.try_peek() {
                Some(mut guard) => match guard.repl() {
                    Ok(repl) => repl
                        .variables(Duration::from_secs(2))
                        .await
                        .ok()
                        .map(|v| v.len()),
                    Err(_) => continue,
                },
                None => None,
            };
            out.push(SessionInfo {
                session_id: session.id.clone(),
                age_seconds: now.saturating_sub(session.started_at),
                idle_seconds: Some((session.idle_secs() * 10.0).round() / 10.0),
                variables,
                adopted: session.adopted,
                held_by: "this server".into(),
            });
        }
        if s.durable {
            let key = self.owner_key(client);
            let found = s
                .backend
                .named(durable::PREFIX)
                .await
                .map_err(|e| ExecError::Sandbox(e.into()))?;
            for (c, n) in found
                .into_iter()
                .filter(|c| c.running)
                .filter_map(|c| SessionName::parse(&c.name).map(|n| (c, n)))
            {
                if n.owner != key.as_str() || out.iter().any(|i| i.session_id == n.session) {
                    continue;
                }
                let held_by = match &n.holder {
                    Some(h) if h.alive(&s.holder) => format!("another running server ({h})"),
                    _ => "no server: adopted by the next call that names it".into(),
                };
                out.push(SessionInfo {
                    session_id: n.session,
                    age_seconds: now.saturating_sub(c.created),
                    idle_seconds: None,
                    variables: None,
                    adopted: false,
                    held_by,
                });
            }
        }
        out.sort_by_key(|i| std::cmp::Reverse(i.age_seconds));
        Ok(out)
    }

    pub(super) fn ended(&self, id: &str, client: &Client) -> ExecError {
        match self.shared.sessions.ended_because(id, client) {
            Some(why) => ExecError::Ended {
                id: clip(id).into(),
                why,
            },
            None => ExecError::NoSuchSession(clip(id).into()),
        }
    }

    /// The session's REPL, holding its lock. A session asked to end is ended here, by
    /// the first call to get the lock after the request; an ended one says why.
    pub(super) fn live<'g>(
        &self,
        session: &Session,
        guard: &'g mut SessionGuard<'_>,
    ) -> Result<&'g mut Repl, ExecError> {
        if let Some(why) = session.end_requested() {
            self.end_session(session, guard, why);
        }
        guard.repl().map_err(|why| ExecError::Ended {
            id: clip(&session.id).into(),
            why,
        })
    }

    /// Reserve a session slot for `client` (a new or an adopted session).
    pub(super) fn reserve_slot(&self, client: &Client) -> Result<(), ExecError> {
        self.shared
            .slots
            .reserve(client)
            .map_err(|refused| match refused {
                SlotRefusal::Total(max) => ExecError::TooManySessions(max),
                SlotRefusal::PerClient(max) => ExecError::TooManySessionsForClient {
                    client: client.clone(),
                    max,
                },
            })
    }

    pub(super) async fn new_session(
        &self,
        client: &Client,
        profile: &Config,
    ) -> Result<Arc<Session>, ExecError> {
        let s = &self.shared;
        // Reserve a slot first so concurrent creations cannot overshoot either limit.
        self.reserve_slot(client)?;
        let sandbox = match self.pool_for_profile(client, profile).acquire(client).await {
            Ok(sandbox) => sandbox,
            Err(e) => {
                s.slots.release(client);
                return Err(e.into());
            }
        };
        let id = uuid::Uuid::new_v4().to_string();
        // Off the reply path, and no `.await` here: a call cancelled between the pool's
        // hand-over and the insert below would otherwise leak the sandbox and the slot.
        let (backend, container, claimed) =
            (s.backend.clone(), sandbox.repl.id.clone(), id.clone());
        s.tasks
            .spawn(async move { backend.claim(&container, &claimed).await });
        tracing::info!(session_id = %id, %client, container = %sandbox.repl.name, python = %sandbox.repl.python, "session started");
        let warm_name = sandbox.repl.name.clone();
        let renamed = sandbox.renamed;
        let mut session = Session::new(
            id,
            client.clone(),
            sandbox.repl.id.clone(),
            sandbox.volume,
            sandbox.repl,
        )
        .with_profile(&profile.profile);
        if s.durable {
            session = session.durable(warm_name, 0);
        }
        let session = Arc::new(session);
        s.sessions.insert(session.clone());
        if s.durable {
            // The claim: the warm sandbox's name becomes the session's (off the reply path),
            // once the pool's own rename of it is done.
            let (engine, claimed) = (self.clone(), session.clone());
            s.tasks.spawn(async move {
                if let Some(renamed) = renamed {
                    let _ = renamed.await;
                }
                engine.rename_session(&claimed, true).await
            });
        }
        Ok(session)
    }

    /// End a session: the one place a session's life ends, and it needs the session's
    /// lock. The first call does everything, exactly once: the state becomes `Ended(why)`,
    /// the id is remembered with `why`, the slot is freed, and the container and then the
    /// volume are removed (the returned task). Later calls do nothing.
    pub(super) fn end_session(
        &self,
        session: &Session,
        guard: &mut SessionGuard<'_>,
        why: EndReason,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let state = guard.state_mut();
        if matches!(state, State::Ended(_)) {
            return None;
        }
        let State::Live(repl) = std::mem::replace(state, State::Ended(why.clone())) else {
            unreachable!("checked above")
        };
        self.shared.sessions.forget(session, &why);
        self.shared.slots.release(&session.owner);
        if let Some(egress) = &self.shared.egress {
            egress.revoke(&session.id);
        }
        tracing::info!(session_id = %session.id, client = %session.owner, %why, "session ended");
        let backend = self.shared.backend.clone();
        let (container, volume) = (session.container.clone(), session.volume.clone());
        // Close the connection first: a reader that stopped reading (its caller went
        // away) would otherwise keep the engine from finishing the container.
        drop(repl);
        // An adopted session mounted its first daemon's shared volume: once the session is
        // gone, nothing may use it any more, and the sweep takes it (and anything else a
        // dead daemon left) now rather than at the next periodic sweep.
        let sweep = session.adopted.then(|| self.clone());
        Some(self.shared.tasks.spawn(async move {
            backend.remove(&container).await;
            backend.remove_volume(&volume).await;
            if let Some(engine) = sweep {
                let _ = engine.sweep(false, false).await;
            }
        }))
    }

    /// End sessions nobody has used for `session.idle_timeout`, until shutdown.
    pub(super) async fn expire_idle_sessions(self) {
        let limit = self.shared.config.session.idle_timeout;
        let every = (limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        // The backstop sweep (durable sessions past their expiry, whoever made them).
        let sweep_every = (limit / 2).clamp(Duration::from_secs(2), Duration::from_secs(60));
        let mut swept = Instant::now();
        loop {
            tokio::select! {
                _ = self.shared.stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if self.shared.durable && swept.elapsed() >= sweep_every {
                swept = Instant::now();
                match self.sweep(false, false).await {
                    Ok(found) if found.containers + found.volumes > 0 => tracing::info!(
                        containers = found.containers, volumes = found.volumes, names = ?found.removed,
                        "removed expired sessions and what dead daemons left"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "the backstop sweep could not list"),
                }
            }
            for session in self.shared.sessions.all() {
                if session.idle_for() <= limit {
                    continue;
                }
                // Idle means nobody holds it; if someone just took it, it is not idle.
                if let Some(mut guard) = session.try_lock() {
                    self.end_session(&session, &mut guard, EndReason::Idle(limit));
                }
            }
        }
    }

    /// End a session: its container and volume are removed; later calls are told so. A
    /// call running in it is stopped at once; an install into it is waited for.
    pub async fn cleanup_session(&self, id: &str, client: &Client) -> Result<(), CleanupError> {
        let _call = self.admit(Operation::EndSession, Some(id), client)?;
        // A durable session this daemon does not hold is adopted first, then ended.
        let session = match self.session(id, client).await {
            Ok(session) => session,
            Err(ExecError::Ended { why, .. }) => {
                return Err(CleanupError::AlreadyEnded {
                    id: clip(id).into(),
                    why,
                })
            }
            Err(ExecError::NoSuchSession(_)) => {
                return Err(CleanupError::NoSuchSession(clip(id).into()))
            }
            Err(e) => return Err(CleanupError::Adoption(Box::new(e))),
        };
        session.request_end(EndReason::CleanedUp);
        let mut guard = session.lock().await;
        let why = session.end_requested().expect("requested above");
        // None: a call that held the lock ended it first, for this same request.
        if let Some(removal) = self.end_session(&session, &mut guard, why) {
            drop(guard);
            let _ = removal.await;
        }
        Ok(())
    }
}

/// One of a client's sessions (`list-sessions`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionInfo {
    pub session_id: String,
    /// Seconds since the session started.
    pub age_seconds: u64,
    /// Seconds since its last call ended (0 while one runs); null when this server does
    /// not hold it.
    pub idle_seconds: Option<f64>,
    /// How many variables it holds; null when it is busy or held elsewhere.
    pub variables: Option<usize>,
    /// This server took it over from an earlier one (a restart).
    pub adopted: bool,
    /// `this server`; no server (the next call that names it adopts it); or another
    /// running server, named.
    pub held_by: String,
}

/// An adoption that failed, and why.
fn adoption(id: &str, why: AdoptionError) -> ExecError {
    ExecError::Adoption {
        id: clip(id).into(),
        why,
    }
}

/// What became of the call a previous daemon had in flight, as a line for the next
/// result: its kept result, or what it had produced when it was stopped now.
pub(super) async fn recover_cut_off(
    repl: &mut Repl,
    resumed: crate::repl::Resumed,
) -> Result<Option<String>, ReplError> {
    let (at, running) = match (resumed.running, resumed.kept) {
        (Some(r), _) => (r.at, true),
        (None, Some(k)) => (k.at, false),
        (None, None) => return Ok(None),
    };
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs_f64(at.max(0.0)),
    );
    Ok(Some(match repl.recover(resumed).await? {
        Some(reply) if running => format!(
            "The call that was running when the previous server stopped (it started at {when}) \
             was cut off by the restart and has been interrupted. What it produced:\n{}",
            summary(&ExecResult::from_reply(reply))
        ),
        Some(reply) => format!(
            "The previous server stopped before it returned its last call's result (the call \
             finished at {when}). That result:\n{}",
            summary(&ExecResult::from_reply(reply))
        ),
        None => format!(
            "A call in flight when the previous server stopped ({when}) was cut off by the \
             restart; its result was not kept."
        ),
    }))
}

/// A short account of a result: its output's last 4000 characters, value and error.
pub(super) fn summary(r: &ExecResult) -> String {
    let mut parts = Vec::new();
    let out = r.stdout.trim_end();
    if !out.is_empty() {
        let skip = out.chars().count().saturating_sub(4000);
        let tail: String = out.chars().skip(skip).collect();
        parts.push(format!("stdout:\n{tail}"));
    }
    if let Some(v) = &r.value {
        parts.push(format!("Result: {v}"));
    }
    if let Some(e) = &r.error {
        parts.push(format!("Error: {}: {}", e.kind, e.message));
    }
    if parts.is_empty() {
        parts.push("(no output)".into());
    }
    parts.join("\n")
}
