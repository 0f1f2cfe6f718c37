//! MCP's older HTTP+SSE transport (protocol 2024-11-05) at `GET /sse` and
//! `POST /messages`, for clients that speak only that one.
//!
//! rmcp 3.9 has no server for it (its SSE server transport was removed when the
//! specification replaced it with streamable HTTP), so this is a thin adapter over the same
//! [`Server`]: a `GET /sse` opens an event stream whose first event (`endpoint`) names
//! `/messages?sessionId=ID`, and runs an rmcp service loop for it whose [`Transport`] is two
//! bounded channels. Each `POST /messages?sessionId=ID` carries one JSON-RPC message into
//! that loop and is answered `202 Accepted` at once; every answer and notification travels
//! on the stream as an event `message`. The stream's end (the client went, or shutdown)
//! ends the loop.
//!
//! Everything `/mcp` promises holds here, because the routes sit behind the same layers
//! in [`crate::http`] and the calls reach the same tool layer: the bearer token names the
//! [`Client`] (401 without one); a stream answers only the client that opened it (another
//! client's `sessionId` is `404`, like one that never existed); a body over
//! `server.max_message` is refused with 413 naming it; quotas and ownership of sandbox
//! sessions are the engine's, whatever the transport. Each stream has the per-stream bound
//! of rmcp's streamable HTTP sessions: 16 messages queued each way ([`CHANNEL`]); a client
//! that stops reading slows only its own stream. On loopback without tokens the `Host`
//! header is checked against the same names as `/mcp` (DNS rebinding). Calls naming a
//! session keep their arrival order, as over stdio ([`crate::order`]): one stream is one
//! ordered channel, like a stdio pipe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use rmcp::model::{ClientJsonRpcMessage, GetExtensions};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::{RoleServer, ServiceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::order::Arrivals;
use crate::Server;

/// Messages queued per stream, each way: the capacity rmcp's streamable HTTP sessions give
/// each stream (`SessionConfig::channel_capacity`). A POST waits while its stream's loop
/// has 16 unread messages; the loop waits while the client has 16 unread events.
pub const CHANNEL: usize = 16;
/// An idle stream gets a comment this often, as rmcp's streamable HTTP streams do, so
/// proxies and clients with read time-outs keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Where the `endpoint` event sends the client's messages.
pub const MESSAGES: &str = "/messages";

/// The legacy transport's state, shared by its two routes. A cheap clone.
#[derive(Clone)]
pub struct Legacy {
    shared: Arc<Shared>,
}

struct Shared {
    /// Cloned into each stream's service loop: a clone of `Arc`s, so every stream shares
    /// the one engine, pool and registry, as `/mcp`'s sessions do.
    server: Server,
    /// Stream id → who opened it and where its messages go. A std mutex: it is never held
    /// across an `.await`.
    streams: Mutex<HashMap<String, Stream>>,
    /// rmcp's sessions token of the HTTP service: cancelling it ends every stream too.
    stop: CancellationToken,
    /// The `Host` names accepted, or `None` for any (with tokens; see `crate::http`).
    allowed_hosts: Option<Vec<String>>,
    /// `server.max_message`: the largest POST body read.
    max_message: usize,
    /// Turns for calls that name a session, in the order each stream's POSTs arrived.
    arrivals: Arrivals,
}

/// One open stream.
struct Stream {
    owner: Client,
    inbound: mpsc::Sender<RxJsonRpcMessage<RoleServer>>,
}

impl Legacy {
    pub fn new(
        server: Server,
        stop: &CancellationToken,
        allowed_hosts: Option<Vec<String>>,
        max_message: u64,
        arrivals: Arrivals,
    ) -> Legacy {
        Legacy {
            shared: Arc::new(Shared {
                server,
                streams: Mutex::default(),
                stop: stop.clone(),
                allowed_hosts,
                max_message: usize::try_from(max_message).unwrap_or(usize::MAX),
                arrivals,
            }),
        }
    }

    /// `GET /sse` and `POST /messages`. The caller puts them behind the auth layer.
    pub fn router(self) -> Router {
        Router::new()
            .route("/sse", get(open))
            .route(MESSAGES, post(message))
            .with_state(self)
    }

    /// How many streams are open (for tests and logs).
    pub fn open_streams(&self) -> usize {
        self.shared.streams.lock().expect("streams lock").len()
    }

    /// The stream `id`'s inbound queue, if it is open and `client` opened it.
    fn inbound(
        &self,
        id: &str,
        client: &Client,
    ) -> Option<mpsc::Sender<RxJsonRpcMessage<RoleServer>>> {
        let streams = self.shared.streams.lock().expect("streams lock");
        streams
            .get(id)
            .filter(|s| &s.owner == client)
            .map(|s| s.inbound.clone())
    }
}

/// `GET /sse`: open a stream, run a service loop for it, send the `endpoint` event first.
async fn open(State(legacy): State<Legacy>, req: Request) -> Response {
    let shared = &legacy.shared;
    if let Some(refused) = check_host(shared.allowed_hosts.as_deref(), req.headers()) {
        return refused;
    }
    let Some(client) = req.extensions().get::<Client>().cloned() else {
        return no_client();
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (inbound, from_posts) = mpsc::channel(CHANNEL);
    let (to_stream, outbound) = mpsc::channel::<TxJsonRpcMessage<RoleServer>>(CHANNEL);
    let ct = shared.stop.child_token();
    shared.streams.lock().expect("streams lock").insert(
        id.clone(),
        Stream {
            owner: client.clone(),
            inbound,
        },
    );
    tracing::info!(%client, stream = %id, "legacy SSE stream opened");
    let transport = Channels {
        from_posts,
        to_stream,
        ct: ct.clone(),
    };
    tokio::spawn({
        let legacy = legacy.clone();
        let (id, ct) = (id.clone(), ct.clone());
        async move {
            match legacy
                .shared
                .server
                .clone()
                .serve_with_ct(transport, ct)
                .await
            {
                Ok(running) => {
                    let _ = running.waiting().await;
                }
                Err(e) => {
                    tracing::debug!(stream = %id, error = %e, "a legacy SSE stream ended before its initialize")
                }
            }
            legacy
                .shared
                .streams
                .lock()
                .expect("streams lock")
                .remove(&id);
            tracing::info!(%client, stream = %id, "legacy SSE stream closed");
        }
    });
    // The client going away drops the body, and with it this guard: the loop ends.
    let guard = ct.drop_guard();
    let endpoint = Event::default()
        .event("endpoint")
        .data(format!("{MESSAGES}?sessionId={id}"));
    let mut outbound = outbound;
    let messages = futures::stream::poll_fn(move |cx| outbound.poll_recv(cx)).map(move |message| {
        let _stream_open = &guard;
        let data = serde_json::to_string(&message).unwrap_or_default();
        Ok::<_, std::convert::Infallible>(Event::default().event("message").data(data))
    });
    let events = futures::stream::once(async { Ok(endpoint) }).chain(messages);
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// `POST /messages?sessionId=ID`: one JSON-RPC message for the caller's own stream.
async fn message(State(legacy): State<Legacy>, req: Request) -> Response {
    let shared = &legacy.shared;
    if let Some(refused) = check_host(shared.allowed_hosts.as_deref(), req.headers()) {
        return refused;
    }
    let Some(client) = req.extensions().get::<Client>().cloned() else {
        return no_client();
    };
    let Some(id) = req.uri().query().and_then(stream_id) else {
        return (
            StatusCode::BAD_REQUEST,
            "Bad Request: the sessionId query parameter is missing; open a stream with GET /sse \
             and post to the endpoint its first event names\n",
        )
            .into_response();
    };
    // Another client's stream is exactly one that does not exist.
    let Some(inbound) = legacy.inbound(&id, &client) else {
        return (StatusCode::NOT_FOUND, "Not Found: Session not found\n").into_response();
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, shared.max_message).await {
        Ok(bytes) => bytes,
        // `crate::http::name_the_limit` writes the body that names server.max_message.
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let mut message = match serde_json::from_slice::<ClientJsonRpcMessage>(&bytes) {
        Ok(message) => message,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("Bad Request: not a JSON-RPC message: {e}\n"),
            )
                .into_response()
        }
    };
    crate::order::stamp(&shared.arrivals, &mut message);
    // The tool layer finds the caller in the request's parts, as rmcp passes them for /mcp.
    match &mut message {
        ClientJsonRpcMessage::Request(r) => {
            r.request.extensions_mut().insert(parts);
        }
        ClientJsonRpcMessage::Notification(n) => {
            n.notification.extensions_mut().insert(parts);
        }
        _ => {}
    }
    if inbound.send(message).await.is_err() {
        return (StatusCode::NOT_FOUND, "Not Found: Session not found\n").into_response();
    }
    StatusCode::ACCEPTED.into_response()
}

/// The stream id of a `/messages` query: `sessionId` (what this server sends), or
/// `session_id` (what some servers send, and the Python SDK also reads).
fn stream_id(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (matches!(key, "sessionId" | "session_id") && !value.is_empty()).then(|| value.to_string())
    })
}

/// With an allow-list, a `Host` whose name is not on it gets 403, as rmcp answers on
/// `/mcp`; no `Host` at all gets 400.
fn check_host(allowed: Option<&[String]>, headers: &HeaderMap) -> Option<Response> {
    let allowed = allowed?;
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return Some((StatusCode::BAD_REQUEST, "Bad Request: missing Host header").into_response());
    };
    let name = match host.parse::<http::uri::Authority>() {
        Ok(authority) => authority.host().to_string(),
        Err(_) => host.to_string(),
    };
    let name = name.trim_matches(['[', ']']).to_ascii_lowercase();
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(&name)) {
        return None;
    }
    tracing::warn!(%host, "refused a legacy SSE request with a Host that is not allowed (possible DNS rebinding)");
    Some(
        (
            StatusCode::FORBIDDEN,
            "Forbidden: Host header is not allowed",
        )
            .into_response(),
    )
}

/// Cannot happen behind the auth layer; refused rather than served as `local`.
fn no_client() -> Response {
    Response::builder()
        .status(StatusCode::INTERNAL_SERVER_ERROR)
        .body(Body::from("this HTTP request carries no client identity\n"))
        .expect("a valid response")
}

/// One stream's side of its service loop: messages from its POSTs in, messages for its
/// event stream out, both bounded by [`CHANNEL`].
struct Channels {
    from_posts: mpsc::Receiver<RxJsonRpcMessage<RoleServer>>,
    to_stream: mpsc::Sender<TxJsonRpcMessage<RoleServer>>,
    /// The stream's end: the client went, or the service shut down.
    ct: CancellationToken,
}

impl Transport<RoleServer> for Channels {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        let to_stream = self.to_stream.clone();
        async move {
            to_stream.send(item).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the legacy SSE stream's client has gone",
                )
            })
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        tokio::select! {
            message = self.from_posts.recv() => message,
            _ = self.ct.cancelled() => None,
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_id_is_read_from_either_spelling() {
        assert_eq!(stream_id("sessionId=abc").as_deref(), Some("abc"));
        assert_eq!(stream_id("x=1&session_id=def").as_deref(), Some("def"));
        assert_eq!(stream_id("sessionId="), None);
        assert_eq!(stream_id("other=abc"), None);
    }

    #[test]
    fn hosts_off_the_list_are_forbidden_and_ports_do_not_matter() {
        let allowed = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        let with = |host: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().unwrap());
            check_host(Some(&allowed), &h).map(|r| r.status())
        };
        assert_eq!(with("127.0.0.1:8002"), None);
        assert_eq!(with("LOCALHOST:1"), None);
        assert_eq!(with("[::1]:8002"), None);
        assert_eq!(with("evil.example:8002"), Some(StatusCode::FORBIDDEN));
        assert_eq!(
            check_host(Some(&allowed), &HeaderMap::new()).map(|r| r.status()),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            check_host(None, &HeaderMap::new()).map(|r| r.status()),
            None
        );
    }
}
