//! README promises that had no test of their own. Each test here fails when its promise
//! breaks: the installer's profile, wheels only, no network during installs, calls to one
//! session in arrival order, the session limit under concurrent creation, a lingering
//! child's output dropped, the figure caps, `tmpfs_size`, and SIGINT with its bound.
//!
//! Every test ends by checking that its daemon left no container and no volume.

mod common;

use std::time::Duration;

use common::net::TestNet;
use common::*;
use serde_json::{json, Value};

/// Close the daemon and check that it exited with success and left nothing behind.
async fn close_clean(mut d: Daemon) {
    d.finish().await;
}

fn inspect(container: &str) -> Value {
    let out = std::process::Command::new("docker")
        .args(["inspect", container])
        .output()
        .expect("docker inspect");
    let all: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    all[0].clone()
}

#[tokio::test]
async fn the_installer_runs_without_capabilities_on_a_read_only_root_and_never_sees_user_code() {
    // An index on the test's own network, where the installer goes out: an install waits
    // on it. Declared first, removed last: after the daemon and its installer are gone.
    let mut net = TestNet::create();
    let (index, index_host) = net.silent_index();
    let d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_INSTALL_TIMEOUT", "20s"),
        ("PYTHON_DOCKER_MCP_INDEX_URL", &index),
        ("PYTHON_DOCKER_MCP_TRUSTED_HOSTS", &index_host),
        ("PYTHON_DOCKER_MCP_EGRESS_NETWORK", &net.name),
        // The installer gets the sandbox's limits (memory at least 512 MiB, at least one
        // CPU): values above those floors show that it follows the configuration.
        ("PYTHON_DOCKER_MCP_MEMORY_LIMIT", "768m"),
        ("PYTHON_DOCKER_MCP_CPU_LIMIT", "1.5"),
        ("PYTHON_DOCKER_MCP_PIDS_LIMIT", "96"),
    ])
    .await;
    let pid = d.pid;
    let marker = "USER_CODE_MARKER_4711";
    let call = d.call(
        "execute-transient",
        json!({"code": format!("print('{marker}')"), "packages": ["pdm-never-cached-probe"]}),
    );
    let watch = async {
        let mut installer = Vec::new();
        assert!(
            eventually(Duration::from_secs(20), || {
                installer = containers_with_role(pid, "installer");
                !installer.is_empty()
            })
            .await,
            "an installer container starts"
        );
        inspect(&installer[0])
    };
    let (r, info) = tokio::join!(call, watch);
    assert!(is_error(&r), "the silent index makes the install fail");
    let host = &info["HostConfig"];
    assert_eq!(
        host["NetworkMode"],
        json!(net.name),
        "the installer goes out through network.egress_network"
    );
    assert_eq!(host["CapDrop"], json!(["ALL"]), "{host}");
    assert_eq!(host["ReadonlyRootfs"], json!(true));
    assert!(
        host["SecurityOpt"]
            .to_string()
            .contains("no-new-privileges"),
        "{}",
        host["SecurityOpt"]
    );
    assert_eq!(host["PidsLimit"], json!(96), "docker.pids_limit: {host}");
    assert_eq!(
        host["Memory"],
        json!(768i64 << 20),
        "docker.memory_limit: {host}"
    );
    assert_eq!(host["MemorySwap"], json!(768i64 << 20), "no swap: {host}");
    assert_eq!(
        host["NanoCpus"],
        json!(1_500_000_000i64),
        "docker.cpu_limit: {host}"
    );
    let config = info["Config"].to_string();
    assert!(
        !config.contains(marker),
        "the installer's command and environment never carry user code: {config}"
    );
    assert!(
        !info["Mounts"].to_string().contains("docker.sock"),
        "no engine socket in the installer"
    );
    close_clean(d).await;
    net.remove();
}

#[tokio::test]
async fn a_package_with_only_a_source_release_is_refused_and_the_message_names_only_binary() {
    let d = Daemon::start().await;
    // docopt 0.6.2 is published as a source archive only.
    let r = d.install("docopt==0.6.2", None).await;
    assert_tool_error(&r, "package.only_binary");
    let r = d.transient("import docopt").await;
    assert_tool_error(&r, "ModuleNotFoundError");
    close_clean(d).await;
}

/// A thread started in the session keeps trying the network while an install into the
/// same session runs (with network, in the installer) and while a run with `packages`
/// installs: every attempt fails as unreachable.
#[tokio::test]
async fn the_sandbox_has_no_network_during_an_install_or_a_run_with_packages() {
    let d = Daemon::start().await;
    let id = d
        .new_session(
            "import socket, threading, time\n\
             tries = []\n\
             def probe():\n\
             \x20   while True:\n\
             \x20       s = socket.socket()\n\
             \x20       s.settimeout(0.5)\n\
             \x20       try:\n\
             \x20           s.connect(('192.0.2.1', 80)); tries.append('connected')\n\
             \x20       except OSError as e:\n\
             \x20           tries.append(e.errno)\n\
             \x20       finally:\n\
             \x20           s.close()\n\
             \x20       time.sleep(0.05)\n\
             threading.Thread(target=probe, daemon=True).start()",
        )
        .await;
    assert_ok(&d.install("tomli-w", Some(&id)).await);
    let r = d
        .call(
            "execute-persistent",
            json!({"session_id": id, "packages": ["tomli-w"], "code": "import tomli_w\nprint(len(tries), sorted(set(map(str, tries))))"}),
        )
        .await;
    assert_ok(&r);
    let out = text(&r);
    // 101: ENETUNREACH. Never 'connected'.
    assert!(
        out.contains("['101']"),
        "every attempt was unreachable: {out}"
    );
    let count: usize = out
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or(0);
    assert!(count >= 3, "the probe ran during the installs: {out}");
    // A transient run with packages is offline too.
    let r = d
        .call(
            "execute-transient",
            json!({"packages": ["tomli-w"], "code": "import socket, errno\ns = socket.socket()\ntry:\n    s.connect(('192.0.2.1', 80))\nexcept OSError as e:\n    print('errno', e.errno)"}),
        )
        .await;
    assert_ok(&r);
    assert!(text(&r).contains("errno 101"), "{}", text(&r));
    close_clean(d).await;
}

/// Requests written back to back on one connection run in the order they arrived.
#[tokio::test]
async fn calls_to_one_session_run_in_arrival_order() {
    let mut raw = RawDaemon::start(&[]).await;
    let r = raw
        .call_tool(1, "execute-persistent", json!({"code": "order = []"}))
        .await;
    let first = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let id = first
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("Session ID: "))
        .expect("a session id")
        .trim()
        .to_string();
    const N: u64 = 12;
    for i in 0..N {
        // Uneven work, so a call that overtook another would show.
        let code = format!(
            "import time\ntime.sleep({})\norder.append({i})",
            ((N - i) % 3) as f64 * 0.05
        );
        raw.send_json(&json!({
            "jsonrpc": "2.0", "id": 100 + i, "method": "tools/call",
            "params": {"name": "execute-persistent", "arguments": {"session_id": id, "code": code}}
        }))
        .await;
    }
    // Answers may be written in any order; collect all of them.
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < N as usize {
        let m = raw
            .next_message(CALL_LIMIT)
            .await
            .expect("every call is answered");
        if let Some(id) = m.get("id").and_then(Value::as_u64) {
            assert!(m.get("result").is_some(), "{m}");
            answered.insert(id);
        }
    }
    let r = raw
        .call_tool(
            999,
            "execute-persistent",
            json!({"session_id": id, "code": "print(order)"}),
        )
        .await;
    let expected = format!("{:?}", (0..N).collect::<Vec<_>>());
    assert!(r.to_string().contains(&expected), "{r}");
    raw.finish().await;
}

#[tokio::test]
async fn concurrent_session_creation_never_passes_max_sessions() {
    let d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_MAX_SESSIONS", "3")]).await;
    let calls = (0..8).map(|_| d.persistent("x = 1", None));
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| !is_error(r)).count();
    let refused: Vec<_> = results.iter().filter(|r| is_error(r)).collect();
    assert_eq!(ok, 3, "exactly max_sessions sessions start");
    for r in &refused {
        assert!(text(r).contains("session.max_sessions"), "{}", text(r));
    }
    close_clean(d).await;
}

#[tokio::test]
async fn output_a_child_writes_after_its_run_ended_is_dropped() {
    let d = Daemon::start().await;
    let r = d
        .persistent(
            "import subprocess\n\
             subprocess.Popen(['sh', '-c', 'sleep 1; echo LATE_FROM_CHILD; echo LATE_ERR >&2'])\n\
             print('started')",
            None,
        )
        .await;
    assert_ok(&r);
    let id = session_id(&r);
    assert!(!text(&r).contains("LATE"), "{}", text(&r));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = d
        .persistent_ok("import time; time.sleep(0.5); print('next')", &id)
        .await;
    assert!(text(&r).contains("next"));
    assert!(
        !text(&r).contains("LATE"),
        "a lingering child's output never reaches a later result: {}",
        text(&r)
    );
    close_clean(d).await;
}

#[tokio::test]
async fn figures_are_capped_in_number_and_size_and_the_result_says_so() {
    // Rendering is slow at half a CPU on a busy host; the time-out is not what is tested.
    let d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_TIMEOUT", "120s"),
        ("PYTHON_DOCKER_MCP_CPU_LIMIT", "1"),
    ])
    .await;
    let r = d
        .transient(
            "import matplotlib.pyplot as plt\n\
             for i in range(5):\n\
             \x20   plt.figure(); plt.plot([0, i])",
        )
        .await;
    assert_ok(&r);
    let images = r.content.iter().filter(|c| c.as_image().is_some()).count();
    assert_eq!(images, 4, "at most 4 figures per call");
    assert_eq!(structured(&r)["figures"], json!(4), "{}", text(&r));
    assert_eq!(structured(&r)["figures_dropped"], json!(1), "{}", text(&r));
    assert!(
        text(&r).contains("1 left out"),
        "the text says so: {}",
        text(&r)
    );
    // One figure whose PNG is over 2 MiB: random pixels do not compress.
    let r = d
        .transient(
            "import matplotlib.pyplot as plt, numpy as np\n\
             fig = plt.figure(figsize=(15, 15))\n\
             plt.imshow(np.random.randint(0, 255, (1000, 1000, 3), dtype=np.uint8))",
        )
        .await;
    assert_ok(&r);
    let images = r.content.iter().filter(|c| c.as_image().is_some()).count();
    assert_eq!(images, 0, "a figure over 2 MiB is not returned");
    assert_eq!(structured(&r)["figures_dropped"], json!(1), "{}", text(&r));
    close_clean(d).await;
}

#[tokio::test]
async fn tmpfs_size_bounds_what_code_can_write() {
    let d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_TMPFS_SIZE", "8m")]).await;
    let r = d
        .persistent(
            "import errno\n\
             def fill(path):\n\
             \x20   try:\n\
             \x20       with open(path, 'wb') as f:\n\
             \x20           f.write(b'x' * (20 << 20))\n\
             \x20       return 'wrote'\n\
             \x20   except OSError as e:\n\
             \x20       return errno.errorcode[e.errno]\n\
             print(fill('/tmp/big'), fill('big'))",
            None,
        )
        .await;
    assert_ok(&r);
    assert!(text(&r).contains("ENOSPC ENOSPC"), "{}", text(&r));
    let id = session_id(&r);
    let r = d.persistent_ok("print('alive')", &id).await;
    assert!(text(&r).contains("alive"));
    close_clean(d).await;
}

/// SIGINT shuts down like SIGTERM, and within its bound even when the running code
/// ignores the interrupt: drain (here 1 s), then the sandbox is removed.
#[tokio::test]
async fn sigint_shuts_down_within_the_bound_even_when_code_ignores_the_interrupt() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_DRAIN_TIMEOUT", "1s")]).await;
    let id = d.new_session("x = 1").await;
    let stubborn = d.persistent(
        "import time\n\
         while True:\n\
         \x20   try:\n\
         \x20       time.sleep(1)\n\
         \x20   except KeyboardInterrupt:\n\
         \x20       pass",
        Some(&id),
    );
    let stop = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        d.signal("INT");
    };
    let (r, ()) = tokio::join!(stubborn, stop);
    assert!(is_error(&r), "the stubborn call is cut short: {}", text(&r));
    let pid = d.pid;
    // The bound: the drain (1 s), then removal (at most 20 s), then the last answers.
    let status = d
        .wait_exit(Duration::from_secs(40))
        .await
        .expect("the daemon exits within its shutdown bound");
    assert!(status.success(), "{status:?}");
    let left = leftovers(pid);
    assert!(left.is_empty(), "left behind: {left:?}");
    d.finish().await;
}
