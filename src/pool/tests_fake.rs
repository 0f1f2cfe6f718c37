//! Unit tests of the pool's logic on the fake backend (`runtime::fake`): real helpers as
//! host processes, no engine. Order and counts are asserted, never durations: a test
//! waits for a state (with a generous deadline that only a hang reaches).

use std::time::Duration;

use super::*;
use crate::runtime::fake::{Fake, What};

/// Wait until `done()` holds; a hang fails the test, naming what it waited for.
pub(crate) async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited in vain: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Defaults, with `pool_size` sandboxes kept warm (0: the pool is off).
pub(crate) fn config(pool_size: u64) -> Config {
    let mut c = Config::defaults();
    c.docker.pool_enabled = pool_size > 0;
    c.docker.pool_size = pool_size;
    c
}

fn pool(fake: &Fake, config: Config) -> (Pool, TaskTracker) {
    let tasks = TaskTracker::new();
    let pool = Pool::new(
        config,
        Backend::Fake(fake.clone()),
        Owner::new(),
        tasks.clone(),
    );
    (pool, tasks)
}

/// Close the pool, wait for its tasks, and check that nothing it made is left.
async fn close(pool: Pool, tasks: TaskTracker, fake: &Fake) {
    pool.close();
    tasks.close();
    tasks.wait().await;
    assert_eq!(fake.containers(), Vec::<String>::new(), "containers left");
    until("every process has ended", || fake.live_processes() == 0).await;
    let left: Vec<String> = fake
        .volumes()
        .into_iter()
        .filter(|v| v != pool.volume_name())
        .collect();
    assert!(left.is_empty(), "sandbox volumes left: {left:?}");
}

fn sandbox_creations(fake: &Fake) -> usize {
    fake.names(What::Create, "sandbox").len()
}

fn acquire(pool: &Pool, client: &str) -> tokio::task::JoinHandle<Result<Sandbox, AcquireError>> {
    let (pool, client) = (pool.clone(), Client::new(client));
    tokio::spawn(async move { pool.acquire(&client).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_gets_creations_at_once_and_the_refill_makes_one_sandbox_at_a_time() {
    let fake = Fake::gated();
    let (pool, tasks) = pool(&fake, config(2));
    pool.start();
    until("the refill asks for a sandbox", || {
        sandbox_creations(&fake) >= 1
    })
    .await;
    // Two callers: the creation in flight will serve one, the other gets its own now,
    // although the refill's is still held at the gate.
    let a = acquire(&pool, "a");
    let b = acquire(&pool, "b");
    until("demand gets a creation of its own", || {
        sandbox_creations(&fake) == 2
    })
    .await;
    fake.open(2);
    let a = a.await.unwrap().expect("a gets a sandbox");
    let b = b.await.unwrap().expect("b gets a sandbox");
    let made = fake.names(What::Create, "sandbox");
    let mut got = vec![a.repl.name.clone(), b.repl.name.clone()];
    got.sort();
    let mut first_two = made[..2].to_vec();
    first_two.sort();
    assert_eq!(got, first_two, "the callers got the first sandboxes made");

    // The pool is empty: the refill makes two more, the second only once the first is done.
    until("the refill asks for a sandbox", || {
        sandbox_creations(&fake) >= 3
    })
    .await;
    fake.open(2);
    until("the pool is warm", || pool.stats().warm == 2).await;
    let order: Vec<(What, String)> = fake
        .events()
        .into_iter()
        .filter(|e| e.role == "sandbox" && matches!(e.what, What::Create | What::Start))
        .map(|e| (e.what, e.name))
        .collect();
    assert_eq!(
        order[..2].iter().map(|(w, _)| *w).collect::<Vec<_>>(),
        [What::Create, What::Create],
        "{order:?}"
    );
    let made = fake.names(What::Create, "sandbox");
    assert_eq!(made.len(), 4, "{order:?}");
    assert_eq!(
        order[4..],
        [
            (What::Create, made[2].clone()),
            (What::Start, made[2].clone()),
            (What::Create, made[3].clone()),
            (What::Start, made[3].clone()),
        ],
        "the refill makes one sandbox at a time: {order:?}"
    );
    pool.discard(a);
    pool.discard(b);
    close(pool, tasks, &fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_engine_breaks_the_pool_with_the_fix_in_the_error_and_a_fix_is_noticed() {
    let fake = Fake::new();
    let (pool, tasks) = pool(&fake, config(0));
    let image = "python-docker-mcp:latest".to_string();
    fake.refuse_next(usize::MAX, move || RuntimeError::ImageMissing {
        image: image.clone(),
    });
    let client = Client::new("a");
    let first = pool
        .acquire(&client)
        .await
        .err()
        .expect("no sandbox")
        .to_string();
    assert!(
        first.contains("python-docker-mcp image build"),
        "the caller is told the engine's refusal, fix included: {first}"
    );
    // Broken: callers hear the last failure, and creations do not follow calls.
    for _ in 0..20 {
        let e = pool.acquire(&client).await.err().expect("still broken");
        assert_eq!(e.to_string(), first);
    }
    let tries = fake.names(What::Refused, "sandbox").len();
    assert!(
        tries <= 6,
        "21 calls on a broken pool made {tries} creation attempts"
    );
    assert_eq!(pool.stats().creation_failures, tries as u64);

    // The engine is fixed: a later call probes and gets a sandbox, with no restart.
    fake.stop_refusing();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let sandbox = loop {
        match pool.acquire(&client).await {
            Ok(sandbox) => break sandbox,
            Err(e) => assert_eq!(e.to_string(), first),
        }
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    pool.discard(sandbox);
    close(pool, tasks, &fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_helper_dying_at_start_is_retried_unheard_and_two_in_a_row_are_reported() {
    let fake = Fake::new();
    let (pool, tasks) = pool(&fake, config(0));
    let client = Client::new("a");
    fake.exit_at_once_next(1);
    let sandbox = pool
        .acquire(&client)
        .await
        .expect("the retry serves the call");
    assert_eq!(pool.stats().creation_failures, 1);
    assert_eq!(fake.names(What::Create, "sandbox").len(), 2);
    pool.discard(sandbox);

    fake.exit_at_once_next(2);
    let e = pool.acquire(&client).await.err().expect("a broken image");
    let text = e.to_string();
    assert!(
        text.contains("did not start") && text.contains("this helper exits at once"),
        "the caller hears the helper's last words: {text}"
    );
    assert_eq!(pool.stats().creation_failures, 3);
    close(pool, tasks, &fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_sandbox_past_its_max_age_is_replaced_and_its_volume_removed() {
    let fake = Fake::new();
    let mut config = config(1);
    config.docker.pool_max_age = Duration::from_millis(300);
    let (pool, tasks) = pool(&fake, config);
    pool.start();
    until("the pool is warm", || pool.stats().warm == 1).await;
    let first = fake.names(What::Start, "sandbox")[0].clone();
    // Its stdin closes first, so its helper may exit (and go, like an auto-removed
    // container) before the removal: either way it is gone.
    until("the old sandbox is gone", || {
        !fake.containers().contains(&first)
    })
    .await;
    until("its volume is removed", || {
        fake.names(What::VolumeRemove, "sandbox")
            .contains(&format!("{first}-packages"))
    })
    .await;
    until("a new one is warm", || {
        pool.stats().warm == 1 && fake.names(What::Start, "sandbox").len() >= 2
    })
    .await;
    assert!(pool.stats().retired >= 1);
    close(pool, tasks, &fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_sent_to_a_caller_that_went_away_is_removed_with_its_volume() {
    let fake = Fake::gated();
    let (pool, tasks) = pool(&fake, config(0));
    let client = Client::new("a");
    let mut call = Box::pin(pool.acquire(&client));
    assert!(futures::poll!(call.as_mut()).is_pending(), "it waits");
    assert_eq!(pool.stats().waiting, 1);
    fake.open(1);
    // Delivered into the waiter's channel, not yet taken: then the call goes away.
    until("the sandbox is sent to the waiter", || {
        pool.stats().waiting == 0
    })
    .await;
    drop(call);
    let made = fake.names(What::Start, "sandbox");
    assert_eq!(made.len(), 1);
    until("its container is removed", || fake.containers().is_empty()).await;
    until("its volume is removed", || {
        fake.volumes() == [pool.volume_name().to_string()]
    })
    .await;
    until("its process has ended", || fake.live_processes() == 0).await;
    assert_eq!(pool.stats().warm, 0);
    close(pool, tasks, &fake).await;
}
