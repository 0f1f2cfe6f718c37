//! Durable sessions against the real engine: a session outlives its daemon (SIGKILL,
//! SIGTERM) and the next daemon of the same owner adopts it with its variables, files and
//! packages; another owner, or a live holder, never gets it; a sandbox nobody uses ends
//! itself with no daemon running, and the engine-side backstop removes one whose code
//! defeated its own timer.
//!
//! Every test ends with nothing of its daemons left, by pid label and by name.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const DURABLE: (&str, &str) = ("PYTHON_DOCKER_MCP_SESSION_DURABLE", "true");
/// A small pure-Python wheel the image does not have (as in tests/packages.rs).
const PACKAGE: (&str, &str) = ("tomli-w", "tomli_w");

/// Names of running or stopped containers whose name contains `part`.
fn named(part: &str) -> Vec<String> {
    docker_lines(&[
        "ps",
        "-a",
        "--filter",
        &format!("name={part}"),
        "--format",
        "{{.Names}}",
    ])
}

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

/// The session's container, once the daemon has claimed it (renamed it to the session's
/// name, off the reply path).
async fn claimed(id: &str) -> String {
    let part = format!("pdm-s.{id}.");
    let mut names = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            names = named(&part);
            names.len() == 1
        })
        .await,
        "the session's container carries its name: {names:?}"
    );
    names.remove(0)
}

/// The volumes a container mounts, by name.
fn volumes_of(container: &str) -> Vec<String> {
    docker_lines(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Name}}\n{{end}}",
        container,
    ])
}

fn volume_exists(name: &str) -> bool {
    std::process::Command::new("docker")
        .args(["volume", "inspect", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A session with a variable, a file in its working directory and a package of its own.
async fn session_with_work(d: &Daemon) -> String {
    let id = d
        .new_session("x = 41\nimport json\nopen('kept.txt', 'w').write('the file survives')")
        .await;
    let r = d.install(PACKAGE.0, Some(&id)).await;
    assert_ok(&r);
    id
}

/// The session still has everything [`session_with_work`] gave it.
async fn assert_intact(d: &Daemon, id: &str) -> rmcp::model::CallToolResult {
    let r = d
        .persistent_ok(
            &format!(
                "import {}\n(x + 1, open('kept.txt').read(), json.dumps([1]))",
                PACKAGE.1
            ),
            id,
        )
        .await;
    assert_eq!(
        value(&r).as_deref(),
        Some("(42, 'the file survives', '[1]')"),
        "{}",
        describe(&r)
    );
    r
}

fn sessions(r: &rmcp::model::CallToolResult) -> Vec<Value> {
    field(r, "sessions").as_array().cloned().unwrap_or_default()
}

/// End `id` through `d`, then check that nothing of any of `pids` (daemons that are gone)
/// is left, by label, and nothing by the session's name.
async fn end_and_check(d: &Daemon, id: &str, pids: &[u32]) {
    let r = d.cleanup(id).await;
    assert_ok(&r);
    for pid in pids {
        let pid = *pid;
        assert!(
            eventually(Duration::from_secs(15), || leftovers(pid).is_empty()).await,
            "daemon {pid} left {:?}",
            leftovers(pid)
        );
    }
    assert!(named(&format!("pdm-s.{id}.")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_survives_sigkill_and_the_next_daemon_adopts_it_intact() {
    let mut first = Daemon::start_with(&[DURABLE]).await;
    let id = session_with_work(&first).await;
    let container = claimed(&id).await;
    first.signal("KILL");
    first
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("killed");
    // Docker keeps stdin open for a durable sandbox: the helper lives on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        named(&format!("pdm-s.{id}.")),
        std::slice::from_ref(&container)
    );

    let mut second = Daemon::start_with(&[DURABLE]).await;
    let listed = second.call("list-sessions", json!({})).await;
    assert_ok(&listed);
    let mine = sessions(&listed);
    assert!(
        mine.iter().any(|s| s["session_id"] == json!(id)
            && s["held_by"].as_str().unwrap_or("").starts_with("no server")),
        "{}",
        describe(&listed)
    );
    let r = assert_intact(&second, &id).await;
    assert!(
        field(&r, "previous_call").is_null(),
        "nothing was in flight: {}",
        describe(&r)
    );
    let listed = second.call("list-sessions", json!({})).await;
    let me = sessions(&listed)
        .into_iter()
        .find(|s| s["session_id"] == json!(id))
        .expect("listed");
    assert_eq!(me["adopted"], json!(true), "{me}");
    assert_eq!(me["held_by"], json!("this server"));
    assert!(me["variables"].as_u64().unwrap_or(0) >= 2, "{me}");
    end_and_check(&second, &id, &[first.pid]).await;
    second.finish().await;
    first.finish_as(Exit::Signal(9)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_sigterm_the_call_cut_off_by_the_restart_is_reported_on_the_next_call() {
    let mut first = Daemon::start_with(&[DURABLE, ("PYTHON_DOCKER_MCP_DRAIN_TIMEOUT", "1s")]).await;
    let id = first.new_session("kept = 'before'").await;
    claimed(&id).await;
    let long = first.persistent(
        "print('started', flush=True)\nimport time\ntime.sleep(60)\nprint('never')",
        Some(&id),
    );
    let stop = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        first.signal("TERM");
    };
    let (cut, ()) = tokio::join!(long, stop);
    // The call in flight answers before the daemon goes: cut off, the session lives on.
    assert!(is_error(&cut), "the call was cut short: {}", describe(&cut));
    assert!(
        text(&cut).contains("shut down while this code ran"),
        "{}",
        describe(&cut)
    );
    let status = first
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits");
    assert!(status.success(), "{status}");
    assert_eq!(named(&format!("pdm-s.{id}.")).len(), 1, "the session stays");

    let mut second = Daemon::start_with(&[DURABLE]).await;
    let r = second.persistent_ok("kept", &id).await;
    assert_eq!(value(&r).as_deref(), Some("'before'"), "{}", describe(&r));
    let previous = field(&r, "previous_call")
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        previous.contains("cut off by the restart") && previous.contains("started"),
        "{}",
        describe(&r)
    );
    assert!(
        text(&r).contains("cut off by the restart"),
        "the model reads it too"
    );
    // Said once.
    let again = second.persistent_ok("1", &id).await;
    assert!(field(&again, "previous_call").is_null());
    end_and_check(&second, &id, &[first.pid]).await;
    second.finish().await;
    first.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn another_scope_never_sees_a_session_and_a_live_holder_is_never_robbed() {
    let mut holder = Daemon::start_with(&[DURABLE]).await;
    let id = holder.new_session("secret = 1").await;
    claimed(&id).await;

    // Another owner: exactly what an id that never existed gets.
    let mut other =
        Daemon::start_with(&[DURABLE, ("PYTHON_DOCKER_MCP_SESSION_SCOPE", "other")]).await;
    let theirs = other.persistent("secret", Some(&id)).await;
    let never = "0f0e0d0c-0b0a-4999-8888-777766665555";
    let unknown = other.persistent("secret", Some(never)).await;
    assert!(is_error(&theirs) && is_error(&unknown));
    assert_eq!(text(&theirs).replace(&id, never), text(&unknown));
    let listed = other.call("list-sessions", json!({})).await;
    assert!(sessions(&listed).is_empty(), "{}", describe(&listed));

    // Same owner, but the holder lives: refused, naming it.
    let mut second = Daemon::start_with(&[DURABLE]).await;
    let refused = second.persistent("secret", Some(&id)).await;
    assert!(is_error(&refused));
    let said = text(&refused);
    assert!(
        said.contains("still running") && said.contains(&format!("process {}", holder.pid)),
        "{said}"
    );
    let listed = second.call("list-sessions", json!({})).await;
    let seen = sessions(&listed);
    assert!(
        seen.iter().any(|s| s["session_id"] == json!(id)
            && s["held_by"]
                .as_str()
                .unwrap_or("")
                .contains("another running server")),
        "{}",
        describe(&listed)
    );
    // The holder still has it.
    holder.persistent_ok("secret", &id).await;
    end_and_check(&holder, &id, &[]).await;
    other.finish().await;
    second.finish().await;
    holder.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_adopting_one_orphaned_session_at_once_one_wins_and_runs() {
    let mut first = Daemon::start_with(&[DURABLE]).await;
    let id = first.new_session("x = 0").await;
    claimed(&id).await;
    let dead = first.pid;
    first.signal("KILL");
    first
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("killed");
    // Both see the session free (its holder is dead) and both try to take it at once.
    let (mut b, mut c) = tokio::join!(
        Daemon::start_with(&[DURABLE]),
        Daemon::start_with(&[DURABLE])
    );
    let code = "x += 1\nx";
    let (rb, rc) = tokio::join!(b.persistent(code, Some(&id)), c.persistent(code, Some(&id)));
    let (winner, loser, lost) = match (is_error(&rb), is_error(&rc)) {
        (false, true) => (&b, &c, &rc),
        (true, false) => (&c, &b, &rb),
        _ => panic!(
            "exactly one adopts:\n{}\n---\n{}",
            describe(&rb),
            describe(&rc)
        ),
    };
    let said = text(lost);
    assert!(
        said.contains("still running") && said.contains(&format!("process {}", winner.pid)),
        "the loser names the winner: {said}"
    );
    // Only the winner's code ran, once; the loser keeps being refused.
    let won = if is_error(&rb) { &rc } else { &rb };
    assert_eq!(value(won).as_deref(), Some("1"), "{}", describe(won));
    assert!(is_error(&loser.persistent("x", Some(&id)).await));
    let again = winner.persistent_ok("x", &id).await;
    assert_eq!(value(&again).as_deref(), Some("1"));
    end_and_check(winner, &id, &[dead]).await;
    b.finish().await;
    c.finish().await;
    first.finish_as(Exit::Signal(9)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_nobody_uses_ends_itself_with_its_volume_when_no_daemon_runs() {
    let mut d =
        Daemon::start_with(&[DURABLE, ("PYTHON_DOCKER_MCP_SESSION_IDLE_TIMEOUT", "3s")]).await;
    let id = d.new_session("x = 1").await;
    let container = claimed(&id).await;
    let volumes = volumes_of(&container);
    // Nothing was installed without a session, so no shared volume: only its own.
    assert_eq!(volumes.len(), 1, "its own only: {volumes:?}");
    let pid = d.pid;
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(10)).await.expect("killed");
    let started = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(3 + 10), || named(&container).is_empty()).await,
        "the sandbox ended itself within idle_timeout + 10 s"
    );
    // Its own volume goes with it (the engine made it for the container), and nothing
    // of the dead daemon is left, with no daemon running.
    assert!(volumes.iter().all(|v| !volume_exists(v)), "{volumes:?}");
    eprintln!("ended itself {:?} after the kill", started.elapsed());
    assert!(
        eventually(Duration::from_secs(5), || leftovers(pid).is_empty()).await,
        "{:?}",
        leftovers(pid)
    );
    d.finish_as(Exit::Signal(9)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backstop_removes_a_session_whose_code_killed_its_own_timer() {
    // idle 6 s: the helper would end itself 6 s after its last call; the name's deadline
    // is the last stamp + 6 + 1 + 2 s, so at 4.5 s after the kill it must still run.
    let mut d =
        Daemon::start_with(&[DURABLE, ("PYTHON_DOCKER_MCP_SESSION_IDLE_TIMEOUT", "6s")]).await;
    let id = d.new_session("x = 1").await;
    let container = claimed(&id).await;
    // The helper's timer lives in the same process as the code: the code can stop it.
    d.persistent_ok(
        "import __main__ as helper\nhelper._idle_exit = 0\nhelper._exit_at = 0",
        &id,
    )
    .await;
    let pid = d.pid;
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(10)).await.expect("killed");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(
        docker_lines(&["ps", "-q", "--filter", &format!("name=pdm-s.{id}.")]).len(),
        1,
        "the timer was defeated: it still runs"
    );
    // Past its deadline (idle + a quarter + 2 s) and nobody live holds it: `cleanup` (and
    // every daemon's sweep) removes it, from what the engine records.
    let mut said = String::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            let out = run_cli(&["cleanup"], &[DURABLE]);
            assert!(out.status.success(), "{out:?}");
            said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            named(&format!("pdm-s.{id}.")).is_empty()
        })
        .await,
        "the backstop removed it; now {:?}, names {:?}, cleanup said:\n{said}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH),
        named(&format!("pdm-s.{id}."))
    );
    let _ = container;
    assert!(
        eventually(Duration::from_secs(10), || leftovers(pid).is_empty()).await,
        "{:?}",
        leftovers(pid)
    );
    d.finish_as(Exit::Signal(9)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_lists_a_session_left_at_exit_with_its_owner_and_expiry() {
    let mut d = Daemon::start_with(&[DURABLE]).await;
    let id = d.new_session("x = 1").await;
    claimed(&id).await;
    let pid = d.pid;
    let status = d.close(Duration::from_secs(30)).await.expect("exits");
    assert!(status.success());
    assert_eq!(
        named(&format!("pdm-s.{id}.")).len(),
        1,
        "left for the next start"
    );
    let listing = run_cli(&["cleanup", "--dry-run"], &[DURABLE]);
    let out = String::from_utf8_lossy(&listing.stdout);
    assert!(
        out.lines().any(|l| l.starts_with("session")
            && l.contains(&id)
            && l.contains("owner")
            && l.contains("free")
            && l.contains("expires in")),
        "{out}"
    );
    assert_eq!(
        named(&format!("pdm-s.{id}.")).len(),
        1,
        "a dry run removes nothing"
    );
    let mut next = Daemon::start_with(&[DURABLE]).await;
    end_and_check(&next, &id, &[pid]).await;
    next.finish().await;
    d.finish().await;
}

/// `cleanup --all` removes everything of this host, other tests' sandboxes included: it
/// runs alone, after the rest (scripts/test.sh).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "removes every sandbox of this host: scripts/test.sh runs it alone"]
async fn cleanup_all_removes_everything_now() {
    let mut d = Daemon::start_with(&[DURABLE]).await;
    let id = d.new_session("x = 1").await;
    claimed(&id).await;
    let pid = d.pid;
    let status = d.close(Duration::from_secs(30)).await.expect("exits");
    assert!(status.success());
    assert_eq!(named(&format!("pdm-s.{id}.")).len(), 1);
    let all = run_cli(&["cleanup", "--all"], &[DURABLE]);
    assert!(all.status.success(), "{all:?}");
    assert!(
        eventually(Duration::from_secs(10), || leftovers(pid).is_empty()).await,
        "{:?}",
        leftovers(pid)
    );
    assert!(named(&format!("pdm-s.{id}.")).is_empty());
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_durable_off_a_session_ends_with_its_daemon() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_SESSION_DURABLE", "false")]).await;
    let id = d.new_session("x = 1").await;
    assert!(named(&format!("pdm-s.{id}.")).is_empty(), "never renamed");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_restart_keeps_each_clients_sessions_for_that_client_only() {
    use common::http::{call, HttpDaemon, ALICE, BOB};
    let tokens = common::http::tokens_file();
    let env = [
        DURABLE,
        ("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap()),
    ];
    let mut first = HttpDaemon::start(&env).await;
    let alice = first.connect(Some(ALICE)).await;
    let r = call(&alice, "execute-persistent", json!({"code": "x = 'alice'"})).await;
    assert_ok(&r);
    let id = session_id(&r);
    claimed(&id).await;
    drop(alice);
    let status = first.stop().await.expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(named(&format!("pdm-s.{id}.")).len(), 1, "the session stays");

    // The upgraded server: alice finds her variables, bob finds nothing.
    let mut second = HttpDaemon::start(&env).await;
    let bob = second.connect(Some(BOB)).await;
    let r = call(
        &bob,
        "execute-persistent",
        json!({"code": "x", "session_id": id}),
    )
    .await;
    assert!(
        is_error(&r) && text(&r).contains("no such session"),
        "{}",
        describe(&r)
    );
    let listed = call(&bob, "list-sessions", json!({})).await;
    assert!(sessions(&listed).is_empty(), "{}", describe(&listed));
    let alice = second.connect(Some(ALICE)).await;
    let r = call(
        &alice,
        "execute-persistent",
        json!({"code": "x", "session_id": id}),
    )
    .await;
    assert_eq!(value(&r).as_deref(), Some("'alice'"), "{}", describe(&r));
    let r = call(&alice, "cleanup-session", json!({"session_id": id})).await;
    assert_ok(&r);
    let first_pid = first.pid;
    assert!(
        eventually(Duration::from_secs(15), || leftovers(first_pid).is_empty()).await,
        "{:?}",
        leftovers(first_pid)
    );
    drop((alice, bob));
    second.finish().await;
    first.finish().await;
}
