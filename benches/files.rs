//! Large files end to end (issue 10, "Large payloads"): `upload-file` then `download-file`
//! of 1, 4 and 16 MiB (16 MiB is the default `docker.file_limit`) through the release
//! binary over stdio, with a raw JSON-RPC client, as the issue measured. A raw client,
//! because rmcp's own client, like its server by default, drops any line over 16 MiB, and
//! a 16 MiB file is about 22.4 MB of base64 in one message.
//!
//! ```text
//! cargo build --release && cargo bench --bench files            # 1, 4, 16 MiB, 3 rounds
//! cargo bench --bench files -- --rounds 5 --bin PATH
//! ```
//!
//! Each round: upload random bytes to a session, download them, compare. The figures are
//! the client's round trips (request written to response parsed); "helper" is the time the
//! daemon spent after parsing, which the client cannot see, so it is not shown. The file
//! content is random, so it goes back as a base64 blob (`application/octet-stream`).
//!
//! Runs only with `--bench` (which `cargo bench` passes): under `cargo test --all-targets`
//! it prints a note and passes.

use base64::Engine as _;
use serde_json::json;

#[path = "common/mod.rs"]
mod common;
use common::rpc::Rpc;

/// Deterministic noise (xorshift), so the bytes do not compress or look like text.
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn main() {
    if !common::under_cargo_bench("files", "") {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let rounds: usize = value_of("--rounds").map_or(3, |r| r.parse().expect("--rounds N"));
    let bin = value_of("--bin").unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        format!("{target}/release/python-docker-mcp")
    });
    let b64 = base64::engine::general_purpose::STANDARD;

    let mut rpc = Rpc::start(
        &bin,
        "files",
        &[("PYTHON_DOCKER_MCP_POOL_SIZE", "2".into())],
    );
    let (result, _) = rpc.tool("execute-persistent", json!({"code": "1"}));
    let session = result["structuredContent"]["session_id"]
        .as_str()
        .expect("a session id")
        .to_string();
    println!("binary: {bin}");
    println!("| file | base64 in the message | upload (median of {rounds}) | download (median) |");
    println!("|---|---|---|---|");
    for mib in [1usize, 4, 16] {
        let bytes = noise(mib << 20, 0x9e37_79b9_7f4a_7c15 ^ mib as u64);
        let content = b64.encode(&bytes);
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let (up, took) = rpc.tool(
                "upload-file",
                json!({"session_id": session, "path": "big.bin", "content": content,
                       "encoding": "base64"}),
            );
            assert_eq!(up["structuredContent"]["size"], bytes.len());
            ups.push(took);
            let (down, took) = rpc.tool(
                "download-file",
                json!({"session_id": session, "path": "big.bin"}),
            );
            downs.push(took);
            let blob = down["content"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|c| c["resource"]["blob"].as_str())
                .expect("a blob");
            assert!(
                b64.decode(blob).unwrap() == bytes,
                "round {round}: the bytes came back unchanged"
            );
        }
        ups.sort();
        downs.sort();
        println!(
            "| {mib} MiB | {:.1} MB | {:.2} s | {:.2} s |",
            content.len() as f64 / 1e6,
            ups[rounds / 2].as_secs_f64(),
            downs[rounds / 2].as_secs_f64()
        );
    }
    rpc.tool("cleanup-session", json!({"session_id": session}));
}
