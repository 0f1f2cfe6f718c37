//! What the benches share. Each bench is its own crate, so each includes this module with
//! `#[path = "common/mod.rs"] mod common;` (`#[path = "../common/mod.rs"]` from `e2e/`)
//! and uses the parts it needs:
//! - [`rpc`]: a raw JSON-RPC client over the daemon's stdio, for messages over rmcp's
//!   16 MiB line cap;
//! - [`daemon`]: the daemon under measurement, started with a clean environment, and an
//!   rmcp client on it over stdio or streamable HTTP;
//! - [`host`]: what a bench reads of the daemon from outside (memory from `/proc`, the
//!   containers and volumes its pid label names) through the `docker` CLI;
//! - [`under_cargo_bench`]: the `--bench` guard.

// Every bench uses a part of this module, none uses all of it.
#![allow(dead_code)]

pub mod daemon;
pub mod host;
pub mod rpc;

/// Whether this bench binary was started by `cargo bench`, which passes `--bench`.
/// `cargo test --all-targets` (or `--benches`) runs it without: minutes of Docker load are
/// not a unit test, so the bench says how to run it and passes. `hint` shows a shorter
/// run, e.g. `-- --quick` (empty: none).
pub fn under_cargo_bench(name: &str, hint: &str) -> bool {
    if std::env::args().any(|a| a == "--bench") {
        return true;
    }
    let hint = if hint.is_empty() {
        String::new()
    } else {
        format!(" (or with {hint})")
    };
    println!("{name} bench: not run under `cargo test`; run `cargo bench --bench {name}`{hint}");
    false
}

/// The number after `name` on the bench's command line (`--rounds 5`), or `default`.
pub fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The middle value (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A size as the engine's stats print it (`7.066MiB`, `1.2GB`), in bytes.
pub fn parse_size(s: &str) -> f64 {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let n: f64 = s[..split].parse().unwrap_or(0.0);
    let unit = match &s[split..] {
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => 1.0,
    };
    n * unit
}
