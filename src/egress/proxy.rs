//! The egress proxy: serves the Unix socket sandboxes reach the network through, and talks
//! to the daemon in JSON lines ([`Op`] in, [`Event`] out). Run by `python-docker-mcp
//! egress-proxy --socket PATH` in the daemon's proxy container; [`serve`] is the whole server.
//!
//! A connection: the preamble `PDM1 <key> <secret>\n` (≤ 256 bytes) names a grant, then one
//! HTTP/1.1 request head (≤ 16 KiB): `CONNECT host:port` becomes a tunnel, an absolute-form
//! `http://` request is sent upstream in origin form with `Connection: close`. The target
//! must match the grant's `allow` list (or be approved through an `ask`), resolve, and
//! resolve to no private address outside the configured `private` CIDRs; every decision
//! is an event, written before the client hears of it. Bounds: tunnels per grant and in
//! all, connections in all (twice the tunnel limit), a handshake (preamble and head) within
//! `idle_secs` of the connection, fixed relay buffers, an idle time-out on tunnels, and
//! bounded control lines and queues. Worst case, memory is about 2 × `max_total` head
//! buffers (16.25 KiB) plus `max_total` tunnels of 16 + 64 KiB: some 113 MiB at the defaults
//! (the proxy container's limit is 256 MiB).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::policy::{first_refused, Cidr, List, Pattern, Target, TargetHost};

/// The longest preamble line, newline included.
pub const PREAMBLE_MAX: usize = 256;
/// The longest request head, final blank line included; past it, 431.
pub const HEAD_MAX: usize = 16 * 1024;
/// The longest control line in either direction; a longer one is skipped.
pub const LINE_MAX: usize = 64 * 1024;
/// How long a connection to an upstream may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an `ask` holds its connection before it is denied.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(35);
/// How long a name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A tunnel copies client to upstream through one buffer of this size (requests are small).
const RELAY_BUF_UP: usize = 16 * 1024;
/// ...and upstream to client through one of this size: the sandbox's forwarder is Python,
/// and its cost is per chunk it relays, so bigger chunks mean faster downloads.
const RELAY_BUF_DOWN: usize = 64 * 1024;
/// Events waiting for the writer; a full queue makes connections wait, never grow it.
const EVENT_QUEUE: usize = 1024;
/// After a final answer (403, 407, ...), how long and how much of the client's unread
/// input is drained so that closing does not reset the answer away.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;

/// The most threads the proxy's runtime uses for name resolution (and stdin): with its 2
/// workers and the main thread, a pids limit of 64 leaves room.
pub const BLOCKING_THREADS: usize = 32;

/// Defaults of the `config` message, in force until it arrives.
pub const DEFAULT_MAX_PER_GRANT: usize = 64;
pub const DEFAULT_MAX_TOTAL: usize = 1024;
pub const DEFAULT_IDLE_SECS: u64 = 60;

/// A control message, daemon to proxy (one JSON object per line on the proxy's stdin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// Limits and the private CIDRs that may be reached; send it first.
    Config {
        #[serde(default)]
        private: Vec<String>,
        #[serde(default = "default_max_per_grant")]
        max_per_grant: usize,
        #[serde(default = "default_max_total")]
        max_total: usize,
        #[serde(default = "default_idle_secs")]
        idle_secs: u64,
    },
    /// Set or replace the grant `key`: its secret, its list, and what may be asked for.
    Grant {
        key: String,
        secret: String,
        #[serde(default)]
        allow: Vec<String>,
        #[serde(default)]
        ask: Vec<String>,
    },
    /// Forget the grant `key`: new connections naming it get 407.
    Revoke { key: String },
    /// Answered with [`Event::Flushed`] after every event emitted before this line was read.
    Flush { id: u64 },
    /// The user's answer to [`Event::Ask`] `id`.
    Answer { id: u64, allow: bool },
}

fn default_max_per_grant() -> usize {
    DEFAULT_MAX_PER_GRANT
}
fn default_max_total() -> usize {
    DEFAULT_MAX_TOTAL
}
fn default_idle_secs() -> u64 {
    DEFAULT_IDLE_SECS
}

/// An event, proxy to daemon (one JSON object per line on the proxy's stdout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "lowercase")]
pub enum Event {
    /// The socket is listening.
    Ready,
    /// A connection let through (`allowed`) or denied (with `reason`, the words of the 403).
    Conn {
        key: String,
        host: String,
        port: u16,
        allowed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A target outside the grant's list but askable: answer with [`Op::Answer`].
    Ask {
        id: u64,
        key: String,
        host: String,
        port: u16,
    },
    /// The answer to [`Op::Flush`].
    Flushed { id: u64 },
}

/// Why the proxy stopped, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The socket could not be made.
    #[error("could not listen on the egress socket {}: {source}; the directory must exist and be writable by this user (the daemon mounts its egress socket directory read-write)", path.display())]
    Bind { path: PathBuf, source: io::Error },
    /// Reading stdin failed.
    #[error("reading the control channel (stdin) failed: {0}")]
    ControlIn(#[source] io::Error),
    /// Writing stdout failed: the daemon is gone.
    #[error(
        "writing events to the control channel (stdout) failed: {0}; the daemon has gone away"
    )]
    ControlOut(#[source] io::Error),
}

/// Why a connection was refused; the `Display` is the reason's exact words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("not in this session's allow-list")]
    NotListed,
    #[error("resolves to a private address {0}")]
    Private(IpAddr),
    #[error("does not resolve")]
    NoResolve,
    #[error("too many connections (limit {0})")]
    TooMany(usize),
    #[error("not approved by the user")]
    NotApproved,
}

/// Bind `path` for the proxy, replacing a stale socket file, and open it to every user
/// (0666): sandboxes connect as uid 1000.
pub fn bind(path: &Path) -> Result<UnixListener, ProxyError> {
    let failed = |source| ProxyError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(failed(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(failed)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(failed)?;
    Ok(listener)
}

/// Serve `listener` until `control_in` ends, `control_out` fails, or `shutdown`. Emits
/// [`Event::Ready`] first; reads [`Op`]s from `control_in`; writes [`Event`]s to
/// `control_out` through one writer, in order.
pub async fn serve<R, W>(
    listener: UnixListener,
    control_in: R,
    control_out: W,
    shutdown: CancellationToken,
) -> Result<(), ProxyError>
where
    R: AsyncBufRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (events, queue) = mpsc::channel(EVENT_QUEUE);
    let mut writer = tokio::spawn(write_events(queue, control_out));
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        events,
        full_logged: AtomicBool::new(false),
    });
    shared.emit(Event::Ready).await;
    let tracker = TaskTracker::new();
    let stop = shutdown.child_token();
    let mut writer_done = false;
    let outcome = tokio::select! {
        r = read_control(control_in, &shared) => r,
        r = &mut writer => {
            writer_done = true;
            match r {
                Ok(Err(e)) => Err(ProxyError::ControlOut(e)),
                _ => Err(ProxyError::ControlOut(io::ErrorKind::BrokenPipe.into())),
            }
        }
        () = accept(&listener, &shared, &tracker, &stop) => Ok(()),
        () = shutdown.cancelled() => Ok(()),
    };
    // Connections end with the proxy; then the last sender goes and the writer drains.
    stop.cancel();
    tracker.close();
    drop(listener);
    let _ = timeout(Duration::from_secs(2), tracker.wait()).await;
    drop(shared);
    if !writer_done && timeout(Duration::from_secs(2), &mut writer).await.is_err() {
        writer.abort();
    }
    outcome
}

/// State shared by the control reader and every connection.
struct Shared {
    /// Grants, counts, settings and pending asks. A std mutex: held only for lookups and
    /// counter updates, never across `.await`.
    state: Mutex<State>,
    /// The writer task's queue. Bounded: when the daemon does not read, connections wait.
    events: mpsc::Sender<Event>,
    /// Whether "too many connections" was logged since the count was last under its cap,
    /// so a sandbox hammering the socket cannot flood the log.
    full_logged: AtomicBool,
}

#[derive(Default)]
struct State {
    settings: Settings,
    grants: HashMap<String, Grant>,
    /// Open tunnels (and connections past their decision) per grant key.
    tunnels: HashMap<String, usize>,
    /// Open tunnels in all.
    tunnels_total: usize,
    /// Accepted connections in all, whatever their stage.
    connections: usize,
    /// The `ask`s waiting for an answer, by id. Each holds a tunnel slot, so they are
    /// bounded by the tunnel limits.
    asks: HashMap<u64, oneshot::Sender<bool>>,
    next_ask: u64,
}

struct Settings {
    private: Vec<Cidr>,
    max_per_grant: usize,
    max_total: usize,
    idle: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            private: Vec::new(),
            max_per_grant: DEFAULT_MAX_PER_GRANT,
            max_total: DEFAULT_MAX_TOTAL,
            idle: Duration::from_secs(DEFAULT_IDLE_SECS),
        }
    }
}

struct Grant {
    secret: String,
    allow: List,
    ask: List,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue `event` for the writer (waits while the queue is full; a gone writer drops it).
    async fn emit(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    /// Apply one control message.
    async fn apply(&self, op: Op) {
        match op {
            Op::Config {
                private,
                max_per_grant,
                max_total,
                idle_secs,
            } => {
                let private = private
                    .iter()
                    .filter_map(|c| match Cidr::parse(c) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            tracing::error!(error = %e, "egress config: a private CIDR is ignored");
                            None
                        }
                    })
                    .collect();
                self.lock().settings = Settings {
                    private,
                    max_per_grant: max_per_grant.max(1),
                    max_total: max_total.max(1),
                    idle: Duration::from_secs(idle_secs.max(1)),
                };
            }
            Op::Grant {
                key,
                secret,
                allow,
                ask,
            } => {
                if key.is_empty() || key.contains(char::is_whitespace) || secret.is_empty() {
                    tracing::error!(key = %crate::text::clip(&key), "egress grant refused: the key must be one word and the secret non-empty");
                    return;
                }
                match (List::parse(&allow), List::parse(&ask)) {
                    (Ok(allow), Ok(ask)) => {
                        let grant = Grant { secret, allow, ask };
                        self.lock().grants.insert(key, grant);
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::error!(key = %crate::text::clip(&key), error = %e, "egress grant refused");
                    }
                }
            }
            Op::Revoke { key } => {
                self.lock().grants.remove(&key);
            }
            Op::Flush { id } => self.emit(Event::Flushed { id }).await,
            Op::Answer { id, allow } => {
                if let Some(answer) = self.lock().asks.remove(&id) {
                    let _ = answer.send(allow);
                }
            }
        }
    }

    /// Whether `secret` is grant `key`'s (compared in constant time).
    fn authenticate(&self, key: &str, secret: &str) -> bool {
        self.lock()
            .grants
            .get(key)
            .is_some_and(|g| bool::from(g.secret.as_bytes().ct_eq(secret.as_bytes())))
    }

    /// Count an accepted connection, or `None` when twice `max_total` are open.
    fn admit_connection(self: &Arc<Self>) -> Option<ConnectionGuard> {
        let mut state = self.lock();
        let cap = state.settings.max_total.saturating_mul(2);
        if state.connections >= cap {
            drop(state);
            if !self.full_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    limit = cap,
                    "egress proxy: too many connections; new ones are closed at once"
                );
            }
            return None;
        }
        state.connections += 1;
        if state.connections < cap {
            self.full_logged.store(false, Ordering::Relaxed);
        }
        Some(ConnectionGuard(self.clone()))
    }

    /// Decide a connection of grant `key` to `target`: a tunnel slot and the addresses to
    /// try in order (none of them refused), or why not. `Ok(None)`: the grant is gone.
    async fn decide(
        self: &Arc<Self>,
        key: &str,
        target: &Target,
    ) -> Result<Option<(TunnelSlot, Vec<SocketAddr>)>, Denial> {
        let (slot, ask) = {
            let mut state = self.lock();
            let Some(grant) = state.grants.get(key) else {
                return Ok(None);
            };
            let listed = grant.allow.allows(target);
            if !listed && !grant.ask.allows(target) {
                return Err(Denial::NotListed);
            }
            let open = state.tunnels.get(key).copied().unwrap_or(0);
            if open >= state.settings.max_per_grant {
                return Err(Denial::TooMany(state.settings.max_per_grant));
            }
            if state.tunnels_total >= state.settings.max_total {
                return Err(Denial::TooMany(state.settings.max_total));
            }
            *state.tunnels.entry(key.to_owned()).or_default() += 1;
            state.tunnels_total += 1;
            let slot = TunnelSlot {
                shared: self.clone(),
                key: key.to_owned(),
            };
            let ask = (!listed).then(|| {
                let id = state.next_ask;
                state.next_ask += 1;
                let (tx, rx) = oneshot::channel();
                state.asks.insert(id, tx);
                (id, rx)
            });
            (slot, ask)
        };
        if let Some((id, answer)) = ask {
            self.emit(Event::Ask {
                id,
                key: key.to_owned(),
                host: target.host(),
                port: target.port(),
            })
            .await;
            let yes = matches!(timeout(ASK_TIMEOUT, answer).await, Ok(Ok(true)));
            let mut state = self.lock();
            state.asks.remove(&id);
            if !yes {
                return Err(Denial::NotApproved);
            }
            match state.grants.get_mut(key) {
                Some(grant) => grant.allow.add(Pattern::exact(target)),
                None => return Ok(None),
            }
        }
        let addrs = resolve(target).await?;
        let private = self.lock().settings.private.clone();
        if let Some(refused) = first_refused(&addrs, &private) {
            return Err(Denial::Private(refused));
        }
        let addrs = addrs
            .into_iter()
            .map(|a| SocketAddr::new(a.to_canonical(), target.port()))
            .collect();
        Ok(Some((slot, addrs)))
    }
}

/// One accepted connection, counted until dropped.
struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.lock().connections -= 1;
    }
}

/// One tunnel slot of a grant, given back when dropped.
struct TunnelSlot {
    shared: Arc<Shared>,
    key: String,
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.tunnels_total -= 1;
        if let Some(n) = state.tunnels.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                state.tunnels.remove(&self.key);
            }
        }
    }
}

/// The target's addresses: an address as it is, a name through the system's resolver.
async fn resolve(target: &Target) -> Result<Vec<IpAddr>, Denial> {
    let name = match target.host_kind() {
        TargetHost::Addr(a) => return Ok(vec![*a]),
        TargetHost::Name(n) => n.as_str(),
    };
    match timeout(
        RESOLVE_TIMEOUT,
        tokio::net::lookup_host((name, target.port())),
    )
    .await
    {
        Ok(Ok(addrs)) => {
            let addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            if addrs.is_empty() {
                Err(Denial::NoResolve)
            } else {
                Ok(addrs)
            }
        }
        _ => Err(Denial::NoResolve),
    }
}

/// Accept connections until the future is dropped; each runs in `tracker` until `stop`.
async fn accept(
    listener: &UnixListener,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Some(guard) = shared.admit_connection() else {
                    continue;
                };
                let shared = shared.clone();
                let stop = stop.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        () = handle(&shared, stream) => {}
                        () = stop.cancelled() => {}
                    }
                    drop(guard);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "egress proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What the client asked for.
#[derive(Debug, PartialEq)]
enum Request {
    /// A tunnel.
    Connect(Target),
    /// One plain HTTP request, `head` rewritten to origin form.
    Http { target: Target, head: Vec<u8> },
}

/// One connection, from its preamble to the end of its tunnel: the handshake, the
/// decision, the upstream, then the relay.
async fn handle(shared: &Arc<Shared>, mut client: UnixStream) {
    let idle = shared.lock().settings.idle;
    let Some(Handshake {
        key,
        request,
        early,
    }) = handshake(shared, &mut client, idle).await
    else {
        return;
    };
    let target = match &request {
        Request::Connect(t) | Request::Http { target: t, .. } => t.clone(),
    };
    let Some((slot, addrs)) = admit(shared, &mut client, &key, &target).await else {
        return;
    };
    let Some(mut upstream) = open_upstream(&mut client, &target, &addrs).await else {
        return;
    };
    let started = match &request {
        Request::Connect(_) => {
            let ok = client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
            match ok {
                Ok(()) => upstream.write_all(&early).await,
                Err(e) => Err(e),
            }
        }
        Request::Http { head, .. } => match upstream.write_all(head).await {
            Ok(()) => upstream.write_all(&early).await,
            Err(e) => Err(e),
        },
    };
    if started.is_ok() {
        let one_response = matches!(request, Request::Http { .. });
        relay(&mut client, &mut upstream, idle, one_response).await;
    }
    drop(slot);
}

/// A connection past its handshake: whose grant, what it asks for, and the bytes the
/// client sent after the request head.
struct Handshake {
    key: String,
    request: Request,
    early: Vec<u8>,
}

/// Read and check the preamble and the request head, all within `idle` of the start;
/// `None` once the client has had its answer (or is gone).
async fn handshake(
    shared: &Arc<Shared>,
    client: &mut UnixStream,
    idle: Duration,
) -> Option<Handshake> {
    // The whole handshake, not each read, is bounded: a dribbling client cannot hold a
    // connection (and its head buffer) for long.
    let deadline = tokio::time::Instant::now() + idle;
    let mut buf = vec![0u8; PREAMBLE_MAX + HEAD_MAX];
    let mut filled = 0;
    let preamble_end = read_until(
        client,
        &mut buf,
        &mut filled,
        0,
        PREAMBLE_MAX,
        deadline,
        b"\n",
    )
    .await
    .ok()?;
    let (key, secret) = parse_preamble(&buf[..preamble_end])?;
    if !shared.authenticate(&key, &secret) {
        tracing::debug!(key = %crate::text::clip(&key), "egress: unknown grant or wrong secret");
        finish(client, &refused_credentials()).await;
        return None;
    }
    let head_end = match read_until(
        client,
        &mut buf,
        &mut filled,
        preamble_end,
        HEAD_MAX,
        deadline,
        b"\r\n\r\n",
    )
    .await
    {
        Ok(end) => end,
        Err(Short::TooLong) => {
            let body = format!(
                "egress proxy: the request head is over {} KiB\n",
                HEAD_MAX / 1024
            );
            let answer = response("431 Request Header Fields Too Large", &body);
            finish(client, &answer).await;
            return None;
        }
        Err(Short::Closed) => return None,
    };
    let Some(request) = parse_head(&buf[preamble_end..head_end]) else {
        let body = "egress proxy: only `CONNECT host:port` and absolute-form `http://` requests are served\n";
        finish(client, &response("400 Bad Request", body)).await;
        return None;
    };
    let early = buf[head_end..filled].to_vec();
    Some(Handshake {
        key,
        request,
        early,
    })
}

/// Decide `target` for grant `key` and emit the event; a tunnel slot and the addresses to
/// try, or `None` once the client has had its refusal.
async fn admit(
    shared: &Arc<Shared>,
    client: &mut UnixStream,
    key: &str,
    target: &Target,
) -> Option<(TunnelSlot, Vec<SocketAddr>)> {
    let conn_event = |allowed, reason: Option<String>| Event::Conn {
        key: key.to_owned(),
        host: target.host(),
        port: target.port(),
        allowed,
        reason,
    };
    match shared.decide(key, target).await {
        Ok(Some(admitted)) => {
            shared.emit(conn_event(true, None)).await;
            Some(admitted)
        }
        Ok(None) => {
            finish(client, &refused_credentials()).await;
            None
        }
        Err(denial) => {
            tracing::debug!(key = %key, target = %target, reason = %denial, "egress: denied");
            shared
                .emit(conn_event(false, Some(denial.to_string())))
                .await;
            let body = format!("blocked: {target} ({denial})\n");
            finish(client, &response("403 Forbidden", &body)).await;
            None
        }
    }
}

/// Connect to the first of `addrs` that answers within [`CONNECT_TIMEOUT`]; `None` once
/// the client has had its 502.
async fn open_upstream(
    client: &mut UnixStream,
    target: &Target,
    addrs: &[SocketAddr],
) -> Option<TcpStream> {
    match timeout(CONNECT_TIMEOUT, connect_any(addrs)).await {
        Ok(Ok(upstream)) => {
            let _ = upstream.set_nodelay(true);
            Some(upstream)
        }
        Ok(Err(e)) => {
            upstream_failed(client, target, &e.to_string()).await;
            None
        }
        Err(_) => {
            let error = format!("no connection within {} s", CONNECT_TIMEOUT.as_secs());
            upstream_failed(client, target, &error).await;
            None
        }
    }
}

/// The first of `addrs` that accepts a connection, tried in order; else the last error.
async fn connect_any(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn upstream_failed(client: &mut UnixStream, target: &Target, error: &str) {
    let body = format!("upstream {target}: {error}\n");
    finish(client, &response("502 Bad Gateway", &body)).await;
}

fn refused_credentials() -> Vec<u8> {
    response(
        "407 Proxy Authentication Required",
        "egress proxy: unknown grant or wrong secret (the sandbox's forwarder sends them)\n",
    )
}

/// A complete answer that closes the connection.
fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Send a final answer, close our side, and drain a little of what the client still sends.
async fn finish(client: &mut UnixStream, answer: &[u8]) {
    let _ = timeout(LINGER, async {
        client.write_all(answer).await?;
        client.shutdown().await?;
        let mut sink = [0u8; 1024];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match client.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<(), io::Error>(())
    })
    .await;
}

/// Why a bounded read stopped short.
enum Short {
    /// `limit` bytes without the terminator.
    TooLong,
    /// End of input, an error, or the handshake's deadline.
    Closed,
}

/// Read into `buf` until `end` appears within `limit` bytes from `from`; the index just
/// past it. `filled` counts the bytes of `buf` read so far (possibly past the end).
async fn read_until(
    client: &mut UnixStream,
    buf: &mut [u8],
    filled: &mut usize,
    from: usize,
    limit: usize,
    deadline: tokio::time::Instant,
    end: &[u8],
) -> Result<usize, Short> {
    let mut scanned = from;
    loop {
        let window = &buf[..(*filled).min(from + limit)];
        let start = scanned.saturating_sub(end.len() - 1).max(from);
        if let Some(i) = window[start..].windows(end.len()).position(|w| w == end) {
            return Ok(start + i + end.len());
        }
        scanned = window.len();
        if *filled - from >= limit {
            return Err(Short::TooLong);
        }
        match tokio::time::timeout_at(deadline, client.read(&mut buf[*filled..])).await {
            Ok(Ok(n)) if n > 0 => *filled += n,
            _ => return Err(Short::Closed),
        }
    }
}

/// `PDM1 <key> <secret>\n` into key and secret.
fn parse_preamble(line: &[u8]) -> Option<(String, String)> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\n')?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut words = line.split(' ');
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("PDM1"), Some(key), Some(secret), None) if !key.is_empty() && !secret.is_empty() => {
            Some((key.to_owned(), secret.to_owned()))
        }
        _ => None,
    }
}

/// A request head (through its blank line) into a [`Request`], or `None` for anything
/// but `CONNECT host:port` and an absolute-form `http://` request.
fn parse_head(head: &[u8]) -> Option<Request> {
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.strip_suffix("\r\n\r\n")?.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, uri, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_token(method) || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if !is_token(name) {
            return None;
        }
        headers.push((name, value));
    }
    if method == "CONNECT" {
        return Target::from_authority(uri, None).map(Request::Connect);
    }
    let scheme = uri.get(..7)?;
    if !scheme.eq_ignore_ascii_case("http://") {
        return None;
    }
    let rest = &uri[7..];
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') {
        return None;
    }
    let target = Target::from_authority(authority, Some(80))?;
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('/') => p.to_owned(),
        p => format!("/{p}"),
    };
    let mut out = format!("{method} {path} {version}\r\nHost: {authority}\r\n");
    for (name, value) in headers {
        let hop = name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("keep-alive")
            || name
                .get(..6)
                .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"));
        if !hop {
            out.push_str(&format!("{name}:{value}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    Some(Request::Http {
        target,
        head: out.into_bytes(),
    })
}

/// An HTTP token (a method or a header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Copy both ways through fixed buffers until both sides end, or nothing moved for `idle`.
/// With `one_response` (plain HTTP), the end of the upstream's response ends it all: the
/// client has nothing more to say to that upstream.
async fn relay(
    client: &mut UnixStream,
    upstream: &mut TcpStream,
    idle: Duration,
    one_response: bool,
) {
    let activity = Activity::new();
    let (mut client_in, mut client_out) = client.split();
    let (mut up_in, mut up_out) = upstream.split();
    let down = async {
        pump(&mut up_in, &mut client_out, RELAY_BUF_DOWN, &activity).await?;
        match one_response {
            // An error only to end the join below at once.
            true => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            false => Ok(()),
        }
    };
    let both = async {
        tokio::try_join!(
            pump(&mut client_in, &mut up_out, RELAY_BUF_UP, &activity),
            down
        )
    };
    tokio::select! {
        _ = both => {}
        () = activity.idle_for(idle) => tracing::debug!("egress: idle tunnel closed"),
    }
}

/// One direction of a tunnel: read, write, until end of input (then half-close).
async fn pump<R, W>(from: &mut R, to: &mut W, size: usize, activity: &Activity) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; size];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        activity.touch();
        to.write_all(&buf[..n]).await?;
        activity.touch();
    }
}

/// When a tunnel last moved a byte, for its idle time-out.
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last byte moved.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// Resolves once `idle` has passed without a byte moving.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let quiet = self.start.elapsed().saturating_sub(last);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

/// Read control lines (each ≤ [`LINE_MAX`], a longer one skipped) and apply them in order,
/// until end of input.
async fn read_control<R: AsyncBufRead + Unpin>(
    mut input: R,
    shared: &Arc<Shared>,
) -> Result<(), ProxyError> {
    let mut line = Vec::new();
    loop {
        match read_line(&mut input, &mut line)
            .await
            .map_err(ProxyError::ControlIn)?
        {
            Line::End => return Ok(()),
            Line::TooLong => {
                tracing::warn!("egress proxy: skipped a control line over {LINE_MAX} bytes");
                continue;
            }
            Line::Full if line.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Full => {}
        }
        match serde_json::from_slice::<Op>(&line) {
            Ok(op) => shared.apply(op).await,
            Err(e) => {
                tracing::warn!(error = %e, "egress proxy: skipped a control line that is not a known op")
            }
        }
    }
}

enum Line {
    Full,
    TooLong,
    End,
}

/// One line into `line` (without its newline), never holding more than [`LINE_MAX`].
async fn read_line<R: AsyncBufRead + Unpin>(input: &mut R, line: &mut Vec<u8>) -> io::Result<Line> {
    line.clear();
    let mut too_long = false;
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::End,
                (false, false) => Line::Full,
            });
        }
        let (chunk, used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        if !too_long && line.len() + chunk.len() > LINE_MAX {
            too_long = true;
            line.clear();
        }
        if !too_long {
            line.extend_from_slice(chunk);
        }
        input.consume(used);
        if done {
            return Ok(if too_long { Line::TooLong } else { Line::Full });
        }
    }
}

/// The single writer of events: one line each, in queue order.
async fn write_events<W: AsyncWrite + Unpin>(
    mut queue: mpsc::Receiver<Event>,
    mut out: W,
) -> io::Result<()> {
    let mut line = Vec::new();
    while let Some(event) = queue.recv().await {
        let mut next = Some(event);
        while let Some(event) = next {
            line.clear();
            serde_json::to_writer(&mut line, &event).map_err(io::Error::other)?;
            line.push(b'\n');
            out.write_all(&line).await?;
            next = queue.try_recv().ok();
        }
        out.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
