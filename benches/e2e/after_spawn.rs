//! The first call right after spawn, as an agent makes it (issue 11): a fresh daemon with
//! a clean `HOME`, `initialize`, and at once one `execute-transient` `print(1)`. With the
//! default configuration (pool on, warming from spawn) and with `pool_enabled: false`
//! (a cold start on demand), and `docker run --rm` with the sandbox profile, interleaved
//! round by round in the same run; each daemon is shut down and swept before the next.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::references::{docker_run_once, PROFILE_FLAGS};
use crate::samples::{ms_since, Series};
use crate::servers::{call, server_containers, spawn, sweep, transient, Target, PRINT_1};

#[derive(Default)]
pub struct AfterSpawn {
    /// Default pool: spawn → first result, and `initialize` answered → first result.
    pub on_first: Series,
    pub on_from_init: Series,
    /// `pool_enabled: false`: the same.
    pub off_first: Series,
    pub off_from_init: Series,
    /// `docker run --rm` with the sandbox profile, `print(1)`.
    pub docker_profile: Series,
    /// Containers each start left behind after its exit (all should be 0).
    pub leftovers: Vec<usize>,
    /// The two configurations, as their `config` command printed them.
    pub notes: Vec<String>,
}

/// One start: spawn, `initialize`, one transient call, shut down, sweep.
async fn once(
    t: &Target,
    logs: &Path,
    n: usize,
    first: &mut Series,
    from_init: &mut Series,
) -> usize {
    let before = server_containers(t, 0).await;
    let (server, _) = match spawn(t, logs, n).await {
        Ok(x) => x,
        Err(e) => {
            first.fail(format!("{e:#}"));
            return 0;
        }
    };
    let initialized = Instant::now();
    match call(
        &server.client,
        "execute-transient",
        transient("print(1)"),
        PRINT_1,
    )
    .await
    {
        Ok(_) => {
            first.ms.push(ms_since(server.spawned));
            from_init.ms.push(ms_since(initialized));
        }
        Err(e) => first.fail(e),
    }
    let pid = server.pid;
    if tokio::time::timeout(Duration::from_secs(30), server.client.cancel())
        .await
        .is_err()
    {
        first.fail("did not exit within 30 s");
    }
    let left = sweep(t, &before, pid).await;
    // Let the engine finish removing what the daemon removed on its way out.
    tokio::time::sleep(Duration::from_secs(1)).await;
    left
}

/// `rounds` rounds; each runs the three in a rotated order, so none always goes first.
pub async fn measure(on: &Target, off: &Target, rounds: usize, logs: &Path) -> AfterSpawn {
    let mut r = AfterSpawn::default();
    for round in 0..rounds {
        progress!(
            "[after spawn] round {}/{rounds}: default pool, pool off, docker run --rm (profile)",
            round + 1
        );
        for step in 0..3 {
            match (round + step) % 3 {
                0 => {
                    let left = once(on, logs, round, &mut r.on_first, &mut r.on_from_init).await;
                    r.leftovers.push(left);
                }
                1 => {
                    let left = once(off, logs, round, &mut r.off_first, &mut r.off_from_init).await;
                    r.leftovers.push(left);
                }
                _ => {
                    let t = Instant::now();
                    match docker_run_once(&PROFILE_FLAGS, "print(1)", "1").await {
                        Ok(()) => r.docker_profile.push(t),
                        Err(e) => r.docker_profile.fail(e),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    r
}
