//! Packages against the real engine (the installer container reaches the package index):
//! lists of requirements, per-run packages, list-packages, the download cache, a sandbox
//! that stays offline after installs, the module policy, and an install time-out that
//! changes nothing.
//!
//! **Touches the host's cgroups:** `an_install_killed_while_writing_files_changes_nothing`
//! freezes its own daemon's installer container through the host's cgroup v1 freezer
//! (`/sys/fs/cgroup/freezer/docker/ID`, as `docker pause` does) and kills it while frozen.
//! Nothing else is frozen, so it runs with the rest of the suite; a guard thaws the
//! container from `Drop` if the test fails while it is frozen, so the engine can remove it.

mod common;

use std::time::Duration;

use common::net::TestNet;
use common::*;
use serde_json::json;

/// Small pure-Python wheels the image does not have.
const A: (&str, &str) = ("tomli-w", "tomli_w");
const B: (&str, &str) = ("pyjokes", "pyjokes");

fn names(r: &rmcp::model::CallToolResult) -> Vec<(String, String)> {
    field(r, "packages")
        .as_array()
        .expect("a package list")
        .iter()
        .map(|p| {
            let name = p["name"]
                .as_str()
                .unwrap_or("")
                .to_lowercase()
                .replace('_', "-");
            (name, p["location"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_of_requirements_goes_into_a_session_and_shows_in_list_packages() {
    let mut d = Daemon::start().await;
    let id = d.new_session("x = 1").await;
    let r = d
        .call(
            "install-package",
            json!({ "package_name": [A.0, B.0], "session_id": id }),
        )
        .await;
    assert_ok(&r);
    assert_eq!(field(&r, "requirements"), &json!([A.0, B.0]));
    // uv when the image has it (the sandbox runs the same image), pip otherwise; the result
    // says which ran.
    let which = d
        .persistent_ok("import shutil\nshutil.which('uv') is not None", &id)
        .await;
    let expected = if value(&which).as_deref() == Some("True") {
        "uv"
    } else {
        "pip"
    };
    assert_eq!(
        field(&r, "installer"),
        &json!(expected),
        "the result names the installer that ran"
    );
    let r = d
        .persistent_ok(&format!("import {}, {}\n'ok'", A.1, B.1), &id)
        .await;
    assert_eq!(value(&r).as_deref(), Some("'ok'"));

    let r = d.call("list-packages", json!({ "session_id": id })).await;
    assert_ok(&r);
    let listed = names(&r);
    assert!(
        listed.contains(&(A.0.to_string(), "session".to_string())),
        "{listed:?}"
    );
    assert!(
        listed.iter().any(|(n, l)| n == "numpy" && l == "image"),
        "{listed:?}"
    );
    // Without a session: what a transient run sees, which is not this session's installs.
    let r = d.call("list-packages", json!({})).await;
    assert_ok(&r);
    assert!(!names(&r).iter().any(|(n, _)| n == A.0), "{:?}", names(&r));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn per_run_packages_are_installed_before_the_code_and_only_for_that_run() {
    let mut d = Daemon::start().await;
    let r = d
        .call(
            "execute-transient",
            json!({ "code": format!("import {m}\n{m}.dumps({{'k': 2}})", m = A.1), "packages": [A.0] }),
        )
        .await;
    assert_ok(&r);
    assert_eq!(value(&r).as_deref(), Some("'k = 2\\n'"), "{}", describe(&r));
    assert!(
        text(&r).contains("Installed before the run"),
        "{}",
        text(&r)
    );
    let r = d.transient(&format!("import {}", A.1)).await;
    assert_eq!(
        error_type(&r).as_deref(),
        Some("ModuleNotFoundError"),
        "the next run is clean"
    );

    let r = d
        .call(
            "execute-persistent",
            json!({ "code": format!("import {}\n'yes'", B.1), "packages": [B.0] }),
        )
        .await;
    assert_ok(&r);
    let id = session_id(&r);
    let r = d.persistent_ok(&format!("{}.__name__", B.1), &id).await;
    assert_eq!(value(&r).as_deref(), Some(&*format!("'{}'", B.1)));
    // A bad specifier refuses the whole call before anything runs.
    let r = d
        .call(
            "execute-transient",
            json!({ "code": "print('ran')", "packages": ["six; rm -rf /"] }),
        )
        .await;
    assert_tool_error(&r, "not allowed");
    assert!(!text(&r).contains("ran"));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_install_comes_from_the_download_cache() {
    let mut d = Daemon::start().await;
    let first = d.new_session("1").await;
    let second = d.new_session("2").await;
    let r = d.install(A.0, Some(&first)).await;
    assert_ok(&r);
    let r = d.install(A.0, Some(&second)).await;
    assert_ok(&r);
    let cached = field(&r, "cached").as_array().cloned().unwrap_or_default();
    assert!(
        cached
            .iter()
            .any(|c| c.as_str().unwrap_or("").starts_with("tomli_w")),
        "the second install used the cache: {}",
        describe(&r)
    );
    d.finish().await;
    // The cache outlives the daemon on purpose; nothing else does.
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    let volumes = std::process::Command::new("docker")
        .args([
            "volume",
            "ls",
            "-q",
            "--filter",
            "name=python-docker-mcp-cache",
        ])
        .output()
        .expect("docker volume ls");
    assert!(String::from_utf8_lossy(&volumes.stdout).contains("python-docker-mcp-cache"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_stays_offline_after_an_install() {
    let mut d = Daemon::start().await;
    let id = d.new_session("import socket").await;
    assert_ok(&d.install(A.0, Some(&id)).await);
    let r = d
        .persistent(
            // TEST-NET-2: an address reserved for documentation, never routed anywhere.
            "socket.create_connection(('198.51.100.1', 53), timeout=3)",
            Some(&id),
        )
        .await;
    assert!(
        is_error(&r),
        "the sandbox reached the network: {}",
        describe(&r)
    );
    let r = d
        .persistent_ok(
            "[l.split(':')[0].strip() for l in open('/proc/net/dev') if ':' in l]",
            &id,
        )
        .await;
    assert_eq!(
        value(&r).as_deref(),
        Some("['lo']"),
        "only the loopback interface"
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blocked_modules_raise_import_error_and_nothing_else_is_refused() {
    let mut d =
        Daemon::start_with(&[("PYTHON_DOCKER_MCP_BLOCKED_MODULES", "socket,subprocess")]).await;
    let r = d.transient("import socket").await;
    assert_eq!(
        error_type(&r).as_deref(),
        Some("ImportError"),
        "{}",
        describe(&r)
    );
    assert!(text(&r).contains("blocked_modules"), "{}", text(&r));
    let r = d.transient("from subprocess import run").await;
    assert_eq!(
        error_type(&r).as_deref(),
        Some("ImportError"),
        "{}",
        describe(&r)
    );
    // Code that mentions os., imports os, or uses a library that needs socket is fine.
    let r = d
        .transient(
            "import os\nimport http.client\nos.path.join('a', 'b') + ' ' + http.client.__name__",
        )
        .await;
    assert_eq!(
        value(&r).as_deref(),
        Some("'a/b http.client'"),
        "{}",
        describe(&r)
    );
    d.finish().await;

    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_ALLOWED_MODULES", "math,json")]).await;
    let r = d.transient("import math, json\nmath.floor(2.5)").await;
    assert_eq!(value(&r).as_deref(), Some("2"), "{}", describe(&r));
    let r = d.transient("import os").await;
    assert_eq!(
        error_type(&r).as_deref(),
        Some("ImportError"),
        "{}",
        describe(&r)
    );
    assert!(text(&r).contains("allowed_modules"), "{}", text(&r));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_install_that_times_out_changes_nothing() {
    // The installer hangs on the silent index (on the test's own network, where installs
    // go out) until the install time-out stops it. Declared first, removed last.
    let mut net = TestNet::create();
    let (index, index_host) = net.silent_index();
    let mut d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_INSTALL_TIMEOUT", "4s"),
        ("PYTHON_DOCKER_MCP_INDEX_URL", &index),
        ("PYTHON_DOCKER_MCP_TRUSTED_HOSTS", &index_host),
        ("PYTHON_DOCKER_MCP_EGRESS_NETWORK", &net.name),
    ])
    .await;
    let id = d.new_session("x = 1").await;
    let before = names(&d.call("list-packages", json!({ "session_id": id })).await);
    // A name no cache can hold, so the installer must ask the (silent) index.
    let r = d.install("pdm-never-cached-probe", Some(&id)).await;
    assert_tool_error(&r, "install time-out");
    let after = names(&d.call("list-packages", json!({ "session_id": id })).await);
    assert_eq!(before, after);
    let r = d.persistent_ok("x", &id).await;
    assert_eq!(value(&r).as_deref(), Some("1"), "the session is unharmed");
    let pid = d.pid;
    assert!(
        eventually(Duration::from_secs(15), || containers_with_role(
            pid,
            "installer"
        )
        .is_empty())
        .await,
        "the timed-out installer is removed"
    );
    d.finish().await;
    net.remove();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_package_installs_without_asking_the_index() {
    // Fill the download cache through the real index...
    let mut d = Daemon::start().await;
    let id = d.new_session("1").await;
    assert_ok(&d.install(A.0, Some(&id)).await);
    d.finish().await;
    // ...then install again from a daemon whose index never answers, on a network that
    // reaches nothing else.
    let mut net = TestNet::create();
    let (index, index_host) = net.silent_index();
    let mut d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_INSTALL_TIMEOUT", "30s"),
        ("PYTHON_DOCKER_MCP_INDEX_URL", &index),
        ("PYTHON_DOCKER_MCP_TRUSTED_HOSTS", &index_host),
        ("PYTHON_DOCKER_MCP_EGRESS_NETWORK", &net.name),
    ])
    .await;
    let id = d.new_session("1").await;
    let r = d.install(A.0, Some(&id)).await;
    assert_ok(&r);
    assert!(
        !field(&r, "cached").as_array().expect("a list").is_empty(),
        "{}",
        describe(&r)
    );
    let r = d.persistent_ok(&format!("import {}\n'ok'", A.1), &id).await;
    assert_eq!(value(&r).as_deref(), Some("'ok'"));
    d.finish().await;
    net.remove();
}

/// The sandbox image plus uv, built on first use (the build reaches the package index).
fn uv_image() -> &'static str {
    const IMAGE: &str = "python-docker-mcp-uv-test:latest";
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let dockerfile = "FROM python-docker-mcp:latest\nUSER 0:0\n\
                          RUN python3 -m pip install --no-cache-dir --break-system-packages uv\n\
                          USER 1000:1000\n";
        let mut build = std::process::Command::new("docker")
            .args(["build", "-q", "-t", IMAGE, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("docker build");
        use std::io::Write;
        build
            .stdin
            .take()
            .expect("stdin")
            .write_all(dockerfile.as_bytes())
            .expect("write Dockerfile");
        assert!(
            build.wait().expect("docker build").success(),
            "building {IMAGE} failed"
        );
    });
    IMAGE
}

#[tokio::test(flavor = "multi_thread")]
async fn uv_installs_when_the_image_has_it() {
    let image = uv_image();
    let mut d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_IMAGE", image),
        ("PYTHON_DOCKER_MCP_INSTALLER", "uv"),
    ])
    .await;
    let id = d.new_session("1").await;
    let r = d.install(B.0, Some(&id)).await;
    assert_ok(&r);
    assert_eq!(field(&r, "installer"), &json!("uv"), "{}", describe(&r));
    assert!(text(&r).contains("with uv"), "{}", text(&r));
    let r = d.persistent_ok(&format!("import {}\n'ok'", B.1), &id).await;
    assert_eq!(value(&r).as_deref(), Some("'ok'"));
    d.finish().await;
}

/// A package of many files (a slow copy into the staging directory) besides [`A`]; the
/// image's own copy does not matter: installs into a target ignore it.
const MANY_FILES: &str = "sympy";

/// What the session volume's root holds: (visible entries, entries inside `.staging-*`).
fn volume_listing(root: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let (mut visible, mut staged) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".staging-") {
            for inner in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                staged.push(inner.file_name().to_string_lossy().into_owned());
            }
        } else {
            visible.push(name);
        }
    }
    visible.sort();
    staged.sort();
    (visible, staged)
}

fn docker_out(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Freeze every process of a container at once (the cgroup v1 freezer the engine's
/// `docker pause` uses), take a look, then kill them all while frozen: no instruction of
/// the installer runs after the look. Dropped while frozen (a failing test), it thaws the
/// container, so the engine can remove it.
struct Freezer {
    dir: std::path::PathBuf,
    frozen: std::cell::Cell<bool>,
}

impl Freezer {
    /// The container's freezer, or `None` once the container is gone.
    fn of(container: &str) -> Option<Freezer> {
        let out = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.Id}}", container])
            .output()
            .expect("docker CLI");
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let dir = std::path::PathBuf::from(format!("/sys/fs/cgroup/freezer/docker/{id}"));
        (out.status.success() && dir.is_dir()).then_some(Freezer {
            dir,
            frozen: std::cell::Cell::new(false),
        })
    }

    fn freeze(&self) {
        self.frozen.set(true);
        std::fs::write(self.dir.join("freezer.state"), "FROZEN").expect("freeze the installer");
        while std::fs::read_to_string(self.dir.join("freezer.state"))
            .unwrap_or_default()
            .trim()
            == "FREEZING"
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn kill_and_thaw(&self) {
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid])
                .status();
        }
        std::fs::write(self.dir.join("freezer.state"), "THAWED").expect("thaw the installer");
        self.frozen.set(false);
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        if self.frozen.get() {
            let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
        }
    }
}

/// The staging design, proved the hard way: the installer is stopped dead (frozen, then
/// SIGKILLed) at the moment its files are landing in the staging directory, and nothing
/// of the install becomes visible to the session; the next install clears the remains.
#[tokio::test(flavor = "multi_thread")]
async fn an_install_killed_while_writing_files_changes_nothing() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_INSTALL_TIMEOUT", "5m")]).await;
    let pid = d.pid;
    let id = d.new_session("x = 1").await;
    let before = names(&d.call("list-packages", json!({ "session_id": id })).await);
    let volume = volumes_with_role(pid, "sandbox");
    assert_eq!(
        volume.len(),
        1,
        "one session, one package volume: {volume:?}"
    );
    let root = std::path::PathBuf::from(docker_out(&[
        "volume",
        "inspect",
        "-f",
        "{{.Mountpoint}}",
        &volume[0],
    ]));
    let (visible_before, _) = volume_listing(&root);

    // Watch the volume from the host; stop the installer at its first written file.
    let watch_root = root.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let install_ended = done.clone();
    let watcher = tokio::task::spawn_blocking(move || {
        let ended = || install_ended.load(std::sync::atomic::Ordering::SeqCst);
        // A written package: a module directory (pip creates `__pycache__`, `bin` and the
        // metadata too, which import nothing).
        let written = |names: &[String]| {
            names
                .iter()
                .any(|n| !n.contains('.') && !["__pycache__", "bin", "share"].contains(&n.as_str()))
        };
        let freezer = loop {
            if ended() {
                return None;
            }
            if let Some(f) = containers_with_role(pid, "installer")
                .first()
                .and_then(|c| Freezer::of(c))
            {
                break f;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while !ended() {
            let (visible, staged) = volume_listing(&watch_root);
            let appeared: Vec<String> = visible
                .iter()
                .filter(|n| !visible_before.contains(n))
                .cloned()
                .collect();
            if written(&staged) || written(&appeared) {
                freezer.freeze();
                let seen = volume_listing(&watch_root);
                freezer.kill_and_thaw();
                return Some((visible_before, seen));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    });
    let r = d
        .call(
            "install-package",
            json!({ "package_name": [A.0, MANY_FILES], "session_id": id }),
        )
        .await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (visible_before, (visible_frozen, staged_frozen)) = watcher
        .await
        .expect("watcher")
        .unwrap_or_else(|| panic!("the installer ended before it was caught: {}", describe(&r)));
    eprintln!(
        "frozen with {} staged entries: {staged_frozen:?}",
        staged_frozen.len()
    );
    assert!(is_error(&r), "a killed install fails: {}", describe(&r));

    // Nothing became visible: not on disk, not to imports, not in list-packages.
    let (visible_after, staged_after) = volume_listing(&root);
    assert_eq!(
        visible_after, visible_before,
        "files of the killed install are visible in the session's package directory \
         (staged when frozen: {staged_frozen:?})"
    );
    assert_eq!(
        visible_frozen, visible_before,
        "files were visible while the installer was writing"
    );
    assert!(
        !staged_after.is_empty(),
        "the killed install's files stay staged"
    );
    let after = names(&d.call("list-packages", json!({ "session_id": id })).await);
    assert_eq!(before, after);
    let modules: Vec<&str> = staged_frozen
        .iter()
        .filter(|n| !n.contains('.') && *n != "bin" && *n != "share" && *n != "__pycache__")
        .map(String::as_str)
        .collect();
    assert!(
        !modules.is_empty(),
        "a module was staged: {staged_frozen:?}"
    );
    let r = d
        .persistent_ok(
            &format!(
                "import importlib.util\n\
                 specs = {{m: importlib.util.find_spec(m) for m in {modules:?} + ['{}']}}\n\
                 sorted(m for m, s in specs.items() if s and '/opt/python-docker-mcp/session' in (s.origin or str(s.submodule_search_locations)))",
                A.1
            ),
            &id,
        )
        .await;
    assert_eq!(
        value(&r).as_deref(),
        Some("[]"),
        "staged modules are importable: {}",
        describe(&r)
    );
    let r = d.persistent_ok("x", &id).await;
    assert_eq!(value(&r).as_deref(), Some("1"), "the session is unharmed");

    // The next install succeeds and clears what the killed one left staged.
    assert_ok(&d.install(A.0, Some(&id)).await);
    let (_, staged) = volume_listing(&root);
    assert!(staged.is_empty(), "stale staging left: {staged:?}");
    assert!(
        !std::fs::read_dir(&root)
            .expect("volume")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".staging-")),
        "the stale staging directory is removed"
    );
    let r = d.persistent_ok(&format!("import {}\n'ok'", A.1), &id).await;
    assert_eq!(value(&r).as_deref(), Some("'ok'"));
    d.finish().await;
}
