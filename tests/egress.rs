//! Egress allow-lists against the real engine, through a real MCP client (issue 21).
//!
//! Each test makes a network of its own with two HTTP servers of the sandbox image under
//! the aliases `allowed.test` and `denied.test` (`common::net`), points
//! `network.egress_network` at it (the proxy container joins it and resolves the aliases
//! through the engine's DNS), and lists that network's subnet, and nothing wider, in
//! `network.allow_private`. Nothing here reaches past this machine. The ceiling also
//! names `localhost` and `169.254.169.254`, so that their refusal comes from the proxy's
//! address check and not from the list.
//!
//! Every test ends with the daemon's `finish()`: nothing of it is left, its egress proxy
//! container included.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::net::{TestNet, PORT};
use common::*;

const CEILING: &str =
    "allowed.test:8080,denied.test:8080,index.test:8080,localhost,169.254.169.254";

/// A package index (PEP 503) at `index.test` with one wheel it builds itself, `pdm-demo`.
const INDEX: &str = r#"
import hashlib, http.server, io, zipfile
buf = io.BytesIO()
with zipfile.ZipFile(buf, 'w') as z:
    z.writestr('pdm_demo/__init__.py', 'VALUE = 42\n')
    z.writestr('pdm_demo-1.0.dist-info/METADATA', 'Metadata-Version: 2.1\nName: pdm-demo\nVersion: 1.0\n')
    z.writestr('pdm_demo-1.0.dist-info/WHEEL', 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n')
    z.writestr('pdm_demo-1.0.dist-info/RECORD', '')
WHEEL = buf.getvalue()
FILE = 'pdm_demo-1.0-py3-none-any.whl'
PAGE = ('<html><body><a href="/files/%s#sha256=%s">%s</a></body></html>'
        % (FILE, hashlib.sha256(WHEEL).hexdigest(), FILE)).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.rstrip('/') == '/simple/pdm-demo':
            body, kind = PAGE, 'text/html'
        elif self.path == '/files/' + FILE:
            body, kind = WHEEL, 'application/octet-stream'
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Type', kind)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
s = http.server.ThreadingHTTPServer(('0.0.0.0', PORT), H)
print('listening', flush=True)
s.serve_forever()
"#;

/// Python every run starts with: fetch through the proxy variables, or straight at the
/// proxy (absolute-form, whatever NO_PROXY says), or through a CONNECT tunnel.
const PRELUDE: &str = r#"
import errno, http.client, json, os, socket, urllib.request, urllib.error
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except Exception as e:
        return None, type(e).__name__ + ': ' + str(e)
def proxy():
    host, port = os.environ['HTTP_PROXY'].rsplit('/', 1)[1].rsplit(':', 1)
    return host, int(port)
def via_proxy(url):
    c = http.client.HTTPConnection(*proxy(), timeout=20)
    c.request('GET', url)
    r = c.getresponse()
    return r.status, r.read().decode()
def tunnel(host, port, path='/t'):
    c = http.client.HTTPConnection(*proxy(), timeout=20)
    c.set_tunnel(host, port)
    try:
        c.request('GET', path)
        r = c.getresponse()
        return r.status, r.read().decode()
    except OSError as e:
        return None, str(e)
def errname(e):
    return errno.errorcode.get(e.errno, type(e).__name__)
"#;

/// The test's network, its two servers, and the settings that point a daemon at them.
struct World {
    net: TestNet,
    subnet: String,
}

impl World {
    fn new() -> World {
        let mut net = TestNet::create();
        net.http_server("allowed.test");
        net.http_server("denied.test");
        net.serve("index.test", INDEX);
        let subnet = net.subnet();
        World { net, subnet }
    }

    fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![
            ("PYTHON_DOCKER_MCP_NETWORK_ALLOW", CEILING),
            (
                "PYTHON_DOCKER_MCP_NETWORK_ALLOW_PRIVATE",
                self.subnet.as_str(),
            ),
            ("PYTHON_DOCKER_MCP_EGRESS_NETWORK", self.net.name.as_str()),
        ];
        env.extend_from_slice(extra);
        env
    }
}

fn code(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

async fn run(
    d: &Daemon,
    body: &str,
    session: Option<&str>,
    network: Option<&[&str]>,
) -> rmcp::model::CallToolResult {
    let mut args = json!({ "code": code(body) });
    if let Some(id) = session {
        args["session_id"] = json!(id);
    }
    if let Some(n) = network {
        args["network"] = json!(n);
    }
    d.call("execute-persistent", args).await
}

async fn transient(
    d: &Daemon,
    body: &str,
    network: Option<&[&str]>,
) -> rmcp::model::CallToolResult {
    let mut args = json!({ "code": code(body) });
    if let Some(n) = network {
        args["network"] = json!(n);
    }
    d.call("execute-transient", args).await
}

/// The structured `network` entries of one verdict as (host, port, count).
fn entries(r: &rmcp::model::CallToolResult, verdict: &str) -> Vec<(String, u64, u64)> {
    field(r, "network")[verdict]
        .as_array()
        .unwrap_or_else(|| panic!("no network.{verdict} in {}", describe(r)))
        .iter()
        .map(|e| {
            (
                e["host"].as_str().unwrap_or_default().to_string(),
                e["port"].as_u64().unwrap_or_default(),
                e["count"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn egress_containers(pid: u32) -> Vec<String> {
    containers_with_role(pid, "egress")
}

#[tokio::test]
async fn a_session_reaches_its_list_and_nothing_else() {
    let world = World::new();
    let ip = world.net.address("allowed.test");
    let mut d = Daemon::start_with(&world.env(&[])).await;

    // The first call sets the session's list (within the ceiling).
    let list = ["allowed.test:8080", "localhost", "169.254.169.254"];
    let r = run(&d, "get('http://allowed.test:8080/a')", None, Some(&list)).await;
    assert_ok(&r);
    assert_eq!(
        value(&r).as_deref(),
        Some("(200, 'hello from allowed.test /a')"),
        "{}",
        describe(&r)
    );
    assert_eq!(entries(&r, "allowed"), [("allowed.test".into(), 8080, 1)]);
    assert_eq!(entries(&r, "denied"), []);
    let id = session_id(&r);
    assert_eq!(egress_containers(d.pid).len(), 1, "one proxy per daemon");

    // A CONNECT tunnel, with plain HTTP inside it.
    let r = run(&d, "tunnel('allowed.test', 8080)", Some(&id), None).await;
    assert_eq!(
        value(&r).as_deref(),
        Some("(200, 'hello from allowed.test /t')"),
        "{}",
        describe(&r)
    );

    // requests, when the image has it.
    let r = run(
        &d,
        "try:\n    import requests\nexcept ImportError:\n    requests = None\n\
         requests and requests.get('http://allowed.test:8080/r', timeout=20).text",
        Some(&id),
        None,
    )
    .await;
    assert_ok(&r);
    // (No value: the image has no requests.)
    if value(&r).is_some() {
        assert_eq!(value(&r).as_deref(), Some("'hello from allowed.test /r'"));
    }

    // Another host: refused by the proxy, named in the text and the structured result.
    let r = run(&d, "get('http://denied.test:8080/d')", Some(&id), None).await;
    let blocked = "blocked: denied.test:8080 (not in this session's allow-list)";
    assert_eq!(
        value(&r).as_deref(),
        Some(format!("(403, \"{blocked}\\n\")").as_str()),
        "{}",
        describe(&r)
    );
    assert!(text(&r).contains(blocked), "{}", describe(&r));
    assert_eq!(entries(&r, "denied"), [("denied.test".into(), 8080, 1)]);
    assert_eq!(
        field(&r, "network")["denied"][0]["reason"],
        "not in this session's allow-list"
    );

    // Listed, but the metadata address and the proxy's own loopback are refused by
    // address.
    let r = run(
        &d,
        "via_proxy('http://169.254.169.254/latest/meta-data/')[0], via_proxy('http://localhost/')[0]",
        Some(&id),
        None,
    )
    .await;
    assert_eq!(value(&r).as_deref(), Some("(403, 403)"), "{}", describe(&r));
    let t = text(&r);
    assert!(
        t.contains("blocked: 169.254.169.254:80 (resolves to a private address 169.254.169.254)"),
        "{t}"
    );
    assert!(
        t.contains("blocked: localhost:80 (resolves to a private address"),
        "{t}"
    );

    // Around the proxy there is nothing: no route to an address, no DNS, no UDP.
    let probe = format!(
        "out = {{}}\n\
         try:\n    socket.create_connection(({ip:?}, {PORT}), timeout=10).close(); out['raw'] = 'connected'\n\
         except OSError as e:\n    out['raw'] = errname(e)\n\
         try:\n    socket.getaddrinfo('allowed.test', {PORT}); out['dns'] = 'resolved'\n\
         except OSError as e:\n    out['dns'] = type(e).__name__\n\
         try:\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('192.0.2.1', 53)); out['udp'] = 'sent'\n\
         except OSError as e:\n    out['udp'] = errname(e)\n\
         json.dumps(out, sort_keys=True)"
    );
    let r = run(&d, &probe, Some(&id), None).await;
    assert_eq!(
        value(&r).as_deref(),
        Some(r#"'{"dns": "gaierror", "raw": "ENETUNREACH", "udp": "ENETUNREACH"}'"#),
        "{}",
        describe(&r)
    );

    // A later call cannot widen the list...
    let r = run(
        &d,
        "1",
        Some(&id),
        Some(&["allowed.test:8080", "denied.test:8080"]),
    )
    .await;
    assert_tool_error(&r, "denied.test:8080");
    assert_tool_error(&r, "this session's list");
    // ...and a new session cannot go past the ceiling.
    let r = run(&d, "1", None, Some(&["other.test"])).await;
    assert_tool_error(&r, "other.test");
    assert_tool_error(&r, "network.allow");

    // A later call may narrow it; one without `network` keeps it.
    let r = run(
        &d,
        "via_proxy('http://169.254.169.254/')[0]",
        Some(&id),
        Some(&["allowed.test:8080"]),
    )
    .await;
    assert_eq!(value(&r).as_deref(), Some("403"), "{}", describe(&r));
    assert!(
        text(&r).contains("blocked: 169.254.169.254:80 (not in this session's allow-list)"),
        "{}",
        describe(&r)
    );
    let r = run(&d, "get('http://allowed.test:8080/k')[0]", Some(&id), None).await;
    assert_eq!(value(&r).as_deref(), Some("200"), "{}", describe(&r));

    // A proxy that died is started again at the next need, with the session's grant.
    let dead = egress_containers(d.pid);
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f"])
        .args(&dead)
        .output();
    // The forwarder may catch the proxy between container and socket (a 502, or a refused
    // connection while the new one starts): a few more runs, bounded against a hang.
    let mut r = run(&d, "get('http://allowed.test:8080/again')", Some(&id), None).await;
    for _ in 0..10 {
        if value(&r).as_deref() == Some("(200, 'hello from allowed.test /again')") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        r = run(&d, "get('http://allowed.test:8080/again')", Some(&id), None).await;
    }
    assert_eq!(
        value(&r).as_deref(),
        Some("(200, 'hello from allowed.test /again')"),
        "{}",
        describe(&r)
    );
    let now = egress_containers(d.pid);
    assert_eq!(now.len(), 1);
    assert_ne!(now, dead, "a new proxy container");

    d.finish().await;
    world.net.remove();
}

#[tokio::test]
async fn runs_without_a_list_have_no_network_and_lists_are_held_apart() {
    let world = World::new();
    let ip = world.net.address("allowed.test");
    // The pool on: every run and session below takes a warm sandbox.
    let mut d = Daemon::start_with(&world.env(&[
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true"),
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "2"),
    ]))
    .await;
    assert!(
        eventually(Duration::from_secs(60), || containers_with_role(
            d.pid, "sandbox"
        )
        .len()
            >= 2)
        .await,
        "the pool warms up"
    );

    // No list: no proxy variables, no route; the socket is mounted (every sandbox of a
    // daemon with a ceiling has it), but without a grant's secret the proxy refuses.
    let probe = format!(
        "import glob\n\
         out = {{'vars': sorted(k for k in os.environ if 'proxy' in k.lower())}}\n\
         try:\n    socket.create_connection(({ip:?}, {PORT}), timeout=10).close(); out['raw'] = 'connected'\n\
         except OSError as e:\n    out['raw'] = errname(e)\n\
         import time\n\
         for i in range(150):\n    socks = glob.glob('/run/pdm-egress/*.sock')\n    if socks:\n        break\n    time.sleep(0.2)\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.settimeout(10)\n\
         s.connect(socks[0])\n\
         s.sendall(b'PDM1 guess 0123456789abcdef0123456789abcdef\\nCONNECT allowed.test:{PORT} HTTP/1.1\\r\\n\\r\\n')\n\
         out['guess'] = s.recv(200).decode().split('\\r\\n')[0]\n\
         json.dumps(out, sort_keys=True)"
    );
    let r = transient(&d, &probe, None).await;
    assert_ok(&r);
    let v: Value =
        serde_json::from_str(value(&r).as_deref().unwrap().trim_matches('\'')).expect("json");
    assert_eq!(v["vars"], json!([]), "{}", describe(&r));
    assert_eq!(v["raw"], "ENETUNREACH");
    assert!(
        v["guess"].as_str().unwrap().contains("407"),
        "a wrong secret: {v}"
    );
    assert_eq!(field(&r, "network"), &Value::Null, "no list, no report");

    // A pooled sandbox honours the list a transient run brings.
    let r = transient(
        &d,
        "get('http://allowed.test:8080/p')[0], get('http://denied.test:8080/p')[0]",
        Some(&["allowed.test:8080"]),
    )
    .await;
    assert_eq!(value(&r).as_deref(), Some("(200, 403)"), "{}", describe(&r));
    assert_eq!(entries(&r, "allowed"), [("allowed.test".into(), 8080, 1)]);
    assert_eq!(entries(&r, "denied"), [("denied.test".into(), 8080, 1)]);

    // pip goes through the proxy variables too: a download from the test's own index.
    let pip = r#"
import subprocess, sys
p = subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-cache-dir',
    '--index-url', 'http://index.test:8080/simple', '--trusted-host', 'index.test',
    '-d', '/tmp/dl', 'pdm-demo'], capture_output=True, text=True, timeout=120)
print(p.stdout[-2000:], p.stderr[-2000:])
p.returncode, sorted(os.listdir('/tmp/dl')) if os.path.isdir('/tmp/dl') else []
"#;
    let r = transient(&d, pip, Some(&["index.test:8080"])).await;
    assert_eq!(
        value(&r).as_deref(),
        Some("(0, ['pdm_demo-1.0-py3-none-any.whl'])"),
        "{}",
        describe(&r)
    );
    assert_eq!(entries(&r, "denied"), [], "{}", describe(&r));

    // Two sessions with different lists, at the same time, each held to its own.
    let both = "get('http://allowed.test:8080/s')[0], get('http://denied.test:8080/s')[0]";
    let (a, b) = tokio::join!(
        run(&d, both, None, Some(&["allowed.test:8080"])),
        run(&d, both, None, Some(&["denied.test:8080"])),
    );
    assert_eq!(value(&a).as_deref(), Some("(200, 403)"), "{}", describe(&a));
    assert_eq!(value(&b).as_deref(), Some("(403, 200)"), "{}", describe(&b));
    // Again, both at once in the same sessions.
    let (ida, idb) = (session_id(&a), session_id(&b));
    let (a, b) = tokio::join!(
        run(&d, both, Some(&ida), None),
        run(&d, both, Some(&idb), None),
    );
    assert_eq!(value(&a).as_deref(), Some("(200, 403)"), "{}", describe(&a));
    assert_eq!(value(&b).as_deref(), Some("(403, 200)"), "{}", describe(&b));
    // A session started without a list has none, and cannot get one later.
    let r = run(
        &d,
        "sorted(k for k in os.environ if 'proxy' in k.lower())",
        None,
        None,
    )
    .await;
    assert_eq!(value(&r).as_deref(), Some("[]"), "{}", describe(&r));
    let r = run(&d, "1", Some(&session_id(&r)), Some(&["allowed.test:8080"])).await;
    assert_tool_error(&r, "allowed.test:8080");

    d.finish().await;
    world.net.remove();
}

#[tokio::test]
async fn two_hundred_connects_from_one_session_are_bounded() {
    let world = World::new();
    let mut d = Daemon::start_with(&world.env(&[])).await;
    let id = session_id(&{
        let r = run(&d, "1", None, Some(&["allowed.test:8080"])).await;
        assert_ok(&r);
        r
    });
    let before = d.rss();
    let flood = "socks = []\n\
        for i in range(200):\n    s = socket.create_connection(proxy(), timeout=30)\n    \
        s.sendall(b'CONNECT allowed.test:8080 HTTP/1.1\\r\\nHost: allowed.test:8080\\r\\n\\r\\n')\n    \
        socks.append(s)\n\
        lines = []\n\
        for s in socks:\n    line = b''\n    \
        while not line.endswith(b'\\n'):\n        c = s.recv(1)\n        if not c:\n            break\n        line += c\n    \
        lines.append(line.decode().strip())\n\
        ok = sum(' 200 ' in l for l in lines)\n\
        refused = sum(' 403 ' in l for l in lines)\n\
        for s in socks:\n    s.close()\n\
        json.dumps({'ok': ok, 'refused': refused, 'other': [l for l in lines if ' 200 ' not in l and ' 403 ' not in l][:3]})";
    let r = run(&d, flood, Some(&id), None).await;
    assert_ok(&r);
    let v: Value =
        serde_json::from_str(value(&r).as_deref().unwrap().trim_matches('\'')).expect("json");
    let (ok, refused) = (v["ok"].as_u64().unwrap(), v["refused"].as_u64().unwrap());
    assert_eq!(ok + refused, 200, "every CONNECT got an answer: {v}");
    assert!(
        (1..=64).contains(&ok),
        "at most 64 tunnels per session: {v}"
    );
    assert!(refused >= 136, "the rest refused: {v}");
    let t = text(&r);
    assert!(
        t.contains("blocked: allowed.test:8080 (too many connections (limit 64))"),
        "{}",
        describe(&r)
    );
    // The daemon keeps serving, this session too once its tunnels closed.
    let again = "import time\n\
        for i in range(50):\n    st = get('http://allowed.test:8080/after')[0]\n    \
        if st == 200:\n        break\n    time.sleep(0.2)\n\
        st";
    let r = run(&d, again, Some(&id), None).await;
    assert_eq!(value(&r).as_deref(), Some("200"), "{}", describe(&r));
    let r = transient(
        &d,
        "get('http://allowed.test:8080/other')[0]",
        Some(&["allowed.test:8080"]),
    )
    .await;
    assert_eq!(value(&r).as_deref(), Some("200"), "{}", describe(&r));
    assert!(
        d.rss() < before + MEMORY_SLACK,
        "the daemon's memory stays bounded: {} -> {}",
        before,
        d.rss()
    );

    d.finish().await;
    world.net.remove();
}

/// `network.idle_timeout` (2 s here): the proxy closes a tunnel nothing moved through for
/// that long, seen from the sandbox as the end of the stream, and keeps open a tunnel of
/// the same age that stays busy. The waits are bounds against a hang, not timings: the
/// busy tunnel is used every half second for three idle periods, then the idle one must
/// end within 15 s (with the 60 s default it would still be open).
#[tokio::test]
async fn the_proxy_closes_idle_tunnels_and_keeps_busy_ones() {
    let world = World::new();
    let mut d =
        Daemon::start_with(&world.env(&[("PYTHON_DOCKER_MCP_NETWORK_IDLE_TIMEOUT", "2s")])).await;
    let probe = r#"
import time
def open_tunnel():
    s = socket.create_connection(proxy(), timeout=30)
    s.sendall(b'CONNECT allowed.test:8080 HTTP/1.1\r\nHost: allowed.test:8080\r\n\r\n')
    head = b''
    while not head.endswith(b'\r\n\r\n'):
        c = s.recv(1)
        if not c:
            break
        head += c
    return s, head.split(b'\r\n')[0].decode()
def ask(s, path):
    s.sendall(('GET %s HTTP/1.1\r\nHost: allowed.test\r\n\r\n' % path).encode())
    data = b''
    while not data.endswith(path.encode()):
        c = s.recv(4096)
        if not c:
            return 'closed'
        data += c
    return data.split(b'\r\n')[0].decode()
idle, idle_status = open_tunnel()
busy, busy_status = open_tunnel()
out = {'opened': [idle_status, busy_status], 'idle_first': ask(idle, '/i'), 'busy': []}
start = time.monotonic()
while time.monotonic() - start < 6:
    out['busy'].append(ask(busy, '/b'))
    time.sleep(0.5)
idle.settimeout(15)
try:
    out['idle_end'] = 'closed' if idle.recv(100) == b'' else 'data'
except OSError as e:
    out['idle_end'] = errname(e)
out['busy_after'] = ask(busy, '/after')
print(json.dumps(out, sort_keys=True))
"#;
    let r = run(&d, probe, None, Some(&["allowed.test:8080"])).await;
    assert_ok(&r);
    let v: Value = serde_json::from_str(stdout(&r).trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", describe(&r)));
    let established = "HTTP/1.1 200 Connection established";
    assert_eq!(v["opened"], json!([established, established]), "{v}");
    assert_eq!(v["idle_first"], "HTTP/1.1 200 OK", "{v}");
    let busy = v["busy"].as_array().expect("busy answers");
    assert!(
        !busy.is_empty() && busy.iter().all(|b| b == "HTTP/1.1 200 OK"),
        "the busy tunnel answered every request: {v}"
    );
    assert!(
        v["idle_end"] == "closed" || v["idle_end"] == "ECONNRESET",
        "the idle tunnel was closed: {v}"
    );
    assert_eq!(v["busy_after"], "HTTP/1.1 200 OK", "still open: {v}");
    assert_eq!(entries(&r, "allowed"), [("allowed.test".into(), 8080, 2)]);

    d.finish().await;
    world.net.remove();
}

/// `network.ask`: a host outside the list but in `network.askable` is put to the user of
/// the call through MCP elicitation (the official Python SDK's callback answers); yes opens
/// exactly that host:port for the rest of the session, no keeps it refused. A client that
/// declared no elicitation is never asked: refused.
#[tokio::test]
async fn the_user_approves_or_refuses_a_host_through_elicitation() {
    let python = tokio::task::spawn_blocking(common::http::python_sdk)
        .await
        .unwrap();
    let world = World::new();
    let env = world.env(&[
        ("PYTHON_DOCKER_MCP_NETWORK_ASK", "true"),
        ("PYTHON_DOCKER_MCP_NETWORK_ASKABLE", "denied.test:8080"),
    ]);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/elicit_client.py");
    let fetch = code("get('http://denied.test:8080/asked')");
    let mut daemon = common::http::HttpDaemon::start(&env).await;
    for answer in ["yes", "no"] {
        let out = tokio::time::timeout(
            Duration::from_secs(180),
            tokio::process::Command::new(&python)
                .arg(&script)
                .args([daemon.mcp_url().as_str(), answer, fetch.as_str()])
                .output(),
        )
        .await
        .expect("the SDK client finished")
        .expect("run the SDK client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{answer}: {stdout}\n{stderr}");
        let got: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{answer}: not JSON ({e}): {stdout}\n{stderr}"));
        let runs = got["runs"].as_array().expect("runs");
        if answer == "yes" {
            // Asked once: the approval holds for the rest of the session.
            assert_eq!(
                got["questions"],
                json!(["Allow this session to reach denied.test:8080?"]),
                "{got}"
            );
            for run in runs {
                assert_eq!(
                    run["value"], "(200, 'hello from denied.test /asked')",
                    "{got}"
                );
            }
        } else {
            // Asked each time, refused each time.
            assert_eq!(got["questions"].as_array().unwrap().len(), 2, "{got}");
            for run in runs {
                let blocked = "blocked: denied.test:8080 (not approved by the user)";
                assert!(run["text"].as_str().unwrap().contains(blocked), "{got}");
                assert_eq!(run["network"]["denied"][0]["host"], "denied.test", "{got}");
            }
        }
    }
    // /metrics counts the proxy's decisions per client: the runs above had both.
    let metrics = common::http::http()
        .get(daemon.mcp_url().replace("/mcp", "/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text");
    for verdict in ["allowed", "denied"] {
        let series =
            format!("pdm_egress_connections_total{{client=\"local\",verdict=\"{verdict}\"}} ");
        let count: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
            .trim()
            .parse()
            .expect("a number");
        assert!(count >= 2.0, "{series}{count}");
    }
    daemon.finish().await;

    // A client without elicitation (the rmcp test client) is never asked.
    let mut d = Daemon::start_with(&env).await;
    let r = run(
        &d,
        "get('http://denied.test:8080/x')[0]",
        None,
        Some(&["allowed.test:8080"]),
    )
    .await;
    assert_eq!(value(&r).as_deref(), Some("403"), "{}", describe(&r));
    assert!(
        text(&r).contains("blocked: denied.test:8080 (not approved by the user)"),
        "{}",
        describe(&r)
    );
    d.finish().await;
    world.net.remove();
}

/// A durable session adopted by a later server keeps no network (fail closed): the grant
/// was the earlier server's. Its forwarder and proxy variables are gone, and a later
/// `network` cannot give it one back.
#[tokio::test(flavor = "multi_thread")]
async fn an_adopted_durable_session_keeps_no_network() {
    let world = World::new();
    let scope = format!("egress-{}", std::process::id());
    let env = world.env(&[
        ("PYTHON_DOCKER_MCP_SESSION_DURABLE", "true"),
        ("PYTHON_DOCKER_MCP_SESSION_SCOPE", scope.as_str()),
    ]);
    let mut first = Daemon::start_with(&env).await;
    let r = run(
        &first,
        "get('http://allowed.test:8080/1')[0]",
        None,
        Some(&["allowed.test:8080"]),
    )
    .await;
    assert_eq!(value(&r).as_deref(), Some("200"), "{}", describe(&r));
    let id = session_id(&r);
    first.signal("KILL");
    first
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("killed");

    let mut second = Daemon::start_with(&env).await;
    let r = run(
        &second,
        "sorted(k for k in os.environ if 'proxy' in k.lower()), get('http://allowed.test:8080/2')[0]",
        Some(&id),
        None,
    )
    .await;
    assert_eq!(value(&r).as_deref(), Some("([], None)"), "{}", describe(&r));
    let r = run(&second, "1", Some(&id), Some(&["allowed.test:8080"])).await;
    assert_tool_error(&r, "allowed.test:8080");
    assert_ok(&second.cleanup(&id).await);
    // The first server's proxy and sandbox are gone too (the sweep, the cleanup).
    assert!(
        eventually(Duration::from_secs(30), || leftovers(first.pid).is_empty()).await,
        "the killed server left {:?}",
        leftovers(first.pid)
    );
    second.finish().await;
    first.finish_as(Exit::Signal(9)).await;
    world.net.remove();
}
