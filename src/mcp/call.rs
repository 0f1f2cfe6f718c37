//! What every tool call goes through, written once: the tool's name ([`Tool`]), the client
//! it acts for, its turn on the session it names, the timing under the tool's name, and the
//! mapping of an engine error to an `isError` result. Runs of code and installs also get
//! their [`CallContext`] here and go on to [`crate::tasks`], which may make them tasks.

use std::future::Future;
use std::sync::Arc;

use rmcp::model::{CallToolResponse, CallToolResult, ErrorData};
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use schemars::JsonSchema;
use serde::Deserialize;

use super::args::RunSettings;
use super::{render, Server};
use crate::client::Client;
use crate::egress::daemon::{AskUser, ASK_WITHIN};
use crate::engine::{CallContext, Engine, ExecError, ExecResult, InstallError, InstallResult};
use crate::metrics::{Timed as _, TimedRun as _};
use crate::order::Turn;

/// The tools. [`Tool::name`] is the one place their MCP names are written: each `#[tool]`
/// method is registered under its Rust name (`execute_transient`) and [`Server::new`]
/// renames its route to the MCP name (`execute-transient`). The metrics' `tool` label is
/// the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    ExecuteTransient,
    ExecutePersistent,
    ResetSession,
    ListVariables,
    InstallPackage,
    ListPackages,
    UploadFile,
    DownloadFile,
    ListFiles,
    ListSessions,
    CleanupSession,
}

impl Tool {
    pub const ALL: [Tool; 11] = [
        Tool::ExecuteTransient,
        Tool::ExecutePersistent,
        Tool::ResetSession,
        Tool::ListVariables,
        Tool::InstallPackage,
        Tool::ListPackages,
        Tool::UploadFile,
        Tool::DownloadFile,
        Tool::ListFiles,
        Tool::ListSessions,
        Tool::CleanupSession,
    ];

    /// The name clients call it by.
    pub fn name(self) -> &'static str {
        match self {
            Tool::ExecuteTransient => "execute-transient",
            Tool::ExecutePersistent => "execute-persistent",
            Tool::ResetSession => "reset-session",
            Tool::ListVariables => "list-variables",
            Tool::InstallPackage => "install-package",
            Tool::ListPackages => "list-packages",
            Tool::UploadFile => "upload-file",
            Tool::DownloadFile => "download-file",
            Tool::ListFiles => "list-files",
            Tool::ListSessions => "list-sessions",
            Tool::CleanupSession => "cleanup-session",
        }
    }

    /// Whether a call waits for its turn on the session it names ([`crate::order`]). A
    /// transient run and the session listing act on no session; `cleanup-session` ends a
    /// busy session at once.
    fn takes_turn(self) -> bool {
        !matches!(
            self,
            Tool::ExecuteTransient | Tool::ListSessions | Tool::CleanupSession
        )
    }
}

/// A tool call past its preliminaries: which tool, and the client it acts for.
pub struct Call {
    tool: Tool,
    pub client: Client,
}

impl Server {
    /// Start a call of `tool`: find its client, then wait for its turn on its session.
    pub(super) async fn begin(
        &self,
        tool: Tool,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Call, ErrorData> {
        let client = client_of(ctx)?;
        if tool.takes_turn() {
            in_turn(ctx).await;
        }
        Ok(Call { tool, client })
    }

    /// Run code for `call`, in the engine call `work` makes: it may become a task
    /// ([`crate::tasks::Tasks::run`]), `tasks/cancel` interrupts it, and the metrics count
    /// it by how the run ended.
    pub(super) async fn execute<W, F>(
        &self,
        call: Call,
        ctx: &RequestContext<RoleServer>,
        settings: RunSettings,
        work: W,
    ) -> Result<CallToolResponse, ErrorData>
    where
        W: FnOnce(Engine, Client, CallContext) -> F,
        F: Future<Output = Result<ExecResult, ExecError>> + Send + 'static,
    {
        let Call { tool, client } = call;
        let context = call_context(ctx, settings);
        let (engine, who) = (self.engine.clone(), client.clone());
        let run = move |context| {
            let run = work(engine, who, context);
            async move { render::reply(run.run_timed(tool.name()).await, render::exec) }
        };
        self.tasks.run(ctx, &client, context, true, run).await
    }

    /// Install for `call`, in the engine call `work` makes: it may become a task, but an
    /// install cannot be interrupted (the call context only carries progress).
    pub(super) async fn install<W, F>(
        &self,
        call: Call,
        ctx: &RequestContext<RoleServer>,
        work: W,
    ) -> Result<CallToolResponse, ErrorData>
    where
        W: FnOnce(Engine, Client) -> F,
        F: Future<Output = Result<InstallResult, InstallError>> + Send + 'static,
    {
        let Call { tool, client } = call;
        let context = call_context(ctx, RunSettings::default());
        let install = work(self.engine.clone(), client.clone());
        let run = move |_context| async move {
            render::reply(install.timed(tool.name()).await, render::install)
        };
        self.tasks.run(ctx, &client, context, false, run).await
    }
}

impl Call {
    /// Answer with what the engine call `work` gives, timed under the tool's name: `ok`
    /// renders a success, and an error is an `isError` result saying what failed.
    pub async fn answer<T, E: std::fmt::Display>(
        &self,
        work: impl Future<Output = Result<T, E>>,
        ok: impl FnOnce(T) -> CallToolResult,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(render::reply(work.timed(self.tool.name()).await, ok))
    }
}

/// The client a call acts for. No HTTP request parts: stdio, the one `local` client. HTTP
/// parts without a [`Client`] cannot happen behind the auth layer, and are refused.
pub(super) fn client_of(ctx: &RequestContext<RoleServer>) -> Result<Client, ErrorData> {
    match ctx.extensions.get::<http::request::Parts>() {
        None => Ok(Client::local()),
        Some(parts) => parts.extensions.get::<Client>().cloned().ok_or_else(|| {
            ErrorData::internal_error("this HTTP request carries no client identity", None)
        }),
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

/// The engine's view of a run as the arguments and the client set it: the time-out,
/// network and profile asked for, the request's cancellation, and how to ask the user.
/// [`crate::tasks::Tasks::run`] sets the cancellation and progress it runs under.
fn call_context(ctx: &RequestContext<RoleServer>, settings: RunSettings) -> CallContext {
    CallContext {
        cancel: ctx.ct.clone(),
        progress: None,
        timeout: settings.timeout,
        ask: ask_user(ctx),
        network: settings.network,
        profile: settings.profile,
    }
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
