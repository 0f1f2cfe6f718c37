//! Long runs as MCP tasks (the `io.modelcontextprotocol/tasks` extension, SEP-2663): how an
//! execution or install runs ([`Tasks::run`]: blocking, or as a task), the registry of runs
//! that outlived `server.task_after`, their owners, their output so far, their results
//! until `server.task_ttl` after they end, and their cancellation.
//!
//! The tool layer ([`crate::mcp`]) hands every execution and install to [`Tasks::run`].
//! A call of a client that declares the extension becomes a spawned run; `run` waits
//! `server.task_after` for it, and if it is still going adopts it as a task; the call then
//! answers with a task (`resultType: "task"`). Every other call blocks until its result,
//! its streamed output relayed as progress notifications when the client asked for them. The wire types are rmcp's ([`Task`], [`DetailedTask`],
//! [`TaskPayload`]); the store is ours, because rmcp's `TaskManager` counts a task's life
//! from its creation, fails a working task when that passes, and frees nothing until it is
//! next called, while a result here must stay `task_ttl` after the run *ends*, each client
//! holds at most [`MAX_TASKS_PER_CLIENT`], and freeing happens on time.
//!
//! - **Ownership.** A task belongs to the client whose call made it. To every other client
//!   its id is unknown, with the same error as an id that never existed.
//! - **Retention.** A finished task is kept `task_ttl`, then freed by a sweeper that stops
//!   at shutdown. Nothing survives a restart.
//! - **Cancellation.** [`Tasks::cancel`] fires the run's cancellation token: the engine
//!   interrupts the code exactly as for a cancelled call (the session keeps its
//!   variables). The task then ends `cancelled`, with the interrupted run's text (all the
//!   output before the interrupt) as its `statusMessage`.
//! - **Shutdown.** A run is an engine call like any other: the drain counts it and
//!   [`crate::Engine::shutdown`] stops it; its task then ends with that result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use rmcp::model::{
    CallToolResponse, CallToolResult, CreateTaskResult, DetailedTask, ErrorData, JsonObject,
    ProgressNotificationParam, ProgressToken, Task, TaskPayload, TaskStatus,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::RoleServer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::Client;
use crate::engine::CallContext;
use crate::repl::OutputChunk;

/// Tasks one client may hold at once, running or finished and not yet freed. A call made
/// when a client holds this many is answered the old way (it blocks, with progress). It
/// bounds what finished results cost: each is at most two `docker.output_limit` texts
/// plus four figures of 2 MB.
pub const MAX_TASKS_PER_CLIENT: usize = 16;

/// What a client is told to wait between polls, in milliseconds.
const POLL_INTERVAL_MS: u64 = 1000;

/// Output chunks a run may stream ahead of its relay; the engine drops what does not fit
/// from progress (the result carries all of it).
const PROGRESS_CHANNEL: usize = 16;

/// How much output a working task shows in its `statusMessage`.
const TAIL_LINES: usize = 20;
const TAIL_BYTES: usize = 4096;

/// The registry. Cheap to clone: the MCP server is cloned per HTTP session, and every
/// clone must see the same tasks.
#[derive(Clone)]
pub struct Tasks {
    shared: Arc<Shared>,
}

struct Shared {
    /// `server.task_after`.
    after: Duration,
    /// `server.task_ttl`.
    ttl: Duration,
    /// Every task by id. A std mutex: held for map operations only, never across `.await`.
    tasks: Mutex<HashMap<String, Entry>>,
    /// The drivers (one per task, awaiting its run) and the sweeper.
    drivers: TaskTracker,
    /// Fired at shutdown: the sweeper stops.
    stop: CancellationToken,
    /// The sweeper is started with the first task (a runtime is needed to spawn it).
    sweeper: std::sync::Once,
}

struct Entry {
    owner: Client,
    /// The wire view; its status and message are filled in when it is read.
    task: Task,
    created: Instant,
    /// The run's cancellation: the engine interrupts the code when it fires. `None` for a
    /// run that cannot be interrupted (an install): `tasks/cancel` leaves it running, and
    /// its task completes with its result.
    cancel: Option<CancellationToken>,
    cancel_requested: bool,
    /// The run's latest output, for `statusMessage` while it works.
    tail: Arc<Tail>,
    /// Set when the run ended.
    done: Option<Done>,
}

struct Done {
    payload: TaskPayload,
    message: String,
    at: Instant,
}

impl Tasks {
    /// `after`: `server.task_after`; `ttl`: `server.task_ttl`; `stop` ends the sweeper.
    pub fn new(after: Duration, ttl: Duration, stop: CancellationToken) -> Tasks {
        Tasks {
            shared: Arc::new(Shared {
                after,
                ttl,
                tasks: Mutex::default(),
                drivers: TaskTracker::new(),
                stop,
                sweeper: std::sync::Once::new(),
            }),
        }
    }

    /// Whether `client` may have one more task ([`MAX_TASKS_PER_CLIENT`]).
    fn has_room(&self, client: &Client) -> bool {
        self.evict_expired();
        let tasks = self.shared.tasks.lock().expect("tasks lock");
        tasks.values().filter(|e| &e.owner == client).count() < MAX_TASKS_PER_CLIENT
    }

    /// Make a task of a run still going: `run` yields the call's result, `cancel`
    /// interrupts it (`None`: it cannot be interrupted), `tail` holds its latest output,
    /// `started` is when the call began.
    /// Returns the task's first state, for the call's answer.
    fn adopt(
        &self,
        client: &Client,
        run: JoinHandle<CallToolResult>,
        cancel: Option<CancellationToken>,
        tail: Arc<Tail>,
        started: Instant,
    ) -> Task {
        self.start_sweeper();
        let id = uuid::Uuid::new_v4().to_string();
        let now = chrono_now();
        let mut task = Task::new(id.clone(), TaskStatus::Working, now.clone(), now);
        task.poll_interval_ms = Some(POLL_INTERVAL_MS);
        let entry = Entry {
            owner: client.clone(),
            task,
            created: started,
            cancel,
            cancel_requested: false,
            tail,
            done: None,
        };
        let first = self.view(&entry).task;
        self.shared
            .tasks
            .lock()
            .expect("tasks lock")
            .insert(id.clone(), entry);
        tracing::info!(task_id = %id, %client, "the call became a task");
        let tasks = self.clone();
        self.shared.drivers.spawn(async move {
            let ended = run.await;
            tasks.finish(&id, ended);
        });
        first
    }

    /// `tasks/get` for `client`: the task's state, and its result once it has one.
    pub fn get(&self, client: &Client, id: &str) -> Result<DetailedTask, ErrorData> {
        self.evict_expired();
        let tasks = self.shared.tasks.lock().expect("tasks lock");
        match tasks.get(id) {
            Some(entry) if &entry.owner == client => Ok(self.view(entry)),
            _ => Err(unknown(id)),
        }
    }

    /// `tasks/cancel` for `client`: interrupt the run (the session keeps its variables).
    /// A finished task stays as it is. An install is not interrupted: it finishes.
    pub fn cancel(&self, client: &Client, id: &str) -> Result<(), ErrorData> {
        self.evict_expired();
        let mut tasks = self.shared.tasks.lock().expect("tasks lock");
        match tasks.get_mut(id) {
            Some(entry) if &entry.owner == client => {
                match (&entry.cancel, &entry.done) {
                    (Some(cancel), None) => {
                        tracing::info!(task_id = %id, %client, "task cancelled by its client");
                        entry.cancel_requested = true;
                        cancel.cancel();
                    }
                    (None, None) => {
                        tracing::info!(task_id = %id, %client,
                            "tasks/cancel of a run that cannot be interrupted: it goes on");
                    }
                    (_, Some(_)) => {}
                }
                Ok(())
            }
            _ => Err(unknown(id)),
        }
    }

    /// Tasks whose run still goes, for every client.
    pub fn running(&self) -> usize {
        let tasks = self.shared.tasks.lock().expect("tasks lock");
        tasks.values().filter(|e| e.done.is_none()).count()
    }

    /// Record how a run ended.
    fn finish(&self, id: &str, ended: Result<CallToolResult, tokio::task::JoinError>) {
        let mut tasks = self.shared.tasks.lock().expect("tasks lock");
        let Some(entry) = tasks.get_mut(id) else {
            return;
        };
        let (payload, message) = match ended {
            Ok(result) if entry.cancel_requested => (TaskPayload::Cancelled, text_of(&result)),
            Ok(result) => {
                let message = if result.is_error == Some(true) {
                    "finished with an error; the result says why"
                } else {
                    "finished"
                };
                let result = match serde_json::to_value(&result) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => JsonObject::new(),
                };
                (TaskPayload::Completed { result }, message.to_string())
            }
            Err(e) => {
                let error = ErrorData::internal_error(format!("the run failed: {e}"), None);
                let error = match serde_json::to_value(&error) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => JsonObject::new(),
                };
                (TaskPayload::Failed { error }, "the run failed".to_string())
            }
        };
        tracing::info!(task_id = %id, status = ?payload.status(), "task ended");
        entry.task.last_updated_at = chrono_now();
        entry.done = Some(Done {
            payload,
            message,
            at: Instant::now(),
        });
    }

    /// The wire view of an entry. `ttlMs` counts from creation (SEP-2663): while the run
    /// works, what it has run so far plus `task_ttl`; once it ended, exactly until the
    /// result is freed.
    fn view(&self, entry: &Entry) -> DetailedTask {
        let mut task = entry.task.clone();
        let ttl = self.shared.ttl;
        match &entry.done {
            None => {
                let ran = entry.created.elapsed();
                task.ttl_ms = Some((ran + ttl).as_millis() as u64);
                task.status_message = Some(entry.tail.status(ran, entry.cancel_requested));
                DetailedTask::new(task, TaskPayload::Working)
            }
            Some(done) => {
                let lived = done.at.duration_since(entry.created);
                task.ttl_ms = Some((lived + ttl).as_millis() as u64);
                task.status_message = Some(done.message.clone());
                DetailedTask::new(task, done.payload.clone())
            }
        }
    }

    /// Free the results kept longer than `task_ttl`.
    fn evict_expired(&self) {
        let ttl = self.shared.ttl;
        let mut tasks = self.shared.tasks.lock().expect("tasks lock");
        tasks.retain(|id, entry| {
            let keep = entry.done.as_ref().is_none_or(|d| d.at.elapsed() < ttl);
            if !keep {
                tracing::debug!(task_id = %id, "task result freed (server.task_ttl)");
            }
            keep
        });
    }

    fn start_sweeper(&self) {
        self.shared.sweeper.call_once(|| {
            let tasks = self.clone();
            let every =
                (self.shared.ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
            self.shared.drivers.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tasks.shared.stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => tasks.evict_expired(),
                    }
                }
            });
        });
    }
}

/// The latest output of a run: at most [`TAIL_BYTES`], shown as its last [`TAIL_LINES`]
/// lines. Fed by the relay of the run's streamed output.
#[derive(Debug, Default)]
struct Tail {
    /// A std mutex: a few string operations under it, never an `.await`.
    text: Mutex<String>,
}

impl Tail {
    /// Append output (stdout and stderr as they come).
    fn push(&self, more: &str) {
        let mut text = self.text.lock().expect("tail lock");
        text.push_str(more);
        if text.len() > 2 * TAIL_BYTES {
            let mut cut = text.len() - TAIL_BYTES;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text.drain(..cut);
        }
    }

    /// The `statusMessage` of a working task.
    fn status(&self, ran: Duration, cancelling: bool) -> String {
        let text = self.text.lock().expect("tail lock");
        let lines: Vec<&str> = text.lines().collect();
        let last = &lines[lines.len().saturating_sub(TAIL_LINES)..];
        let head = if cancelling {
            format!("Cancelling after {:.0} s", ran.as_secs_f64())
        } else {
            format!("Running for {:.0} s", ran.as_secs_f64())
        };
        if last.is_empty() {
            format!("{head}; no output yet.")
        } else {
            format!("{head}. Last output:\n{}", last.join("\n"))
        }
    }
}

impl Tasks {
    /// Run an execution or install for `client`. A client that declares the tasks
    /// extension gets a task when the run has not finished within `server.task_after`
    /// (unless it already holds [`MAX_TASKS_PER_CLIENT`]); any other call blocks until the
    /// result, with progress, as before. `call` carries the call's own settings; its
    /// cancellation and progress are set here. `work` makes the run from them;
    /// `interruptible` is false for a run `tasks/cancel` must leave going (an install).
    pub async fn run<W, F>(
        &self,
        ctx: &RequestContext<RoleServer>,
        client: &Client,
        call: CallContext,
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
        if !declared || !self.has_room(client) {
            if declared {
                tracing::info!(%client, "the client holds the most tasks it may: this call blocks");
            }
            return Ok(blocking(ctx, call, work).await.into());
        }
        self.run_as_task(ctx, client, call, interruptible, work)
            .await
    }

    /// Spawn the run and wait `server.task_after` for it: its result if it ends by then
    /// (or the client cancels the call), else a task ([`Tasks::adopt`]). Progress goes to
    /// the request while it is open; once it is answered with a task, output only feeds
    /// the task's `statusMessage`.
    async fn run_as_task<W, F>(
        &self,
        ctx: &RequestContext<RoleServer>,
        client: &Client,
        mut call: CallContext,
        interruptible: bool,
        work: W,
    ) -> Result<CallToolResponse, ErrorData>
    where
        W: FnOnce(CallContext) -> F,
        F: Future<Output = CallToolResult> + Send + 'static,
    {
        let started = Instant::now();
        let tail = Arc::new(Tail::default());
        let open = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel::<OutputChunk>(PROGRESS_CHANNEL);
        let cancel = CancellationToken::new();
        call.cancel = cancel.clone();
        call.progress = Some(tx);
        let relay = relay(rx, progress_of(ctx), Some(tail.clone()), open.clone());
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
            _ = tokio::time::sleep(self.shared.after) => None,
        };
        if let Some(result) = finished {
            return result
                .map(Into::into)
                .map_err(|e| ErrorData::internal_error(format!("the call failed: {e}"), None));
        }
        open.store(false, Ordering::Relaxed);
        let cancel = interruptible.then_some(cancel);
        let task = self.adopt(client, run, cancel, tail, started);
        Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
    }
}

/// A call answered when its run ends: cancelled with the request, its output relayed as
/// progress notifications when the client sent a progress token.
async fn blocking<W, F>(
    ctx: &RequestContext<RoleServer>,
    mut call: CallContext,
    work: W,
) -> CallToolResult
where
    W: FnOnce(CallContext) -> F,
    F: Future<Output = CallToolResult>,
{
    call.cancel = ctx.ct.clone();
    let relay = progress_of(ctx).map(|progress| {
        let (tx, rx) = mpsc::channel::<OutputChunk>(PROGRESS_CHANNEL);
        call.progress = Some(tx);
        relay(rx, Some(progress), None, Arc::new(AtomicBool::new(true)))
    });
    let result = work(call).await;
    if let Some(relay) = relay {
        let _ = relay.await;
    }
    result
}

/// Where progress notifications go: the request's progress token and its peer, when the
/// client sent a token.
fn progress_of(ctx: &RequestContext<RoleServer>) -> Option<(ProgressToken, Peer<RoleServer>)> {
    let token = ctx.meta.get_progress_token()?;
    Some((token, ctx.peer.clone()))
}

/// Relay a run's streamed output until the run drops its sender: into `tail` (a task's
/// `statusMessage`), and as progress notifications while `open` (the request is not yet
/// answered with a task).
fn relay(
    mut rx: mpsc::Receiver<OutputChunk>,
    progress: Option<(ProgressToken, Peer<RoleServer>)>,
    tail: Option<Arc<Tail>>,
    open: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut step = 0.0;
        while let Some(chunk) = rx.recv().await {
            let message = format!("{}{}", chunk.stdout, chunk.stderr);
            if let Some(tail) = &tail {
                tail.push(&message);
            }
            if let (Some((token, peer)), true) = (&progress, open.load(Ordering::Relaxed)) {
                step += 1.0;
                let note =
                    ProgressNotificationParam::new(token.clone(), step).with_message(message);
                if let Err(e) = peer.notify_progress(note).await {
                    tracing::debug!(error = %e, "could not send progress");
                }
            }
        }
    })
}

/// The text of a result, for the `statusMessage` of a cancelled task.
fn text_of(result: &CallToolResult) -> String {
    let texts: Vec<&str> = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    format!("Cancelled with tasks/cancel.\n\n{}", texts.join("\n\n"))
}

/// An id this client has no task under (never made, another client's, or freed).
fn unknown(id: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!(
            "unknown task `{}`: it was never made for this client, or its result was freed \
             (server.task_ttl after it ended; tasks do not survive a restart)",
            crate::text::clip(id)
        ),
        None,
    )
}

fn chrono_now() -> String {
    rmcp::task_manager::current_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ContentBlock;

    fn ok(text: &str) -> CallToolResult {
        CallToolResult::success(vec![ContentBlock::text(text.to_string())])
    }

    async fn settled(tasks: &Tasks, client: &Client, id: &str) -> DetailedTask {
        for _ in 0..500 {
            let t = tasks.get(client, id).unwrap();
            if t.status().is_terminal() {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("task {id} did not settle");
    }

    #[tokio::test]
    async fn a_task_is_its_owners_alone_and_freed_after_the_ttl() {
        let tasks = Tasks::new(
            Duration::from_secs(1),
            Duration::from_millis(300),
            CancellationToken::new(),
        );
        let me = Client::local();
        let other = Client::new("bob");
        let tail = Arc::new(Tail::default());
        tail.push("step 1\nstep 2\n");
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(async move {
            let _ = wait.await;
            ok("all done")
        });
        let task = tasks.adopt(
            &me,
            run,
            Some(CancellationToken::new()),
            tail,
            Instant::now(),
        );
        let id = task.task_id.clone();
        assert_eq!(task.status, TaskStatus::Working);
        let working = tasks.get(&me, &id).unwrap();
        let message = working.task.status_message.unwrap();
        assert!(message.contains("step 2"), "{message}");
        let theirs = tasks.get(&other, &id).unwrap_err();
        let never = tasks.get(&me, "no-such-task").unwrap_err();
        assert_eq!(theirs.code, never.code);
        assert!(tasks.cancel(&other, &id).is_err());
        assert_eq!(tasks.running(), 1);

        go.send(()).unwrap();
        let done = settled(&tasks, &me, &id).await;
        match done.payload {
            TaskPayload::Completed { result } => {
                assert_eq!(result["content"][0]["text"], "all done")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(tasks.running(), 0);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(tasks.get(&me, &id).is_err(), "freed after server.task_ttl");
    }

    #[tokio::test]
    async fn cancel_fires_the_runs_token_and_keeps_its_text() {
        let tasks = Tasks::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            CancellationToken::new(),
        );
        let me = Client::local();
        let cancel = CancellationToken::new();
        let seen = cancel.clone();
        let run = tokio::spawn(async move {
            seen.cancelled().await;
            ok("printed before\ninterrupted")
        });
        let id = tasks
            .adopt(&me, run, Some(cancel), Arc::default(), Instant::now())
            .task_id;
        tasks.cancel(&me, &id).unwrap();
        let done = settled(&tasks, &me, &id).await;
        assert_eq!(done.status(), TaskStatus::Cancelled);
        let message = done.task.status_message.unwrap();
        assert!(message.contains("printed before"), "{message}");
    }

    #[tokio::test]
    async fn a_run_that_cannot_be_interrupted_completes_after_a_cancel() {
        let tasks = Tasks::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            CancellationToken::new(),
        );
        let me = Client::local();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(async move {
            let _ = wait.await;
            ok("installed")
        });
        let id = tasks
            .adopt(&me, run, None, Arc::default(), Instant::now())
            .task_id;
        tasks.cancel(&me, &id).unwrap();
        assert_eq!(tasks.get(&me, &id).unwrap().status(), TaskStatus::Working);
        go.send(()).unwrap();
        let done = settled(&tasks, &me, &id).await;
        assert_eq!(done.status(), TaskStatus::Completed);
    }

    #[test]
    fn the_tail_keeps_the_last_lines_within_its_bytes() {
        let tail = Tail::default();
        for i in 0..5000 {
            tail.push(&format!("line {i}\n"));
        }
        let status = tail.status(Duration::from_secs(3), false);
        assert!(status.starts_with("Running for 3 s. Last output:\n"));
        assert!(status.ends_with("line 4999"), "{status}");
        assert_eq!(status.lines().count(), 1 + TAIL_LINES);
        assert!(tail.text.lock().unwrap().len() <= 2 * TAIL_BYTES);
    }
}
