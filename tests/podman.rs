//! Podman and OCI runtimes on the Docker seam: the end-to-end flows through a real MCP
//! client against Podman's Docker-compatible service (`DOCKER_HOST` at its socket), what
//! each daemon leaves in Podman (checked with Podman's own CLI), the next daemon sweeping
//! what a killed one left there, egress allow-lists through the proxy container, and
//! `docker.runtime` naming itself when the engine cannot run a sandbox with it.
//!
//! Podman must be there: `scripts/ensure-podman.sh` installs it, starts the service and
//! loads the image (scripts/test.sh runs it first). Without it these tests fail and say so;
//! they never skip.

mod common;

use std::process::Command;
use std::time::Duration;

use common::net::{Engine, TestNet, PORT};
use common::*;
use serde_json::json;

/// A small pure-Python wheel the image does not have.
const PACKAGE: (&str, &str) = ("tomli-w", "tomli_w");

/// The socket `scripts/ensure-podman.sh` serves the Docker API on.
fn podman_socket() -> String {
    std::env::var("PDM_PODMAN_SOCK").unwrap_or_else(|_| "/run/pdm-podman.sock".into())
}

/// `DOCKER_HOST` for a daemon that uses Podman; fails, saying how to fix it, when Podman
/// does not answer there or lacks the image.
fn podman_host() -> String {
    let host = format!("unix://{}", podman_socket());
    let fix = "run scripts/ensure-podman.sh (as root: it installs podman and catatonit, \
               starts `podman system service` and loads the sandbox image into Podman)";
    let version = Command::new("podman")
        .args(["--url", &host, "version", "--format", "{{.Server.Version}}"])
        .output();
    match version {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "Podman does not answer at {host} ({}): {fix}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("the podman command cannot run ({e}): {fix}"),
    }
    let image = Command::new("podman")
        .args(["image", "exists", "python-docker-mcp:latest"])
        .status()
        .expect("podman image exists");
    assert!(
        image.success(),
        "Podman has no python-docker-mcp:latest: {fix}"
    );
    host
}

fn podman_lines(args: &[&str]) -> Vec<String> {
    cli_lines("podman", args)
}

/// Containers in Podman carrying `pid`'s label (and the role, if given).
fn podman_containers(pid: u32, role: Option<&str>) -> Vec<String> {
    let pid_filter = format!("label={PID_LABEL}={pid}");
    let mut args = vec!["ps", "-aq", "--filter", &pid_filter];
    let role_filter = role.map(|r| format!("label=python-docker-mcp.role={r}"));
    if let Some(f) = &role_filter {
        args.extend(["--filter", f]);
    }
    podman_lines(&args)
}

/// Volumes in Podman carrying `pid`'s label. (Podman ORs several label filters on
/// volumes, so only one is given.)
fn podman_volumes(pid: u32) -> Vec<String> {
    podman_lines(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label={PID_LABEL}={pid}"),
    ])
}

/// Nothing of `pid` in Podman, nor in Docker (a daemon pointed at Podman uses no other
/// engine).
#[track_caller]
fn assert_nothing_left(pid: u32) {
    let containers = podman_containers(pid, None);
    let volumes = podman_volumes(pid);
    assert!(
        containers.is_empty() && volumes.is_empty(),
        "daemon {pid} left in Podman containers {containers:?} and volumes {volumes:?}"
    );
    assert!(leftovers(pid).is_empty(), "{:?}", leftovers(pid));
}

/// Removes what a failed test left in Podman (the common `Daemon` cleans Docker only).
/// A passing test has removed nothing here: it asserted that nothing was left.
struct PodmanLeftovers(Vec<u32>);

impl Drop for PodmanLeftovers {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let filter = format!("label={PID_LABEL}={pid}");
            let ids = Command::new("podman")
                .args(["ps", "-aq", "--filter", &filter])
                .output();
            if let Ok(out) = ids {
                let ids = String::from_utf8_lossy(&out.stdout).to_string();
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let _ = Command::new("podman")
                        .args(["rm", "-f", "-v", "-t", "0"])
                        .args(&ids)
                        .output();
                }
            }
            let _ = Command::new("podman")
                .args(["volume", "prune", "-f", "--filter", &filter])
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_end_to_end_flows_run_on_podman_and_leave_nothing_there() {
    let host = podman_host();
    let mut d = Daemon::start_with(&[
        ("DOCKER_HOST", host.as_str()),
        ("PYTHON_DOCKER_MCP_TIMEOUT", "2s"),
    ])
    .await;
    let _guard = PodmanLeftovers(vec![d.pid]);

    // execute-transient, with state in and out.
    let r = d
        .transient_with_state("b = a * 2\nb", json!({ "a": 21 }))
        .await;
    assert_ok(&r);
    assert_eq!(value(&r).as_deref(), Some("42"), "{}", describe(&r));
    assert_eq!(field(&r, "state")["b"], json!(42), "{}", describe(&r));

    // The sandbox is locked down as on Docker: uid 1000, its working directory a tmpfs it
    // owns (Podman's `U`), the root read-only, no network.
    let r = d
        .transient(
            "import os\nopen('/app/f', 'w').write('x')\n\
             ro = True\ntry:\n    open('/etc/x', 'w')\n    ro = False\nexcept OSError:\n    pass\n\
             (os.getuid(), os.stat('/app').st_uid, oct(os.stat('/app').st_mode & 0o777), ro, \
             sorted(l.split(':')[0].strip() for l in open('/proc/net/dev') if ':' in l))",
        )
        .await;
    assert_ok(&r);
    assert_eq!(
        value(&r).as_deref(),
        Some("(1000, 1000, '0o755', True, ['lo'])"),
        "{}",
        describe(&r)
    );

    // execute-persistent keeps variables; a time-out interrupts the cell, not the session.
    let id = d.new_session("kept = 41").await;
    let r = d.persistent("while True:\n    pass", Some(&id)).await;
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(field(&r, "timed_out"), &json!(true), "{}", describe(&r));
    assert_eq!(field(&r, "sandbox_lost"), &json!(false), "{}", describe(&r));
    let r = d.persistent_ok("kept + 1", &id).await;
    assert_eq!(value(&r).as_deref(), Some("42"), "{}", describe(&r));

    // install-package: the installer container (with network) writes the session's
    // volume, which the sandbox imports from but cannot write.
    let r = d.install(PACKAGE.0, Some(&id)).await;
    assert_ok(&r);
    let r = d
        .persistent_ok(
            &format!(
                "import {m}\nwritable = True\ntry:\n    \
                 open('/opt/python-docker-mcp/session/x', 'w')\nexcept OSError:\n    \
                 writable = False\n({m}.dumps({{'a': 1}}).strip(), writable)",
                m = PACKAGE.1
            ),
            &id,
        )
        .await;
    assert_eq!(
        value(&r).as_deref(),
        Some("('a = 1', False)"),
        "{}",
        describe(&r)
    );
    let pid = d.pid;
    assert!(
        eventually(Duration::from_secs(10), || podman_containers(
            pid,
            Some("installer")
        )
        .is_empty())
        .await,
        "the installer is removed once it is done"
    );

    // cleanup-session removes the session's sandbox from Podman.
    assert_eq!(podman_containers(d.pid, Some("sandbox")).len(), 1);
    assert_ok(&d.cleanup(&id).await);
    let pid = d.pid;
    assert!(
        eventually(Duration::from_secs(10), || podman_containers(
            pid,
            Some("sandbox")
        )
        .is_empty())
        .await,
        "the session's sandbox is removed: {:?}",
        podman_containers(pid, Some("sandbox"))
    );

    // Shutdown leaves nothing in Podman.
    d.finish().await;
    assert_nothing_left(pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_on_podman_sweeps_what_a_killed_one_left_there() {
    let host = podman_host();
    let env = [("DOCKER_HOST", host.as_str())];
    let mut dead = Daemon::start_with(&env).await;
    let mut guard = PodmanLeftovers(vec![dead.pid]);
    let id = dead.new_session("x = 1").await;
    assert_eq!(dead.persistent_ok("x", &id).await.is_error, Some(false));
    let dead_pid = dead.pid;
    assert_eq!(podman_containers(dead_pid, Some("sandbox")).len(), 1);
    assert!(!podman_volumes(dead_pid).is_empty());
    dead.signal("KILL");
    dead.wait_exit(Duration::from_secs(10))
        .await
        .expect("SIGKILL ends the daemon");

    // The next daemon finds them by label (this host, a pid that is gone) and removes
    // them, containers and volumes, while it serves.
    let mut d = Daemon::start_with(&env).await;
    guard.0.push(d.pid);
    let r = d.transient("1 + 1").await;
    assert_eq!(value(&r).as_deref(), Some("2"), "{}", describe(&r));
    let swept = eventually(Duration::from_secs(20), || {
        podman_containers(dead_pid, None).is_empty() && podman_volumes(dead_pid).is_empty()
    })
    .await;
    assert!(
        swept,
        "left by the killed daemon: containers {:?}, volumes {:?}",
        podman_containers(dead_pid, None),
        podman_volumes(dead_pid)
    );
    let pid = d.pid;
    d.finish().await;
    assert_nothing_left(pid);
    dead.finish_as(Exit::Signal(9)).await;
    assert_nothing_left(dead_pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_and_the_doctor_name_podman() {
    let host = podman_host();
    let out = run_cli(&["doctor"], &[("DOCKER_HOST", host.as_str())]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok    Docker: engine Podman 4.") && stdout.contains(&host),
        "the doctor names the engine, its version and where it answers:\n{stdout}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");

    // An image name the engine refuses: the refusal names Podman, not Docker.
    let mut d = Daemon::start_with(&[
        ("DOCKER_HOST", host.as_str()),
        ("PYTHON_DOCKER_MCP_IMAGE", "Not A Valid/Reference"),
    ])
    .await;
    let _guard = PodmanLeftovers(vec![d.pid]);
    let r = d.transient("1").await;
    assert_tool_error(&r, "Podman refused to create a container");
    assert!(!text(&r).contains("Docker refused"), "{}", describe(&r));
    let pid = d.pid;
    d.finish().await;
    assert_nothing_left(pid);
}

/// `docker.runtime` naming a runtime the engine does not have: each call fails with a
/// message naming the setting and the runtime, and the daemon keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_oci_runtime_is_named_with_its_setting_and_the_daemon_serves_on() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_RUNTIME", "no-such-runtime")]).await;
    for _ in 0..2 {
        let r = d.transient("1").await;
        assert_tool_error(&r, "docker.runtime");
        assert!(
            text(&r).contains("no-such-runtime") && text(&r).contains("Docker has no OCI runtime"),
            "{}",
            describe(&r)
        );
    }
    let tools = d.client().list_all_tools().await.expect("tools/list");
    assert!(!tools.is_empty(), "the daemon still answers");
    d.finish().await;
}

/// Podman's Docker-compatible API ignores a requested runtime; the daemon refuses rather
/// than run the code under Podman's default runtime while the setting says otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn podman_refuses_a_runtime_it_would_silently_ignore() {
    let host = podman_host();
    let mut d = Daemon::start_with(&[
        ("DOCKER_HOST", host.as_str()),
        ("PYTHON_DOCKER_MCP_RUNTIME", "runsc"),
    ])
    .await;
    let _guard = PodmanLeftovers(vec![d.pid]);
    let r = d.transient("1").await;
    assert_tool_error(&r, "docker.runtime");
    assert!(
        text(&r).contains("Podman ignores") && text(&r).contains("runsc"),
        "{}",
        describe(&r)
    );
    assert!(podman_containers(d.pid, None).is_empty());
    let pid = d.pid;
    d.finish().await;
    assert_nothing_left(pid);
}

/// Egress allow-lists on Podman (issue 21): the daemon's proxy container joins a Podman
/// network of the test's own (two HTTP servers under aliases, resolved by Podman's DNS),
/// and the sandbox reaches it through the socket mount. A listed host answers; another is
/// refused with the reason, in the value and the text; a run without a list has no proxy
/// variables and no route, even to the server's address.
#[tokio::test(flavor = "multi_thread")]
async fn egress_allow_lists_hold_on_podman() {
    let host = podman_host();
    let mut net = TestNet::create_on(Engine::Podman);
    net.http_server("allowed.test");
    net.http_server("denied.test");
    let subnet = net.subnet();
    let ip = net.address("allowed.test");
    let mut d = Daemon::start_with(&[
        ("DOCKER_HOST", host.as_str()),
        (
            "PYTHON_DOCKER_MCP_NETWORK_ALLOW",
            "allowed.test:8080,denied.test:8080",
        ),
        ("PYTHON_DOCKER_MCP_NETWORK_ALLOW_PRIVATE", subnet.as_str()),
        ("PYTHON_DOCKER_MCP_EGRESS_NETWORK", net.name.as_str()),
    ])
    .await;
    let _guard = PodmanLeftovers(vec![d.pid]);
    let get = "import urllib.request, urllib.error\n\
        def get(url):\n    try:\n        with urllib.request.urlopen(url, timeout=20) as r:\n            \
        return r.status, r.read().decode()\n    except urllib.error.HTTPError as e:\n        \
        return e.code, e.read().decode()\n";

    let code =
        format!("{get}get('http://allowed.test:{PORT}/a'), get('http://denied.test:{PORT}/d')");
    let r = d
        .call(
            "execute-persistent",
            json!({ "code": code, "network": ["allowed.test:8080"] }),
        )
        .await;
    assert_ok(&r);
    let blocked = "blocked: denied.test:8080 (not in this session's allow-list)";
    assert_eq!(
        value(&r).as_deref(),
        Some(format!("((200, 'hello from allowed.test /a'), (403, \"{blocked}\\n\"))").as_str()),
        "{}",
        describe(&r)
    );
    assert!(text(&r).contains(blocked), "{}", describe(&r));
    assert_eq!(field(&r, "network")["allowed"][0]["host"], "allowed.test");
    assert_eq!(field(&r, "network")["denied"][0]["host"], "denied.test");
    assert_eq!(
        podman_containers(d.pid, Some("egress")).len(),
        1,
        "the proxy runs in Podman"
    );

    // No list: no proxy variables, no interface but lo, no route to the server.
    let probe = format!(
        "import errno, os, socket\n\
         try:\n    socket.create_connection(({ip:?}, {PORT}), timeout=10).close(); raw = 'connected'\n\
         except OSError as e:\n    raw = errno.errorcode.get(e.errno, type(e).__name__)\n\
         (sorted(k for k in os.environ if 'proxy' in k.lower()), \
         sorted(l.split(':')[0].strip() for l in open('/proc/net/dev') if ':' in l), raw)"
    );
    let r = d.transient(&probe).await;
    assert_ok(&r);
    assert_eq!(
        value(&r).as_deref(),
        Some("([], ['lo'], 'ENETUNREACH')"),
        "{}",
        describe(&r)
    );
    assert_eq!(field(&r, "network"), &serde_json::Value::Null);

    let pid = d.pid;
    d.finish().await;
    assert_nothing_left(pid);
    net.remove();
}
