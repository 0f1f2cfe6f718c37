//! The MCP tool surface: parse arguments, call the [`Engine`], render the result.
//!
//! Tool names and arguments are the original's. Every result has readable text for the
//! model and `structuredContent` under a published `outputSchema`. A Python exception, a
//! time-out or a Docker problem is a result with `isError: true`. Arguments that do not fit
//! a tool's input schema are refused by rmcp before a method here runs, as an `isError`
//! result saying what does not fit: serde names a missing field, and for a wrong type says
//! what was expected (MCP 2025-11-25: input validation errors are tool errors, so the model
//! can correct itself). An unknown tool or a malformed message is a JSON-RPC error.
//!
//! Every call acts for a [`Client`]: over stdio, `local`; over HTTP, the client the
//! request's bearer token names, which the HTTP layer puts into the request's extensions
//! (rmcp hands each request's `http::request::Parts` to the handler in the request
//! context). An HTTP request that arrives without one is refused, never served as `local`.
//!
//! Executions and installs go through `Server::run`: for a client that declares the MCP
//! tasks extension, a run still going after `server.task_after` becomes a task
//! ([`crate::tasks`]); every other call blocks until its result, as before.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock as Content, CreateTaskResult,
    ErrorData, GetTaskParams, GetTaskResult, Implementation, JsonObject,
    ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::{tool, tool_handler, tool_router, ServerHandler};
use schemars::transform::{RestrictFormats, Transform};
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rmcp::model::ProgressNotificationParam;
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use tokio::sync::mpsc;

use crate::client::Client;
use crate::egress::daemon::{AskUser, ASK_WITHIN};
use crate::engine::{
    CallContext, Engine, ExecError, ExecResult, FileList, FileOpError, InstallResult,
};
use crate::files::{self, FileData, FileEntry, FileError, FileInput};
use crate::metrics::{Timed as _, TimedRun as _};
use crate::order::Turn;
use crate::repl::{OutputChunk, Package, PeakScope, Variable};
use crate::tasks::{Tail, Tasks};

/// Arguments of `execute-transient`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct TransientArgs {
    /// Python source code to run. If it ends with an expression, its repr is returned as `value`.
    pub code: String,
    /// Variables to define before the code runs, as a JSON object (name -> value). The
    /// result's `state` holds the JSON-serialisable top-level variables afterwards, so you
    /// can pass it to the next call to carry data forward.
    #[serde(default)]
    pub state: Option<serde_json::Map<String, serde_json::Value>>,
    /// Packages to install into this run's sandbox before the code runs, e.g. `["rich"]`.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Seconds the code may run before it is interrupted. Omit it for the server's default
    /// (usually 30 s); ask for more for a long run, up to the server's cap (usually 30
    /// minutes; a larger value is refused with the cap named).
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Files to write into the working directory before the code runs: path -> content,
    /// where content is text, or `{"base64": "..."}` for bytes. Files the run creates or
    /// changes come back embedded in the result.
    #[serde(default)]
    pub files: Option<BTreeMap<String, FileInput>>,
    /// Hosts this run may reach over HTTP(S), e.g. `["api.example.com", "*.example.org:8443"]`.
    /// A pattern is a host name (that name exactly), `*.name` (its subdomains, not the name
    /// itself), an IP address or a CIDR, optionally with `:port` (no port means 80 and
    /// 443). Every pattern must be within the operator's allow-list (`network.allow`), or the
    /// call is refused naming it. Clients that honour HTTP_PROXY/HTTPS_PROXY (urllib,
    /// requests, httpx, pip, git) go through the server's filtering proxy; raw sockets and
    /// DNS reach nothing. Refused connections are listed in the result. Omit it for no network.
    #[serde(default)]
    pub network: Option<Vec<String>>,
    /// The sandbox profile to run under, e.g. `browser` for a sandbox with Chromium and
    /// Playwright when the server has one. Omit it for `default`. An unknown name is
    /// refused with the list of the server's profiles.
    #[serde(default)]
    pub profile: Option<String>,
}

/// Arguments of `execute-persistent`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct PersistentArgs {
    /// Python source code to run. If it ends with an expression, its repr is returned as `value`.
    pub code: String,
    /// The session to run in, as returned by an earlier call. Omit it to start a new session;
    /// the result then begins with `Session ID: <id>`.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Packages to install into the session before the code runs, e.g. `["rich"]`.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Seconds the code may run before it is interrupted (the session keeps its variables).
    /// Omit it for the server's default (usually 30 s); ask for more for a long run, up to
    /// the server's cap (usually 30 minutes; a larger value is refused with the cap named).
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Hosts this session may reach over HTTP(S), e.g. `["api.example.com"]`: host names,
    /// `*.name` (subdomains only), IP addresses or CIDRs, optionally with `:port` (no port
    /// means 80 and 443), each within the operator's allow-list (`network.allow`). The
    /// session's first call sets its list; a later call may narrow it (each pattern within
    /// the session's list), never widen it; a later call without `network` keeps it. A
    /// session started without `network` has no network. Clients that honour
    /// HTTP_PROXY/HTTPS_PROXY (urllib, requests, pip, git) go through the server's filtering
    /// proxy; refused connections are listed in the result.
    #[serde(default)]
    pub network: Option<Vec<String>>,
    /// The sandbox profile to run under, e.g. `browser` for a sandbox with Chromium and
    /// Playwright when the server has one. Omit it for `default`. A session keeps the profile of
    /// its first call; later calls may omit it. An unknown name is
    /// refused with the list of the server's profiles.
    #[serde(default)]
    pub profile: Option<String>,
}

/// One requirement or several.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "`package_name` is one requirement (a string such as \"requests\") or a list of them"
)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// Arguments of `install-package`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct InstallArgs {
    /// A requirement, or a list of them: package names with optional extras and version
    /// specifiers, such as `requests`, `pandas>=2` or `["rich==13.7.1", "tomli-w"]`.
    /// Options, URLs, paths and shell syntax are refused.
    pub package_name: OneOrMany,
    /// Install into this session only. Omit it to install into your shared environment, which
    /// your later transient runs and sessions see (when several clients share the server,
    /// each has its own, seen by the runs and sessions it starts after its first such install).
    #[serde(default)]
    pub session_id: Option<String>,
}

/// Arguments of `list-packages`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListPackagesArgs {
    /// List what this session can import. Omit it to list the shared environment and the
    /// image's packages, as a transient run sees them.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// The structured result of `list-packages`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PackageList {
    /// Installed distributions, sorted by name.
    pub packages: Vec<Package>,
}

/// Arguments of `cleanup-session`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CleanupArgs {
    /// The session to end.
    pub session_id: String,
}

/// The structured result of `cleanup-session`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CleanupResult {
    /// The session that was ended.
    pub session_id: String,
    /// True when the session existed and its container was removed.
    pub removed: bool,
}

/// How `upload-file`'s content is encoded.
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text, written as is.
    #[default]
    Text,
    /// Bytes in standard base64.
    Base64,
}

/// Arguments of `upload-file`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct UploadArgs {
    /// The session to put the file into, as returned by execute-persistent.
    pub session_id: String,
    /// Where to write it: relative to the working directory (e.g. `data/input.csv`;
    /// directories are created), or absolute inside it or /tmp.
    pub path: String,
    /// The file's content: text, or base64 when `encoding` is `base64`.
    pub content: String,
    /// `text` (the default) or `base64` (for binary files).
    #[serde(default)]
    pub encoding: Encoding,
}

/// Arguments of `download-file`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DownloadArgs {
    /// The session, as returned by execute-persistent.
    pub session_id: String,
    /// The file: relative to the working directory, or absolute inside it or /tmp.
    pub path: String,
}

/// Arguments of `list-files`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListFilesArgs {
    /// The session, as returned by execute-persistent.
    pub session_id: String,
    /// The directory to list: relative to the working directory, or absolute inside it or
    /// /tmp. Omit it for the working directory.
    #[serde(default)]
    pub path: Option<String>,
}

/// The structured result of `upload-file`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Uploaded {
    pub session_id: String,
    /// The file's absolute path in the sandbox.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// The file as a resource (resources/read).
    pub uri: String,
}

/// The structured result of `download-file` (the bytes are in the embedded resource).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Downloaded {
    pub session_id: String,
    /// The path, relative to the working directory when inside it.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// The mime type guessed from its name.
    pub mime_type: String,
    /// The file as a resource (resources/read).
    pub uri: String,
}

/// The structured result of `list-files`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Listed {
    pub session_id: String,
    /// The directory listed, as an absolute path in the sandbox.
    pub path: String,
    /// Its entries, sorted by name.
    pub entries: Vec<FileEntry>,
    /// True when the directory has more than 2000 entries and only those are listed.
    pub truncated: bool,
}

/// The MCP server: a clone of the engine handle plus the tool router. Cheap to clone: the
/// HTTP service clones one per MCP session (and per stateless request).
#[derive(Clone)]
pub struct Server {
    engine: Engine,
    tool_router: ToolRouter<Server>,
    /// Long runs that became tasks; shared by every clone.
    tasks: Tasks,
}

impl Server {
    pub fn new(engine: Engine) -> Server {
        let mut tool_router = Self::tool_router();
        for route in tool_router.map.values_mut() {
            let tool = &mut route.attr;
            tool.input_schema = standard_formats_only(&tool.input_schema);
            tool.output_schema = tool.output_schema.as_ref().map(standard_formats_only);
        }
        name_the_profiles(&mut tool_router, &engine.config().profile_names());
        let server = &engine.config().server;
        let tasks = Tasks::new(server.task_after, server.task_ttl, engine.stopping());
        Server {
            engine,
            tool_router,
            tasks,
        }
    }

    /// Run an execution or install. A client that declares the tasks extension gets a task
    /// when the run has not finished within `server.task_after` (unless it already holds
    /// [`crate::tasks::MAX_TASKS_PER_CLIENT`]); any other call blocks until the result, with
    /// progress, as before. `work` gets the call's context; `timeout` is the call's own;
    /// `interruptible` is false for a run `tasks/cancel` must leave going (an install).
    async fn run<W, F>(
        &self,
        ctx: &RequestContext<RoleServer>,
        client: &Client,
        timeout: Option<f64>,
        interruptible: bool,
        work: W,
    ) -> Result<CallToolResponse, ErrorData>
    where
        W: FnOnce(CallContext) -> F,
        F: Future<Output = CallToolResult> + Send + 'static,
    {
        let declared = ctx
            .client_capabilities()
            .is_some_and(|caps| caps.supports_tasks());
        if !declared || !self.tasks.has_room(client) {
            if declared {
                tracing::info!(%client, "the client holds the most tasks it may: this call blocks");
            }
            let (mut call, relay) = call_context(ctx);
            call.timeout = timeout;
            let result = work(call).await;
            if let Some(relay) = relay {
                let _ = relay.await;
            }
            return Ok(result.into());
        }
        let started = Instant::now();
        let tail = Arc::new(Tail::default());
        // Progress goes to the request while it is open; once it is answered with a task,
        // output only feeds the task's statusMessage.
        let open = Arc::new(AtomicBool::new(true));
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
        let call = CallContext {
            cancel: tokio_util::sync::CancellationToken::new(),
            progress: Some(tx),
            timeout,
            ask: ask_user(ctx),
            network: None,
            profile: None,
        };
        let cancel = call.cancel.clone();
        let progress = ctx
            .meta
            .get_progress_token()
            .map(|token| (token, ctx.peer.clone()));
        let relay = tokio::spawn({
            let (tail, open) = (tail.clone(), open.clone());
            async move {
                let mut step = 0.0;
                while let Some(chunk) = rx.recv().await {
                    let message = format!("{}{}", chunk.stdout, chunk.stderr);
                    tail.push(&message);
                    if let (Some((token, peer)), true) = (&progress, open.load(Ordering::Relaxed)) {
                        step += 1.0;
                        let note = ProgressNotificationParam::new(token.clone(), step)
                            .with_message(message);
                        if let Err(e) = peer.notify_progress(note).await {
                            tracing::debug!(error = %e, "could not send progress");
                        }
                    }
                }
            }
        });
        let work = work(call);
        let mut run = tokio::spawn(async move {
            let result = work.await;
            let _ = relay.await;
            result
        });
        let finished = tokio::select! {
            result = &mut run => Some(result),
            // The client cancelled the call before it became a task: as before.
            _ = ctx.ct.cancelled() => {
                cancel.cancel();
                Some((&mut run).await)
            }
            _ = tokio::time::sleep(self.tasks.after()) => None,
        };
        if let Some(result) = finished {
            return result
                .map(Into::into)
                .map_err(|e| ErrorData::internal_error(format!("the call failed: {e}"), None));
        }
        open.store(false, Ordering::Relaxed);
        let cancel = interruptible.then_some(cancel);
        let task = self.tasks.adopt(client, run, cancel, tail, started);
        Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
    }
}

/// Wait until the calls that arrived earlier for the same session are done (see
/// [`crate::order`]); a call without a turn (HTTP, no session) goes at once, and so does
/// one the client cancelled while it waited.
async fn in_turn(ctx: &RequestContext<RoleServer>) {
    if let Some(turn) = ctx.extensions.get::<Turn>() {
        tokio::select! {
            _ = turn.wait() => {}
            _ = ctx.ct.cancelled() => {}
        }
    }
}

/// The client a call acts for. No HTTP request parts: stdio, the one `local` client. HTTP
/// parts without a [`Client`] cannot happen behind the auth layer, and are refused.
fn client_of(ctx: &RequestContext<RoleServer>) -> Result<Client, ErrorData> {
    match ctx.extensions.get::<http::request::Parts>() {
        None => Ok(Client::local()),
        Some(parts) => parts.extensions.get::<Client>().cloned().ok_or_else(|| {
            ErrorData::internal_error("this HTTP request carries no client identity", None)
        }),
    }
}

/// A tool schema without the `format`s JSON Schema does not define. schemars writes Rust's
/// number types as formats (`uint64`, `uint`, `double`); clients such as the MCP Inspector
/// warn about each one, and none can check them. schemars' own `RestrictFormats` keeps the
/// formats the schema's `$schema` draft (2020-12) defines and drops the rest, recursively.
fn standard_formats_only(schema: &Arc<JsonObject>) -> Arc<JsonObject> {
    let mut schema = Schema::from(schema.as_ref().clone());
    RestrictFormats::default().transform(&mut schema);
    match schema.to_value() {
        serde_json::Value::Object(object) => Arc::new(object),
        _ => unreachable!("a schema built from an object stays an object"),
    }
}

/// The `profile` argument's description names this server's profiles, so the model reads
/// which exist (the derived schema can only say that an error lists them).
fn name_the_profiles(router: &mut ToolRouter<Server>, names: &[String]) {
    for tool in ["execute-transient", "execute-persistent"] {
        let Some(route) = router.map.get_mut(tool) else {
            continue;
        };
        let mut schema = route.attr.input_schema.as_ref().clone();
        let description = schema
            .get_mut("properties")
            .and_then(|p| p.get_mut("profile"))
            .and_then(|p| p.as_object_mut())
            .and_then(|p| p.get_mut("description"));
        if let Some(serde_json::Value::String(text)) = description {
            text.push_str(&format!(" This server's profiles: {}.", names.join(", ")));
        }
        route.attr.input_schema = Arc::new(schema);
    }
}

/// Render an execution for the model: output first, then what went wrong.
pub fn render_exec(r: &ExecResult) -> String {
    let mut parts = Vec::new();
    if let Some(id) = &r.session_id {
        parts.push(format!("Session ID: {id}"));
    }
    if let Some(previous) = &r.previous_call {
        parts.push(previous.clone());
    }
    let mut stdout = match r.stdout.trim_end() {
        "" => "Execution Result: (no output)".to_string(),
        out => format!("Execution Result:\n\n{out}"),
    };
    if r.stdout_dropped > 0 {
        stdout.push_str(&format!(
            "\n[stdout truncated: {} more bytes dropped]",
            r.stdout_dropped
        ));
    }
    parts.push(stdout);
    if !r.stderr.is_empty() || r.stderr_dropped > 0 {
        let mut stderr = format!("Standard Error:\n{}", r.stderr.trim_end());
        if r.stderr_dropped > 0 {
            stderr.push_str(&format!(
                "\n[stderr truncated: {} more bytes dropped]",
                r.stderr_dropped
            ));
        }
        parts.push(stderr);
    }
    if let Some(v) = &r.value {
        parts.push(format!("Result: {v}"));
    }
    if let Some(e) = &r.error {
        if !r.timed_out {
            parts.push(format!("Error: {}", e.traceback.trim_end()));
        }
    }
    if let Some(notice) = &r.notice {
        parts.push(notice.clone());
    }
    if let Some(network) = &r.network {
        let blocked = network.blocked_lines();
        if !blocked.is_empty() {
            parts.push(blocked.join("\n"));
        }
    }
    if !r.packages_installed.is_empty() {
        parts.push(format!(
            "Installed before the run: {}",
            r.packages_installed.join(", ")
        ));
    }
    if r.figures > 0 || r.figures_dropped > 0 {
        let mut line = format!(
            "Images: {} returned (figures, or the last value)",
            r.figures
        );
        if r.figures_dropped > 0 {
            line.push_str(&format!(
                ", {} left out (at most 4 per call, 2 MB each)",
                r.figures_dropped
            ));
        }
        parts.push(line);
    }
    if !r.files_changed.is_empty() || r.files_changed_truncated {
        parts.push(render_changes(r));
    }
    if let Some(skipped) = &r.state_skipped {
        let list: Vec<String> = skipped.iter().map(|(k, t)| format!("{k} ({t})")).collect();
        parts.push(format!(
            "Not carried in state (not JSON-serialisable): {}",
            list.join(", ")
        ));
    }
    if let Some(cost) = render_cost(r) {
        parts.push(cost);
    }
    parts.join("\n\n")
}

/// What the run cost, on one line; nothing when the sandbox never answered.
fn render_cost(r: &ExecResult) -> Option<String> {
    let peak = r.peak_memory_bytes?;
    let scope = match r.peak_memory_scope {
        Some(PeakScope::Run) => "this run",
        _ => "session so far",
    };
    Some(format!(
        "Cost: {:.2} s wall, {:.2} s CPU, peak memory {:.1} MB ({scope})",
        r.duration_ms / 1000.0,
        r.cpu_seconds,
        peak as f64 / 1e6
    ))
}

/// The files a run changed, one per line, and where to get them.
fn render_changes(r: &ExecResult) -> String {
    let mut lines = vec!["Files changed in the working directory:".to_string()];
    for f in &r.files_changed {
        let whence = match (&f.uri, &r.session_id) {
            (Some(_), None) => ", returned below",
            (None, None) => ", not returned (over docker.file_limit in all)",
            _ => "",
        };
        lines.push(format!(
            "- {} ({}, {} bytes{whence})",
            f.path, f.change, f.size
        ));
    }
    if r.files_changed_truncated {
        lines.push(format!(
            "(the working directory has more than {} files; only those were compared)",
            crate::repl::LIST_CAP
        ));
    }
    if r.session_id.is_some() {
        lines.push("Read them with download-file or resources/read on their links.".into());
    }
    lines.join("\n")
}

/// A file's bytes as resource contents: text when the name says text and the bytes are
/// UTF-8, a base64 blob otherwise.
fn resource_contents(uri: String, data: FileData) -> ResourceContents {
    let mime = files::mime_type(&data.path);
    let bytes = if files::is_textual(mime) {
        match String::from_utf8(data.bytes) {
            Ok(text) => return ResourceContents::text(text, uri).with_mime_type(mime),
            // Not UTF-8 after all: a blob.
            Err(e) => e.into_bytes(),
        }
    } else {
        data.bytes
    };
    ResourceContents::blob(files::encode_base64(&bytes), uri).with_mime_type(mime)
}

/// The answer to a file operation that failed: an unknown session reads exactly as for any
/// other tool.
fn file_error(e: impl Into<FileOpError>) -> CallToolResult {
    tool_error(e.into())
}

/// Arguments of the tools that act on one session.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SessionArgs {
    /// The session, as returned by execute-persistent.
    pub session_id: String,
}

/// The structured result of `list-sessions`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionList {
    /// The caller's sessions, oldest first.
    pub sessions: Vec<crate::engine::SessionInfo>,
}

/// The structured result of `reset-session`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionAck {
    /// The session acted on.
    pub session_id: String,
}

/// The structured result of `list-variables`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct VariableList {
    /// The session listed.
    pub session_id: String,
    /// Its variables, sorted by name.
    pub variables: Vec<Variable>,
}

/// The engine's view of this call (client cancellation, output streaming) and, when the
/// client sent a progress token, a task relaying streamed output as progress notifications.
fn call_context(
    ctx: &RequestContext<RoleServer>,
) -> (CallContext, Option<tokio::task::JoinHandle<()>>) {
    let mut call = CallContext {
        cancel: ctx.ct.clone(),
        progress: None,
        timeout: None,
        ask: ask_user(ctx),
        network: None,
        profile: None,
    };
    let Some(token) = ctx.meta.get_progress_token() else {
        return (call, None);
    };
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
    call.progress = Some(tx);
    let peer = ctx.peer.clone();
    let relay = tokio::spawn(async move {
        let mut step = 0.0;
        while let Some(chunk) = rx.recv().await {
            step += 1.0;
            let message = format!("{}{}", chunk.stdout, chunk.stderr);
            let note = ProgressNotificationParam::new(token.clone(), step).with_message(message);
            if let Err(e) = peer.notify_progress(note).await {
                tracing::debug!(error = %e, "could not send progress");
            }
        }
    });
    (call, Some(relay))
}

/// The answer to an egress approval question (`network.ask`).
#[derive(Debug, Deserialize, JsonSchema)]
struct Approval {
    /// true to allow the connection for the rest of the session.
    allow: bool,
}

rmcp::elicit_safe!(Approval);

/// How a call asks its user a yes/no question: MCP elicitation (a form with one boolean),
/// when the client declared it; `None` otherwise (the question is then answered no).
/// Declining, cancelling, or no answer within 30 s is no.
fn ask_user(ctx: &RequestContext<RoleServer>) -> Option<AskUser> {
    use rmcp::service::ElicitationMode;
    if !ctx
        .peer
        .supported_elicitation_modes()
        .contains(&ElicitationMode::Form)
    {
        return None;
    }
    let peer = ctx.peer.clone();
    Some(AskUser(Arc::new(move |question: String| {
        let peer = peer.clone();
        Box::pin(async move {
            match peer
                .elicit_with_timeout::<Approval>(question, Some(ASK_WITHIN))
                .await
            {
                Ok(Some(answer)) => answer.allow,
                Ok(None) => false,
                Err(e) => {
                    tracing::debug!(error = %e, "an egress approval was not given");
                    false
                }
            }
        })
    })))
}

/// A successful result: `text` for the model, `data` as structured content.
fn structured(text: String, data: &impl Serialize) -> CallToolResult {
    let mut result = CallToolResult::success(vec![Content::text(text)]);
    result.structured_content = Some(serde_json::to_value(data).expect("results serialise"));
    result
}

/// An install for the model: what went where, with which installer, and how fast.
fn render_install(r: &InstallResult) -> String {
    let installed = if r.installed.is_empty() {
        "nothing new".to_string()
    } else {
        r.installed.join(", ")
    };
    let mut text = format!(
        "Package installation result:\n\nInstalled {} into the {} with {} in {:.1} s: {installed}",
        r.requirements.join(" "),
        r.target,
        r.installer,
        r.duration_ms / 1000.0
    );
    if !r.cached.is_empty() {
        text.push_str(&format!(" ({} from the download cache)", r.cached.len()));
    }
    text
}

fn exec_result(r: ExecResult) -> CallToolResult {
    let mut content = vec![Content::text(render_exec(&r))];
    content.extend(
        r.images
            .iter()
            .map(|image| Content::image(image.clone(), image_mime(image))),
    );
    for f in &r.files_changed {
        if let (Some(uri), Some(_)) = (&f.uri, &r.session_id) {
            let link = Resource::new(uri.clone(), f.path.clone())
                .with_mime_type(files::mime_type(&f.path))
                .with_size(f.size)
                .with_description(format!("{} by the run", f.change));
            content.push(Content::resource_link(link));
        }
    }
    let mut result = CallToolResult::success(content);
    result.is_error = Some(r.is_error());
    result.structured_content = Some(serde_json::to_value(&r).expect("results serialise"));
    for data in r.files {
        let uri = files::transient_uri(&data.path);
        result
            .content
            .push(Content::resource(resource_contents(uri, data)));
    }
    result
}

/// An image's type from its base64 text: JPEG's signature (`ff d8 ff`) encodes as `/9j/`;
/// everything else the helper sends is PNG (figures, PNG values, PIL images).
fn image_mime(base64: &str) -> &'static str {
    match base64.starts_with("/9j/") {
        true => "image/jpeg",
        false => "image/png",
    }
}

fn tool_error(message: impl std::fmt::Display) -> CallToolResult {
    CallToolResult::error(vec![Content::text(format!("Error: {message}"))])
}

#[tool_router]
impl Server {
    #[tool(
        name = "execute-transient",
        description = "Run Python code in a fresh, single-use sandbox container that is removed afterwards. \
Nothing survives between calls except what you pass in `state` (a JSON object of variables) and read back \
from the result's `state`. Use it for one-off computations; use execute-persistent when you want variables, \
imports and files to persist. The sandbox has no network unless you pass `network` (hosts within the \
operator's allow-list, reached through a filtering proxy). Returns stdout, stderr, the last expression's \
value and any exception with its traceback.",
        output_schema = schema_for_output::<ExecResult>()
    )]
    async fn execute_transient(
        &self,
        Parameters(args): Parameters<TransientArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let client = client_of(&ctx)?;
        let mut inputs = BTreeMap::new();
        for (path, content) in args.files.unwrap_or_default() {
            match content.into_bytes() {
                Ok(bytes) => inputs.insert(path, bytes),
                Err(e) => return Ok(tool_error(e).into()),
            };
        }
        let engine = self.engine.clone();
        let who = client.clone();
        self.run(
            &ctx,
            &client,
            args.timeout,
            true,
            move |mut call| async move {
                call.network = args.network.clone();
                call.profile = args.profile.filter(|p| !p.is_empty());
                let result = engine
                    .execute_transient(
                        &args.code,
                        args.state.as_ref(),
                        &args.packages,
                        &inputs,
                        &who,
                        &call,
                    )
                    .run_timed("execute-transient")
                    .await;
                match result {
                    Ok(r) => exec_result(r),
                    Err(e) => tool_error(e),
                }
            },
        )
        .await
    }

    #[tool(
        name = "execute-persistent",
        description = "Run Python code in a persistent session: a long-lived sandbox where variables, \
functions, imports and files from earlier calls are still there, like a notebook kernel. Omit session_id to \
start a new session; the result begins with `Session ID: <id>`, which you pass in later calls. Calls to one \
session run one at a time, in order. Code that runs past the time-out is interrupted and the session keeps its \
variables. matplotlib figures, and a last value that is PNG/JPEG bytes or a PIL image (such as \
page.screenshot()), come back as images. The session keeps the `network` list and `profile` of its first \
call. Sessions idle for a long time are ended; call cleanup-session when you are done.",
        output_schema = schema_for_output::<ExecResult>()
    )]
    async fn execute_persistent(
        &self,
        Parameters(args): Parameters<PersistentArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let client = client_of(&ctx)?;
        in_turn(&ctx).await;
        let engine = self.engine.clone();
        let who = client.clone();
        self.run(
            &ctx,
            &client,
            args.timeout,
            true,
            move |mut call| async move {
                call.network = args.network.clone();
                call.profile = args.profile.filter(|p| !p.is_empty());
                let session = args.session_id.as_deref().filter(|s| !s.is_empty());
                let result = engine
                    .execute_persistent(&args.code, session, &args.packages, &who, &call)
                    .run_timed("execute-persistent")
                    .await;
                match result {
                    Ok(r) => exec_result(r),
                    Err(e) => tool_error(e),
                }
            },
        )
        .await
    }

    #[tool(
        name = "reset-session",
        description = "Forget every variable, function and import of a session, as if it were new, while \
keeping its sandbox, its files and the packages installed into it. Use it to start over cheaply.",
        output_schema = schema_for_output::<SessionAck>()
    )]
    async fn reset_session(
        &self,
        Parameters(args): Parameters<SessionArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let client = client_of(&ctx)?;
        in_turn(&ctx).await;
        Ok(
            match self
                .engine
                .reset_session(&args.session_id, &client)
                .timed("reset-session")
                .await
            {
                Ok(()) => {
                    let text = format!("Session {} was reset: no variables or imports remain; files and packages are kept.", args.session_id);
                    structured(
                        text,
                        &SessionAck {
                            session_id: args.session_id,
                        },
                    )
                }
                Err(e) => tool_error(e),
            },
        )
    }

    #[tool(
        name = "list-variables",
        description = "List a session's variables with their types and short reprs, to see what is defined \
without printing it.",
        output_schema = schema_for_output::<VariableList>()
    )]
    async fn list_variables(
        &self,
        Parameters(args): Parameters<SessionArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let client = client_of(&ctx)?;
        in_turn(&ctx).await;
        Ok(
            match self
                .engine
                .list_variables(&args.session_id, &client)
                .timed("list-variables")
                .await
            {
                Ok(variables) => {
                    let text = if variables.is_empty() {
                        format!("Session {} has no variables.", args.session_id)
                    } else {
                        let lines: Vec<String> = variables
                            .iter()
                            .map(|v| format!("{}: {} = {}", v.name, v.kind, v.repr))
                            .collect();
                        format!(
                            "Session {} variables:\n{}",
                            args.session_id,
                            lines.join("\n")
                        )
                    };
                    structured(
                        text,
                        &VariableList {
                            session_id: args.session_id,
                            variables,
                        },
                    )
                }
                Err(e) => tool_error(e),
            },
        )
    }

    #[tool(
        name = "install-package",
        description = "Install Python packages from the package index. With session_id, into that session \
only (importable there at once); without, into your shared environment, which your later transient runs and \
sessions see. Takes one requirement such as `requests` or `pandas>=2`, or a list of them such as \
`[\"rich==13.7.1\", \"tomli-w\"]`. The install runs in a separate installer container; the sandbox itself keeps \
no network.",
        output_schema = schema_for_output::<InstallResult>()
    )]
    async fn install_package(
        &self,
        Parameters(args): Parameters<InstallArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let client = client_of(&ctx)?;
        in_turn(&ctx).await;
        let engine = self.engine.clone();
        let who = client.clone();
        // An install cannot be interrupted: the call context only carries progress.
        self.run(&ctx, &client, None, false, move |_call| async move {
            let session = args.session_id.as_deref().filter(|s| !s.is_empty());
            let packages = args.package_name.into_vec();
            match engine
                .install_package(&packages, session, &who)
                .timed("install-package")
                .await
            {
                Ok(r) => structured(render_install(&r), &r),
                Err(e) => tool_error(e),
            }
        })
        .await
    }

    #[tool(
        name = "list-packages",
        description = "List installed Python packages with versions: for a session (what it can import: its own \
installs, the shared environment, the image), or without session_id for the shared environment and the image.",
        output_schema = schema_for_output::<PackageList>()
    )]
    async fn list_packages(
        &self,
        Parameters(args): Parameters<ListPackagesArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let client = client_of(&ctx)?;
        in_turn(&ctx).await;
        let session = args.session_id.as_deref().filter(|s| !s.is_empty());
        let listed = self.engine.list_packages(session, &client);
        Ok(match listed.timed("list-packages").await {
            Ok(packages) => {
                let lines: Vec<String> = packages
                    .iter()
                    .map(|p| format!("{} {} ({})", p.name, p.version, p.location))
                    .collect();
                let text = format!("{} packages:\n{}", packages.len(), lines.join("\n"));
                structured(text, &PackageList { packages })
            }
            Err(e) => tool_error(e),
        })
    }

    #[tool(
        name = "upload-file",
        description = "Write a file into a session's working directory (or /tmp), e.g. a CSV to analyse. \
`content` is text, or base64 with `encoding: \"base64\"` for binary files. Directories are created; an \
existing file is replaced. Files larger than the server's file limit (docker.file_limit, 16 MB by default) \
are refused. Paths outside the working directory and /tmp are refused.",
        output_schema = schema_for_output::<Uploaded>()
    )]
    async fn upload_file(
        &self,
        Parameters(args): Parameters<UploadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let client = client_of(&ctx)?;
        in_turn(&ctx).await;
        let bytes = match args.encoding {
            Encoding::Text => args.content.into_bytes(),
            Encoding::Base64 => match files::decode_base64(&args.content) {
                Ok(bytes) => bytes,
                Err(e) => return Ok(file_error(e)),
            },
        };
        let uploaded = self
            .engine
            .upload_file(&args.session_id, &args.path, &bytes, &client)
            .timed("upload-file")
            .await;
        Ok(match uploaded {
            Ok((path, size)) => {
                let rel = files::relative(&self.engine.config().docker.working_dir, &path)
                    .unwrap_or(&path)
                    .to_string();
                let r = Uploaded {
                    uri: files::session_uri(&args.session_id, &rel),
                    session_id: args.session_id,
                    path,
                    size,
                };
                structured(format!("Wrote {} ({} bytes).", r.path, r.size), &r)
            }
            Err(e) => file_error(e),
        })
    }

    #[tool(
        name = "download-file",
        description = "Read a file from a session, e.g. a chart or a cleaned CSV the code wrote. It comes back \
as an embedded resource: text for text files, base64 otherwise, with a mime type guessed from the name. \
Files larger than docker.file_limit are refused.",
        output_schema = schema_for_output::<Downloaded>()
    )]
    async fn download_file(
        &self,
        Parameters(args): Parameters<DownloadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let client = client_of(&ctx)?;
        in_turn(&ctx).await;
        let downloaded = self
            .engine
            .download_file(&args.session_id, &args.path, &client)
            .timed("download-file")
            .await;
        Ok(match downloaded {
            Ok(data) => {
                let uri = files::session_uri(&args.session_id, &data.path);
                let r = Downloaded {
                    session_id: args.session_id,
                    path: data.path.clone(),
                    size: data.bytes.len() as u64,
                    mime_type: files::mime_type(&data.path).to_string(),
                    uri: uri.clone(),
                };
                let mut result = structured(
                    format!("{} ({} bytes, {}):", r.path, r.size, r.mime_type),
                    &r,
                );
                result
                    .content
                    .push(Content::resource(resource_contents(uri, data)));
                result
            }
            Err(e) => file_error(e),
        })
    }

    #[tool(
        name = "list-files",
        description = "List a directory of a session (the working directory by default): names, kinds, sizes \
in bytes and modification times.",
        output_schema = schema_for_output::<Listed>()
    )]
    async fn list_files(
        &self,
        Parameters(args): Parameters<ListFilesArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let client = client_of(&ctx)?;
        in_turn(&ctx).await;
        let path = args.path.as_deref().filter(|p| !p.is_empty());
        let listed = self
            .engine
            .list_files(&args.session_id, path, &client)
            .timed("list-files")
            .await;
        Ok(match listed {
            Ok(FileList {
                path,
                entries,
                truncated,
            }) => {
                let mut lines = vec![format!("{path}: {} entries", entries.len())];
                lines.extend(entries.iter().map(|e| match e.kind {
                    crate::files::FileKind::Dir => format!("{}/", e.name),
                    _ => format!("{} ({} bytes)", e.name, e.size),
                }));
                if truncated {
                    lines.push(format!(
                        "(more than {} entries; only those are listed)",
                        crate::repl::LIST_CAP
                    ));
                }
                let r = Listed {
                    session_id: args.session_id,
                    path,
                    entries,
                    truncated,
                };
                structured(lines.join("\n"), &r)
            }
            Err(e) => file_error(e),
        })
    }

    #[tool(
        name = "list-sessions",
        description = "List your persistent sessions: id, age, idle time, how many variables, and whether \
it was adopted after a server restart. Sessions outlive a server restart: after one, or when you \
lost track of a session_id, call this and pass the id to execute-persistent to continue with \
its variables, imports and files.",
        output_schema = schema_for_output::<SessionList>()
    )]
    async fn list_sessions(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let client = client_of(&ctx)?;
        Ok(
            match self
                .engine
                .list_sessions(&client)
                .timed("list-sessions")
                .await
            {
                Ok(sessions) => {
                    let text = if sessions.is_empty() {
                        "You have no sessions. execute-persistent without session_id starts one."
                            .to_string()
                    } else {
                        let lines: Vec<String> = sessions
                            .iter()
                            .map(|i| {
                                let vars = i.variables.map_or("?".into(), |n| n.to_string());
                                let idle = i
                                    .idle_seconds
                                    .map_or(String::new(), |s| format!(", idle {s:.0} s"));
                                let adopted = if i.adopted {
                                    ", adopted after a restart"
                                } else {
                                    ""
                                };
                                format!(
                                    "{}: age {} s{idle}, {vars} variables{adopted}; held by {}",
                                    i.session_id, i.age_seconds, i.held_by
                                )
                            })
                            .collect();
                        format!("Your sessions:\n{}", lines.join("\n"))
                    };
                    structured(text, &SessionList { sessions })
                }
                Err(e) => tool_error(e),
            },
        )
    }

    #[tool(
        name = "cleanup-session",
        description = "End a persistent session: its container, variables, files and session-only packages \
are removed. Later calls with that session_id are refused.",
        output_schema = schema_for_output::<CleanupResult>()
    )]
    async fn cleanup_session(
        &self,
        Parameters(args): Parameters<CleanupArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let client = client_of(&ctx)?;
        Ok(
            match self
                .engine
                .cleanup_session(&args.session_id, &client)
                .timed("cleanup-session")
                .await
            {
                Ok(()) => {
                    let r = CleanupResult {
                        session_id: args.session_id.clone(),
                        removed: true,
                    };
                    let mut result = CallToolResult::success(vec![Content::text(format!(
                        "Session {} cleaned up successfully",
                        args.session_id
                    ))]);
                    result.structured_content =
                        Some(serde_json::to_value(&r).expect("results serialise"));
                    result
                }
                Err(e) => tool_error(e),
            },
        )
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Server {
    /// `tasks/get`: the caller's task, with its output so far or its result.
    async fn get_task(
        &self,
        request: GetTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let client = client_of(&ctx)?;
        Ok(GetTaskResult::new(
            self.tasks.get(&client, &request.task_id)?,
        ))
    }

    /// `tasks/cancel`: interrupt the caller's task; a session keeps its variables.
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let client = client_of(&ctx)?;
        self.tasks.cancel(&client, &request.task_id)
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tasks()
                .enable_resources()
                .build(),
        )
            .with_server_info(Implementation::new("python-docker-mcp", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Runs Python in Docker sandboxes that have no network unless a call passes `network` (hosts \
                 within the operator's allow-list, reached through a filtering proxy). A call may name a \
                 sandbox `profile` (for example `browser`, with Chromium and Playwright, when the server has \
                 one). execute-transient: one-off code in a \
                 fresh container; pass variables in `state` and read them back from the result's `state`. \
                 execute-persistent: a session that keeps variables, imports and files between calls \
                 (omit session_id to start one; pass the session_id it returns). install-package: add one \
                 requirement or a list to a session or to the shared environment. list-packages: what is \
                 installed. list-variables: a session's variables. reset-session: forget a session's \
                 variables and keep its files and packages. cleanup-session: end a session. Sessions \
                 survive a server restart: list-sessions lists yours, and a call that names one \
                 picks it up with its variables and files. A run \
                 that needs more than the default time-out: pass `timeout` (seconds) to \
                 execute-transient or execute-persistent. Clients that declare the MCP tasks \
                 extension get a task for a run or install that takes longer than a few \
                 seconds: poll tasks/get for its output and result, tasks/cancel to stop it. Files: \
                 upload-file puts a file into a session's working directory, download-file and \
                 list-files read them; execute-transient takes `files` to write before the code \
                 runs and returns the files it changed embedded. Both execute tools list \
                 `files_changed`; a session's changed files are resource links \
                 (sandbox://sessions/{id}/files/{path}) that resources/read returns.",
            )
    }

    /// Session files are not listed: listing would ask every session's sandbox, waiting
    /// behind whatever code runs there, for files that change with every call. The
    /// template says how the URIs are made; runs return links to what they changed.
    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::default())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let template = ResourceTemplate::new(
            "sandbox://sessions/{session_id}/files/{path}",
            "session-file",
        )
        .with_description("A file of one of your sessions, relative to its working directory.");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template]))
    }

    /// A session file, for the client that owns the session only: to another client the
    /// session is unknown, with the same message as an id that never existed.
    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let client = client_of(&ctx)?;
        let (session_id, path) = files::parse_session_uri(&request.uri)
            .map_err(|e| ErrorData::resource_not_found(e.to_string(), None))?;
        let data = self
            .engine
            .download_file(&session_id, &path, &client)
            .timed("resources/read")
            .await
            .map_err(|e| match e {
                FileOpError::File(FileError::Path(_)) => {
                    ErrorData::invalid_params(e.to_string(), None)
                }
                FileOpError::Session(ExecError::ShuttingDown(_)) => {
                    ErrorData::internal_error(e.to_string(), None)
                }
                _ => ErrorData::resource_not_found(e.to_string(), None),
            })?;
        Ok(ReadResourceResult::new(vec![resource_contents(request.uri, data)]).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> ExecResult {
        ExecResult::default()
    }

    #[test]
    fn a_session_result_starts_with_its_id_like_the_originals() {
        let mut r = result();
        r.session_id = Some("abc".into());
        r.stdout = "hi\n".into();
        r.value = Some("2".into());
        assert_eq!(
            render_exec(&r),
            "Session ID: abc\n\nExecution Result:\n\nhi\n\nResult: 2"
        );
    }

    #[test]
    fn empty_output_and_truncation_are_said_plainly() {
        let mut r = result();
        assert_eq!(render_exec(&r), "Execution Result: (no output)");
        r.stdout = "x".into();
        r.stdout_dropped = 10;
        r.stderr = "warn".into();
        let text = render_exec(&r);
        assert!(
            text.contains("[stdout truncated: 10 more bytes dropped]"),
            "{text}"
        );
        assert!(text.contains("Standard Error:\nwarn"), "{text}");
    }

    #[test]
    fn schemas_keep_standard_formats_and_lose_rusts_number_formats() {
        let before = schema_for_output::<ExecResult>();
        assert!(serde_json::to_string(&*before).unwrap().contains("uint64"));
        let after = serde_json::Value::Object(standard_formats_only(&before).as_ref().clone());
        let text = after.to_string();
        assert!(!text.contains("\"format\""), "{text}");
        assert!(text.contains("\"minimum\":0"), "bounds stay: {text}");

        let mut custom = JsonObject::new();
        custom.insert("$schema".into(), before["$schema"].clone());
        custom.insert(
            "properties".into(),
            serde_json::json!({"at": {"type": "string", "format": "date-time"}}),
        );
        let kept = standard_formats_only(&Arc::new(custom));
        assert_eq!(kept["properties"]["at"]["format"], "date-time");
    }

    #[test]
    fn the_cost_line_names_wall_cpu_and_peak_with_its_scope() {
        let mut r = result();
        assert!(
            !render_exec(&r).contains("Cost:"),
            "no cost without a reply"
        );
        r.duration_ms = 1500.0;
        r.cpu_seconds = 1.25;
        r.peak_memory_bytes = Some(42_000_000);
        r.peak_memory_scope = Some(PeakScope::Run);
        let text = render_exec(&r);
        assert!(
            text.ends_with("Cost: 1.50 s wall, 1.25 s CPU, peak memory 42.0 MB (this run)"),
            "{text}"
        );
        r.peak_memory_scope = Some(PeakScope::Session);
        assert!(render_exec(&r).ends_with("(session so far)"));
    }

    #[test]
    fn skipped_state_names_each_variable_and_type() {
        let mut r = result();
        r.state_skipped = Some(
            [
                ("f".to_string(), "function".to_string()),
                ("s".to_string(), "set".to_string()),
            ]
            .into(),
        );
        assert!(render_exec(&r)
            .contains("Not carried in state (not JSON-serialisable): f (function), s (set)"));
    }
}
