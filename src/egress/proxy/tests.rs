//! The proxy driven in-process: a Unix socket in a temp directory, the control channel
//! through in-memory pipes, upstreams on 127.0.0.1 started by each test.

use std::sync::atomic::AtomicUsize;

use serde_json::{json, Value};
use tokio::io::{BufReader, DuplexStream, Lines};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;

/// A bound against a hang, not a timing assertion.
const HANG: Duration = Duration::from_secs(30);

/// A proxy under test, with its control channel.
struct Harness {
    dir: PathBuf,
    socket: PathBuf,
    control: DuplexStream,
    events: Lines<BufReader<DuplexStream>>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ProxyError>>>,
    flushes: u64,
}

impl Harness {
    /// Start a proxy and send it `config` (an `op: config` message without the op).
    async fn start(mut config: Value) -> Harness {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pdm-egress-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("proxy.sock");
        let listener = bind(&socket).expect("bind");
        let (control, control_in) = tokio::io::duplex(LINE_MAX);
        let (control_out, events) = tokio::io::duplex(LINE_MAX);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            BufReader::new(control_in),
            control_out,
            shutdown.clone(),
        ));
        let mut h = Harness {
            dir,
            socket,
            control,
            events: BufReader::new(events).lines(),
            shutdown,
            task: Some(task),
            flushes: 0,
        };
        assert_eq!(h.event().await, json!({"ev": "ready"}));
        config["op"] = json!("config");
        h.send(config).await;
        h
    }

    /// A proxy whose `private` list lets it reach loopback upstreams.
    async fn loopback() -> Harness {
        Harness::start(json!({"private": ["127.0.0.0/8"]})).await
    }

    async fn send(&mut self, op: Value) {
        let line = format!("{op}\n");
        self.control
            .write_all(line.as_bytes())
            .await
            .expect("control write");
    }

    async fn event(&mut self) -> Value {
        let line = timeout(HANG, self.events.next_line())
            .await
            .expect("an event before the hang bound")
            .expect("read")
            .expect("an event, not the end");
        serde_json::from_str(&line).expect("JSON event")
    }

    /// Flush, and return the events emitted before the flush was read.
    async fn flush(&mut self) -> Vec<Value> {
        self.flushes += 1;
        let id = self.flushes;
        self.send(json!({"op": "flush", "id": id})).await;
        let mut before = Vec::new();
        loop {
            let ev = self.event().await;
            if ev == json!({"ev": "flushed", "id": id}) {
                return before;
            }
            before.push(ev);
        }
    }

    /// Set grant `key` with a fresh secret; returns the secret. Flushed, so it is in force.
    async fn grant(&mut self, key: &str, allow: &[&str], ask: &[&str]) -> String {
        let secret = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
        let op = json!({"op": "grant", "key": key, "secret": secret, "allow": allow, "ask": ask});
        self.send(op).await;
        assert_eq!(self.flush().await, Vec::<Value>::new());
        secret
    }

    /// A connection with the preamble sent.
    async fn open(&self, key: &str, secret: &str) -> UnixStream {
        let mut s = UnixStream::connect(&self.socket).await.expect("connect");
        s.write_all(format!("PDM1 {key} {secret}\n").as_bytes())
            .await
            .expect("preamble");
        s
    }

    /// A connection of grant `key` that sent `CONNECT target`; with the response head.
    async fn connect(&self, key: &str, secret: &str, target: &str) -> (UnixStream, String) {
        let mut s = self.open(key, secret).await;
        let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        s.write_all(head.as_bytes()).await.expect("request");
        let status = read_head(&mut s).await;
        (s, status)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The response head, through its blank line.
async fn read_head(s: &mut UnixStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = timeout(HANG, s.read(&mut byte))
            .await
            .expect("a response before the hang bound")
            .expect("read");
        assert!(n == 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("utf-8 head")
}

/// Everything until the proxy closes.
async fn read_rest(s: &mut UnixStream) -> String {
    let mut rest = Vec::new();
    timeout(HANG, s.read_to_end(&mut rest))
        .await
        .expect("closed before the hang bound")
        .expect("read");
    String::from_utf8(rest).expect("utf-8")
}

/// A final answer: (status line, body).
async fn answer(s: &mut UnixStream) -> (String, String) {
    let head = read_head(s).await;
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, read_rest(s).await)
}

/// An upstream on 127.0.0.1 that echoes every connection.
async fn echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

fn denial(key: &str, host: &str, port: u16, reason: &str) -> Value {
    json!({"ev": "conn", "key": key, "host": host, "port": port, "allowed": false, "reason": reason})
}

fn allowed(key: &str, host: &str, port: u16) -> Value {
    json!({"ev": "conn", "key": key, "host": host, "port": port, "allowed": true})
}

#[tokio::test]
async fn connect_to_a_listed_host_relays_both_ways() {
    let port = echo().await;
    let mut h = Harness::loopback().await;
    let secret = h.grant("s1", &[&format!("127.0.0.1:{port}")], &[]).await;
    // Bytes sent before the 200 (pipelined) reach the upstream too.
    let mut s = h.open("s1", &secret).await;
    let head = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nearly;");
    s.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(
        read_head(&mut s).await,
        "HTTP/1.1 200 Connection established\r\n\r\n"
    );
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 10];
    timeout(HANG, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"early;ping");
    assert_eq!(h.flush().await, [allowed("s1", "127.0.0.1", port)]);
}

/// An HTTP upstream on 127.0.0.1: answers every request `ok` and passes on each head it
/// received.
async fn http_upstream() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (heads, seen) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                let _ = heads.send(String::from_utf8(head).unwrap()).await;
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn plain_http_goes_upstream_in_origin_form_without_hop_headers() {
    let (port, mut seen) = http_upstream().await;
    let mut h = Harness::loopback().await;
    let secret = h.grant("s1", &[&format!("127.0.0.1:{port}")], &[]).await;
    let mut s = h.open("s1", &secret).await;
    let request = format!(
        "GET http://127.0.0.1:{port}/path?q=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\n\
         Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Test: 1\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let (status, body) = answer(&mut s).await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok"));
    let seen = timeout(HANG, seen.recv()).await.unwrap().unwrap();
    assert_eq!(
        seen,
        format!(
            "GET /path?q=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Test: 1\r\n\
             Connection: close\r\n\r\n"
        )
    );
    assert_eq!(h.flush().await, [allowed("s1", "127.0.0.1", port)]);
}

#[tokio::test]
async fn a_plain_request_gives_its_slot_back_when_the_response_ends() {
    let (port, _seen) = http_upstream().await;
    let mut h = Harness::start(json!({"private": ["127.0.0.0/8"], "max_per_grant": 1})).await;
    let secret = h.grant("s1", &[&format!("127.0.0.1:{port}")], &[]).await;
    let request = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n");
    let mut first = h.open("s1", &secret).await;
    first.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(answer(&mut first).await.1, "ok");
    // `first` stays open (its write side too); the second request still gets through.
    let second = timeout(HANG, async {
        loop {
            let mut s = h.open("s1", &secret).await;
            s.write_all(request.as_bytes()).await.unwrap();
            let (status, body) = answer(&mut s).await;
            if status == "HTTP/1.1 200 OK" {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(second.as_deref(), Ok("ok"));
    drop(first);
}

#[tokio::test]
async fn a_host_not_in_the_list_is_refused_and_the_event_comes_first() {
    let mut h = Harness::loopback().await;
    let secret = h.grant("s1", &["allowed.invalid"], &[]).await;
    let (mut s, head) = h.connect("s1", &secret, "other.invalid:443").await;
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain\r\n"), "{head}");
    assert_eq!(
        read_rest(&mut s).await,
        "blocked: other.invalid:443 (not in this session's allow-list)\n"
    );
    // The flush is read after the client had its 403: the denial is already out before it.
    assert_eq!(
        h.flush().await,
        [denial(
            "s1",
            "other.invalid",
            443,
            "not in this session's allow-list"
        )]
    );
}

#[tokio::test]
async fn names_and_addresses_that_are_private_are_refused_without_the_cidr() {
    let port = echo().await;
    let mut h = Harness::start(json!({})).await;
    let secret = h
        .grant(
            "s1",
            &[&format!("localhost:{port}"), &format!("127.0.0.1:{port}")],
            &[],
        )
        .await;
    let (mut s, head) = h.connect("s1", &secret, &format!("localhost:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let body = read_rest(&mut s).await;
    let events = h.flush().await;
    let reason = events[0]["reason"].as_str().expect("a reason").to_owned();
    assert!(
        reason == "resolves to a private address 127.0.0.1"
            || reason == "resolves to a private address ::1",
        "{reason}"
    );
    assert_eq!(events, [denial("s1", "localhost", port, &reason)]);
    assert_eq!(body, format!("blocked: localhost:{port} ({reason})\n"));

    let (mut s, _) = h.connect("s1", &secret, &format!("127.0.0.1:{port}")).await;
    assert_eq!(
        read_rest(&mut s).await,
        format!("blocked: 127.0.0.1:{port} (resolves to a private address 127.0.0.1)\n")
    );
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_refused() {
    let mut h = Harness::start(json!({})).await;
    let secret = h.grant("s1", &["nothing.invalid"], &[]).await;
    let mut s = h.open("s1", &secret).await;
    s.write_all(b"GET http://nothing.invalid/ HTTP/1.1\r\nHost: nothing.invalid\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = answer(&mut s).await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert_eq!(body, "blocked: nothing.invalid:80 (does not resolve)\n");
}

#[tokio::test]
async fn wrong_secrets_and_other_grants_secrets_get_407() {
    let mut h = Harness::loopback().await;
    let a = h.grant("a", &["x.invalid"], &[]).await;
    let b = h.grant("b", &["x.invalid"], &[]).await;
    for (key, secret) in [
        ("a", b.as_str()),
        ("b", a.as_str()),
        ("a", "00000000000000000000000000000000"),
        ("c", a.as_str()),
    ] {
        let (mut s, head) = h.connect(key, secret, "x.invalid:443").await;
        assert!(
            head.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"),
            "{key}: {head}"
        );
        read_rest(&mut s).await;
    }
    assert_eq!(h.flush().await, Vec::<Value>::new(), "no grant was charged");
}

#[tokio::test]
async fn an_oversize_head_gets_431_and_garbage_gets_400() {
    let mut h = Harness::loopback().await;
    let secret = h.grant("s1", &["x.invalid"], &[]).await;
    let mut s = h.open("s1", &secret).await;
    let mut big = b"GET http://x.invalid/ HTTP/1.1\r\n".to_vec();
    while big.len() <= HEAD_MAX {
        big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    s.write_all(&big).await.unwrap();
    let (status, _) = answer(&mut s).await;
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");

    for garbage in [
        "GET /relative HTTP/1.1\r\n\r\n",
        "GET https://x.invalid/ HTTP/1.1\r\n\r\n",
        "CONNECT x.invalid HTTP/1.1\r\n\r\n",
        "GET http://u@x.invalid/ HTTP/1.1\r\n\r\n",
    ] {
        let mut s = h.open("s1", &secret).await;
        s.write_all(garbage.as_bytes()).await.unwrap();
        let (status, _) = answer(&mut s).await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{garbage}");
    }
}

#[tokio::test]
async fn tunnels_past_the_grant_limit_are_refused_until_one_closes() {
    let port = echo().await;
    let mut h = Harness::start(json!({"private": ["127.0.0.0/8"], "max_per_grant": 3})).await;
    let target = format!("127.0.0.1:{port}");
    let secret = h.grant("s1", &[&target], &[]).await;
    let other = h.grant("s2", &[&target], &[]).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let (s, head) = h.connect("s1", &secret, &target).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        open.push(s);
    }
    let (mut s, head) = h.connect("s1", &secret, &target).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    assert_eq!(
        read_rest(&mut s).await,
        format!("blocked: {target} (too many connections (limit 3))\n")
    );
    // Another grant has its own count.
    let (_s2, head) = h.connect("s2", &other, &target).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    // A closed tunnel gives its slot back.
    drop(open.pop());
    let back = timeout(HANG, async {
        loop {
            let (s, head) = h.connect("s1", &secret, &target).await;
            if head.starts_with("HTTP/1.1 200 ") {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "the slot never came back");
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let port = echo().await;
    let mut h = Harness::start(json!({"private": ["127.0.0.0/8"], "idle_secs": 1})).await;
    let target = format!("127.0.0.1:{port}");
    let secret = h.grant("s1", &[&target], &[]).await;
    let (mut s, head) = h.connect("s1", &secret, &target).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    s.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    timeout(HANG, s.read_exact(&mut byte))
        .await
        .unwrap()
        .unwrap();
    // The echo upstream never closes: only the proxy's idle time-out ends this.
    assert_eq!(read_rest(&mut s).await, "");
}

#[tokio::test]
async fn a_revoked_grant_refuses_new_connections() {
    let port = echo().await;
    let mut h = Harness::loopback().await;
    let target = format!("127.0.0.1:{port}");
    let secret = h.grant("s1", &[&target], &[]).await;
    let (_s, head) = h.connect("s1", &secret, &target).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    h.send(json!({"op": "revoke", "key": "s1"})).await;
    assert_eq!(h.flush().await, [allowed("s1", "127.0.0.1", port)]);
    let (_s, head) = h.connect("s1", &secret, &target).await;
    assert!(head.starts_with("HTTP/1.1 407 "), "{head}");
}

#[tokio::test]
async fn an_approved_ask_adds_exactly_that_host_and_port_and_a_no_denies() {
    let port = echo().await;
    let mut h = Harness::loopback().await;
    let target = format!("127.0.0.1:{port}");
    let secret = h.grant("s1", &[], &[&format!("127.0.0.0/8:{port}")]).await;
    let held = tokio::spawn({
        let mut s = h.open("s1", &secret).await;
        async move {
            let head = format!("CONNECT {target} HTTP/1.1\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            (read_head(&mut s).await, s)
        }
    });
    let ask = h.event().await;
    let id = ask["id"].as_u64().expect("an ask id");
    assert_eq!(
        ask,
        json!({"ev": "ask", "id": id, "key": "s1", "host": "127.0.0.1", "port": port})
    );
    h.send(json!({"op": "answer", "id": id, "allow": true}))
        .await;
    let (head, mut s) = timeout(HANG, held).await.unwrap().unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    s.write_all(b"hi").await.unwrap();
    let mut back = [0u8; 2];
    timeout(HANG, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"hi");
    assert_eq!(h.flush().await, [allowed("s1", "127.0.0.1", port)]);

    // The same host and port again: no second question.
    let (_s, head) = h.connect("s1", &secret, &format!("127.0.0.1:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(h.flush().await, [allowed("s1", "127.0.0.1", port)]);

    // Another address of the askable block is asked about again; a no denies it.
    let other = format!("127.0.0.2:{port}");
    let held = tokio::spawn({
        let mut s = h.open("s1", &secret).await;
        async move {
            let head = format!("CONNECT {other} HTTP/1.1\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            answer(&mut s).await
        }
    });
    let ask = h.event().await;
    assert_eq!(ask["host"], "127.0.0.2");
    let id = ask["id"].as_u64().unwrap();
    h.send(json!({"op": "answer", "id": id, "allow": false}))
        .await;
    let (status, body) = timeout(HANG, held).await.unwrap().unwrap();
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert_eq!(
        body,
        format!("blocked: 127.0.0.2:{port} (not approved by the user)\n")
    );
    assert_eq!(
        h.flush().await,
        [denial("s1", "127.0.0.2", port, "not approved by the user")]
    );
}

#[tokio::test]
async fn a_refused_upstream_is_502_and_counted_as_allowed() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut h = Harness::loopback().await;
    let target = format!("127.0.0.1:{port}");
    let secret = h.grant("s1", &[&target], &[]).await;
    let (mut s, head) = h.connect("s1", &secret, &target).await;
    assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{head}");
    let body = read_rest(&mut s).await;
    assert!(body.starts_with(&format!("upstream {target}: ")), "{body}");
    assert_eq!(h.flush().await, [allowed("s1", "127.0.0.1", port)]);
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_closed() {
    let mut h = Harness::start(json!({"idle_secs": 1})).await;
    let secret = h.grant("s1", &["x.invalid"], &[]).await;
    let mut s = h.open("s1", &secret).await;
    s.write_all(b"CONNECT x.invalid:443 HTTP/1.1\r\n")
        .await
        .unwrap();
    assert_eq!(read_rest(&mut s).await, "", "closed without an answer");
}

#[tokio::test]
async fn bad_control_lines_are_skipped_and_the_channel_goes_on() {
    let mut h = Harness::loopback().await;
    let mut long = vec![b'x'; LINE_MAX + 10];
    long.push(b'\n');
    h.control.write_all(&long).await.unwrap();
    h.control
        .write_all(b"{\"op\":\"nonsense\"}\n\n")
        .await
        .unwrap();
    h.send(json!({"op": "grant", "key": "s1", "secret": "s", "allow": ["bad pattern"]}))
        .await;
    assert_eq!(h.flush().await, Vec::<Value>::new());
    let (_s, head) = h.connect("s1", "s", "x.invalid:443").await;
    assert!(
        head.starts_with("HTTP/1.1 407 "),
        "an invalid grant is not set: {head}"
    );
}

#[tokio::test]
async fn the_proxy_ends_when_its_control_input_ends() {
    let mut h = Harness::loopback().await;
    let (_, dead) = tokio::io::duplex(1);
    drop(std::mem::replace(&mut h.control, dead));
    let task = h.task.take().unwrap();
    let ended = timeout(HANG, task).await.expect("ended").expect("joined");
    assert!(ended.is_ok(), "{ended:?}");
}

#[test]
fn heads_parse_into_requests() {
    let connect = parse_head(b"CONNECT Example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        connect,
        Some(Request::Connect(
            Target::from_authority("example.com:443", None).unwrap()
        ))
    );
    let Some(Request::Http { target, head }) = parse_head(
        b"POST http://a.test?x=1 HTTP/1.0\r\nhost: evil.test\r\nContent-Length: 3\r\n\r\n",
    ) else {
        panic!("absolute form")
    };
    assert_eq!(target.to_string(), "a.test:80");
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "POST /?x=1 HTTP/1.0\r\nHost: a.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
    );
    for bad in [
        &b"GET http://a.test/ HTTP/1.1\r\nno colon\r\n\r\n"[..],
        b"GET http://a.test/ HTTP/1.1\r\n folded: x\r\n\r\n",
        b"GET  http://a.test/ HTTP/1.1\r\n\r\n",
        b"GET http://a.test/ SPDY/3\r\n\r\n",
        b"G(T http://a.test/ HTTP/1.1\r\n\r\n",
        b"\xff http://a.test/ HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(parse_head(bad), None, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn preambles_parse() {
    assert_eq!(
        parse_preamble(b"PDM1 k s\n"),
        Some(("k".into(), "s".into()))
    );
    assert_eq!(
        parse_preamble(b"PDM1 k s\r\n"),
        Some(("k".into(), "s".into()))
    );
    for bad in [
        &b"PDM2 k s\n"[..],
        b"PDM1 k\n",
        b"PDM1 k s x\n",
        b"PDM1  s\n",
        b"PDM1 k s",
    ] {
        assert_eq!(parse_preamble(bad), None);
    }
}

#[test]
fn messages_have_the_protocol_shape() {
    let op: Op = serde_json::from_str(r#"{"op":"config","private":["10.0.0.0/8"]}"#).unwrap();
    assert_eq!(
        op,
        Op::Config {
            private: vec!["10.0.0.0/8".into()],
            max_per_grant: 64,
            max_total: 1024,
            idle_secs: 60
        }
    );
    let ev = Event::Conn {
        key: "k".into(),
        host: "h".into(),
        port: 1,
        allowed: true,
        reason: None,
    };
    assert_eq!(
        serde_json::to_value(&ev).unwrap(),
        json!({"ev": "conn", "key": "k", "host": "h", "port": 1, "allowed": true})
    );
    assert_eq!(
        serde_json::to_value(Event::Ready).unwrap(),
        json!({"ev": "ready"})
    );
}
