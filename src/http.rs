//! The HTTP service: MCP's streamable HTTP transport at `/mcp` (rmcp's
//! `StreamableHttpService` in axum), bearer-token authentication, `/health`, `/ready` and
//! `/metrics` (from [`crate::metrics`]; behind the same auth layer unless
//! `server.metrics_public`).
//!
//! [`plan`] decides, before anything binds, who may call: the clients of
//! `server.tokens_file`, or on a loopback address without tokens the one client `local`.
//! A non-loopback address without tokens is refused. The auth layer turns every `/mcp`
//! request's bearer token into a [`Client`] in the request's extensions, where the tool
//! layer finds it; a missing or wrong token gets 401 with `WWW-Authenticate: Bearer`.
//! The same layer binds each MCP session (`Mcp-Session-Id`) to the client that opened it:
//! any other client presenting that id is answered as for an id that never existed.
//!
//! [`start`] hands back a [`Serving`] that `main` stops in steps around the engine's drain:
//! [`Serving::drain`] turns new clients away (`/ready` answers 503; an `initialize` or a
//! stateless `server/discover` gets 503 with `Retry-After`) while the listener stays open
//! for the MCP sessions already there: their new connections, stream reconnects and
//! requests are served as before. [`Serving::close`] then lets the answers of finished
//! calls reach their clients (every POST to `/mcp` is counted until its response body
//! ends) and waits for `/mcp` to go quiet, before it closes the listener and ends the MCP
//! sessions.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use rmcp::transport::common::http_header::HEADER_SESSION_ID;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{bearer, Client, Tokens, TokensError};
use crate::config::ServerConfig;
use crate::{Engine, Server};

/// How long `/ready` waits for Docker to answer.
const READY_PROBE: Duration = Duration::from_secs(2);
/// The `Retry-After` of a new MCP session refused during the drain, in seconds: soon
/// enough to reach a replica that is up, or this daemon's successor once it has started.
const RETRY_AFTER: u64 = 5;
/// How long, once the engine has shut down, answers still being sent (and the requests
/// that follow them) get to reach their clients, and then open connections get to close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long `/mcp` must have had no POST, once the engine has shut down, before the
/// listener closes. A client that just got its answer may still ask something about it:
/// the official Python SDK lists the tools to check a result against the tool's output
/// schema, over a new connection if need be.
const QUIET: Duration = Duration::from_secs(1);

/// Who may call an HTTP daemon.
#[derive(Debug, Clone)]
pub enum Access {
    /// Loopback without tokens: every request is the client `local`.
    Local,
    /// Every request needs one of these bearer tokens.
    Tokens(Arc<Tokens>),
}

/// Where to listen and who may call, decided and checked before anything binds.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub access: Access,
}

/// Why the HTTP service will not start. `main` exits with code 2 for these.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("refusing to serve on {addr}: it is not a loopback address and no tokens file is set (server.tokens_file), so anyone who can reach it could run code here. Create a file with one `NAME TOKEN` line per client and pass it with PYTHON_DOCKER_MCP_TOKENS_FILE=PATH (or `--set server.tokens_file=PATH`), or bind to 127.0.0.1")]
    OpenToTheNetwork { addr: SocketAddr },
    #[error(transparent)]
    Tokens(#[from] TokensError),
}

/// The HTTP plan for these settings: `None` serves stdio. Reads the tokens file.
pub fn plan(server: &ServerConfig) -> Result<Option<Plan>, StartError> {
    let Some(addr) = server.http else {
        return Ok(None);
    };
    let access = match &server.tokens_file {
        Some(path) => Access::Tokens(Arc::new(Tokens::load(path)?)),
        None if addr.ip().is_loopback() => Access::Local,
        None => return Err(StartError::OpenToTheNetwork { addr }),
    };
    Ok(Some(Plan { addr, access }))
}

/// The MCP transport's settings. rmcp checks the `Host` header against loopback names
/// by default, which guards an unauthenticated loopback server against DNS rebinding; the
/// bound address is added so `127.0.0.2:PORT` works too. With tokens every request must
/// carry a secret a rebinding page cannot know, and clients reach the daemon by names
/// only the operator knows (a host name, a load balancer), so the check is off.
fn transport_config(
    plan: &Plan,
    stop: &CancellationToken,
    max_message: u64,
) -> StreamableHttpServerConfig {
    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(stop.child_token())
        .with_max_request_body_bytes(usize::try_from(max_message).unwrap_or(usize::MAX));
    match allowed_hosts(plan) {
        Some(hosts) => config.with_allowed_hosts(hosts),
        None => config.disable_allowed_hosts(),
    }
}

/// The `Host` names accepted on loopback without tokens (see [`transport_config`]); `None`
/// with tokens: any name.
fn allowed_hosts(plan: &Plan) -> Option<Vec<String>> {
    match &plan.access {
        Access::Local => {
            let mut hosts = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
            if let IpAddr::V4(ip) = plan.addr.ip() {
                hosts.push(ip.to_string());
            }
            Some(hosts)
        }
        Access::Tokens(_) => None,
    }
}

impl Plan {
    /// Whether several clients share the daemon (a tokens file of more than one client).
    pub fn several_clients(&self) -> bool {
        matches!(&self.access, Access::Tokens(tokens) if tokens.names().len() > 1)
    }

    /// Every client that may call.
    pub fn clients(&self) -> Vec<Client> {
        match &self.access {
            Access::Local => vec![Client::local()],
            Access::Tokens(tokens) => tokens.names().into_iter().map(Client::new).collect(),
        }
    }
}

/// The auth layer's state: who may call, and which client opened each MCP session.
#[derive(Clone)]
struct Gate {
    access: Access,
    manager: Arc<LocalSessionManager>,
    /// `Mcp-Session-Id` → the client it was issued to. Swept of ids rmcp has forgotten
    /// whenever it doubles (see [`Gate::bind`]).
    owners: Arc<Mutex<Owners>>,
}

#[derive(Default)]
struct Owners {
    by_id: HashMap<String, Client>,
    /// The map's size after the last sweep.
    swept: usize,
}

/// Sweep the session map once it has this many entries and has doubled since the last.
const SWEEP_FLOOR: usize = 64;

impl Gate {
    /// Whether `client` may use the MCP session `id`: unknown ids pass (rmcp answers them).
    fn may_use(&self, id: &str, client: &Client) -> bool {
        let owners = self.owners.lock().expect("owners lock");
        owners.by_id.get(id).is_none_or(|owner| owner == client)
    }

    /// Remember that `client` opened the MCP session `id`, then, if the map has doubled
    /// since the last sweep, forget the ids rmcp no longer knows.
    async fn bind(&self, id: String, client: Client) {
        let ids: Vec<String> = {
            let mut owners = self.owners.lock().expect("owners lock");
            owners.by_id.insert(id, client);
            let len = owners.by_id.len();
            if len < SWEEP_FLOOR.max(2 * owners.swept) {
                return;
            }
            owners.by_id.keys().cloned().collect()
        };
        let live = self.manager.sessions.read().await;
        let gone: Vec<String> = ids
            .into_iter()
            .filter(|id| !live.contains_key(id.as_str()))
            .collect();
        drop(live);
        let mut owners = self.owners.lock().expect("owners lock");
        for id in gone {
            owners.by_id.remove(&id);
        }
        owners.swept = owners.by_id.len();
    }
}

/// The whole HTTP application: `/mcp` behind the auth layer, `/health` and `/ready` open,
/// `/metrics` behind the auth layer unless `server.metrics_public`. `stop` ends the MCP
/// sessions; `posts` counts the POSTs to `/mcp` (see [`Posts`]); once
/// `draining` fires, `/ready` answers 503 and new MCP sessions are refused.
pub fn router(
    engine: Engine,
    plan: &Plan,
    stop: &CancellationToken,
    posts: &Posts,
    draining: &CancellationToken,
) -> Router {
    let server = Server::new(engine.clone());
    // The factory runs once per MCP session (and per stateless request): a clone of
    // `Arc`s, so every session shares the one engine, pool and registry.
    let manager = Arc::new(LocalSessionManager::default());
    let mcp = StreamableHttpService::new(
        {
            let server = server.clone();
            move || Ok(server.clone())
        },
        manager.clone(),
        transport_config(plan, stop, crate::files::message_limit(engine.config())),
    );
    let gate = Gate {
        access: plan.access.clone(),
        manager,
        owners: Default::default(),
    };
    let auth = middleware::from_fn_with_state(gate, authenticate);
    let newcomers = Newcomers {
        draining: draining.clone(),
        max_message: usize::try_from(crate::files::message_limit(engine.config()))
            .unwrap_or(usize::MAX),
    };
    let mut mcp = Router::new().nest_service("/mcp", mcp);
    if engine.config().server.legacy_sse {
        let legacy = crate::sse::Legacy::new(
            server,
            stop,
            allowed_hosts(plan),
            crate::files::message_limit(engine.config()),
            engine.arrivals(),
        );
        mcp = mcp.merge(legacy.router());
    }
    let mcp = mcp
        .layer(middleware::from_fn_with_state(newcomers, refuse_newcomers))
        .layer(middleware::map_response_with_state(
            crate::files::message_limit(engine.config()),
            name_the_limit,
        ))
        .layer(auth.clone())
        .layer(middleware::from_fn_with_state(posts.clone(), count_posts));
    let metrics = metrics_router(engine.clone(), plan.clients());
    let metrics = match engine.config().server.metrics_public {
        true => metrics,
        false => metrics.layer(auth),
    };
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state((engine, draining.clone()))
        .merge(mcp)
        .merge(metrics)
}

/// Listen on the plan's address (before the engine starts any sandbox).
pub async fn bind(plan: &Plan) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(plan.addr)
        .await
        .with_context(|| format!("cannot listen on {} (server.http)", plan.addr))
}

/// A running HTTP service. `main` stops it in steps around the engine's drain.
pub struct Serving {
    /// The axum server task; it ends by itself only on an error.
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Fired to stop accepting: the listener closes, open connections finish their requests.
    accept: CancellationToken,
    /// Fired when the drain begins: `/ready` and new MCP sessions get 503.
    draining: CancellationToken,
    /// rmcp's token: cancelling it ends every MCP session and its streams.
    sessions: CancellationToken,
    /// POSTs to `/mcp`: the open ones (a call's answer travels in one), and how many came.
    posts: Posts,
}

/// Start serving on `listener` (bound by [`bind`]) in the background.
pub async fn start(
    engine: Engine,
    plan: Plan,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<Serving> {
    let local = listener.local_addr()?;
    let clients = match &plan.access {
        Access::Local => vec![crate::client::LOCAL],
        Access::Tokens(tokens) => tokens.names(),
    };
    tracing::info!(url = %format!("http://{local}/mcp"), ?clients, "serving MCP over streamable HTTP");
    if engine.config().server.legacy_sse {
        tracing::info!(sse = %format!("http://{local}/sse"), "also serving MCP's legacy HTTP+SSE transport (2024-11-05; server.legacy_sse)");
    }
    let accept = CancellationToken::new();
    let sessions = CancellationToken::new();
    let posts = Posts::default();
    let draining = CancellationToken::new();
    let app = router(engine, &plan, &sessions, &posts, &draining);
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let accept = accept.clone();
        async move { accept.cancelled().await }
    });
    Ok(Serving {
        server: tokio::spawn(async move { server.await }),
        accept,
        draining,
        sessions,
        posts,
    })
}

impl Serving {
    /// Completes only if the server stops by itself (it failed).
    pub async fn failed(&mut self) -> anyhow::Result<()> {
        Ok((&mut self.server)
            .await
            .context("the HTTP server task failed")??)
    }

    /// Begin the drain: `/ready` answers 503, and new MCP sessions are refused with 503
    /// and `Retry-After` (see [`refuse_newcomers`]). The listener stays open: a client
    /// of an existing session opens new connections (a stream's reconnect, a POST while
    /// another one streams), and refusing those would lose the answers the drain waits
    /// for.
    pub fn drain(&self) {
        self.draining.cancel();
    }

    /// After the engine has drained and shut down: wait (up to [`CLOSE_GRACE`]) until the
    /// answers still being sent have reached their clients and `/mcp` has had no POST for
    /// [`QUIET`], then close the listener, end the MCP sessions, and give the connections
    /// [`CLOSE_GRACE`] to close.
    pub async fn close(mut self) {
        self.draining.cancel();
        self.posts.open.close();
        if tokio::time::timeout(CLOSE_GRACE, self.posts.quiet())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?CLOSE_GRACE, open = self.posts.open.len(), "answers still being sent, or requests still coming, after the grace period; closing them");
        }
        self.accept.cancel();
        self.sessions.cancel();
        if tokio::time::timeout(CLOSE_GRACE, &mut self.server)
            .await
            .is_err()
        {
            tracing::warn!(grace = ?CLOSE_GRACE, "HTTP connections still open after the grace period; closing them");
            self.server.abort();
        }
    }
}

/// The drain layer's state.
#[derive(Clone)]
struct Newcomers {
    /// Fired when the drain begins.
    draining: CancellationToken,
    /// `server.max_message`: the most of a body read to see its method (rmcp reads as much).
    max_message: usize,
}

/// During the drain, refuse what opens a new MCP session with 503 and `Retry-After`:
/// a `GET /sse` (a new legacy SSE stream), an `initialize` POST without `Mcp-Session-Id`,
/// and the stateless `server/discover`
/// (2026-07-28 has no sessions; discover is how a new client begins). Everything else is
/// served: the requests and streams of existing MCP sessions, and stateless requests
/// other than discover, which belong to clients already here (`tasks/get` of a task the
/// drain waits for); a new tool call among them gets the engine's answer, "the server is
/// shutting down", in both generations. Only a POST without a session id is read ahead,
/// and only while draining.
async fn refuse_newcomers(State(gate): State<Newcomers>, req: Request, next: Next) -> Response {
    if gate.draining.is_cancelled() && req.method() == Method::GET && req.uri().path() == "/sse" {
        tracing::info!("refused a new legacy SSE stream: draining");
        return draining_refusal();
    }
    if !gate.draining.is_cancelled()
        || req.method() != Method::POST
        || req.headers().contains_key(HEADER_SESSION_ID)
    {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, gate.max_message).await {
        Ok(bytes) => bytes,
        // Over the limit, as rmcp would say (`name_the_limit` names it); a body cut off
        // midway gets the same, and its client is gone.
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    if opens_a_session(&bytes) {
        tracing::info!("refused a new MCP session: draining");
        return draining_refusal();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Whether a POST body without a session id asks for a new MCP session. Anything that is
/// not a JSON-RPC request rmcp answers as it always does.
fn opens_a_session(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        method: Option<String>,
    }
    serde_json::from_slice::<Probe>(body)
        .ok()
        .and_then(|p| p.method)
        .is_some_and(|m| m == "initialize" || m == "server/discover")
}

/// `GET /metrics`, with the recorder installed. The caller decides whether it needs a
/// token (`server.metrics_public`). Every client that may call gets a `pdm_sessions`
/// series, 0 when it has no session.
fn metrics_router(engine: Engine, clients: Vec<Client>) -> Router {
    crate::metrics::install();
    Router::new()
        .route("/metrics", get(scrape))
        .with_state((engine, Arc::new(clients)))
}

/// Read the state gauges from the engine, then render every metric.
async fn scrape(State((engine, clients)): State<(Engine, Arc<Vec<Client>>)>) -> Response {
    let stats = engine.pool_stats();
    let mut sessions = engine.sessions_per_client();
    for client in clients.iter() {
        sessions.entry(client.clone()).or_insert(0);
    }
    let gauges = crate::metrics::Gauges {
        warm: stats.warm,
        creating: stats.creating,
        waiting: stats.waiting,
        sessions: sessions
            .into_iter()
            .map(|(client, n)| (client.name().to_string(), n))
            .collect(),
    };
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(gauges),
    )
        .into_response()
}

/// 503 with `Retry-After`: what a new MCP session gets during the drain, on every transport.
fn draining_refusal() -> Response {
    let text = format!(
        "Service Unavailable: the server is draining for a shutdown or restart and opens no \
         new MCP sessions; running calls may finish. Retry in {RETRY_AFTER} s\n"
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, RETRY_AFTER.to_string())],
        text,
    )
        .into_response()
}

/// The POSTs to `/mcp`, counted by [`count_posts`] for [`Serving::close`].
#[derive(Clone, Default)]
pub struct Posts {
    /// One token per POST from its arrival until its response body has been sent or
    /// dropped.
    open: TaskTracker,
    /// How many have arrived, so a wait for quiet sees one that came and went.
    arrived: Arc<AtomicU64>,
}

impl Posts {
    /// Returns once no POST is open and none has arrived for [`QUIET`] (`open` closed).
    async fn quiet(&self) {
        loop {
            self.open.wait().await;
            let seen = self.arrived.load(Ordering::SeqCst);
            tokio::time::sleep(QUIET).await;
            if self.arrived.load(Ordering::SeqCst) == seen && self.open.is_empty() {
                return;
            }
        }
    }
}

/// Count a POST from its arrival until its response body has been sent or dropped: a
/// tool call's answer travels in that body (an SSE stream or JSON), so shutdown waits for
/// these before it ends the MCP sessions, whose streams would stop mid-answer.
async fn count_posts(State(posts): State<Posts>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    posts.arrived.fetch_add(1, Ordering::SeqCst);
    let open = posts.open.token();
    let (parts, body) = next.run(req).await.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _counted = &open;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// Resolve the caller: a valid bearer token's client, or `local` without tokens. Anything
/// else is 401 with `WWW-Authenticate: Bearer` and no body. The token is never logged.
/// Then hold the caller to the MCP sessions it opened.
async fn authenticate(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let client = match &gate.access {
        Access::Local => Client::local(),
        Access::Tokens(tokens) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| bearer(v.as_bytes()));
            match presented.and_then(|t| tokens.client(t)) {
                Some(client) => client,
                None => {
                    tracing::debug!(
                        had_header = presented.is_some(),
                        "refused a request without a valid bearer token"
                    );
                    return unauthorized();
                }
            }
        }
    };
    tracing::trace!(%client, method = %req.method(), "request");
    let session = req
        .headers()
        .get(HEADER_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = &session {
        if !gate.may_use(id, &client) {
            // rmcp answers with what it says to an id that never existed, whatever the
            // method (404 for a request or a stream, 202 for a DELETE that closes nothing).
            tracing::info!(%client, "another client's MCP session id, treated as unknown");
            let never = format!("not-yours-{}", uuid::Uuid::new_v4());
            let value = header::HeaderValue::from_str(&never).expect("an ASCII header value");
            req.headers_mut().insert(HEADER_SESSION_ID, value);
        }
    }
    req.extensions_mut().insert(client.clone());
    let response = next.run(req).await;
    if session.is_none() {
        let issued = response
            .headers()
            .get(HEADER_SESSION_ID)
            .and_then(|v| v.to_str().ok());
        if let Some(id) = issued {
            gate.bind(id.to_owned(), client).await;
        }
    }
    response
}

fn unauthorized() -> Response {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(header::WWW_AUTHENTICATE, "Bearer")
        .body(Body::empty())
        .expect("a valid response")
}

/// A request body over the limit gets 413 from rmcp; say which setting that is and what
/// to do, like the stdio transport does.
async fn name_the_limit(State(max): State<u64>, response: Response) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let text = format!(
        "Payload Too Large: the request is over the {} limit of one message \
         (server.max_message); it was not read. Send less per call (upload a large file in \
         several parts), or raise server.max_message (PYTHON_DOCKER_MCP_MAX_MESSAGE)\n",
        crate::text::size(max)
    );
    (StatusCode::PAYLOAD_TOO_LARGE, text).into_response()
}

/// 200 while the process serves.
async fn health() -> &'static str {
    "ok\n"
}

/// 200 when Docker answers and a warm sandbox is ready (or the pool is off); 503 with a
/// JSON reason otherwise, and at once from the start of the drain.
async fn ready(State((engine, draining)): State<(Engine, CancellationToken)>) -> Response {
    let not_ready = |reason: String| {
        let body = serde_json::json!({ "ready": false, "reason": reason });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    };
    if draining.is_cancelled() {
        return not_ready(
            "draining: the server is shutting down; existing MCP sessions are served until \
             their running calls finish, new ones are refused"
                .into(),
        );
    }
    let version = match tokio::time::timeout(READY_PROBE, engine.backend().ping()).await {
        Err(_) => return not_ready(format!("Docker did not answer within {READY_PROBE:?}")),
        Ok(Err(e)) => return not_ready(e.to_string()),
        Ok(Ok(version)) => version,
    };
    let d = &engine.config().docker;
    let stats = engine.pool_stats();
    let pooled = d.pool_enabled && d.pool_size > 0;
    if pooled && stats.warm == 0 {
        return not_ready(format!(
            "the pool has no warm sandbox yet ({} being created, {} creations failed so far)",
            stats.creating, stats.creation_failures
        ));
    }
    let body = serde_json::json!({
        "ready": true,
        "docker": version,
        "pool": if pooled { "on" } else { "off" },
        "warm": stats.warm,
    });
    (StatusCode::OK, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(http: &str, tokens: Option<&str>) -> ServerConfig {
        ServerConfig {
            http: Some(http.parse().unwrap()),
            tokens_file: tokens.map(Into::into),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn stdio_without_an_address() {
        assert!(plan(&ServerConfig::default()).unwrap().is_none());
    }

    #[test]
    fn loopback_without_tokens_is_the_local_client() {
        for addr in ["127.0.0.1:0", "[::1]:8002", "127.0.0.2:1"] {
            let p = plan(&server(addr, None)).unwrap().unwrap();
            assert!(matches!(p.access, Access::Local), "{addr}");
        }
    }

    #[test]
    fn off_loopback_without_tokens_is_refused_with_the_fix() {
        for addr in ["0.0.0.0:0", "[::]:8002", "10.1.2.3:8002"] {
            let e = plan(&server(addr, None)).unwrap_err().to_string();
            assert!(
                e.contains("not a loopback address")
                    && e.contains("PYTHON_DOCKER_MCP_TOKENS_FILE")
                    && e.contains("127.0.0.1"),
                "{e}"
            );
        }
    }

    #[test]
    fn only_initialize_and_discover_open_a_session() {
        let opens = |body: serde_json::Value| opens_a_session(body.to_string().as_bytes());
        assert!(opens(
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize"})
        ));
        assert!(opens(
            serde_json::json!({"jsonrpc": "2.0", "id": "a", "method": "server/discover", "params": {}})
        ));
        for other in [
            "tools/call",
            "tools/list",
            "tasks/get",
            "notifications/cancelled",
        ] {
            assert!(
                !opens(serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": other})),
                "{other}"
            );
        }
        assert!(!opens(
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {}})
        ));
        assert!(!opens_a_session(b"not json"));
        assert!(!opens_a_session(
            br#"[{"jsonrpc": "2.0", "id": 1, "method": "initialize"}]"#
        ));
    }

    #[test]
    fn a_missing_tokens_file_is_named() {
        let e = plan(&server("0.0.0.0:0", Some("/nonexistent/pdm-tokens")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/pdm-tokens"), "{e}");
    }
}
