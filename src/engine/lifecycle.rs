//! The daemon's lifetime as the engine sees it: start (warm the pools, idle expiry,
//! the egress proxy), the sweep of what dead daemons left (`cleanup`, the backstop), the
//! drain of running calls, and the shutdown that removes what this daemon made.

use std::future::Future;
use std::time::{Duration, Instant};

use super::Engine;
use crate::calls::Running;
use crate::durable::{self, SessionName};
use crate::pool::Pool;
use crate::runtime::{RuntimeError, Sweep, Swept};
use crate::sandbox::{self};
use crate::session::EndReason;

impl Engine {
    /// Start warming the pool in the background (returns at once).
    pub fn start(&self) {
        let engine = self.clone();
        self.shared.tasks.spawn(engine.expire_idle_sessions());
        if let Some(egress) = self.shared.egress.clone() {
            // The proxy starts now, off any call's path; a call that finds it dead (or
            // never started) starts it again.
            self.shared.tasks.spawn(async move {
                if let Err(e) = egress.warm().await {
                    tracing::warn!("{e}");
                }
            });
        }
        let d = &self.shared.config.docker;
        if d.pool_enabled {
            tracing::info!(
                pool_size = d.pool_size,
                max_concurrent_creations = d.max_concurrent_creations,
                max_age = %humantime::format_duration(d.pool_max_age),
                warm_imports = ?d.warm_imports,
                "warming the sandbox pool in the background"
            );
            self.shared.pool.start();
            // A profile that keeps sandboxes warm warms now; the others on first use.
            let c = &self.shared.config;
            for name in c.profiles.keys() {
                let profile = c.for_profile(name).expect("a known name");
                if profile.docker.pool_size > 0 {
                    tracing::info!(profile = %name, pool_size = profile.docker.pool_size, "warming the profile's pool");
                    let s = &self.shared;
                    s.profile_pools.get(&s.pool, None, &profile);
                }
            }
        } else {
            tracing::info!("pool disabled: sandboxes are created per request");
        }
    }

    /// Remove containers and volumes left by earlier daemons on this host that are no
    /// longer running (killed with SIGKILL, or a crash). Live daemons' objects, other
    /// hosts' objects and anything without our labels are left alone.
    pub async fn reap_orphans(&self) -> Result<usize, RuntimeError> {
        let swept = self.sweep_orphans(false).await?;
        let removed = swept.containers + swept.volumes;
        if removed > 0 {
            tracing::info!(
                containers = swept.containers,
                volumes = swept.volumes,
                "removed containers and volumes of daemons that are gone"
            );
        }
        Ok(removed)
    }

    /// Find the containers and volumes of daemons that are gone (by the backend's orphan
    /// policy), and remove them unless `dry_run` (`python-docker-mcp cleanup`).
    pub async fn sweep_orphans(&self, dry_run: bool) -> Result<Swept, RuntimeError> {
        self.sweep(dry_run, false).await
    }

    /// One line per container any daemon left on this engine: its name, role, who owns
    /// or holds it, and when it ends (for `cleanup`).
    pub async fn inventory(&self) -> Result<Vec<String>, RuntimeError> {
        let s = &self.shared;
        let now = durable::now();
        let c = &s.config;
        let mut lines = Vec::new();
        for item in s.backend.named("").await? {
            let role = item
                .labels
                .get(sandbox::labels::ROLE)
                .map_or("?", String::as_str);
            let line = match SessionName::parse(&item.name) {
                Some(n) => {
                    let held = match &n.holder {
                        Some(h) if h.alive(&s.holder) => format!("held by {h}"),
                        Some(_) => "held by a server that is gone".to_string(),
                        None => "free".to_string(),
                    };
                    let end = n.until.min(
                        item.created
                            .saturating_add(c.session.max_lifetime.as_secs()),
                    );
                    format!(
                        "session  {}  owner {}  {held}  expires in {}",
                        n.session,
                        n.owner,
                        seconds(end.saturating_sub(now))
                    )
                }
                None if durable::WarmName::parse(&item.name).is_some() => {
                    let end =
                        item.created + (c.docker.pool_max_age + sandbox::WARM_EXIT_SLACK).as_secs();
                    format!(
                        "warm     {}  the host's pool, no server's  ends by itself within {}",
                        item.name,
                        seconds(end.saturating_sub(now))
                    )
                }
                None if role == sandbox::Role::Egress.as_str() => {
                    let pid = item
                        .labels
                        .get(sandbox::labels::PID)
                        .map_or("?", String::as_str);
                    format!(
                        "{role:<8} {}  made by pid {pid}  ends with its server (its stdin closes), else by the sweep",
                        item.name
                    )
                }
                None => {
                    let pid = item
                        .labels
                        .get(sandbox::labels::PID)
                        .map_or("?", String::as_str);
                    let end =
                        item.created + (c.docker.pool_max_age + sandbox::WARM_EXIT_SLACK).as_secs();
                    format!(
                        "{role:<8} {}  made by pid {pid}  ends by itself within {}",
                        item.name,
                        seconds(end.saturating_sub(now))
                    )
                }
            };
            lines.push(line);
        }
        Ok(lines)
    }

    /// The sweep: orphans of dead daemons, and durable sessions past their expiry that no
    /// live daemon holds (the backstop); with `all`, everything of this host.
    pub async fn sweep(&self, dry_run: bool, all: bool) -> Result<Swept, RuntimeError> {
        let s = &self.shared;
        let sweep = Sweep {
            holder: &s.holder,
            max_lifetime: s.config.session.max_lifetime,
            warm_max_age: s.config.docker.pool_max_age + sandbox::WARM_EXIT_SLACK * 2,
            dry_run,
            all,
        };
        s.backend.sweep_orphans(&s.owner, &sweep).await
    }

    /// The first step of a shutdown: admit no new call, and let the running ones finish
    /// for up to `timeout`, or until `cut` completes (a second signal; the client gone),
    /// whichever comes first. Each call still running then is logged with its tool,
    /// session and how long it ran, and returned; [`Engine::shutdown`] interrupts them.
    pub async fn drain(
        &self,
        timeout: Duration,
        cut: impl Future<Output = String>,
    ) -> Vec<Running> {
        let calls = &self.shared.calls;
        calls.close();
        let running = calls.running();
        if running.is_empty() {
            return running;
        }
        tracing::info!(
            calls = running.len(),
            drain_timeout = %humantime::format_duration(timeout),
            "draining: no new calls; waiting for the running ones to finish"
        );
        let started = Instant::now();
        let why = tokio::select! {
            _ = calls.idle() => None,
            _ = tokio::time::sleep(timeout) => Some(format!(
                "server.drain_timeout ({}) passed",
                humantime::format_duration(timeout)
            )),
            why = cut => Some(why),
        };
        let left = calls.running();
        match why {
            _ if left.is_empty() => tracing::info!(
                waited_ms = started.elapsed().as_millis() as u64,
                "drained: every running call finished"
            ),
            why => {
                let why = why.unwrap_or_else(|| "the drain ended".into());
                for call in &left {
                    tracing::warn!(
                        operation = %call.operation,
                        session_id = call.session.as_deref().unwrap_or("-"),
                        client = %call.client,
                        ran_for = %format!("{:.1}s", call.elapsed().as_secs_f64()),
                        "cut short by shutdown: {why}"
                    );
                }
            }
        }
        left
    }

    /// Remove every container and volume this daemon created, interrupting whatever
    /// still runs (after [`Engine::drain`], or at once). Bounded by `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let s = &self.shared;
        s.calls.close();
        s.stop.cancel();
        let pools = self.pools();
        for pool in &pools {
            pool.close();
        }
        let sessions = s.sessions.all();
        // Durable sessions stay, released (their names say no daemon holds them), with
        // their volumes and the shared ones they mount; everything else goes.
        let mut keep = std::collections::HashSet::new();
        if s.durable {
            for session in &sessions {
                keep.insert(session.container.clone());
                keep.insert(session.volume.clone());
            }
            // Sessions and the host pool's warm sandboxes mount the shared volumes.
            if !sessions.is_empty() || pools.iter().any(Pool::shared_by_host) {
                keep.extend(pools.iter().map(|p| p.volume_name().to_string()));
            }
        } else {
            for session in &sessions {
                session.request_end(EndReason::ShutDown);
            }
        }
        if s.durable {
            for session in &sessions {
                session.detach();
            }
        }
        let work = async {
            if let Some(egress) = &s.egress {
                egress.shutdown().await;
            }
            if s.durable {
                let released = futures::future::join_all(
                    sessions.iter().map(|x| self.rename_session(x, false)),
                )
                .await;
                let kept = released.iter().filter(|r| **r).count();
                if kept > 0 {
                    tracing::info!(
                        sessions = kept,
                        "left the sessions running for the next server to adopt (session.durable)"
                    );
                }
            }
            // Only talk to Docker if this daemon ever did. Removing the containers first
            // also stops installs, so no session's lock is held for long.
            if pools.iter().any(Pool::used_docker) {
                match s.backend.remove_instance(&s.owner.instance, &keep).await {
                    Ok(n) => tracing::info!(containers = n, "removed this instance's containers"),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not list containers to remove at shutdown")
                    }
                }
            }
            // Running calls stop at the request; each session is then ended by its owner.
            if !s.durable {
                for session in &sessions {
                    let mut guard = session.lock().await;
                    self.end_session(session, &mut guard, EndReason::ShutDown);
                }
            }
            s.tasks.close();
            s.tasks.wait().await;
            // A creation that was under way when the instance's volumes were removed may
            // have mounted a shared volume by name after it went, and Docker then makes
            // one, unlabelled. Every task is done now: remove them by name once more.
            if pools.iter().any(Pool::used_docker) && (keep.is_empty() || sessions.is_empty()) {
                for pool in pools.iter().filter(|p| !p.shared_by_host()) {
                    s.backend.remove_volume(pool.volume_name()).await;
                }
            }
        };
        if tokio::time::timeout(grace, work).await.is_err() {
            tracing::warn!(?grace, "shutdown cleanup did not finish in time; some containers may remain (they exit on their own when their stdin closes)");
        }
    }
}

/// A duration in whole seconds, for people.
pub(super) fn seconds(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}
