//! The daemon's side of egress: the proxy container, the grants, and what each run reached.
//!
//! [`Egress`] is owned by the engine and exists only when the operator's ceiling
//! (`network.allow`) is not empty. It starts the proxy container (this binary's
//! `egress-proxy` subcommand, [`crate::sandbox::proxy_spec`]) through the runtime seam's
//! `start_attached`, sends `config`, waits for `ready`, and then drives it over JSON lines
//! on the attached stdio (the protocol is in `proxy.rs`' module doc and ARCHITECTURE's
//! "Egress"): `grant` and `revoke` per key (a session's id, or a transient run's id), and
//! `flush` at the end of each run that had a grant, so every connection the code saw
//! decided is in that run's result.
//!
//! The grants live here, not in the proxy: a proxy that died is started again at the next
//! need and given every grant anew, so a session's list survives a proxy restart. A run that
//! cannot get a proxy fails with an error saying what failed and the fix.
//!
//! Bounded: events are read with a line cap ([`LineReader`], 64 KiB; a longer line is
//! skipped), the stdin queue holds [`QUEUE`] lines, and each key keeps at most
//! [`MAX_ENTRIES`] distinct `host:port` counts per verdict, then only a count of the rest.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use schemars::JsonSchema;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::policy::{List, ListError, NarrowError, Pattern};
use super::proxy::{Event, Op};
use crate::client::Client;
use crate::config::Config;
use crate::runtime::{Backend, Output, RuntimeError};
use crate::sandbox::{self, Owner};

/// The longest control line either way; a longer one is skipped with a log line.
pub const MAX_LINE: usize = 64 * 1024;
/// Distinct `host:port` entries kept per key and verdict; the rest are only counted.
pub const MAX_ENTRIES: usize = 256;
/// Lines queued for the proxy's stdin.
const QUEUE: usize = 256;
/// How long a started proxy may take to say `ready`.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long a flush may take before the run's result goes without it.
const FLUSH_WITHIN: Duration = Duration::from_secs(2);
/// The proxy's stderr kept for an error message.
const STDERR_TAIL: usize = 2048;
/// The proxy's bounds, sent explicitly: its defaults (the design's numbers).
const MAX_PER_GRANT: usize = super::proxy::DEFAULT_MAX_PER_GRANT;
const MAX_TOTAL: usize = super::proxy::DEFAULT_MAX_TOTAL;
/// How long the user has to answer an approval question (`network.ask`).
pub const ASK_WITHIN: Duration = Duration::from_secs(30);

/// Why a call's `network` list, or the proxy behind it, cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// A pattern of the call's `network` does not parse.
    #[error("`network`: {0}")]
    Pattern(#[from] ListError),
    /// The list is wider than the ceiling or the session's list.
    #[error(transparent)]
    Narrow(#[from] NarrowError),
    /// The socket directory could not be made.
    #[error("the egress socket directory {path} could not be made ({source}); the run gets no network. Check that the server's user can write to {parent}")]
    Dir {
        path: PathBuf,
        parent: PathBuf,
        source: std::io::Error,
    },
    /// This process cannot name its own binary (the proxy runs it).
    #[error("cannot find this server's own binary to run as the egress proxy ({0}); the run gets no network. Run python-docker-mcp from a path that still exists (it may have been replaced while running)")]
    Binary(std::io::Error),
    /// The engine would not start the proxy container.
    #[error("the egress proxy container could not start: {0}. The run gets no network. Check that docker.image runs on this host (the proxy is this server's binary run in it) and that network.egress_network names a network the engine has (`docker network ls`)")]
    Start(#[source] RuntimeError),
    /// The proxy started but never said it was ready.
    #[error("the egress proxy did not become ready within {within:?}{said}. The run gets no network. `python-docker-mcp egress-proxy --help` runs the same program; check that docker.image has a C library this binary runs with")]
    NotReady { within: Duration, said: String },
    /// The sandbox's helper could not start its forwarder: the REPL's error, kept as the
    /// source (a `dyn` error, since egress sits below the REPL).
    #[error("the sandbox could not start its egress forwarder: {0}")]
    Forwarder(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// Shutdown has begun.
    #[error("the server is shutting down: no new egress proxy is started")]
    ShuttingDown,
}

/// One `host:port` a run reached or was refused, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub count: u64,
    /// Why it was refused (denied entries only), in the proxy's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a run with a `network` list did through the proxy (its structured `network`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct NetworkReport {
    /// Connections the proxy let through, by `host:port`.
    pub allowed: Vec<Connection>,
    /// Connections the proxy refused, by `host:port`, with the reason.
    pub denied: Vec<Connection>,
    /// Connections beyond the 256 distinct `host:port` entries kept per verdict, counted only.
    #[serde(skip_serializing_if = "is_zero")]
    pub more: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl NetworkReport {
    /// One line per refused `host:port`: `blocked: HOST:PORT (REASON)`.
    pub fn blocked_lines(&self) -> Vec<String> {
        self.denied
            .iter()
            .map(|c| {
                let times = if c.count > 1 {
                    format!(", {} times", c.count)
                } else {
                    String::new()
                };
                format!(
                    "blocked: {}:{} ({}){times}",
                    bracketed(&c.host),
                    c.port,
                    c.reason.as_deref().unwrap_or("refused")
                )
            })
            .collect()
    }
}

/// An IPv6 address in brackets, so `host:port` reads right.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The counts of one key, bounded: at most [`MAX_ENTRIES`] per verdict.
#[derive(Debug, Default)]
struct Counts {
    allowed: BTreeMap<(String, u16), u64>,
    /// The count and the first reason.
    denied: BTreeMap<(String, u16), (u64, String)>,
    more: u64,
}

impl Counts {
    fn record(&mut self, host: &str, port: u16, allowed: bool, reason: Option<&str>) {
        let key = (host.to_ascii_lowercase(), port);
        if allowed {
            if let Some(n) = self.allowed.get_mut(&key) {
                *n += 1;
            } else if self.allowed.len() < MAX_ENTRIES {
                self.allowed.insert(key, 1);
            } else {
                self.more += 1;
            }
        } else if let Some((n, _)) = self.denied.get_mut(&key) {
            *n += 1;
        } else if self.denied.len() < MAX_ENTRIES {
            let reason = crate::text::clip(reason.unwrap_or("refused")).to_string();
            self.denied.insert(key, (1, reason));
        } else {
            self.more += 1;
        }
    }

    fn report(self) -> NetworkReport {
        NetworkReport {
            allowed: self
                .allowed
                .into_iter()
                .map(|((host, port), count)| Connection {
                    host,
                    port,
                    count,
                    reason: None,
                })
                .collect(),
            denied: self
                .denied
                .into_iter()
                .map(|((host, port), (count, reason))| Connection {
                    host,
                    port,
                    count,
                    reason: Some(reason),
                })
                .collect(),
            more: self.more,
        }
    }
}

/// A key's grant, as the daemon remembers it (and gives a restarted proxy again).
struct Grant {
    secret: String,
    allow: List,
    ask: List,
    client: Client,
    counts: Counts,
    /// Who answers approval questions for this key now: the client of the call running
    /// in it, when that client declared elicitation. `None` between calls: no.
    caller: Option<AskUser>,
}

/// Asks the user of one call a yes/no question (MCP elicitation), answering `true` for yes.
#[derive(Clone)]
pub struct AskUser(
    pub Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, bool> + Send + Sync>,
);

impl std::fmt::Debug for AskUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AskUser")
    }
}

/// The daemon's egress handle; clone it freely.
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    backend: Backend,
    owner: Owner,
    /// The operator's ceiling (`network.allow`), parsed once.
    ceiling: List,
    /// What users may approve (`network.askable` when `network.ask` is on; else empty).
    askable: List,
    /// The running proxy. A tokio mutex: held across a start, so one start at a time.
    proxy: tokio::sync::Mutex<Option<Arc<Proxy>>>,
    /// Grants by key. A std mutex, never held across an `.await`.
    grants: Mutex<HashMap<String, Grant>>,
    /// Flush ids.
    next_id: AtomicU64,
    /// Fired at shutdown: no proxy is started any more.
    stop: CancellationToken,
    /// The proxies' reader and writer tasks, and approval questions in flight.
    tasks: TaskTracker,
}

/// One running proxy container.
struct Proxy {
    id: String,
    /// Lines for its stdin, written in order by the writer task. Bounded.
    tx: mpsc::Sender<String>,
    /// Fired when its output ends (it exited, or the engine dropped the attach).
    dead: CancellationToken,
    /// Runs waiting for a `flushed`, by flush id. A std mutex.
    flushes: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// The end of its stderr, for error messages. A std mutex.
    stderr: Mutex<String>,
}

impl Proxy {
    /// Log one stderr line of the proxy and keep it in the tail (at most [`STDERR_TAIL`]).
    fn keep_stderr(&self, text: &str) {
        tracing::debug!(target: "egress_proxy", "{}", crate::text::clip(text));
        let mut tail = self.stderr.lock().expect("stderr lock");
        tail.push_str(text);
        tail.push('\n');
        if tail.len() > STDERR_TAIL {
            let cut = tail.len() - STDERR_TAIL;
            let cut = (cut..tail.len())
                .find(|&c| tail.is_char_boundary(c))
                .unwrap_or(0);
            tail.drain(..cut);
        }
    }
}

/// The writer task of one proxy: queued control lines to its stdin, in order. Dropping
/// the input at the end closes the proxy's stdin: it exits.
async fn write_control(
    mut rx: mpsc::Receiver<String>,
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
) {
    while let Some(mut line) = rx.recv().await {
        line.push('\n');
        if input.write_all(line.as_bytes()).await.is_err() || input.flush().await.is_err() {
            break;
        }
    }
}

impl Egress {
    /// The handle for `config`, or `None` when the ceiling is empty (nothing changes then).
    /// The ceiling and `askable` were checked at load ([`crate::config`]).
    pub fn new(config: &Config, backend: Backend, owner: Owner) -> Option<Egress> {
        let ceiling = List::parse(&config.network.allow).ok()?;
        if ceiling.is_empty() {
            return None;
        }
        // Every sandbox mounts the directory, the pool's first ones included: it must
        // exist before any is created. A failure here is reported by the proxy's start.
        if let Err(e) = make_socket_dir(&config.network.egress_dir) {
            tracing::warn!("{e}");
        }
        let askable = match config.network.ask {
            true => List::parse(&config.network.askable).unwrap_or_default(),
            false => List::default(),
        };
        Some(Egress {
            inner: Arc::new(Inner {
                config: config.clone(),
                backend,
                owner,
                ceiling,
                askable,
                proxy: tokio::sync::Mutex::new(None),
                grants: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// Start the proxy now (at daemon start-up, in the background).
    pub async fn warm(&self) -> Result<(), EgressError> {
        self.proxy().await.map(|_| ())
    }

    /// A call runs in `key` now: approval questions go to its user (`None`: answered no).
    /// [`Egress::report`] ends it.
    pub fn attend(&self, key: &str, ask: Option<AskUser>) {
        let mut grants = self.inner.grants.lock().expect("grants lock");
        if let Some(g) = grants.get_mut(key) {
            g.caller = ask;
        }
    }

    /// The socket's file name in the egress directory: one per daemon instance.
    fn socket_name(&self) -> String {
        format!("{}.sock", self.inner.owner.instance)
    }

    /// The socket as a sandbox sees it.
    pub fn socket_in_sandbox(&self) -> String {
        format!("{}/{}", sandbox::EGRESS_MOUNT, self.socket_name())
    }

    /// A run's or a new session's list, held to the ceiling.
    pub fn admit(&self, asked: &[String]) -> Result<List, EgressError> {
        Ok(List::admit(&self.inner.ceiling, List::parse(asked)?)?)
    }

    /// A later list for the session `key`: only narrower than its current one (none: no
    /// network, so nothing is narrower).
    pub fn narrow(&self, key: &str, asked: &[String]) -> Result<List, EgressError> {
        let asked = List::parse(asked)?;
        let grants = self.inner.grants.lock().expect("grants lock");
        let current = grants.get(key).map(|g| g.allow.clone()).unwrap_or_default();
        Ok(List::narrow(&current, asked)?)
    }

    /// Whether `key` has a grant.
    pub fn has_grant(&self, key: &str) -> bool {
        let grants = self.inner.grants.lock().expect("grants lock");
        grants.contains_key(key)
    }

    /// Set (or replace) `key`'s grant and make sure a proxy runs that knows it. Returns
    /// the secret the sandbox's forwarder presents (kept across replacements).
    pub async fn grant(
        &self,
        key: &str,
        allow: List,
        client: &Client,
    ) -> Result<String, EgressError> {
        let i = &self.inner;
        let (secret, line) = {
            let mut grants = i.grants.lock().expect("grants lock");
            let secret = grants
                .get(key)
                .map(|g| g.secret.clone())
                .unwrap_or_else(new_secret);
            let grant = Grant {
                secret: secret.clone(),
                allow,
                ask: i.askable.clone(),
                client: client.clone(),
                counts: Counts::default(),
                caller: None,
            };
            let line = grant_line(key, &grant);
            let (counts, caller) = grants
                .remove(key)
                .map(|g| (g.counts, g.caller))
                .unwrap_or_default();
            grants.insert(
                key.to_string(),
                Grant {
                    counts,
                    caller,
                    ..grant
                },
            );
            (secret, line)
        };
        let proxy = match self.proxy().await {
            Ok(p) => p,
            Err(e) => {
                i.grants.lock().expect("grants lock").remove(key);
                return Err(e);
            }
        };
        // A proxy started just now was given every grant already; again is harmless.
        // The flush returns once the proxy has read the grant, so the run that follows
        // (a narrowed list, say) is decided by it.
        let _ = proxy.tx.send(line).await;
        self.flush(&proxy, key).await;
        Ok(secret)
    }

    /// Send a flush and wait (at most [`FLUSH_WITHIN`]) for its answer: every line sent
    /// before it has been read, and every event emitted before it has been counted.
    async fn flush(&self, p: &Proxy, key: &str) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        p.flushes.lock().expect("flush lock").insert(id, tx);
        if p.tx.send(op_line(&Op::Flush { id })).await.is_ok()
            && tokio::time::timeout(FLUSH_WITHIN, rx).await.is_err()
        {
            tracing::warn!(key, "the egress proxy did not answer a flush in time");
        }
        p.flushes.lock().expect("flush lock").remove(&id);
    }

    /// Forget `key`'s grant (the session ended, the run is done). Never starts a proxy.
    pub fn revoke(&self, key: &str) {
        let i = &self.inner;
        if i.grants.lock().expect("grants lock").remove(key).is_none() {
            return;
        }
        if let Ok(slot) = i.proxy.try_lock() {
            if let Some(p) = slot.as_ref() {
                let line = op_line(&Op::Revoke { key: key.into() });
                if p.tx.try_send(line).is_err() {
                    tracing::debug!(key, "could not queue a revoke for the egress proxy");
                }
            }
            return;
        }
        // A start is under way: it sends only the grants still there. Send the revoke
        // once it is done, off the caller's path.
        let (egress, key) = (self.clone(), key.to_string());
        i.tasks.spawn(async move {
            if let Some(p) = egress.inner.proxy.lock().await.clone() {
                let _ = p.tx.send(op_line(&Op::Revoke { key })).await;
            }
        });
    }

    /// What `key` reached since the last report: every event the proxy emitted before now
    /// is in it (a flush, when the proxy runs).
    pub async fn report(&self, key: &str) -> NetworkReport {
        let proxy = self.inner.proxy.lock().await.clone();
        if let Some(p) = proxy.filter(|p| !p.dead.is_cancelled()) {
            self.flush(&p, key).await;
        }
        let mut grants = self.inner.grants.lock().expect("grants lock");
        grants
            .get_mut(key)
            .map(|g| {
                g.caller = None;
                std::mem::take(&mut g.counts).report()
            })
            .unwrap_or_default()
    }

    /// The running proxy, started (again) if it is not running.
    async fn proxy(&self) -> Result<Arc<Proxy>, EgressError> {
        let i = &self.inner;
        let mut slot = i.proxy.lock().await;
        if let Some(p) = slot.as_ref() {
            if !p.dead.is_cancelled() {
                return Ok(p.clone());
            }
            tracing::warn!(container = %p.id, "the egress proxy is gone; starting it again");
            i.backend.remove(&p.id).await;
            *slot = None;
        }
        if i.stop.is_cancelled() {
            return Err(EgressError::ShuttingDown);
        }
        let p = self.start().await?;
        *slot = Some(p.clone());
        Ok(p)
    }

    /// Start the proxy container, configure it, give it every grant, wait for `ready`.
    async fn start(&self) -> Result<Arc<Proxy>, EgressError> {
        let i = &self.inner;
        let dir = &i.config.network.egress_dir;
        make_socket_dir(dir)?;
        let binary = std::env::current_exe().map_err(EgressError::Binary)?;
        let socket = self.socket_name();
        // A socket a dead proxy of this instance left (there is none normally).
        let _ = std::fs::remove_file(dir.join(&socket));
        let spec = sandbox::proxy_spec(&i.config, &i.owner, &binary, &socket);
        let attached = i
            .backend
            .start_attached(&spec)
            .await
            .map_err(EgressError::Start)?;
        let (tx, rx) = mpsc::channel::<String>(QUEUE);
        let proxy = Arc::new(Proxy {
            id: attached.id.clone(),
            tx,
            dead: CancellationToken::new(),
            flushes: Mutex::new(HashMap::new()),
            stderr: Mutex::new(String::new()),
        });
        i.tasks.spawn(write_control(rx, attached.input));
        let (ready_tx, ready_rx) = oneshot::channel();
        i.tasks.spawn(
            self.clone()
                .read_output(proxy.clone(), attached.output, ready_tx),
        );
        self.configure(&proxy).await;
        let ready = tokio::select! {
            r = ready_rx => r.is_ok(),
            _ = tokio::time::sleep(READY_WITHIN) => false,
        };
        if !ready {
            i.backend.remove(&proxy.id).await;
            let tail = proxy.stderr.lock().expect("stderr lock").trim().to_string();
            let said = match tail.is_empty() {
                true => String::new(),
                false => format!(" (it said: {})", crate::text::clip(&tail)),
            };
            return Err(EgressError::NotReady {
                within: READY_WITHIN,
                said,
            });
        }
        tracing::info!(container = %attached.name, "the egress proxy is ready");
        Ok(proxy)
    }

    /// Queue a new proxy's `config` and every grant the daemon holds.
    async fn configure(&self, proxy: &Proxy) {
        let i = &self.inner;
        let config = op_line(&Op::Config {
            private: i.config.network.allow_private.clone(),
            max_per_grant: MAX_PER_GRANT,
            max_total: MAX_TOTAL,
            idle_secs: i.config.network.idle_timeout.as_secs().max(1),
        });
        let mut lines = vec![config];
        {
            let grants = i.grants.lock().expect("grants lock");
            lines.extend(grants.iter().map(|(k, g)| grant_line(k, g)));
        }
        for line in lines {
            let _ = proxy.tx.send(line).await;
        }
    }

    /// The reader task of one proxy: events from its stdout, its stderr kept for error
    /// messages; when the output ends, the proxy is dead.
    async fn read_output(
        self,
        proxy: Arc<Proxy>,
        mut output: std::pin::Pin<Box<dyn futures::Stream<Item = Output> + Send>>,
        ready_tx: oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready_tx);
        let mut out = LineReader::new(MAX_LINE);
        let mut err = LineReader::new(MAX_LINE);
        while let Some(chunk) = output.next().await {
            match chunk {
                Output::Stdout(b) => {
                    for line in out.push(&b) {
                        self.event(&proxy, &line, &mut ready);
                    }
                }
                Output::Stderr(b) => {
                    for line in err.push(&b) {
                        proxy.keep_stderr(&String::from_utf8_lossy(&line));
                    }
                }
            }
        }
        proxy.dead.cancel();
        // Runs waiting for a flush are answered at once: nothing more will come.
        proxy.flushes.lock().expect("flush lock").clear();
    }

    /// Handle one line from the proxy's stdout (the reader task).
    fn event(&self, proxy: &Arc<Proxy>, line: &[u8], ready: &mut Option<oneshot::Sender<()>>) {
        let event: Event = match serde_json::from_slice(line) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "an egress proxy line that is no event");
                return;
            }
        };
        match event {
            Event::Ready => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            Event::Conn {
                key,
                host,
                port,
                allowed,
                reason,
            } => {
                let mut grants = self.inner.grants.lock().expect("grants lock");
                if let Some(g) = grants.get_mut(&key) {
                    g.counts.record(&host, port, allowed, reason.as_deref());
                    crate::metrics::egress_connection(&g.client, allowed);
                }
            }
            Event::Flushed { id } => {
                if let Some(tx) = proxy.flushes.lock().expect("flush lock").remove(&id) {
                    let _ = tx.send(());
                }
            }
            Event::Ask {
                id,
                key,
                host,
                port,
            } => {
                let caller = {
                    let grants = self.inner.grants.lock().expect("grants lock");
                    grants.get(&key).and_then(|g| g.caller.clone())
                };
                let tx = proxy.tx.clone();
                let (egress, stop) = (self.clone(), self.inner.stop.clone());
                self.inner.tasks.spawn(async move {
                    let target = format!("{}:{port}", bracketed(&host));
                    let yes = match caller {
                        Some(AskUser(ask)) => {
                            let question = format!("Allow this session to reach {target}?");
                            tokio::select! {
                                yes = tokio::time::timeout(ASK_WITHIN, ask(question)) => yes.unwrap_or(false),
                                _ = stop.cancelled() => false,
                            }
                        }
                        None => false,
                    };
                    if yes {
                        // The proxy adds exactly this host:port; so does the daemon's copy,
                        // which a restarted proxy gets and a narrowing is held to.
                        let mut grants = egress.inner.grants.lock().expect("grants lock");
                        if let (Some(g), Ok(p)) = (grants.get_mut(&key), Pattern::parse(&target)) {
                            g.allow.add(p);
                        }
                    }
                    tracing::info!(key = %key, %target, approved = yes, "egress approval");
                    let _ = tx.send(op_line(&Op::Answer { id, allow: yes })).await;
                });
            }
        }
    }

    /// Shutdown: no new proxy; the running one is removed (its stdin closes first).
    pub async fn shutdown(&self) {
        let i = &self.inner;
        i.stop.cancel();
        let proxy = i.proxy.lock().await.take();
        if let Some(p) = proxy {
            i.backend.remove(&p.id).await;
        }
        i.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), i.tasks.wait())
            .await
            .is_err()
        {
            tracing::debug!("egress tasks still running at shutdown");
        }
        let _ = std::fs::remove_file(i.config.network.egress_dir.join(self.socket_name()));
    }
}

/// One control line for the proxy's stdin.
fn op_line(op: &Op) -> String {
    serde_json::to_string(op).expect("control messages serialise")
}

/// The `grant` line for `key`.
fn grant_line(key: &str, g: &Grant) -> String {
    op_line(&Op::Grant {
        key: key.into(),
        secret: g.secret.clone(),
        allow: g.allow.to_strings(),
        ask: g.ask.to_strings(),
    })
}

/// 32 hex characters of randomness (a v4 uuid's 122 random bits).
fn new_secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The socket directory, mode 1777: the proxy (the sandbox user) makes its socket there,
/// and sandboxes connect to it.
fn make_socket_dir(dir: &std::path::Path) -> Result<(), EgressError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |source| EgressError::Dir {
        path: dir.to_path_buf(),
        parent: dir.parent().unwrap_or(dir).to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).map_err(fail)
}

/// Lines from arbitrary chunks, holding at most `max` bytes of an unfinished line; a
/// longer line is skipped to its end (logged once), never buffered.
pub struct LineReader {
    buf: Vec<u8>,
    max: usize,
    skipping: bool,
}

impl LineReader {
    pub fn new(max: usize) -> LineReader {
        LineReader {
            buf: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// Feed a chunk; the lines it completed, without their newline.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        loop {
            let end = rest.iter().position(|&b| b == b'\n');
            let part = &rest[..end.unwrap_or(rest.len())];
            if !self.skipping {
                if self.buf.len() + part.len() > self.max {
                    tracing::warn!(max = self.max, "skipped an egress proxy line over the cap");
                    self.buf.clear();
                    self.skipping = true;
                } else {
                    self.buf.extend_from_slice(part);
                }
            }
            match end {
                Some(pos) => {
                    if !std::mem::take(&mut self.skipping) {
                        lines.push(std::mem::take(&mut self.buf));
                    }
                    rest = &rest[pos + 1..];
                }
                None => return lines,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_reassembled_and_long_ones_skipped() {
        let mut r = LineReader::new(8);
        assert_eq!(r.push(b"ab"), Vec::<Vec<u8>>::new());
        assert_eq!(r.push(b"c\nde\nf"), vec![b"abc".to_vec(), b"de".to_vec()]);
        // Over the cap: dropped to its end, and the next line is whole.
        assert_eq!(r.push(b"123456789"), Vec::<Vec<u8>>::new());
        assert_eq!(r.push(b"0123\nok\n"), vec![b"ok".to_vec()]);
        assert!(r.buf.is_empty() && !r.skipping);
    }

    #[test]
    fn counts_are_bounded_per_verdict_and_keep_the_first_reason() {
        let mut c = Counts::default();
        for i in 0..(MAX_ENTRIES + 10) {
            c.record(&format!("h{i}.test"), 443, true, None);
        }
        c.record("h0.test", 443, true, None);
        c.record(
            "Denied.TEST",
            443,
            false,
            Some("not in this session's allow-list"),
        );
        c.record("denied.test", 443, false, Some("other"));
        let r = c.report();
        assert_eq!(r.allowed.len(), MAX_ENTRIES);
        assert_eq!(r.more, 10);
        assert_eq!(
            r.allowed
                .iter()
                .find(|e| e.host == "h0.test")
                .unwrap()
                .count,
            2
        );
        assert_eq!(
            r.denied,
            [Connection {
                host: "denied.test".into(),
                port: 443,
                count: 2,
                reason: Some("not in this session's allow-list".into()),
            }]
        );
        assert_eq!(
            r.blocked_lines(),
            ["blocked: denied.test:443 (not in this session's allow-list), 2 times"]
        );
    }

    #[test]
    fn an_ipv6_host_is_bracketed_in_a_blocked_line() {
        let r = NetworkReport {
            denied: vec![Connection {
                host: "::1".into(),
                port: 80,
                count: 1,
                reason: Some("resolves to a private address ::1".into()),
            }],
            ..Default::default()
        };
        assert_eq!(
            r.blocked_lines(),
            ["blocked: [::1]:80 (resolves to a private address ::1)"]
        );
    }
}
