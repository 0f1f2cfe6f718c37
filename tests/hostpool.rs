//! The host pool against the real engine (durable mode): warm sandboxes belong to no
//! daemon. The last daemon's exit leaves its warm pool for the next one, which claims
//! from it; nobody coming, it ends itself. Any number of daemons keep at most
//! `pool_size`; two daemons racing for one warm sandbox get it once; another fingerprint
//! never claims it.
//!
//! Each test runs in a scope of its own (the scope is part of the fingerprint), so tests
//! running at once never share a pool, and each ends with nothing of its daemons left.

mod common;

use std::time::Duration;

use common::*;

const DURABLE: (&str, &str) = ("PYTHON_DOCKER_MCP_SESSION_DURABLE", "true");
const HOSTNAME: &str = "import socket\nsocket.gethostname()";

fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// (short id, name) of the containers any of `pids` made whose name starts with `prefix`
/// (`warm`: the host pool's, `pdm-w.` or `pdm-h.`).
fn made_by(pids: &[u32], prefix: &str) -> Vec<(String, String)> {
    pids.iter()
        .flat_map(|pid| {
            docker_lines(&[
                "ps",
                "--filter",
                &format!("label=python-docker-mcp.pid={pid}"),
                "--format",
                "{{.ID}} {{.Names}}",
            ])
        })
        .filter_map(|l| {
            let (id, name) = l.split_once(' ')?;
            // "warm": anyone's (`pdm-w.`) or held ready by a daemon (`pdm-h.`).
            let warm =
                prefix == "warm" && (name.starts_with("pdm-w.") || name.starts_with("pdm-h."));
            (warm || name.starts_with(prefix)).then(|| (id[..12].to_string(), name.to_string()))
        })
        .collect()
}

fn scope(tag: &str) -> String {
    format!("test-{tag}-{}", std::process::id())
}

/// Remove what the test's daemons left on purpose (a warm pool), then check that
/// nothing else of theirs is left.
async fn clear(pids: &[u32]) {
    for pid in pids {
        remove_leftovers(*pid);
        assert!(
            eventually(Duration::from_secs(10), || leftovers(*pid).is_empty()).await,
            "{:?}",
            leftovers(*pid)
        );
    }
}

async fn warm_by(pids: &[u32], n: usize, within: Duration) -> Vec<(String, String)> {
    let mut warm = Vec::new();
    let filled = eventually(within, || {
        warm = made_by(pids, "warm");
        warm.len() == n
    })
    .await;
    assert!(filled, "expected {n} warm, got {warm:?}");
    warm
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_daemons_warm_pool_serves_the_next_one_and_then_ends_itself() {
    let scope = scope("next");
    let env = [
        DURABLE,
        ("PYTHON_DOCKER_MCP_SESSION_SCOPE", scope.as_str()),
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true"),
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "2"),
        ("PYTHON_DOCKER_MCP_POOL_MAX_AGE", "25s"),
    ];
    let mut first = Daemon::start_with(&env).await;
    first.assert_serves().await;
    let warm = warm_by(&[first.pid], 2, Duration::from_secs(60)).await;
    let status = first.close(Duration::from_secs(30)).await.expect("exits");
    assert!(status.success(), "{status}");
    assert_eq!(
        made_by(&[first.pid], "pdm-w.").len(),
        2,
        "the pool stays, all anyone's"
    );

    // The next daemon (pool off: it only claims; the same pool_max_age, which is part of
    // the fingerprint) runs its first call in a warm one.
    let mut next = Daemon::start_with(&[env[0], env[1], env[4]]).await;
    let r = next.transient(HOSTNAME).await;
    assert_ok(&r);
    let ran_in = value(&r).unwrap_or_default().trim_matches('\'').to_string();
    assert!(
        warm.iter().any(|(id, _)| *id == ran_in),
        "ran in {ran_in}, warm were {warm:?}"
    );
    next.finish().await;
    assert_eq!(made_by(&[first.pid], "pdm-w.").len(), 1);

    // Nobody comes: the last one ends itself (pool_max_age plus its slack), volume too.
    assert!(
        eventually(Duration::from_secs(25 + 5 + 10), || made_by(
            &[first.pid],
            "pdm-"
        )
        .is_empty())
        .await,
        "{:?}",
        made_by(&[first.pid], "pdm-")
    );
    assert!(
        eventually(Duration::from_secs(5), || leftovers(first.pid).is_empty()).await,
        "{:?}",
        leftovers(first.pid)
    );
    first.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_daemons_started_at_once_fill_one_pool_of_pool_size() {
    let scope = scope("three");
    let env = [
        DURABLE,
        ("PYTHON_DOCKER_MCP_SESSION_SCOPE", scope.as_str()),
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true"),
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "4"),
        ("PYTHON_DOCKER_MCP_POOL_MAX_AGE", "10m"),
    ];
    let (a, b, c) = tokio::join!(
        Daemon::start_with(&env),
        Daemon::start_with(&env),
        Daemon::start_with(&env)
    );
    let mut daemons = [a, b, c];
    let pids: Vec<u32> = daemons.iter().map(|d| d.pid).collect();
    // Never more than pool_size warm or filling, while they fill and once full.
    let mut most = 0;
    let full = eventually(Duration::from_secs(90), || {
        let warm = made_by(&pids, "warm").len();
        most = most.max(warm + made_by(&pids, "pdm-f.").len());
        warm == 4
    })
    .await;
    assert!(full, "the fill stalled at {:?}", made_by(&pids, "pdm-"));
    for _ in 0..10 {
        most = most.max(made_by(&pids, "warm").len() + made_by(&pids, "pdm-f.").len());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(most <= 4, "{most} warm or filling for pool_size 4");
    // A claim frees a slot, and the pool fills it again.
    let r = daemons[0].transient(HOSTNAME).await;
    assert_ok(&r);
    warm_by(&pids, 4, Duration::from_secs(30)).await;
    for d in &mut daemons {
        let status = d.close(Duration::from_secs(30)).await.expect("exits");
        assert!(status.success(), "{status}");
    }
    assert_eq!(made_by(&pids, "pdm-").len(), 4, "only the warm pool stays");
    clear(&pids).await;
    for d in &mut daemons {
        d.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_warm_sandbox_goes_to_exactly_one_of_two_racing_daemons_and_never_to_another_fingerprint(
) {
    let scope = scope("race");
    let base = [DURABLE, ("PYTHON_DOCKER_MCP_SESSION_SCOPE", scope.as_str())];
    let pool = [
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true"),
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "1"),
    ];
    let mut filler = Daemon::start_with(&[base[0], base[1], pool[0], pool[1]]).await;
    let warm = warm_by(&[filler.pid], 1, Duration::from_secs(60)).await;
    filler.close(Duration::from_secs(30)).await.expect("exits");
    let warm_id = warm[0].0.clone();
    // Held ready by the filler while it ran, anyone's once it exited.
    let left = made_by(&[filler.pid], "pdm-w.");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, warm_id);

    // Another memory limit is another fingerprint: never claimed.
    let mut other =
        Daemon::start_with(&[base[0], base[1], ("PYTHON_DOCKER_MCP_MEMORY_LIMIT", "300m")]).await;
    let r = other.transient(HOSTNAME).await;
    assert_ok(&r);
    assert_ne!(value(&r).unwrap_or_default().trim_matches('\''), warm_id);
    assert_eq!(made_by(&[filler.pid], "pdm-w.")[0].0, warm_id);

    // Two daemons of the same fingerprint, one call each, at once.
    let (b, c) = tokio::join!(Daemon::start_with(&base), Daemon::start_with(&base));
    let (mut b, mut c) = (b, c);
    let (rb, rc) = tokio::join!(b.transient(HOSTNAME), c.transient(HOSTNAME));
    assert_ok(&rb);
    assert_ok(&rc);
    let ran: Vec<String> = [&rb, &rc]
        .iter()
        .map(|r| value(r).unwrap_or_default().trim_matches('\'').to_string())
        .collect();
    assert_eq!(
        ran.iter().filter(|h| **h == warm_id).count(),
        1,
        "exactly one ran in the warm sandbox {warm_id}: {ran:?}"
    );
    assert!(made_by(&[filler.pid], "pdm-w.").is_empty());
    for d in [&mut other, &mut b, &mut c] {
        d.finish().await;
    }
    clear(&[filler.pid]).await;
    filler.finish().await;
}
