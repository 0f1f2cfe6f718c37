//! The phases measured on our daemon and the original, each next to its reference: cold
//! starts, the steady state (transient, sessions, persistent, throughput, numpy, parallel
//! sessions), a start with warm imports, the first call right after spawn, calls while the
//! pool refills, and package installs.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::TryFutureExt;
use serde_json::json;

use crate::install::Installs;
use crate::plan::{Phase, Phases, Plan};
use crate::refill::Refill;
use crate::samples::{ms_since, throughput, timed, Parallel, Rate, Series};
use crate::servers::{
    call, server_containers, session_id, settle, spawn, sweep, transient, wait_warm, Client, Kind,
    Target, PRINT_1,
};
use crate::{IN_FLIGHT, SPACING};

#[derive(Default)]
pub struct ServerResults {
    pub note: Option<String>,
    pub init: Series,
    pub first_transient: Series,
    pub transient: Series,
    pub transient_spaced: Series,
    pub new_session: Series,
    pub cleanup: Series,
    pub persistent: Series,
    pub throughput: Rate,
    pub numpy: Series,
    pub shutdown: Series,
    pub leftover_containers: Vec<usize>,
    pub held_idle: Option<usize>,
    pub warm: Series,
    /// The second daemon, with `warm_imports` numpy: spawn → pool full, and the calls.
    pub warm_numpy_fill: Series,
    pub warm_numpy: Series,
    /// Streams of `x = 1` across sessions, one entry per level.
    pub parallel: Vec<Parallel>,
    /// Ours, pool on: calls while the pool refills.
    pub refill: Option<Refill>,
    /// Ours, the first configuration run: installs.
    pub installs: Option<Installs>,
}

/// Which of the phases measured on one running server to run.
pub struct Run<'a> {
    pub plan: Plan,
    pub phases: &'a Phases,
    pub logs: &'a Path,
    /// Whether to run the install phase (ours, first configuration only: each uncached
    /// package is installed once).
    pub installs: bool,
}

/// The starts of one server: with `starts`, `plan.starts` of them (one otherwise, if any
/// phase needs a running server); the last is the measured instance the phases run on.
pub async fn bench_server(t: &Target, run: &Run<'_>) -> ServerResults {
    let (plan, phases, logs) = (run.plan, run.phases, run.logs);
    let mut r = ServerResults::default();
    let starts = if phases.has(Phase::Starts) {
        plan.starts
    } else if phases.any_steady() {
        plan.starts.min(1)
    } else {
        0
    };
    for start in 0..starts {
        let main_run = start + 1 == starts;
        progress!(
            "  [{}] start {}/{}{}",
            t.label,
            start + 1,
            starts,
            if main_run {
                " (the measured instance)"
            } else {
                ""
            }
        );
        let before = server_containers(t, 0).await;
        let (server, init) = match spawn(t, logs, start).await {
            Ok(x) => x,
            Err(e) => {
                r.init.fail(format!("{e:#}"));
                sweep(t, &before, 0).await;
                continue;
            }
        };
        r.init.ms.push(init);
        let c = &server.client;
        match call(
            c,
            "execute-transient",
            transient("print(1)"),
            "Execution Result:\n\n1",
        )
        .await
        {
            Ok(_) => r.first_transient.ms.push(ms_since(server.spawned)),
            Err(e) => r.first_transient.fail(e),
        }
        let pid = server.pid;
        if main_run {
            if t.pool_size > 0 {
                progress!(
                    "    waiting for the pool to fill ({} containers)",
                    t.pool_size
                );
                match wait_warm(t, pid, 0).await {
                    Ok(()) => r.warm.push(server.spawned),
                    Err(e) => r.warm.fail(e),
                }
            }
            measure_steady_state(c, t, pid, run, &mut r).await;
            // What the server keeps while idle: warm pools, sessions not cleaned up.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let held = server_containers(t, pid).await.difference(&before).count();
            r.held_idle = Some(held);
        }
        let t_close = Instant::now();
        match tokio::time::timeout(Duration::from_secs(30), server.client.cancel()).await {
            Ok(_) => r.shutdown.push(t_close),
            Err(_) => r.shutdown.fail("did not exit within 30 s"),
        }
        let left = sweep(t, &before, pid).await;
        r.leftover_containers.push(left);
    }
    if t.kind == Kind::Ours
        && t.pool_size > 0
        && plan.warm_numpy > 0
        && phases.has(Phase::WarmNumpy)
    {
        measure_warm_numpy(t, plan, logs, &mut r).await;
    }
    r
}

/// A second start of our daemon, pool on, with `PYTHON_DOCKER_MCP_WARM_IMPORTS=numpy`:
/// once its pool is full (and has had a few seconds to finish the imports), transient
/// `import numpy` calls. Its exit is checked like the others' (one more start in
/// `leftover_containers`).
pub async fn measure_warm_numpy(t: &Target, plan: Plan, logs: &Path, r: &mut ServerResults) {
    let mut w = t.clone();
    w.env.push((
        "PYTHON_DOCKER_MCP_WARM_IMPORTS".to_string(),
        "numpy".to_string(),
    ));
    w.log_prefix = format!("{}-warm-numpy", t.log_prefix);
    progress!("  [{}] with warm_imports numpy: start", t.label);
    let before = server_containers(&w, 0).await;
    let run = match spawn(&w, logs, 0).await {
        Ok((run, _)) => run,
        Err(e) => {
            r.warm_numpy.fail(format!("{e:#}"));
            return;
        }
    };
    let (c, pid) = (&run.client, run.pid);
    progress!(
        "    waiting for the pool to fill ({} containers)",
        w.pool_size
    );
    match wait_warm(&w, pid, 0).await {
        Ok(()) => r.warm_numpy_fill.push(run.spawned),
        Err(e) => r.warm_numpy_fill.fail(e),
    }
    // A container counts once started; its helper then still imports numpy at 0.5 CPU.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Untimed: the warm import really happened (numpy is loaded before the user imports it).
    match call(
        c,
        "execute-transient",
        transient(
            "import sys
print('numpy' in sys.modules)",
        ),
        "Execution Result:\n\nTrue",
    )
    .await
    {
        Ok(_) => {
            settle(&w, pid, 0).await;
            progress!(
                "    transient import numpy ×{} (warm imports)",
                plan.warm_numpy
            );
            for _ in 0..plan.warm_numpy {
                timed(
                    &mut r.warm_numpy,
                    call(
                        c,
                        "execute-transient",
                        transient("import numpy\nprint(numpy.ones(3).sum())"),
                        "Execution Result:\n\n3.0",
                    ),
                )
                .await;
            }
        }
        Err(e) => r
            .warm_numpy
            .fail(format!("numpy was not preloaded in a warm sandbox: {e}")),
    }
    match tokio::time::timeout(Duration::from_secs(30), run.client.cancel()).await {
        Ok(_) => {}
        Err(_) => r.warm_numpy.fail("did not exit within 30 s"),
    }
    let left = sweep(&w, &before, pid).await;
    r.leftover_containers.push(left);
}

/// Throughput across sessions: `max(levels)` new sessions, then for each level that many
/// concurrent streams of `calls` sequential `x = 1` calls, one stream per session. The
/// sessions are cleaned up afterwards (untimed).
pub async fn measure_parallel(
    c: &Client,
    t: &Target,
    pid: u32,
    plan: Plan,
    live: usize,
    r: &mut ServerResults,
) {
    let max = plan.parallel_levels.iter().copied().max().unwrap_or(0);
    if max == 0 {
        return;
    }
    progress!("    {max} new sessions for parallel streams");
    let mut ids = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..max {
        match call(
            c,
            "execute-persistent",
            json!({"code": "x = 1"}),
            "Session ID",
        )
        .await
        {
            Ok(text) => match session_id(&text) {
                Some(id) => ids.push(id),
                None => errors.push(format!("no session id in {text:?}")),
            },
            Err(e) => errors.push(e),
        }
    }
    settle(t, pid, live + ids.len()).await;
    // One untimed call per session, all at once, so every session is warm.
    let warm = futures::future::join_all(ids.iter().map(|id| {
        call(
            c,
            "execute-persistent",
            json!({"code": "x = 1", "session_id": id}),
            "",
        )
    }))
    .await;
    if let Some(e) = warm.into_iter().find_map(Result::err) {
        errors.push(e);
    }
    progress!(
        "    {:?} session(s) in parallel, {} calls each, {} round(s)",
        plan.parallel_levels,
        plan.parallel_calls,
        plan.parallel_rounds
    );
    let levels = plan.parallel_levels;
    for &k in levels
        .iter()
        .cycle()
        .take(levels.len() * plan.parallel_rounds)
    {
        if !errors.is_empty() || k > ids.len() {
            Parallel::level(&mut r.parallel, k)
                .calls
                .fail(format!("sessions not started: {}", errors.join("; ")));
            continue;
        }
        let started = Instant::now();
        let per: Vec<Series> = futures::future::join_all(ids[..k].iter().map(|id| async move {
            let mut s = Series::default();
            let args = json!({"code": "x = 1", "session_id": id});
            for _ in 0..plan.parallel_calls {
                if timed(&mut s, call(c, "execute-persistent", args.clone(), ""))
                    .await
                    .is_none()
                    && s.failures.len() >= 5
                {
                    break;
                }
            }
            s
        }))
        .await;
        Parallel::level(&mut r.parallel, k).add_round(ms_since(started), per);
    }
    progress!("    parallel streams done; cleaning up the sessions");
    for id in &ids {
        if let Err(e) = call(c, "cleanup-session", json!({"session_id": id}), "").await {
            progress!("    warning: {e}");
        }
    }
}

/// The phases measured on one running instance, in order, each starting from a full pool.
pub async fn measure_steady_state(
    c: &Client,
    t: &Target,
    pid: u32,
    run: &Run<'_>,
    r: &mut ServerResults,
) {
    let (plan, phases) = (run.plan, run.phases);
    if phases.has(Phase::Transient) {
        progress!("    transient print(1) ×{}", plan.transient);
        for _ in 0..plan.transient {
            timed(
                &mut r.transient,
                call(c, "execute-transient", transient("print(1)"), PRINT_1),
            )
            .await;
        }
    }

    if plan.transient_spaced > 0 && phases.has(Phase::Spaced) {
        settle(t, pid, 0).await;
        progress!(
            "    transient print(1) ×{}, {SPACING:?} apart",
            plan.transient_spaced
        );
        for _ in 0..plan.transient_spaced {
            tokio::time::sleep(SPACING).await;
            timed(
                &mut r.transient_spaced,
                call(c, "execute-transient", transient("print(1)"), PRINT_1),
            )
            .await;
        }
    }

    // New sessions are timed in `sessions`; `persistent` alone needs one, untimed.
    let mut sessions = Vec::new();
    let timed_sessions = phases.has(Phase::Sessions);
    if timed_sessions || phases.has(Phase::Persistent) {
        settle(t, pid, 0).await;
        let n = if timed_sessions { plan.new_session } else { 1 };
        progress!("    new sessions ×{n}");
        for _ in 0..n {
            let new = call(
                c,
                "execute-persistent",
                json!({"code": "x = 1"}),
                "Session ID",
            );
            let text = if timed_sessions {
                timed(&mut r.new_session, new).await
            } else {
                new.await.map_err(|e| r.persistent.fail(e)).ok()
            };
            if let Some(id) = text.as_deref().and_then(session_id) {
                sessions.push(id);
            }
        }
    }

    if phases.has(Phase::Persistent) {
        settle(t, pid, sessions.len()).await;
        progress!("    persistent x = 1 ×{}", plan.persistent);
        if let Some(id) = sessions.first().cloned() {
            let args = json!({"code": "x = 1", "session_id": id});
            // One untimed call so the session is warm (the first call of a session is above).
            let _ = call(c, "execute-persistent", args.clone(), "").await;
            for _ in 0..plan.persistent {
                if timed(
                    &mut r.persistent,
                    call(c, "execute-persistent", args.clone(), ""),
                )
                .await
                .is_none()
                    && r.persistent.failures.len() >= 5
                {
                    break;
                }
            }
        } else {
            r.persistent.fail("no session could be started");
        }
    }

    // The original's cleanup takes 5 s: its plan cleans up fewer than it starts.
    let cleanup = if timed_sessions {
        plan.cleanup
    } else {
        sessions.len()
    };
    progress!("    cleanup-session ×{}", cleanup.min(sessions.len()));
    for id in sessions.iter().take(cleanup) {
        let done = call(c, "cleanup-session", json!({"session_id": id}), "");
        if timed_sessions {
            timed(&mut r.cleanup, done).await;
        } else if let Err(e) = done.await {
            progress!("    warning: {e}");
        }
    }
    let live = sessions.len().saturating_sub(cleanup);

    if phases.has(Phase::Refill) && t.pool_size > 0 && plan.refill_calls > 0 {
        settle(t, pid, live).await;
        r.refill = Some(crate::refill::measure(c, t, pid, plan, live).await);
    }

    if phases.has(Phase::Throughput) {
        settle(t, pid, live).await;
        // With a pool, the first `pool_size` calls drain it; the rest are sustained.
        let total = plan.throughput + t.pool_size;
        progress!("    transient throughput ×{total} ({IN_FLIGHT} in flight)");
        r.throughput = throughput(total, t.pool_size, |_| {
            call(c, "execute-transient", transient("print(1)"), PRINT_1).map_ok(|_| ())
        })
        .await;
    }

    if phases.has(Phase::Numpy) {
        settle(t, pid, live).await;
        progress!("    transient import numpy ×{}", plan.numpy);
        for _ in 0..plan.numpy {
            timed(
                &mut r.numpy,
                call(
                    c,
                    "execute-transient",
                    transient("import numpy\nprint(numpy.ones(3).sum())"),
                    "Execution Result:\n\n3.0",
                ),
            )
            .await;
        }
    }

    if phases.has(Phase::Parallel) {
        settle(t, pid, live).await;
        measure_parallel(c, t, pid, plan, live, r).await;
    }

    if phases.has(Phase::Install) && run.installs && plan.install_cached > 0 {
        settle(t, pid, live).await;
        r.installs = Some(crate::install::measure(c, plan).await);
    }
    settle(t, pid, live).await;
}
