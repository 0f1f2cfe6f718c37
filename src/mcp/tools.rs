//! The tools: one `#[tool]` method each, which parses its arguments and hands them to the
//! engine through the call helpers of [`super::call`]; the description and the argument
//! and result types make the schema the model reads. A method's Rust name is its tool's
//! MCP name with `_` for `-` ([`Tool::name`] has the MCP names).

use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResponse, CallToolResult, ErrorData};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};

use super::args::{
    given, CleanupArgs, DownloadArgs, InstallArgs, ListFilesArgs, ListPackagesArgs, PersistentArgs,
    SessionArgs, TransientArgs, UploadArgs,
};
use super::call::Tool;
use super::render::{
    self, CleanupResult, Downloaded, Listed, PackageList, SessionAck, SessionList, Uploaded,
    VariableList,
};
use super::Server;
use crate::engine::{ExecResult, InstallResult};

#[tool_router(vis = "pub(super)")]
impl Server {
    #[tool(
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
        Parameters(mut args): Parameters<TransientArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let call = self.begin(Tool::ExecuteTransient, &ctx).await?;
        let inputs = match args.inputs() {
            Ok(inputs) => inputs,
            Err(e) => return Ok(render::error(e).into()),
        };
        let settings = args.settings();
        self.execute(
            call,
            &ctx,
            settings,
            move |engine, who, context| async move {
                let state = args.state.as_ref();
                engine
                    .execute_transient(&args.code, state, &args.packages, &inputs, &who, &context)
                    .await
            },
        )
        .await
    }

    #[tool(
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
        Parameters(mut args): Parameters<PersistentArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let call = self.begin(Tool::ExecutePersistent, &ctx).await?;
        let settings = args.settings();
        self.execute(
            call,
            &ctx,
            settings,
            move |engine, who, context| async move {
                let session = given(&args.session_id);
                engine
                    .execute_persistent(&args.code, session, &args.packages, &who, &context)
                    .await
            },
        )
        .await
    }

    #[tool(
        description = "Forget every variable, function and import of a session, as if it were new, while \
keeping its sandbox, its files and the packages installed into it. Use it to start over cheaply.",
        output_schema = schema_for_output::<SessionAck>()
    )]
    async fn reset_session(
        &self,
        Parameters(args): Parameters<SessionArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let call = self.begin(Tool::ResetSession, &ctx).await?;
        let id = &args.session_id;
        let reset = self.engine.reset_session(id, &call.client);
        call.answer(reset, |()| render::reset(id)).await
    }

    #[tool(
        description = "List a session's variables with their types and short reprs, to see what is defined \
without printing it.",
        output_schema = schema_for_output::<VariableList>()
    )]
    async fn list_variables(
        &self,
        Parameters(args): Parameters<SessionArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let call = self.begin(Tool::ListVariables, &ctx).await?;
        let id = &args.session_id;
        let listed = self.engine.list_variables(id, &call.client);
        call.answer(listed, |vars| render::variables(id, vars))
            .await
    }

    #[tool(
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
        let call = self.begin(Tool::InstallPackage, &ctx).await?;
        self.install(call, &ctx, move |engine, who| async move {
            let packages = args.package_name.into_vec();
            let session = given(&args.session_id);
            engine.install_package(&packages, session, &who).await
        })
        .await
    }

    #[tool(
        description = "List installed Python packages with versions: for a session (what it can import: its own \
installs, the shared environment, the image), or without session_id for the shared environment and the image.",
        output_schema = schema_for_output::<PackageList>()
    )]
    async fn list_packages(
        &self,
        Parameters(args): Parameters<ListPackagesArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let call = self.begin(Tool::ListPackages, &ctx).await?;
        let listed = self
            .engine
            .list_packages(given(&args.session_id), &call.client);
        call.answer(listed, render::packages).await
    }

    #[tool(
        description = "Write a file into a session's working directory (or /tmp), e.g. a CSV to analyse. \
`content` is text, or base64 with `encoding: \"base64\"` for binary files. Directories are created; an \
existing file is replaced. Files larger than the server's file limit (docker.file_limit, 16 MB by default) \
are refused. Paths outside the working directory and /tmp are refused.",
        output_schema = schema_for_output::<Uploaded>()
    )]
    async fn upload_file(
        &self,
        Parameters(mut args): Parameters<UploadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let call = self.begin(Tool::UploadFile, &ctx).await?;
        let bytes = match args.bytes() {
            Ok(bytes) => bytes,
            Err(e) => return Ok(render::error(e)),
        };
        let (id, dir) = (&args.session_id, &self.engine.config().docker.working_dir);
        let uploaded = self
            .engine
            .upload_file(id, &args.path, &bytes, &call.client);
        call.answer(uploaded, |file| render::uploaded(id, dir, file))
            .await
    }

    #[tool(
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
        let call = self.begin(Tool::DownloadFile, &ctx).await?;
        let id = &args.session_id;
        let downloaded = self.engine.download_file(id, &args.path, &call.client);
        call.answer(downloaded, |data| render::downloaded(id, data))
            .await
    }

    #[tool(
        description = "List a directory of a session (the working directory by default): names, kinds, sizes \
in bytes and modification times.",
        output_schema = schema_for_output::<Listed>()
    )]
    async fn list_files(
        &self,
        Parameters(args): Parameters<ListFilesArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let call = self.begin(Tool::ListFiles, &ctx).await?;
        let id = &args.session_id;
        let listed = self.engine.list_files(id, given(&args.path), &call.client);
        call.answer(listed, |list| render::listed(id, list)).await
    }

    #[tool(
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
        let call = self.begin(Tool::ListSessions, &ctx).await?;
        let listed = self.engine.list_sessions(&call.client);
        call.answer(listed, render::sessions).await
    }

    #[tool(
        description = "End a persistent session: its container, variables, files and session-only packages \
are removed. Later calls with that session_id are refused.",
        output_schema = schema_for_output::<CleanupResult>()
    )]
    async fn cleanup_session(
        &self,
        Parameters(args): Parameters<CleanupArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let call = self.begin(Tool::CleanupSession, &ctx).await?;
        let id = &args.session_id;
        let cleaned = self.engine.cleanup_session(id, &call.client);
        call.answer(cleaned, |()| render::cleaned(id)).await
    }
}
