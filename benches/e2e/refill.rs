//! The hot path while the pool refills (issue 11): a session's `i += 1` with the pool
//! quiet, then transient calls back to back that drain the pool, then `i += 1` again,
//! kept going for as long as the refill runs. Our daemon with a pool only.
//!
//! A sampler counts the daemon's containers (`docker ps` by its pid label) every
//! `SAMPLE_EVERY` through both `i += 1` series, so both pay for it alike, and, once the burst
//! has begun, the engine's `destroy` events of the daemon's containers since then. The
//! refill is over when every sandbox the burst used is removed (as many `destroy` events as
//! burst calls) and all `pool_size` plus the session run again: both halves of the engine's
//! background work, removals and creations. The sampler also tells how many creations were
//! in flight (containers created but not started yet).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::plan::Plan;
use crate::samples::{ms_since, timed, Series};
use crate::servers::{call, container_states, session_id, transient, Client, Target, PRINT_1};

/// How often the sampler asks the engine.
const SAMPLE_EVERY: Duration = Duration::from_millis(400);
/// The series during the refill ends this long after the burst at the latest.
const REFILL_LIMIT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Refill {
    /// `i += 1` in one session, the pool full and quiet.
    pub quiet: Series,
    /// Transient `print(1)` back to back, from a full pool (they drain it).
    pub burst: Series,
    /// `i += 1` in the same session, the calls sent while the refill ran.
    pub during: Series,
    /// Calls of that series sent after the refill was over (not in `during`).
    pub after: usize,
    /// Running containers (pool plus the session) before the burst, right after it, and
    /// the fewest seen during the refill series.
    pub running_before: usize,
    pub running_after_burst: usize,
    pub running_min: usize,
    /// The most containers seen created but not started (creations in flight).
    pub created_max: usize,
    /// The daemon's containers removed since the burst began, at the last sample.
    pub destroyed: usize,
    /// From the end of the burst until the pool was full again (None: not within the limit).
    pub refill_ms: Option<f64>,
    /// What the sampler saw during the refill: (ms since the burst ended, running, created).
    pub trace: Vec<(f64, usize, usize)>,
}

/// What the sampler last saw.
#[derive(Default, Clone, Copy)]
struct Seen {
    running: usize,
    created: usize,
    /// The daemon's containers the engine destroyed since the burst began.
    destroyed: usize,
    at: Option<Instant>,
}

/// Counts the daemon's containers until dropped.
struct Sampler {
    seen: Arc<Mutex<Seen>>,
    /// The daemon's containers destroyed since the burst began, counted by a `docker
    /// events` stream started then (the engine's replay buffer is too short to ask later).
    destroyed: Arc<std::sync::atomic::AtomicUsize>,
    events: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pid: u32,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let destroyed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (shared, count) = (seen.clone(), destroyed.clone());
        let task = tokio::spawn(async move {
            loop {
                let (running, created) = container_states(pid).await;
                *shared.lock().expect("sampler lock") = Seen {
                    running,
                    created,
                    destroyed: count.load(std::sync::atomic::Ordering::Relaxed),
                    at: Some(Instant::now()),
                };
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
        Sampler {
            seen,
            destroyed,
            events: Mutex::new(None),
            pid,
            task,
        }
    }

    /// From now on, also count the engine's `destroy` events of the daemon's containers.
    fn burst_begins(&self) {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut child = match tokio::process::Command::new("docker")
            .args([
                "events",
                "--since",
                &format!("{since:.3}"),
                "--filter",
                "type=container",
                "--filter",
                "event=destroy",
                "--filter",
                &format!(
                    "label={}={}",
                    python_docker_mcp::sandbox::labels::PID,
                    self.pid
                ),
                "--format",
                "{{.ID}}",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                progress!("  warning: docker events: {e}");
                return;
            }
        };
        let count = self.destroyed.clone();
        let stdout = child.stdout.take().expect("piped");
        *self.events.lock().expect("sampler lock") = Some(tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let _child = child;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }

    fn seen(&self) -> Seen {
        *self.seen.lock().expect("sampler lock")
    }

    /// A sample taken after `t`.
    async fn fresh_after(&self, t: Instant) -> Seen {
        loop {
            let s = self.seen();
            if s.at.is_some_and(|at| at > t) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(events) = self.events.lock().expect("sampler lock").take() {
            events.abort();
        }
    }
}

/// The phase, on a server whose pool is full with `live` sessions besides.
pub async fn measure(c: &Client, t: &Target, pid: u32, plan: Plan, live: usize) -> Refill {
    let mut r = Refill::default();
    let text = match call(
        c,
        "execute-persistent",
        json!({"code": "i = 0"}),
        "Session ID",
    )
    .await
    {
        Ok(text) => text,
        Err(e) => {
            r.quiet.fail(e);
            return r;
        }
    };
    let Some(id) = session_id(&text) else {
        r.quiet.fail(format!("no session id in {text:?}"));
        return r;
    };
    let want = t.pool_size + live + 1;
    crate::servers::settle(t, pid, live + 1).await;
    let inc = json!({"code": "i += 1", "session_id": id});
    let sampler = Sampler::start(pid);
    // One untimed call so the session is warm.
    let _ = call(c, "execute-persistent", inc.clone(), "").await;

    progress!("    persistent i += 1 ×{}, pool quiet", plan.refill_calls);
    for _ in 0..plan.refill_calls {
        timed(&mut r.quiet, call(c, "execute-persistent", inc.clone(), "")).await;
    }
    r.running_before = sampler.fresh_after(Instant::now()).await.running;

    progress!(
        "    transient print(1) ×{} back to back, then i += 1 while the pool refills",
        plan.refill_burst
    );
    sampler.burst_begins();
    for _ in 0..plan.refill_burst {
        timed(
            &mut r.burst,
            call(c, "execute-transient", transient("print(1)"), PRINT_1),
        )
        .await;
    }
    let burst_end = Instant::now();
    let mut first = true;
    r.running_min = usize::MAX;
    let mut sent = 0;
    let mut last_sample = None;
    loop {
        let s = sampler.seen();
        let stale = s.at.is_none_or(|at| at < burst_end);
        if !stale {
            if first {
                r.running_after_burst = s.running;
                first = false;
            }
            r.running_min = r.running_min.min(s.running);
            r.created_max = r.created_max.max(s.created);
            let sampled = s.at.expect("sampled");
            let at = ms_since(burst_end) - ms_since(sampled);
            if last_sample != Some(sampled) {
                last_sample = Some(sampled);
                r.trace.push((at, s.running, s.created));
            }
            r.destroyed = s.destroyed;
            if s.running >= want && s.destroyed >= plan.refill_burst && r.refill_ms.is_none() {
                r.refill_ms = Some(at);
            }
        }
        let refilling = stale || r.refill_ms.is_none();
        if (!refilling && sent >= plan.refill_calls) || burst_end.elapsed() > REFILL_LIMIT {
            break;
        }
        sent += 1;
        if refilling {
            timed(
                &mut r.during,
                call(c, "execute-persistent", inc.clone(), ""),
            )
            .await;
        } else {
            let _ = call(c, "execute-persistent", inc.clone(), "").await;
            r.after += 1;
        }
    }
    if r.running_min == usize::MAX {
        r.running_min = 0;
    }
    drop(sampler);
    // The session saw every call of all three series: its `i` says so.
    let expect_i = 1 + plan.refill_calls + sent;
    let check = json!({"code": "print(i)", "session_id": id});
    if let Err(e) = call(c, "execute-persistent", check, &expect_i.to_string()).await {
        r.during.fail(format!("i should be {expect_i}: {e}"));
    }
    if let Err(e) = call(c, "cleanup-session", json!({"session_id": id}), "").await {
        progress!("    warning: {e}");
    }
    r
}
