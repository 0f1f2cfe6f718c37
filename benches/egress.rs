//! Egress allow-lists (issue 21, "Measured"): what the proxy path costs against a sandbox
//! with the network switched on, in one run, side by side.
//!
//! ```text
//! cargo build --release && cargo bench --bench egress
//! cargo bench --bench egress -- --rounds 5 --requests 200 --sessions 8
//! cargo bench --bench egress -- --cpus 200     # docker.cpu_limit 2 for both daemons
//! ```
//!
//! The bench makes an engine network of its own (`tests/common/net.rs`, `--internal`) with
//! one server container under the alias `allowed.test`: HTTP on 8080 (`/big` is 16 MiB,
//! `/small` two bytes) and HTTPS on 8443 (a self-signed certificate the bench makes with the
//! host's `openssl`). Two stdio daemons of this crate's release binary use it:
//! - **proxy**: `network.allow` `allowed.test:8080,allowed.test:8443` (the ceiling),
//!   `network.allow_private` the network's subnet, `network.egress_network` the network;
//!   its session brings `network: ["allowed.test:8080", "allowed.test:8443"]`. The pool is
//!   on (2 warm sandboxes), for the time to a first call;
//! - **direct**: `docker.network_disabled: false` on the same `network.egress_network`: the
//!   sandbox reaches the server itself, no proxy.
//!
//! Parts:
//! 1. **Throughput** of the 16 MiB download: the same Python (urllib, 64 KiB reads) in the
//!    proxy daemon's session (through the helper's forwarder, the socket and the proxy) and
//!    in the direct daemon's, and the bench process itself fetching from the server's
//!    address (host side). `--rounds` rounds, each one download per path in turn; medians.
//!    Target: proxy at least half of direct and of host side.
//! 2. **Latency** of a small HTTPS request, a new connection each (CONNECT through the
//!    proxy, or a direct TCP connection; then TLS and `GET /small`), timed inside Python:
//!    p50 and p90 over `--requests`, after 10 unmeasured. Target: proxy p50 at most 2 ms
//!    over direct.
//! 3. **Per-session cost**: the proxy container's memory (the engine's stats) at rest, and
//!    then with `--sessions` more sessions with a list (each fetched once), per session;
//!    the daemon's `VmRSS` the same way; a sandbox's memory with a list and without; and
//!    the time to the first result of a new session (from a warm pool) with a list and
//!    without, alternated, medians.
//!
//! The machine is shared: the load average is printed at the start and the end. Compare
//! within one run. Everything is removed at the end: each daemon through EOF on stdin (its
//! shutdown removes its sandboxes and its proxy), then the server and the network.
//!
//! Runs only with `--bench` (which `cargo bench` passes): under `cargo test --all-targets`
//! it prints a note and passes.

#[path = "common/mod.rs"]
mod common;

// Only the network and the server helpers are used here.
#[allow(dead_code)]
#[path = "../tests/common/net.rs"]
mod net;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::rpc::Rpc;
use common::{arg, median, parse_size};

use net::{TestNet, PORT};

/// The server's HTTPS port (its HTTP port is [`PORT`]).
const TLS_PORT: u16 = 8443;
/// The download's size.
const BIG: usize = 16 << 20;
const MIB: f64 = (1 << 20) as f64;
/// The session's list and the proxy daemon's ceiling.
const LIST: [&str; 2] = ["allowed.test:8080", "allowed.test:8443"];

/// The server: `/big` (16 MiB) and `/small` over HTTP on `PORT` and HTTPS on `TLS_PORT`.
/// `CERT` (key and certificate, PEM) is put ahead of it by [`serve`].
const SERVER: &str = r#"
import http.server, ssl, threading
BIG = b'x' * (16 << 20)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    # Headers and body go out as two writes: without TCP_NODELAY, Nagle and the client's
    # delayed ACK add some 40 ms to every small response, on both paths alike.
    disable_nagle_algorithm = True
    def do_GET(self):
        body = BIG if self.path == '/big' else b'ok'
        self.send_response(200)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
open('/tmp/cert.pem', 'w').write(CERT)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain('/tmp/cert.pem')
tls = S(('0.0.0.0', TLS_PORT), H)
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
threading.Thread(target=tls.serve_forever, daemon=True).start()
plain = S(('0.0.0.0', PORT), H)
print('listening', flush=True)
plain.serve_forever()
"#;

/// Downloads `/big` `n` times; prints `[[bytes, seconds], ...]`. urllib takes the proxy
/// from `HTTP_PROXY` when the session has a list, and goes straight there without one.
const DOWNLOAD: &str = r#"
import json, time, urllib.request
def dl(url):
    t = time.perf_counter()
    n = 0
    with urllib.request.urlopen(url, timeout=120) as r:
        while True:
            b = r.read(1 << 16)
            if not b:
                break
            n += len(b)
    return n, time.perf_counter() - t
print(json.dumps([dl('http://allowed.test:8080/big') for _ in range(N)]))
"#;

/// `n` small HTTPS requests, each on a new connection (through a CONNECT tunnel when the
/// session has a proxy); prints their times in ms.
const LATENCY: &str = r#"
import http.client, json, os, ssl, time
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
proxy = os.environ.get('HTTPS_PROXY')
def one():
    t = time.perf_counter()
    if proxy:
        host, port = proxy.rsplit('/', 1)[1].rsplit(':', 1)
        c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=20)
        c.set_tunnel('allowed.test', 8443)
    else:
        c = http.client.HTTPSConnection('allowed.test', 8443, context=ctx, timeout=20)
    c.request('GET', '/small')
    r = c.getresponse()
    body = r.read()
    c.close()
    assert r.status == 200 and body == b'ok', (r.status, body)
    return (time.perf_counter() - t) * 1e3
for _ in range(10):
    one()
print(json.dumps([one() for _ in range(N)]))
"#;

/// One small fetch through the session's proxy (a session with a list uses its grant).
const FETCH_ONCE: &str = "import urllib.request\n\
    urllib.request.urlopen('http://allowed.test:8080/small', timeout=30).read()";

// ---------------------------------------------------------------- helpers

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The memory of each container, in bytes, through the engine's stats.
fn memory(ids: &[String]) -> Vec<f64> {
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["stats", "--no-stream", "--format", "{{.MemUsage}}"];
    args.extend(ids.iter().map(String::as_str));
    sh("docker", &args)
        .lines()
        .filter_map(|l| Some(parse_size(l.split('/').next()?)))
        .collect()
}

/// Running containers of daemon `pid` with `role` (`sandbox`, `egress`).
fn containers(pid: u32, role: &str) -> Vec<String> {
    sh(
        "docker",
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=python-docker-mcp.pid={pid}"),
            "--filter",
            &format!("label=python-docker-mcp.role={role}"),
        ],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn rss(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        * 1024.0
}

/// A self-signed key and certificate for `allowed.test` (PEM), from the host's openssl.
fn certificate() -> String {
    let dir = std::env::temp_dir().join(format!("pdm-bench-egress-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=allowed.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the host's openssl makes the server's certificate");
    assert!(status.success(), "openssl req failed");
    let pem = std::fs::read_to_string(&key).unwrap() + &std::fs::read_to_string(&cert).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    pem
}

/// The bench's network with the server on it.
fn serve() -> TestNet {
    let mut net = TestNet::create();
    let program = format!(
        "TLS_PORT = {TLS_PORT}\nCERT = {:?}\n{SERVER}",
        certificate()
    );
    net.serve("allowed.test", &program);
    net
}

/// The bench process fetching `/big` from `ip`: bytes and seconds.
fn host_download(ip: &str) -> (usize, f64) {
    let started = Instant::now();
    let mut s = TcpStream::connect((ip, PORT)).expect("connect to the server");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0;
    loop {
        match s.read(&mut buf).expect("read the download") {
            0 => break,
            k => n += k,
        }
    }
    (n, started.elapsed().as_secs_f64())
}

/// The stdout of a tool call's result, parsed as JSON.
fn printed(result: &Value) -> Value {
    let out = result["structuredContent"]["stdout"].as_str().unwrap_or("");
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", &result.to_string()))
}

/// Run `program` with `N = n` in `side`'s session.
fn run(side: &mut Side, program: &str, n: usize) -> Value {
    let code = format!("N = {n}\n{program}");
    let (result, _) = side.rpc.tool(
        "execute-persistent",
        json!({"code": code, "session_id": side.session}),
    );
    printed(&result)
}

/// Megabytes per second of each `[bytes, seconds]`, checking the size.
fn rates(downloads: &Value) -> Vec<f64> {
    downloads
        .as_array()
        .expect("a list of downloads")
        .iter()
        .map(|d| {
            let (bytes, secs) = (d[0].as_u64().unwrap() as usize, d[1].as_f64().unwrap());
            assert_eq!(bytes, BIG, "a whole download");
            bytes as f64 / MIB / secs
        })
        .collect()
}

/// A new session with (or without) the list: its id and the time to its first result.
fn new_session(rpc: &mut Rpc, list: bool) -> (String, f64) {
    let mut args = json!({"code": "1"});
    if list {
        args["network"] = json!(LIST);
    }
    let (result, took) = rpc.tool("execute-persistent", args);
    let id = result["structuredContent"]["session_id"]
        .as_str()
        .expect("a session id")
        .to_string();
    (id, took.as_secs_f64() * 1e3)
}

/// The container of `session` (its hostname is the container's short id).
fn container_of(rpc: &mut Rpc, session: &str) -> String {
    let (r, _) = rpc.tool(
        "execute-persistent",
        json!({"code": "import socket\nsocket.gethostname()", "session_id": session}),
    );
    r["structuredContent"]["value"]
        .as_str()
        .unwrap_or("")
        .trim_matches('\'')
        .to_string()
}

/// Wait (60 s at most) until daemon `pid` has `n` warm sandboxes beside `held` in use.
fn wait_warm(pid: u32, held: usize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while containers(pid, "sandbox").len() < held + n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
}

// ---------------------------------------------------------------- the parts

/// The command line.
struct Plan {
    rounds: usize,
    requests: usize,
    /// Sessions opened beyond the first, with a list and without, for the per-session cost.
    extra: usize,
    /// The sandboxes' CPU limit (`docker.cpu_limit`) in hundredths; 0: the default.
    cpus: u64,
}

/// A daemon and the session the measurements run in.
struct Side {
    rpc: Rpc,
    session: String,
}

fn main() {
    if !common::under_cargo_bench("egress", "-- --rounds 2 --requests 50") {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let plan = Plan {
        rounds: arg(&args, "--rounds", 5) as usize,
        requests: arg(&args, "--requests", 200) as usize,
        extra: arg(&args, "--sessions", 8) as usize,
        cpus: arg(&args, "--cpus", 0),
    };
    println!("load average at the start: {}", load());
    let net = serve();
    let ip = net.address("allowed.test");
    let (mut proxied, mut direct) = daemons(&net, plan.cpus);
    throughput(&mut proxied, &mut direct, &ip, plan.rounds);
    latency(&mut proxied, &mut direct, plan.requests);
    direct.rpc.close();
    per_session(&mut proxied, plan.extra);
    first_calls(&mut proxied.rpc, plan.rounds);
    proxied.rpc.close();
    println!("\nload average at the end: {}", load());
    net.remove();
}

/// The proxy daemon (a ceiling, a pool of 2) and the direct one (network on), both on
/// `net`, each with its session: the proxy's with the list.
fn daemons(net: &TestNet, cpus: u64) -> (Side, Side) {
    let bin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/release/python-docker-mcp"
    );
    assert!(
        std::path::Path::new(bin).exists(),
        "build the release binary first: cargo build --release"
    );
    let mut common = vec![
        ("PYTHON_DOCKER_MCP_SESSION_DURABLE", "false".to_string()),
        ("PYTHON_DOCKER_MCP_TIMEOUT", "300s".to_string()),
        ("PYTHON_DOCKER_MCP_EGRESS_NETWORK", net.name.clone()),
    ];
    if cpus > 0 {
        let limit = format!("{}", cpus as f64 / 100.0);
        println!("sandboxes' docker.cpu_limit: {limit}");
        common.push(("PYTHON_DOCKER_MCP_CPU_LIMIT", limit));
    }
    let mut proxied_env = common.clone();
    proxied_env.extend([
        ("PYTHON_DOCKER_MCP_NETWORK_ALLOW", LIST.join(",")),
        ("PYTHON_DOCKER_MCP_NETWORK_ALLOW_PRIVATE", net.subnet()),
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true".to_string()),
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "2".to_string()),
    ]);
    let mut direct_env = common;
    direct_env.extend([
        ("PYTHON_DOCKER_MCP_NETWORK_DISABLED", "false".to_string()),
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", "false".to_string()),
    ]);
    let mut proxied = Rpc::start(bin, "egress-proxy", &proxied_env);
    let mut direct = Rpc::start(bin, "egress-direct", &direct_env);
    let (via, _) = new_session(&mut proxied, true);
    let (straight, _) = new_session(&mut direct, false);
    (
        Side {
            rpc: proxied,
            session: via,
        },
        Side {
            rpc: direct,
            session: straight,
        },
    )
}

/// Part 1: the 16 MiB download, the three paths in turn each round.
fn throughput(proxied: &mut Side, direct: &mut Side, ip: &str, rounds: usize) {
    let (mut p, mut d, mut h) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        p.extend(rates(&run(proxied, DOWNLOAD, 1)));
        d.extend(rates(&run(direct, DOWNLOAD, 1)));
        let (bytes, secs) = host_download(ip);
        assert!(bytes > BIG, "the whole response from the host side");
        h.push(BIG as f64 / MIB / secs);
    }
    let range = |v: &[f64]| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        format!("{lo:.0} to {hi:.0}")
    };
    let (rp, rd, rh) = (range(&p), range(&d), range(&h));
    let (p, d, h) = (median(p), median(d), median(h));
    println!("\n## Throughput of a 16 MiB download, median of {rounds}");
    println!("| path | MiB/s | range | proxy / this |");
    println!("|---|---|---|---|");
    println!("| sandbox through the proxy | {p:.0} | {rp} | 1.00 |");
    println!(
        "| sandbox direct (network on) | {d:.0} | {rd} | {:.2} |",
        p / d
    );
    println!(
        "| host side (bench process) | {h:.0} | {rh} | {:.2} |",
        p / h
    );
    let met = p >= d / 2.0 && p >= h / 2.0;
    println!(
        "target proxy >= half of direct and of host side: {}",
        if met { "met" } else { "MISSED" }
    );
}

/// Part 2: a small HTTPS request on a new connection, through the proxy and direct.
fn latency(proxied: &mut Side, direct: &mut Side, requests: usize) {
    let lp: Vec<f64> = serde_json::from_value(run(proxied, LATENCY, requests)).unwrap();
    let ld: Vec<f64> = serde_json::from_value(run(direct, LATENCY, requests)).unwrap();
    let (p50, p90) = (percentile(lp.clone(), 0.5), percentile(lp, 0.9));
    let (d50, d90) = (percentile(ld.clone(), 0.5), percentile(ld, 0.9));
    println!("\n## Small HTTPS request, new connection each, {requests} requests");
    println!("| path | p50 ms | p90 ms |");
    println!("|---|---|---|");
    println!("| through the proxy (CONNECT) | {p50:.2} | {p90:.2} |");
    println!("| direct | {d50:.2} | {d90:.2} |");
    println!(
        "added: p50 {:.2} ms, p90 {:.2} ms; target p50 <= 2 ms: {}",
        p50 - d50,
        p90 - d90,
        if p50 - d50 <= 2.0 { "met" } else { "MISSED" }
    );
}

/// Part 3, memory: the proxy container and the daemon with `extra` more sessions with a
/// list (each fetched once), and a sandbox with a list against one without.
fn per_session(proxied: &mut Side, extra: usize) {
    let rpc = &mut proxied.rpc;
    let pid = rpc.pid();
    let proxy = containers(pid, "egress");
    assert_eq!(proxy.len(), 1, "one proxy container");
    std::thread::sleep(Duration::from_secs(2));
    let proxy_before = memory(&proxy)[0];
    let rss_before = rss(pid);
    let mut with = vec![proxied.session.clone()];
    for _ in 0..extra {
        let (id, _) = new_session(rpc, true);
        rpc.tool(
            "execute-persistent",
            json!({"code": FETCH_ONCE, "session_id": id}),
        );
        with.push(id);
    }
    std::thread::sleep(Duration::from_secs(2));
    let proxy_after = memory(&proxy)[0];
    let rss_after = rss(pid);
    let listed: Vec<String> = with.iter().map(|id| container_of(rpc, id)).collect();
    let (mut without, mut unlisted) = (Vec::new(), Vec::new());
    for _ in 0..extra {
        let (id, _) = new_session(rpc, false);
        rpc.tool(
            "execute-persistent",
            json!({"code": "import urllib.request", "session_id": id}),
        );
        without.push(container_of(rpc, &id));
        unlisted.push(id);
    }
    std::thread::sleep(Duration::from_secs(2));
    let m_with = median(memory(&listed));
    let m_without = median(memory(&without));
    println!("\n## Per-session cost");
    println!("| what | figure |");
    println!("|---|---|");
    println!(
        "| proxy container at rest (1 session with a list) | {:.1} MiB |",
        proxy_before / MIB
    );
    println!(
        "| proxy container with {} sessions with a list | {:.1} MiB ({:.0} KiB per extra session) |",
        extra + 1,
        proxy_after / MIB,
        (proxy_after - proxy_before) / 1024.0 / extra as f64
    );
    println!(
        "| daemon VmRSS, per extra session with a list (and its sandbox) | {:.0} KiB |",
        (rss_after - rss_before) / 1024.0 / extra as f64
    );
    println!(
        "| a session's sandbox, median: with a list (forwarder running) / without | {:.1} MiB / {:.1} MiB |",
        m_with / MIB,
        m_without / MIB
    );
    for id in with.iter().skip(1).chain(&unlisted) {
        rpc.tool("cleanup-session", json!({"session_id": id}));
    }
}

/// Part 3, time: the first result of a new session from a warm pool, with a list and
/// without, alternated.
fn first_calls(rpc: &mut Rpc, rounds: usize) {
    let pid = rpc.pid();
    let (mut t_with, mut t_without) = (Vec::new(), Vec::new());
    for i in 0..2 * rounds {
        wait_warm(pid, 1, 2);
        let (id, took) = new_session(rpc, i % 2 == 0);
        if i % 2 == 0 {
            t_with.push(took);
        } else {
            t_without.push(took);
        }
        rpc.tool("cleanup-session", json!({"session_id": id}));
    }
    let (tw, two) = (median(t_with), median(t_without));
    println!(
        "| first result of a new session from a warm pool, median of {rounds}: with a list / without | {tw:.0} ms / {two:.0} ms (+{:.0} ms) |",
        tw - two
    );
}
