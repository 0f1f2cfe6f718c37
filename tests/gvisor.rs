//! gVisor through `docker.runtime`: sandboxes run under runsc, gVisor's OCI runtime, see
//! gVisor's kernel instead of the host's, and the daemon's flows (a session, a time-out's
//! interrupt, an install) work as under runc.
//!
//! runsc must be registered with Docker under the name `runsc`:
//! `scripts/ensure-gvisor.sh` installs and registers it (scripts/test.sh runs it first).
//! Without it this test fails and says so; it never skips.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

/// A small pure-Python wheel the image does not have.
const PACKAGE: (&str, &str) = ("tomli-w", "tomli_w");

/// Fails, saying how to fix it, unless Docker lists an OCI runtime named `runsc`.
fn require_runsc() {
    let fix = "run scripts/ensure-gvisor.sh (as root: it installs Debian's runsc, registers it \
               with dockerd in /etc/docker/daemon.json and reloads dockerd with SIGHUP)";
    let out = Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output()
        .expect("the docker command runs");
    assert!(
        out.status.success(),
        "docker info failed ({}): is the engine up?",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let runtimes: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("docker info prints the runtimes as JSON");
    assert!(
        runtimes.get("runsc").is_some(),
        "Docker has no OCI runtime named runsc (it has {runtimes}): {fix}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_run_under_gvisor_when_docker_runtime_is_runsc() {
    require_runsc();
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_RUNTIME", "runsc"),
        ("PYTHON_DOCKER_MCP_TIMEOUT", "2s"),
    ])
    .await;
    let id = d
        .new_session("import platform\nkernel = platform.release()")
        .await;
    let r = d.persistent_ok("kernel", &id).await;
    let kernel = value(&r).unwrap_or_default();
    assert_ne!(
        kernel.trim_matches('\''),
        host_kernel.trim(),
        "the sandbox sees the host's kernel: {}",
        describe(&r)
    );
    let r = d.persistent("while True:\n    pass", Some(&id)).await;
    assert_eq!(field(&r, "timed_out"), &json!(true), "{}", describe(&r));
    assert_eq!(field(&r, "sandbox_lost"), &json!(false), "{}", describe(&r));
    assert_ok(&d.install(PACKAGE.0, Some(&id)).await);
    let r = d
        .persistent_ok(
            &format!("import {0}\n{0}.dumps({{'a': 1}}).strip()", PACKAGE.1),
            &id,
        )
        .await;
    assert_eq!(value(&r).as_deref(), Some("'a = 1'"), "{}", describe(&r));
    d.finish().await;
}
