//! Unit tests of the engine's lifecycle logic on the fake backend (`runtime::fake`): real
//! helpers as host processes, no engine. Order and counts are asserted, never durations.

use std::time::Duration;

use super::*;
use crate::pool::tests_fake::{config, until};
use crate::runtime::fake::{Fake, What};
use crate::sandbox;
use tokio::sync::mpsc;

const GRACE: Duration = Duration::from_secs(30);

fn engine(fake: &Fake, config: Config) -> Engine {
    Engine::with_backend(config, false, Backend::Fake(fake.clone()))
}

/// Shut down, then check that nothing the engine made is left.
async fn shut_down(engine: &Engine, fake: &Fake) {
    engine.shutdown(GRACE).await;
    assert_eq!(fake.containers(), Vec::<String>::new(), "containers left");
    assert_eq!(fake.volumes(), Vec::<String>::new(), "volumes left");
    until("every process has ended", || fake.live_processes() == 0).await;
}

fn call(timeout: Option<f64>) -> CallContext {
    CallContext {
        timeout,
        ..CallContext::default()
    }
}

/// Start a session with `code`; its id.
async fn new_session(engine: &Engine, code: &str, client: &Client) -> String {
    let r = engine
        .execute_persistent(code, None, &[], client, &call(None))
        .await
        .expect("a new session");
    assert!(!r.is_error(), "{r:?}");
    r.session_id.expect("a session id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_becomes_ready_during_shutdown_is_removed_before_shutdown_returns() {
    let fake = Fake::gated();
    let engine = engine(&fake, config(1));
    engine.start();
    until("the pool asks for a sandbox", || {
        fake.names(What::Create, "sandbox").len() == 1
    })
    .await;
    let stopping = tokio::spawn({
        let engine = engine.clone();
        async move { engine.shutdown(GRACE).await }
    });
    // The instance's containers and volumes are gone; the held creation completes now.
    until("shutdown removes the instance's objects", || {
        fake.events().iter().any(|e| e.what == What::RemoveInstance)
    })
    .await;
    fake.open(1);
    stopping.await.unwrap();
    assert_eq!(fake.names(What::Start, "sandbox").len(), 1, "it did start");
    assert_eq!(fake.containers(), Vec::<String>::new(), "containers left");
    assert_eq!(fake.volumes(), Vec::<String>::new(), "volumes left");
    until("every process has ended", || fake.live_processes() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_waiting_for_a_session_that_ends_runs_nothing_and_makes_no_volume() {
    let fake = Fake::new();
    let engine = engine(&fake, config(0));
    let client = Client::local();
    let id = new_session(&engine, "x = 1", &client).await;
    let volume = fake.names(What::VolumeCreate, "sandbox")[0].clone();

    // A call holds the session's lock, running code...
    let (progress, mut printed) = mpsc::channel(8);
    let running = tokio::spawn({
        let (engine, id, client) = (engine.clone(), id.clone(), client.clone());
        let call = CallContext {
            progress: Some(progress),
            ..CallContext::default()
        };
        async move {
            engine
                .execute_persistent(
                    "print('in', flush=True)\nimport time\ntime.sleep(60)",
                    Some(&id),
                    &[],
                    &client,
                    &call,
                )
                .await
        }
    });
    let chunk = printed.recv().await.expect("the code runs");
    assert!(chunk.stdout.contains("in"), "{chunk:?}");
    // ...an install waits for it, then the session is cleaned up.
    let packages = ["six".to_string()];
    let mut install = Box::pin(engine.install_package(&packages, Some(&id), &client));
    assert!(
        futures::poll!(install.as_mut()).is_pending(),
        "the install waits for the session's lock"
    );
    let (installed, cleaned) = tokio::join!(install, engine.cleanup_session(&id, &client));
    cleaned.expect("cleanup");
    match installed {
        Err(InstallError::Session(ExecError::Ended { why, .. })) => {
            assert_eq!(why, crate::session::EndReason::CleanedUp, "{why}")
        }
        other => panic!("the install should find the session ended: {other:?}"),
    }
    let r = running.await.unwrap().expect("the running call returns");
    assert!(r.sandbox_lost, "{r:?}");

    until("the session's volume is removed", || {
        !fake.volumes().contains(&volume)
    })
    .await;
    assert_eq!(
        fake.names(What::Create, "installer"),
        Vec::<String>::new(),
        "no installer ran"
    );
    let made = fake
        .events()
        .iter()
        .filter(|e| e.what == What::VolumeCreate && e.name == volume)
        .count();
    assert_eq!(made, 1, "the session's volume was made again");
    assert!(!fake.volumes().contains(&sandbox::CACHE_VOLUME.to_string()));
    shut_down(&engine, &fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_run_is_interrupted_in_band_and_the_session_keeps_its_variables() {
    let fake = Fake::new();
    let engine = engine(&fake, config(0));
    let client = Client::local();
    let id = new_session(&engine, "kept = 41\nimport time", &client).await;
    let r = engine
        .execute_persistent("time.sleep(60)", Some(&id), &[], &client, &call(Some(1.0)))
        .await
        .expect("the call returns");
    assert!(r.timed_out && !r.sandbox_lost, "{r:?}");
    assert_eq!(
        r.error.as_ref().map(|e| e.kind.as_str()),
        Some("KeyboardInterrupt")
    );
    let r = engine
        .execute_persistent("kept + 1", Some(&id), &[], &client, &call(None))
        .await
        .expect("the session lives on");
    assert_eq!(r.value.as_deref(), Some("42"), "{r:?}");
    let sandbox = fake.names(What::Start, "sandbox");
    assert_eq!(sandbox.len(), 1);
    assert_eq!(
        fake.containers(),
        sandbox,
        "the same sandbox, never replaced"
    );
    assert_eq!(fake.names(What::Remove, "sandbox"), Vec::<String>::new());
    shut_down(&engine, &fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_that_dies_mid_call_ends_its_session_clearly_and_others_go_on() {
    let fake = Fake::new();
    let engine = engine(&fake, config(0));
    let client = Client::local();
    let other = new_session(&engine, "other = 'fine'", &client).await;
    let id = new_session(&engine, "x = 1", &client).await;
    let r = engine
        .execute_persistent(
            "import os\nos._exit(3)",
            Some(&id),
            &[],
            &client,
            &call(None),
        )
        .await
        .expect("the call returns");
    assert!(r.sandbox_lost, "{r:?}");
    let notice = r.notice.unwrap_or_default();
    assert!(
        notice.contains("exited during the call") && notice.contains("start a new session"),
        "{notice}"
    );
    let e = engine
        .execute_persistent("x", Some(&id), &[], &client, &call(None))
        .await
        .expect_err("the session has ended")
        .to_string();
    assert!(
        e.contains("has ended") && e.contains("sandbox was lost"),
        "says why: {e}"
    );
    let r = engine
        .execute_persistent("other", Some(&other), &[], &client, &call(None))
        .await
        .expect("the other session goes on");
    assert_eq!(r.value.as_deref(), Some("'fine'"), "{r:?}");
    until("only the other session's helper runs", || {
        fake.containers().len() == 1 && fake.live_processes() == 1
    })
    .await;
    shut_down(&engine, &fake).await;
}
