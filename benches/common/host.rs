//! What a bench reads of a daemon from outside: its memory from `/proc`, and the containers
//! and volumes that carry its pid label, through the `docker` CLI.

use std::process::Stdio;

use anyhow::{bail, Context};

/// The label with the pid of the daemon that made an object.
pub const PID_LABEL: &str = python_docker_mcp::sandbox::labels::PID;
pub const MIB: u64 = 1024 * 1024;

/// `docker ARGS`' stdout, or an error with its stderr.
pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running the docker CLI")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `docker ARGS`' non-empty stdout lines (none when it failed).
pub async fn docker_lines(args: &[&str]) -> Vec<String> {
    docker(args)
        .await
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The running containers `pid` made.
pub async fn running_containers_of(pid: u32) -> Vec<String> {
    let filter = format!("label={PID_LABEL}={pid}");
    docker_lines(&["ps", "-q", "--filter", &filter]).await
}

/// Every container `pid` made, running or not.
pub async fn containers_of(pid: u32) -> Vec<String> {
    let filter = format!("label={PID_LABEL}={pid}");
    docker_lines(&["ps", "-aq", "--filter", &filter]).await
}

/// Remove every container and volume carrying `pid`'s label; returns how many.
pub async fn remove_leftovers(pid: u32) -> usize {
    let filter = format!("label={PID_LABEL}={pid}");
    let containers = containers_of(pid).await;
    if !containers.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(containers.iter().map(String::as_str));
        let _ = docker(&args).await;
    }
    let volumes = docker_lines(&["volume", "ls", "-q", "--filter", &filter]).await;
    if !volumes.is_empty() {
        let mut args = vec!["volume", "rm", "-f"];
        args.extend(volumes.iter().map(String::as_str));
        let _ = docker(&args).await;
    }
    containers.len() + volumes.len()
}

/// A `/proc/PID/status` field given in kB, in bytes (0 when the process is gone).
pub fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Whether a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Bytes as `12.3 MiB`.
pub fn fmt_mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB as f64)
}
