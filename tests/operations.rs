//! Operations: the graceful drain on SIGTERM (over HTTP and stdio), `cleanup [--dry-run]`
//! of what dead daemons left, and `doctor`'s checks.
//!
//! **Needs root and `unshare` (util-linux), changes nothing on the host:** the cleanup test
//! runs the daemon under a host name of its own in a private UTS namespace (the machine's
//! host name is untouched), so other tests' sweeps never see its orphans; a guard
//! (`Orphans`) removes what carries that name even when the test fails. It runs with the
//! rest of the suite.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::http::{call, command, http, signal, HttpDaemon};
use common::*;
use rmcp::ServiceExt;
use serde_json::json;

/// A long call in a session: the session is started first, so the call is in the engine
/// within milliseconds of being sent.
async fn http_session(
    client: &rmcp::service::RunningService<rmcp::RoleClient, rmcp::model::ClientConfig>,
) -> String {
    let r = call(client, "execute-persistent", json!({ "code": "x = 1" })).await;
    assert_ok(&r);
    session_id(&r)
}

/// Wait for the daemon to exit after a signal; its exit status.
async fn exit_of(d: &mut HttpDaemon, within: Duration) -> std::process::ExitStatus {
    tokio::time::timeout(within, d.child.wait())
        .await
        .unwrap_or_else(|_| panic!("the daemon did not exit within {within:?}:\n{}", d.log()))
        .expect("wait for the daemon")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_over_http_lets_a_running_call_finish_then_removes_everything() {
    let mut d = HttpDaemon::start(&[]).await;
    let client = d.connect(None).await;
    let id = http_session(&client).await;
    let long = json!({ "code": "import time\ntime.sleep(3)\nx + 1", "session_id": id });
    let (result, ()) = tokio::join!(call(&client, "execute-persistent", long), async {
        // The call runs for 3 s; it is in the engine well before this.
        tokio::time::sleep(Duration::from_secs(1)).await;
        signal(d.pid, "TERM");
        let draining = eventually(Duration::from_secs(10), || d.log().contains("draining")).await;
        assert!(draining, "the daemon drains one running call:\n{}", d.log());
        // The listener stays open while it drains (its clients' new connections are
        // served), but it is not ready for new ones (tests/http.rs has the rest).
        let health = http().get(format!("{}/health", d.base)).send().await;
        assert_eq!(health.expect("/health while draining").status(), 200);
        let ready = http().get(format!("{}/ready", d.base)).send().await;
        assert_eq!(ready.expect("/ready while draining").status(), 503);
    });
    assert_ok(&result);
    assert_eq!(
        value(&result).as_deref(),
        Some("2"),
        "{}",
        describe(&result)
    );
    drop(client);
    let status = exit_of(&mut d, Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status:?}:\n{}", d.log());
    let log = d.log();
    assert!(
        log.contains("drained: every running call finished") && !log.contains("cut short"),
        "{log}"
    );
    assert!(
        leftovers(d.pid).is_empty(),
        "nothing is left: {:?}",
        leftovers(d.pid)
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_longer_than_the_drain_timeout_is_cut_short_and_named() {
    let mut d = HttpDaemon::start(&[
        ("PYTHON_DOCKER_MCP_DRAIN_TIMEOUT", "1s"),
        ("PYTHON_DOCKER_MCP_TIMEOUT", "120s"),
    ])
    .await;
    let client = d.connect(None).await;
    let id = http_session(&client).await;
    let long = json!({ "code": "import time\ntime.sleep(60)", "session_id": id });
    let (result, ()) = tokio::join!(call(&client, "execute-persistent", long), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        signal(d.pid, "TERM");
    });
    // The call is interrupted by the shutdown, and its client is told so.
    assert_tool_error(&result, "shut down");
    assert_eq!(field(&result, "sandbox_lost"), &json!(true));
    drop(client);
    // Far less than the 60 s the code wanted: the drain gave up after 1 s.
    let status = exit_of(&mut d, Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status:?}:\n{}", d.log());
    let log = d.log();
    let cut = log
        .lines()
        .find(|l| l.contains("cut short by shutdown"))
        .unwrap_or_else(|| panic!("the log names the call that was cut short:\n{log}"));
    assert!(
        cut.contains(&id)
            && cut.contains("operation=session run")
            && cut.contains("ran_for=")
            && cut.contains("server.drain_timeout"),
        "{cut}"
    );
    assert!(
        leftovers(d.pid).is_empty(),
        "nothing is left: {:?}",
        leftovers(d.pid)
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_stdio_new_calls_are_refused_while_draining_and_a_second_signal_cuts_it_short() {
    let mut d = Daemon::start_logged(&[
        ("PYTHON_DOCKER_MCP_LOG", "info"),
        ("PYTHON_DOCKER_MCP_TIMEOUT", "120s"),
    ])
    .await;
    let id = d.new_session("x = 1").await;
    let (result, ()) = tokio::join!(
        d.persistent("import time\ntime.sleep(60)", Some(&id)),
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            d.signal("TERM");
            let draining = eventually(Duration::from_secs(10), || {
                d.log_text().contains("draining")
            })
            .await;
            assert!(draining, "the daemon drains:\n{}", d.log_text());
            // The 30 s drain has begun: a new call is refused, clearly.
            let refused = d.transient("1 + 1").await;
            assert_tool_error(&refused, "the server is shutting down");
            d.signal("TERM");
        }
    );
    assert_tool_error(&result, "shut down");
    // Well within the default 30 s drain: the second signal cut it short.
    assert!(
        d.wait_exit(Duration::from_secs(20)).await.is_some(),
        "the daemon exits after the second signal:\n{}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(
        log.contains("cut short by shutdown: a second signal (SIGTERM) arrived")
            && log.contains(&id),
        "{log}"
    );
    assert!(
        d.leftovers().is_empty(),
        "nothing is left: {:?}",
        d.leftovers()
    );
    d.finish().await;
}

/// The drain waits for an install too (calls in flight are executions, installs, any
/// tool). The index is a server on the test's own network that never answers, so the
/// install ends at its own 6 s time-out, well inside the 30 s drain: its answer is the
/// install's own error, not a shutdown, and the drain ends because every call finished.
#[tokio::test(flavor = "multi_thread")]
async fn a_drain_lets_an_install_in_flight_run_to_its_end() {
    let mut net = common::net::TestNet::create();
    let (index, index_host) = net.silent_index();
    let mut d = Daemon::start_logged(&[
        ("PYTHON_DOCKER_MCP_LOG", "info"),
        ("PYTHON_DOCKER_MCP_INSTALL_TIMEOUT", "6s"),
        ("PYTHON_DOCKER_MCP_INDEX_URL", &index),
        ("PYTHON_DOCKER_MCP_TRUSTED_HOSTS", &index_host),
        ("PYTHON_DOCKER_MCP_EGRESS_NETWORK", &net.name),
    ])
    .await;
    let pid = d.pid;
    let (result, ()) = tokio::join!(d.install("pdm-never-cached-probe", None), async {
        assert!(
            eventually(Duration::from_secs(20), || !containers_with_role(
                pid,
                "installer"
            )
            .is_empty())
            .await,
            "an installer runs"
        );
        d.signal("TERM");
        let draining = eventually(Duration::from_secs(10), || {
            d.log_text().contains("draining")
        })
        .await;
        assert!(draining, "the daemon drains:\n{}", d.log_text());
    });
    assert_tool_error(&result, "took longer than the install time-out");
    assert!(
        !text(&result).contains("shut down"),
        "the install was not cut short: {}",
        describe(&result)
    );
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}:\n{}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(
        log.contains("drained: every running call finished") && !log.contains("cut short"),
        "{log}"
    );
    d.finish().await;
    net.remove();
}

/// A client that closes stdin while a call runs is gone: the daemon shuts down at once,
/// without a drain and without waiting for the call (its code wants 100 s; the exit is
/// bounded by `finish`'s 30 s), and removes everything.
#[tokio::test(flavor = "multi_thread")]
async fn stdin_closing_while_a_call_runs_shuts_down_at_once_without_a_drain() {
    let mut d = Daemon::start_logged(&[
        ("PYTHON_DOCKER_MCP_LOG", "info"),
        ("PYTHON_DOCKER_MCP_TIMEOUT", "120s"),
    ])
    .await;
    let id = d.new_session("import time").await;
    let peer = d.client().peer().clone();
    let in_flight = tokio::spawn(async move {
        let params = rmcp::model::CallToolRequestParams::new("execute-persistent").with_arguments(
            json!({"code": "time.sleep(100)", "session_id": id})
                .as_object()
                .unwrap()
                .clone(),
        );
        peer.call_tool(params).await
    });
    // The session exists, so the call is in the engine within milliseconds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!in_flight.is_finished(), "the call is still running");
    // Closing the client closes the daemon's stdin; finish() then bounds the exit.
    d.finish().await;
    let log = d.log_text();
    // Not the drain of a signal (rmcp's own "draining in-flight responses" line is not it).
    assert!(
        !log.contains("shutting down: draining")
            && !log.contains("waiting for the running ones to finish"),
        "no drain on EOF:\n{log}"
    );
    in_flight.abort();
}

// ----- cleanup -----

/// The binary run under its own host name (a private UTS namespace; needs root). The
/// daemon labels what it creates with that name, and only a sweep under the same name
/// counts it as its own host's: other tests' daemons, which sweep dead daemons' objects
/// at start-up, never touch this test's orphans, and this test's sweep touches nothing
/// of theirs.
fn under_host(host: &str, home: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("unshare");
    // Isolated like every test daemon: a fresh HOME, none of the developer's settings.
    for (k, _) in std::env::vars() {
        if k.starts_with("PYTHON_DOCKER_MCP_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("HOME", home)
        .env("PYTHON_DOCKER_MCP_LOG", "info")
        .env("PYTHON_DOCKER_MCP_POOL_ENABLED", "false")
        .env("PYTHON_DOCKER_MCP_SESSION_DURABLE", "false")
        .args([
            "--uts",
            "sh",
            "-c",
            "hostname \"$0\" && exec \"$@\"",
            host,
            BIN,
        ])
        .args(args)
        .kill_on_drop(true);
    cmd
}

/// Docker objects with `pid`'s and `host`'s labels: (containers, volumes).
fn objects_of(pid: u32, host: &str) -> (Vec<String>, Vec<String>) {
    let filters = [
        format!("label={PID_LABEL}={pid}"),
        format!("label={HOST_LABEL}={host}"),
    ];
    let list = |what: &[&str]| -> Vec<String> {
        let out = std::process::Command::new("docker")
            .args(what)
            .args(["--filter", &filters[0], "--filter", &filters[1]])
            .output()
            .expect("docker");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    (
        list(&["ps", "-aq", "--no-trunc"]),
        list(&["volume", "ls", "-q"]),
    )
}

/// Removes what carries `pid`'s and `host`'s labels, and the daemon's HOME, whatever
/// the test did.
struct Orphans {
    pid: u32,
    host: String,
    home: PathBuf,
}

impl Drop for Orphans {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
        let (containers, volumes) = objects_of(self.pid, &self.host);
        if !containers.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&containers)
                .output();
        }
        if !volumes.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["volume", "rm", "-f"])
                .args(&volumes)
                .output();
        }
    }
}

/// `cleanup` under `host`: its exit code and what it printed.
async fn cleanup(host: &str, home: &Path, dry_run: bool) -> (Option<i32>, String) {
    let mut args = vec!["cleanup"];
    if dry_run {
        args.push("--dry-run");
    }
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        under_host(host, home, &args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .expect("cleanup finishes")
    .expect("run cleanup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// `N containers, M volumes` from cleanup's line starting with `prefix`.
fn counts(text: &str, prefix: &str) -> (usize, usize) {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{text}"));
    let mut numbers = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|n| n.parse::<usize>().unwrap());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_dry_run_counts_a_killed_daemons_leftovers_and_cleanup_removes_them() {
    let host = format!("pdm-ops-{}-{}", std::process::id(), unix_now() as u64);
    let home = fresh_dir("ops-home");
    let mut child = under_host(&host, &home, &["serve"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the daemon under unshare (needs root and util-linux)");
    let pid = child.id().expect("pid");
    let _orphans = Orphans {
        pid,
        host: host.clone(),
        home: home.clone(),
    };
    let client = tokio::time::timeout(
        Duration::from_secs(30),
        Recorder::default().serve((
            child.stdout.take().expect("stdout"),
            child.stdin.take().expect("stdin"),
        )),
    )
    .await
    .expect("initialize in time")
    .expect("initialize");
    let params = rmcp::model::CallToolRequestParams::new("execute-persistent")
        .with_arguments(json!({ "code": "x = 1" }).as_object().unwrap().clone());
    let r = tokio::time::timeout(CALL_LIMIT, client.call_tool(params))
        .await
        .expect("answer in time")
        .expect("a result");
    assert_ok(&r);
    let (containers, volumes) = objects_of(pid, &host);
    assert!(
        !containers.is_empty() && !volumes.is_empty(),
        "the session's container and volume carry the daemon's labels: {containers:?} {volumes:?}"
    );

    // SIGKILL: no shutdown runs. The session's container goes by itself (its stdin
    // closes); its volumes stay, orphaned.
    signal(pid, "KILL");
    child.wait().await.expect("reap the killed daemon");
    drop(client);
    let gone = eventually(Duration::from_secs(30), || {
        objects_of(pid, &host).0.is_empty()
    })
    .await;
    assert!(
        gone,
        "the container exits with its stdin: {:?}",
        objects_of(pid, &host)
    );
    let left = objects_of(pid, &host);
    assert!(!left.1.is_empty(), "the volumes are left: {left:?}");

    let (code, text) = cleanup(&host, &home, true).await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        counts(&text, "would remove: "),
        (left.0.len(), left.1.len()),
        "only this test's daemon ran under this host name: {left:?}\n{text}"
    );
    assert!(text.contains("nothing was removed"), "{text}");
    assert_eq!(objects_of(pid, &host), left, "a dry run removes nothing");

    let (code, text) = cleanup(&host, &home, false).await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        counts(&text, "removed: "),
        (left.0.len(), left.1.len()),
        "{text}"
    );
    let (containers, volumes) = objects_of(pid, &host);
    assert!(
        containers.is_empty() && volumes.is_empty(),
        "cleanup removed them: {containers:?} {volumes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_without_docker_fails_and_names_the_fix() {
    let home = fresh_dir("ops-cli");
    let out = command(
        &home,
        &["cleanup", "--dry-run"],
        &[("DOCKER_HOST", "unix:///nonexistent/pdm-docker.sock")],
    )
    .output()
    .await
    .expect("run cleanup");
    let _ = std::fs::remove_dir_all(&home);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Docker is not reachable") && stderr.contains("DOCKER_HOST"),
        "{stderr}"
    );
}

// ----- doctor -----

/// Run `doctor` with these arguments and settings: exit code, stdout, stderr, and the pid
/// (the label of anything it created).
async fn doctor(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String, u32) {
    let home = fresh_dir("ops-doctor");
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    let child = command(&home, &all, env)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn doctor");
    let pid = child.id().expect("pid");
    let out = tokio::time::timeout(Duration::from_secs(150), child.wait_with_output())
        .await
        .expect("doctor finishes")
        .expect("wait");
    let _ = std::fs::remove_dir_all(&home);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_without_the_image_fails_and_names_the_command_that_builds_it() {
    let (code, stdout, stderr, _) = doctor(
        &[],
        &[("PYTHON_DOCKER_MCP_IMAGE", "python-docker-mcp-missing:never")],
    )
    .await;
    assert_ne!(code, Some(0), "{stdout}{stderr}");
    let image = stdout
        .lines()
        .find(|l| l.starts_with("FAIL  image"))
        .unwrap_or_else(|| panic!("the image check fails:\n{stdout}"));
    assert!(image.contains("python-docker-mcp-missing:never"), "{image}");
    assert!(
        stdout.contains("fix: Build it with `python-docker-mcp image build --tag python-docker-mcp-missing:never`"),
        "{stdout}"
    );
    assert!(stdout.contains("skip  helper"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_every_check_on_the_real_image() {
    let (code, stdout, stderr, pid) = doctor(&["--http", "127.0.0.1:0"], &[]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    for check in [
        "Docker",
        "image",
        "helper",
        "network",
        "user",
        "installer",
        "http",
    ] {
        assert!(
            stdout.contains(&format!("ok    {check}: ")),
            "{check} passes:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("network: none: a connection to 192.0.2.1:80"),
        "{stdout}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(
        leftovers(pid).is_empty(),
        "the doctor removes its sandbox: {:?}",
        leftovers(pid)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_fails_when_the_http_address_cannot_be_bound() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap().to_string();
    // Docker is made unreachable so only the HTTP check has anything to say.
    let (code, stdout, stderr, _) = doctor(
        &["--http", &addr],
        &[("DOCKER_HOST", "unix:///nonexistent/pdm-docker.sock")],
    )
    .await;
    assert_ne!(code, Some(0), "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("FAIL  http"))
        .unwrap_or_else(|| panic!("the http check fails:\n{stdout}"));
    assert!(line.contains(&addr), "{line}");
    assert!(stdout.contains("FAIL  Docker"), "{stdout}");
}
