//! The MCP server: the [`Server`] handle, its `ServerHandler` (capabilities, the
//! instructions the model reads, tasks and resources) and the module map of the tool layer:
//!
//! - [`tools`]: one `#[tool]` method per tool, which parses and delegates;
//! - [`args`]: the tools' arguments, whose doc comments are the schema the model reads;
//! - [`call`]: what every call goes through once (the [`Tool`] names, the client, the
//!   session's turn, timing, errors as results);
//! - [`render`]: engine results and errors as text plus `structuredContent`.
//!
//! Tool names and arguments are the original's. Every result has readable text for the
//! model and `structuredContent` under a published `outputSchema`. A Python exception, a
//! time-out or a Docker problem is a result with `isError: true`. Arguments that do not fit
//! a tool's input schema are refused by rmcp before a method here runs, as an `isError`
//! result saying what does not fit: serde names a missing field, and for a wrong type says
//! what was expected (MCP 2025-11-25: input validation errors are tool errors, so the model
//! can correct itself). An unknown tool or a malformed message is a JSON-RPC error.
//!
//! Every call acts for a [`Client`](crate::client::Client): over stdio, `local`; over HTTP, the client the
//! request's bearer token names, which the HTTP layer puts into the request's extensions
//! (rmcp hands each request's `http::request::Parts` to the handler in the request
//! context). An HTTP request that arrives without one is refused, never served as `local`.
//!
//! Executions and installs go through [`crate::tasks::Tasks::run`]: for a client that
//! declares the MCP tasks extension, a run still going after `server.task_after` becomes a
//! task; every other call blocks until its result, as before.

mod args;
mod call;
mod render;
mod tools;

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CancelTaskParams, ErrorData, GetTaskParams, GetTaskResult, Implementation, JsonObject,
    ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ResourceTemplate,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool_handler, RoleServer, ServerHandler};
use schemars::transform::{RestrictFormats, Transform};
use schemars::Schema;

use crate::engine::{Engine, ExecError, FileOpError};
use crate::files::{self, FileError};
use crate::metrics::Timed as _;
use crate::tasks::Tasks;
use call::{client_of, Tool};

/// The metrics' `tool` label for `resources/read`.
const READ_RESOURCE: &str = "resources/read";

/// What the model reads about the server as a whole (`initialize`'s `instructions`).
const INSTRUCTIONS: &str =
    "Runs Python in Docker sandboxes that have no network unless a call passes `network` \
    (hosts within the operator's allow-list, reached through a filtering proxy). A call may \
    name a sandbox `profile` (for example `browser`, with Chromium and Playwright, when the \
    server has one). execute-transient: one-off code in a fresh container; pass variables in \
    `state` and read them back from the result's `state`. execute-persistent: a session that \
    keeps variables, imports and files between calls (omit session_id to start one; pass the \
    session_id it returns). install-package: add one requirement or a list to a session or \
    to the shared environment. list-packages: what is installed. list-variables: a session's \
    variables. reset-session: forget a session's variables and keep its files and packages. \
    cleanup-session: end a session. Sessions survive a server restart: list-sessions lists \
    yours, and a call that names one picks it up with its variables and files. A run that \
    needs more than the default time-out: pass `timeout` (seconds) to execute-transient or \
    execute-persistent. Clients that declare the MCP tasks extension get a task for a run or \
    install that takes longer than a few seconds: poll tasks/get for its output and result, \
    tasks/cancel to stop it. Files: upload-file puts a file into a session's working \
    directory, download-file and list-files read them; execute-transient takes `files` to \
    write before the code runs and returns the files it changed embedded. Both execute tools \
    list `files_changed`; a session's changed files are resource links \
    (sandbox://sessions/{id}/files/{path}) that resources/read returns.";

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
        let mut tool_router = under_mcp_names(Self::tool_router());
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
}

/// The router with each tool under its MCP name ([`Tool::name`]): `#[tool]` registers a
/// method under its Rust name, the same with `_` for `-`.
fn under_mcp_names(mut router: ToolRouter<Server>) -> ToolRouter<Server> {
    for tool in Tool::ALL {
        let method = tool.name().replace('-', "_");
        let Some(mut route) = router.map.remove(method.as_str()) else {
            panic!("the tool {} has no #[tool] method {method}", tool.name());
        };
        route.attr.name = tool.name().into();
        router.map.insert(tool.name().into(), route);
    }
    router
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
    for tool in [Tool::ExecuteTransient, Tool::ExecutePersistent] {
        let Some(route) = router.map.get_mut(tool.name()) else {
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
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tasks()
            .enable_resources()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(
                "python-docker-mcp",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(INSTRUCTIONS)
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
            .timed(READ_RESOURCE)
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
        let contents = render::resource_contents(request.uri, data);
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ExecResult;
    use rmcp::handler::server::tool::schema_for_output;

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
    fn every_tool_is_served_under_its_mcp_name_and_only_those() {
        let router = under_mcp_names(Server::tool_router());
        let mut served: Vec<&str> = router.map.keys().map(|k| k.as_ref()).collect();
        served.sort();
        let mut names: Vec<&str> = Tool::ALL.iter().map(|t| t.name()).collect();
        names.sort();
        assert_eq!(served, names);
        for (key, route) in &router.map {
            assert_eq!(route.attr.name, *key);
        }
    }
}
