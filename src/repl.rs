//! The REPL: the wire protocol with the helper (`repl/helper.py`) and one live helper
//! process in an attached container.
//!
//! Frames are single JSON lines; [`FrameDecoder`] reassembles them from attach chunks,
//! which do not align with lines, and refuses any line longer than [`MAX_FRAME`].
//! [`Repl::execute`] sends one request and waits for its reply. On a time-out or a
//! cancelled call it interrupts the code **in-band**: an `interrupt` request naming the
//! execution goes down the same stdin, and the helper's reader thread sends SIGINT to its
//! own main thread, which raises `KeyboardInterrupt` inside user code only. No engine signal
//! API is used, so this works on any backend that can attach to the helper. If the code
//! does not stop within [`INTERRUPT_GRACE`] (it ignores the interrupt, or native code holds
//! the GIL so the reader cannot even run), the container is killed and the sandbox reported
//! lost: the last resort.
//!
//! User code runs in the helper's own process, so it can write to the protocol descriptor:
//! nothing the sandbox sends is trusted. The reader task enforces the protocol. It accepts
//! only the frames the caller is waiting for (strictly by id), passes them on through a
//! small bounded queue (when it is full the reader stops reading the container, which
//! blocks the sandbox, not the daemon), and ends the sandbox at once when it sends a frame
//! over the cap, too many frames nobody asked for, streamed output faster than the helper
//! ever does, or too many malformed lines. A sandbox therefore costs the daemon at most
//! about 2 × [`MAX_FRAME`] of memory, and a bounded number of log lines.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::files::{FileChange, FileEntry};
use crate::runtime::{Backend, Output, RuntimeError};
use crate::sandbox::SandboxSpec;

/// How long an interrupted execution gets to stop before its container is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// How long a new helper may take to say it is ready (a cold image start can be slow).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of the container's own stderr is kept to explain a crash.
const STDERR_TAIL: usize = 4096;
/// How much of a sandbox's own stderr is logged (at debug level) over its whole life.
const STDERR_LOGGED: usize = 8 * 1024;

// The protocol's limits, in one table: the reader enforces them, a [`Violation`] names the
// one a sandbox broke, the helper is told the ones it keeps (`max_frame`, `list_cap`), and
// ARCHITECTURE's "The protocol's limits" describes each.

/// The longest line the helper may send: a result with its output, figures and state. The
/// helper fits every reply under it (dropping figures, then state, then output, and saying
/// so); a sandbox that sends a longer line is ended.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// The most entries the helper lists (a directory, variables, packages) or compares for
/// `files_changed`; past it the answer says it was truncated. The helper has no number of
/// its own: every request that lists carries this one (`list_cap`).
pub const LIST_CAP: usize = 2000;
/// The longest streamed-output frame (the helper sends at most 64 KiB of text in one).
pub const MAX_OUTPUT_FRAME: usize = 1024 * 1024;
/// Frames nobody asked for (a late or repeated reply, an unrequested pong) tolerated
/// before the sandbox is ended.
pub const MAX_STRAY_FRAMES: u32 = 16;
/// Lines that are not protocol frames tolerated before the sandbox is ended.
pub const MAX_MALFORMED_FRAMES: u32 = 8;
/// Streamed-output frames a run may send: a burst, then this many per second (the helper
/// sends at most 8 per second).
const OUTPUT_BURST: f64 = 32.0;
const OUTPUT_RATE: f64 = 16.0;
/// Frames queued between the reader and the caller.
const QUEUE: usize = 4;

/// How long a replayed result may take to arrive, beyond the interrupt's grace.
const CONTROL_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the engine's OOM report after a helper died.
const OOM_REPORT_WAIT: Duration = Duration::from_secs(1);

/// A request to the helper.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request<'a> {
    Exec {
        id: u64,
        max_frame: usize,
        code: &'a str,
        state: Option<&'a serde_json::Map<String, serde_json::Value>>,
        want_state: bool,
        output_limit: u64,
        stream: bool,
        max_figures: u64,
        max_figure_bytes: u64,
        track_files: bool,
        list_cap: usize,
        /// Seconds after which the helper interrupts the run itself, should no daemon do
        /// it (its daemon went away mid-call): the time-out plus a margin.
        stop_after: f64,
        /// Set once, with a session's first execution: how the sandbox ends itself.
        #[serde(skip_serializing_if = "Option::is_none")]
        lease: Option<WireLease>,
    },
    /// Write a chunk of a file (the first truncates, the rest append).
    Put {
        id: u64,
        path: &'a str,
        data: &'a str,
        append: bool,
        limit: u64,
    },
    /// Read a chunk of a file.
    Get {
        id: u64,
        path: &'a str,
        offset: u64,
        length: u64,
        limit: u64,
    },
    /// List a directory (or describe one file).
    Ls {
        id: u64,
        path: &'a str,
        list_cap: usize,
    },
    /// Start the egress forwarder for a run with an allow-list (`socket` given: the proxy's
    /// socket as the sandbox sees it, with the grant's key and secret), or stop it (none).
    Network {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        socket: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        secret: Option<&'a str>,
    },
    Ping {
        id: u64,
    },
    /// Stop execution `id` (in-band: no engine signal). No reply of its own: the
    /// execution's result says it was interrupted.
    Interrupt {
        id: u64,
    },
    Reset {
        id: u64,
    },
    Vars {
        id: u64,
        list_cap: usize,
    },
    Packages {
        id: u64,
        list_cap: usize,
    },
    /// A daemon attached to a running helper (adoption): answered at once, busy or not,
    /// with a `ready` frame carrying this id (see [`Resumed`]).
    Hello {
        id: u64,
        /// Claim the sandbox (see [`Repl::take`]): the helper takes a claim when nobody
        /// holds it or when it names (`over`) the holder's claim, and names the holder in
        /// every `ready`.
        #[serde(skip_serializing_if = "Option::is_none")]
        claim: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        over: Option<String>,
    },
    /// How long the sandbox lives by itself (see [`Lease`]).
    Lease {
        id: u64,
        #[serde(flatten)]
        lease: WireLease,
    },
    /// Send the kept result of execution `id` again (it was lost in a restart).
    Replay {
        id: u64,
    },
    /// Only the envelope's `ack`: sent right after an execution's result arrived, so the
    /// helper keeps a result only while its daemon may not have it (no reply).
    Ack,
}

/// How long a durable sandbox lives by itself: it exits `idle` after its last request,
/// and at the epoch second `until` however busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub idle: Duration,
    pub until: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct WireLease {
    idle: f64,
    until: f64,
}

impl From<&Lease> for WireLease {
    fn from(l: &Lease) -> WireLease {
        WireLease {
            idle: l.idle.as_secs_f64(),
            until: l.until as f64,
        }
    }
}

/// Every request goes out with `ack`: the id of the latest final frame this daemon
/// received, so the helper can forget the result it keeps for a daemon that dies before
/// reading it.
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(flatten)]
    request: &'a Request<'a>,
    ack: u64,
}

/// A message from the helper.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Frame {
    Ready {
        /// The `hello` this answers (none: the helper's first word at start).
        #[serde(default)]
        id: Option<u64>,
        python: String,
        #[serde(default)]
        preload_failed: BTreeMap<String, String>,
        #[serde(default)]
        running: Option<InFlight>,
        #[serde(default)]
        kept: Option<InFlight>,
        /// The claim the helper took (see [`Request::Hello`]).
        #[serde(default)]
        claimed_by: Option<String>,
    },
    Result(Box<Reply>),
    Pong {
        id: u64,
    },
    Output(OutputChunk),
    Done {
        id: u64,
        #[serde(default)]
        data: serde_json::Value,
    },
}

/// An execution a previous daemon started: still running, or finished with a result that
/// daemon never acknowledged.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct InFlight {
    pub id: u64,
    /// Epoch seconds it started (running) or finished (kept).
    #[serde(alias = "started", alias = "finished")]
    pub at: f64,
}

/// What a helper said when a daemon attached to it again.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resumed {
    /// An execution is still running (its daemon went away mid-call).
    pub running: Option<InFlight>,
    /// The last execution finished but its result was never acknowledged.
    pub kept: Option<InFlight>,
}

/// The helper's first words: at start, or in answer to a `hello`.
struct Hello {
    python: String,
    preload_failed: BTreeMap<String, String>,
    resumed: Resumed,
    claimed_by: Option<String>,
}

/// Output an execution produced so far (sent while it runs, when streaming).
#[derive(Debug, Clone, Deserialize)]
pub struct OutputChunk {
    pub id: u64,
    pub stdout: String,
    pub stderr: String,
}

/// What the reader task passes on.
#[derive(Debug)]
enum Incoming {
    Reply(Box<Reply>),
    Pong(u64),
    Output(OutputChunk),
    Done(u64, serde_json::Value),
}

/// Limits and options of one execution.
#[derive(Debug, Clone)]
pub struct ExecLimits {
    pub timeout: Duration,
    pub output_limit: u64,
    pub max_figures: u64,
    pub max_figure_bytes: u64,
    /// List the working directory's files the run created or modified.
    pub track_files: bool,
    /// A session's first execution: the sandbox's lease (durable sessions).
    pub lease: Option<Lease>,
}

/// Why running code was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// It ran past the time-out.
    Timeout(Duration),
    /// The client cancelled the call.
    Cancelled,
    /// The daemon that started it went away; the one that adopted the session stopped it.
    Restart,
}

impl std::fmt::Display for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interrupt::Timeout(t) => write!(
                f,
                "ran longer than the {} time-out",
                humantime::format_duration(*t)
            ),
            Interrupt::Cancelled => write!(f, "was cancelled by the client"),
            Interrupt::Restart => write!(f, "was cut off by a server restart"),
        }
    }
}

/// An exception raised by user code.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
pub struct PyError {
    /// Exception class name, e.g. `ZeroDivisionError`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The exception's message.
    pub message: String,
    /// The formatted traceback, starting in the user's code.
    pub traceback: String,
}

/// The helper's answer to one execution.
#[derive(Debug, Deserialize)]
pub struct Reply {
    pub id: Option<u64>,
    pub stdout: String,
    pub stderr: String,
    #[serde(default)]
    pub stdout_dropped: u64,
    #[serde(default)]
    pub stderr_dropped: u64,
    pub value: Option<String>,
    pub error: Option<PyError>,
    #[serde(default)]
    pub interrupted: bool,
    pub duration_ms: f64,
    #[serde(default)]
    pub state: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub state_skipped: Option<BTreeMap<String, String>>,
    /// matplotlib figures, base64 PNG.
    #[serde(default)]
    pub images: Vec<String>,
    /// Figures left out (over the count or size cap, or not renderable).
    #[serde(default)]
    pub images_dropped: u64,
    /// User plus system CPU time of the helper and its children during the run.
    #[serde(default)]
    pub cpu_seconds: f64,
    /// The largest resident size seen, in bytes (see `peak_memory_scope`).
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
    #[serde(default)]
    pub peak_memory_scope: Option<PeakScope>,
    /// Files of the working directory the run created or modified (tracked runs only).
    #[serde(default)]
    pub files_changed: Vec<FileChange>,
    /// The working directory held more files than the helper lists; changes may be missed.
    #[serde(default)]
    pub files_changed_truncated: bool,
}

/// What a `peak_memory_bytes` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PeakScope {
    /// This run alone: the helper reset its peak before the code started.
    Run,
    /// The session so far: the platform would not reset the peak, so it may come from an
    /// earlier run.
    Session,
}

/// What the helper answers to a file request: an error, or the request's data.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileAnswer {
    Refused {
        error: String,
        message: String,
        #[serde(default)]
        size: Option<u64>,
    },
    Ok(serde_json::Value),
}

/// One chunk read from a file, and the file's size.
#[derive(Debug, Deserialize)]
pub struct FileChunk {
    pub size: u64,
    /// Base64.
    pub data: String,
}

/// A directory listing.
#[derive(Debug, Deserialize)]
pub struct Listing {
    /// The real path listed.
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// More entries than the helper lists ([`LIST_CAP`]).
    pub truncated: bool,
}

/// Why the helper refused a file request.
#[derive(Debug)]
pub enum FileRefusal {
    /// Over the limit sent with the request; the file's size.
    TooLarge(u64),
    /// Anything else, in the helper's words.
    Other(String),
}

/// One installed distribution.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
pub struct Package {
    /// Its name, as published.
    pub name: String,
    pub version: String,
    /// Where it is installed: `session`, `shared` (install-package without a session) or
    /// `image`. The first of these that has a package wins at import.
    pub location: String,
}

/// One variable of a session.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
pub struct Variable {
    /// Its name.
    pub name: String,
    /// Its type's name, e.g. `int`, `DataFrame`, `module`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short `repr` (at most 200 characters).
    pub repr: String,
}

/// How an execution ended.
#[derive(Debug)]
pub enum Outcome {
    /// The code ran to the end (possibly raising an exception).
    Completed(Reply),
    /// The code was interrupted (time-out or cancel) and stopped; the REPL lives on.
    Interrupted(Reply, Interrupt),
}

/// Why a REPL could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The helper never said it was ready.
    #[error("the sandbox's Python did not start: {0}")]
    NoStart(NoStart),
    /// The helper went away in the middle of a call, or answered nonsense.
    #[error("{0}")]
    Died(Died),
    /// The sandbox broke the protocol (see the module doc) and was ended.
    #[error("the sandbox {0}; it was ended")]
    Ended(Violation),
    /// The engine reported that the kernel killed the sandbox for memory.
    #[error(
        "the sandbox was killed by the kernel because it ran out of memory (its memory limit)"
    )]
    OutOfMemory,
    /// The code was interrupted, ignored it, and the container was killed.
    #[error(
        "the code {0} and did not stop when interrupted (it ignores KeyboardInterrupt or is \
         stuck in native code), so its sandbox was killed"
    )]
    Killed(Interrupt),
    /// Another daemon claimed this sandbox first: its claim, as the helper heard it.
    #[error("another server claimed this sandbox first")]
    Claimed(Option<String>),
}

/// Why a helper never said it was ready.
#[derive(Debug, thiserror::Error)]
pub enum NoStart {
    /// Its container ended first: because it broke the protocol, or with its last words.
    #[error("the container exited before the helper was ready. {}Check that the image has \
             `python3` on its PATH and that docker.user may run it", match .broke {
                 Some(v) => format!("The sandbox {v}. "),
                 None => .last_words.to_string(),
             })]
    Exited {
        broke: Option<Violation>,
        last_words: LastWords,
    },
    /// It said nothing within [`READY_TIMEOUT`].
    #[error("the helper was not ready within {0:?}")]
    NotReady(Duration),
    /// A running sandbox (adoption, the host pool) could not be attached to.
    #[error("could not attach to it ({0})")]
    Attach(RuntimeError),
    /// The `hello` could not be written.
    #[error("could not write to the sandbox's helper ({0})")]
    Write(std::io::Error),
    /// The helper went away while it was adopted.
    #[error("the sandbox's helper went away while it was adopted. {0}")]
    GoneWhileAdopted(LastWords),
    /// The helper did not answer the `hello` in time.
    #[error("the sandbox's helper did not answer within {0:?}")]
    NoHello(Duration),
}

/// Why a helper went away, or stopped making sense, during a call.
#[derive(Debug, thiserror::Error)]
pub enum Died {
    /// Its process or container is gone: what the daemon was doing, and its last words.
    #[error(
        "{how}. {last_words}The code ended the interpreter (os._exit, a signal, a crash in \
             native code), or the sandbox's container was removed"
    )]
    Gone { how: Gone, last_words: LastWords },
    /// An answer that does not parse (`what`: "variable list", "file answer", ...).
    #[error("the helper sent an unreadable {what}: {error}")]
    Unreadable {
        what: &'static str,
        error: serde_json::Error,
    },
    /// A file chunk whose data is not base64.
    #[error("the helper sent a file chunk that is not base64: {0}")]
    NotBase64(crate::files::FileError),
    /// The helper could not start the egress forwarder, in its words.
    #[error("the sandbox could not start its egress forwarder: {0}")]
    Forwarder(String),
    /// A control request (reset, variables, files, ...) got no answer in time.
    #[error("the sandbox did not answer within {0:?}")]
    NoAnswer(Duration),
    /// The session was asked to end (cleanup, shutdown) while the call ran.
    #[error("the session was asked to end")]
    EndRequested,
}

/// What the daemon saw when a helper went away.
#[derive(Debug, thiserror::Error)]
pub enum Gone {
    #[error("could not reach the sandbox ({0})")]
    Unreachable(std::io::Error),
    #[error("could not send the code to the sandbox ({0})")]
    CodeNotSent(std::io::Error),
    #[error("the sandbox's Python process exited during the call")]
    ExitedDuringCall,
    #[error("the sandbox's Python process exited when interrupted")]
    ExitedWhenInterrupted,
    #[error("the sandbox's Python process exited")]
    Exited,
}

/// The tail of a container's own stderr, to explain a crash: `Its last words: ...` and a
/// newline, or nothing.
#[derive(Debug, Clone, Default)]
pub struct LastWords(String);

impl std::fmt::Display for LastWords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            writeln!(f, "Its last words: {}", self.0)
        }
    }
}

/// How a sandbox broke the protocol, each keyed to its limit in the table above. Its
/// `Display` completes "the sandbox ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A line over [`MAX_FRAME`].
    #[error("wrote a protocol frame larger than {} MiB", MAX_FRAME >> 20)]
    FrameTooLarge,
    /// More than [`MAX_MALFORMED_FRAMES`] lines that are not frames (the count).
    #[error("wrote {0} malformed protocol frames")]
    Malformed(u32),
    /// A streamed-output frame over [`MAX_OUTPUT_FRAME`].
    #[error("sent a streamed-output frame larger than {} KiB", MAX_OUTPUT_FRAME >> 10)]
    OutputFrameTooLarge,
    /// More than [`MAX_STRAY_FRAMES`] frames nobody asked for (the count).
    #[error("sent {0} protocol frames nobody asked for")]
    Stray(u32),
    /// Streamed output past [`OUTPUT_BURST`], then [`OUTPUT_RATE`] frames a second.
    #[error("streamed output faster than {OUTPUT_RATE} frames per second")]
    OutputTooFast,
}

/// A helper's answer that does not parse as `what`.
fn unreadable(what: &'static str) -> impl Fn(serde_json::Error) -> ReplError + Copy {
    move |error| ReplError::Died(Died::Unreadable { what, error })
}

/// A line longer than [`MAX_FRAME`] (or the decoder's own cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooLarge;

/// Reassembles newline-terminated frames from arbitrary chunks, holding at most `max`
/// bytes of an unfinished line.
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            max,
        }
    }

    /// Feed a chunk; returns every line it completed (without the newline), or
    /// `FrameTooLarge` as soon as a line is longer than the cap. Nothing over the cap is
    /// ever buffered.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, FrameTooLarge> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            if self.buf.len() + pos > self.max {
                return Err(FrameTooLarge);
            }
            let mut line = std::mem::take(&mut self.buf);
            line.extend_from_slice(&rest[..pos]);
            lines.push(line);
            rest = &rest[pos + 1..];
        }
        if self.buf.len() + rest.len() > self.max {
            return Err(FrameTooLarge);
        }
        self.buf.extend_from_slice(rest);
        Ok(lines)
    }

    /// Bytes of an unfinished line held now.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The first request id of a REPL made now (see [`Repl::next_id`]).
fn id_base() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ms << 10
}

/// What the caller waits for; shared by a [`Repl`] and its reader task. A std mutex: it is
/// held for a few instructions, never across an `.await`.
#[derive(Debug, Default, Clone, Copy)]
struct Expect {
    /// The id of the request in flight; 0 when none is.
    id: u64,
    /// Whether that request streams output.
    stream: bool,
    /// Its final frame has been passed on; anything more for it is a stray.
    answered: bool,
}

/// One live helper in one container. Dropping it closes the helper's stdin, which makes
/// the helper exit and Docker remove the container.
pub struct Repl {
    backend: Backend,
    /// Container id, for removal and the engine's OOM report.
    pub id: String,
    /// Container name, for logs.
    pub name: String,
    /// Python version the helper reported.
    pub python: String,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    /// Frames the reader accepted, in a bounded queue; closed when the container's output
    /// ends or the reader ended the sandbox.
    replies: mpsc::Receiver<Incoming>,
    /// What the reader should accept next.
    expect: Arc<Mutex<Expect>>,
    /// Why the reader ended the sandbox, if it did.
    broken: Arc<Mutex<Option<Violation>>>,
    /// The last few KB the container wrote to stderr outside executions (crash reports).
    stderr_tail: Arc<Mutex<String>>,
    /// Request ids start at this daemon's start time in milliseconds times 1024, so a
    /// daemon that adopts a sandbox never reuses an id an earlier daemon sent (the helper
    /// remembers the last interrupt it was asked for by id).
    next_id: u64,
    /// The id of the latest final frame received, sent with every request (`ack`).
    acked: u64,
    /// The reader task; aborted with the REPL.
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Repl {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Repl {
    /// Start a container from `spec` and wait until its helper is ready.
    pub async fn start(backend: &Backend, spec: &SandboxSpec) -> Result<Repl, ReplError> {
        let attached = backend.start_attached(spec).await?;
        let (mut repl, ready_rx) = Repl::over(backend, attached);
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(hello)) => {
                for (module, error) in hello.preload_failed {
                    tracing::warn!(%module, %error, "warm import failed (docker.warm_imports)");
                }
                repl.python = hello.python;
                Ok(repl)
            }
            Ok(Err(_)) => {
                let cause = NoStart::Exited {
                    broke: repl.broken(),
                    last_words: repl.crash_report(),
                };
                repl.kill().await;
                Err(ReplError::NoStart(cause))
            }
            Err(_) => {
                repl.kill().await;
                Err(ReplError::NoStart(NoStart::NotReady(READY_TIMEOUT)))
            }
        }
    }

    /// Take the running sandbox `id` for `me` (adoption of a durable session, or a warm
    /// sandbox of the host pool): attach, and claim it in the `hello` as `token` (unique
    /// per attempt). The helper decides a race, because the engine's rename cannot: it
    /// renames whatever name the container has by then, so two renames of one old name
    /// both succeed. A sandbox still claimed by someone `stale` says is gone is claimed
    /// over that claim; [`ReplError::Claimed`] names one that holds it. The container is
    /// left as it is when this fails.
    pub async fn take(
        backend: &Backend,
        id: &str,
        token: &str,
        within: Duration,
        stale: impl Fn(&str) -> bool,
    ) -> Result<(Repl, Resumed), ReplError> {
        let mut over = None;
        // Each turn either wins or learns a newer claim; two turns over dead holders are
        // already a rare race, a third one is given up as held.
        for _ in 0..3 {
            let attached = backend
                .attach(id, token)
                .await
                .map_err(|e| ReplError::NoStart(NoStart::Attach(e)))?;
            match Repl::hello(backend, attached, within, Some((token, over.as_deref()))).await {
                Err(ReplError::Claimed(Some(by))) if stale(&by) => over = Some(by),
                done => return done,
            }
        }
        Err(ReplError::Claimed(over))
    }

    /// Say `hello` over `attached`, claiming the sandbox (`claim`, over the claim it
    /// found, if any) or not.
    async fn hello(
        backend: &Backend,
        attached: crate::runtime::Attached,
        within: Duration,
        claim: Option<(&str, Option<&str>)>,
    ) -> Result<(Repl, Resumed), ReplError> {
        let (mut repl, ready_rx) = Repl::over(backend, attached);
        let id = repl.next_id();
        repl.expect(id, false);
        // A daemon killed while writing a request left half a line in the helper's stdin:
        // end it (the helper drops it as malformed) so the hello is a line of its own.
        let started = async {
            repl.input.write_all(b"\n").await?;
            repl.send(&Request::Hello {
                id,
                claim: claim.map(|(c, _)| c.to_string()),
                over: claim.and_then(|(_, o)| o.map(str::to_string)),
            })
            .await
        };
        if let Err(e) = started.await {
            return Err(ReplError::NoStart(NoStart::Write(e)));
        }
        match tokio::time::timeout(within, ready_rx).await {
            Ok(Ok(hello)) if claim.is_some_and(|(c, _)| hello.claimed_by.as_deref() != Some(c)) => {
                Err(ReplError::Claimed(hello.claimed_by))
            }
            Ok(Ok(hello)) => {
                repl.expect(0, false);
                repl.acked = id;
                repl.python = hello.python;
                Ok((repl, hello.resumed))
            }
            Ok(Err(_)) => Err(ReplError::NoStart(NoStart::GoneWhileAdopted(
                repl.crash_report(),
            ))),
            Err(_) => Err(ReplError::NoStart(NoStart::NoHello(within))),
        }
    }

    /// A REPL over `attached`, its reader started, and where the helper's `ready` arrives.
    fn over(
        backend: &Backend,
        attached: crate::runtime::Attached,
    ) -> (Repl, tokio::sync::oneshot::Receiver<Hello>) {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (reply_tx, replies) = mpsc::channel(QUEUE);
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        let expect = Arc::new(Mutex::new(Expect::default()));
        let broken = Arc::new(Mutex::new(None));
        let reader = tokio::spawn(
            Reader {
                backend: backend.clone(),
                container: attached.id.clone(),
                name: attached.name.clone(),
                ready: Some(ready_tx),
                replies: reply_tx,
                expect: expect.clone(),
                broken: broken.clone(),
                stderr_tail: stderr_tail.clone(),
                stderr_logged: 0,
                stray: 0,
                malformed: 0,
                tokens: OUTPUT_BURST,
                refilled: Instant::now(),
            }
            .run(attached.output),
        );
        let repl = Repl {
            backend: backend.clone(),
            id: attached.id,
            name: attached.name,
            python: String::new(),
            input: attached.input,
            replies,
            expect,
            broken,
            stderr_tail,
            next_id: id_base(),
            acked: 0,
            reader,
        };
        (repl, ready_rx)
    }

    /// Let the sandbox end itself `idle` after its last request, and at `until` (epoch
    /// seconds) however busy; zero is no limit.
    pub async fn lease(&mut self, lease: &Lease, within: Duration) -> Result<(), ReplError> {
        let id = self.next_id();
        let request = Request::Lease {
            id,
            lease: lease.into(),
        };
        self.control(request, id, within).await.map(|_| ())
    }

    /// The result of an execution a previous daemon started and never heard the end of:
    /// a running one is interrupted now (the restart cut it off), a finished one is sent
    /// again. `None` when the helper no longer has it.
    pub async fn recover(&mut self, resumed: Resumed) -> Result<Option<Reply>, ReplError> {
        let started = Instant::now();
        let (id, request) = match (resumed.running, resumed.kept) {
            (Some(running), _) => (running.id, Request::Interrupt { id: running.id }),
            (None, Some(kept)) => (kept.id, Request::Replay { id: kept.id }),
            (None, None) => return Ok(None),
        };
        self.expect(id, false);
        let sent = self.send(&request).await;
        if let Err(e) = sent {
            self.expect(0, false);
            return Err(self.lost(Gone::Unreachable(e), started).await);
        }
        let answer = async {
            loop {
                match self.replies.recv().await {
                    Some(Incoming::Reply(reply)) => return Some(Some(*reply)),
                    Some(Incoming::Done(..)) => return Some(None),
                    Some(_) => continue,
                    None => return None,
                }
            }
        };
        let got = tokio::time::timeout(INTERRUPT_GRACE + CONTROL_GRACE, answer).await;
        self.expect(0, false);
        match got {
            Ok(Some(reply)) => {
                self.acked = id;
                Ok(reply)
            }
            Ok(None) => Err(self.lost(Gone::Exited, started).await),
            Err(_) => {
                self.kill().await;
                Err(ReplError::Killed(Interrupt::Restart))
            }
        }
    }

    /// Send one request line; an error means the helper is gone.
    async fn send(&mut self, request: &Request<'_>) -> std::io::Result<()> {
        let envelope = Envelope {
            request,
            ack: self.acked,
        };
        let mut line = serde_json::to_vec(&envelope).expect("requests serialise");
        line.push(b'\n');
        self.input.write_all(&line).await?;
        self.input.flush().await
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Say what the reader should accept next (0: nothing).
    fn expect(&self, id: u64, stream: bool) {
        *self.expect.lock().expect("expect lock") = Expect {
            id,
            stream,
            answered: false,
        };
    }

    /// Why the reader ended this sandbox, if it did.
    fn broken(&self) -> Option<Violation> {
        *self.broken.lock().expect("broken lock")
    }

    /// Run code. `state` and `want_state` are for transient runs. The run is interrupted
    /// when it passes `limits.timeout` or when `cancel` fires; output produced meanwhile
    /// goes to `progress`, if given (dropped when the receiver lags: progress is a
    /// courtesy, the result has it all).
    pub async fn execute(
        &mut self,
        code: &str,
        state: Option<&serde_json::Map<String, serde_json::Value>>,
        want_state: bool,
        limits: &ExecLimits,
        cancel: &CancellationToken,
        progress: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<Outcome, ReplError> {
        let id = self.next_id();
        let started = Instant::now();
        let request = Request::Exec {
            id,
            max_frame: MAX_FRAME,
            code,
            state,
            want_state,
            output_limit: limits.output_limit,
            stream: progress.is_some(),
            max_figures: limits.max_figures,
            max_figure_bytes: limits.max_figure_bytes,
            track_files: limits.track_files,
            list_cap: LIST_CAP,
            stop_after: (limits.timeout + INTERRUPT_GRACE * 2).as_secs_f64(),
            lease: limits.lease.as_ref().map(WireLease::from),
        };
        self.expect(id, progress.is_some());
        let outcome = self
            .run(id, &request, started, limits, cancel, progress)
            .await;
        self.expect(0, false);
        if outcome.is_ok() {
            // Received: the helper need not keep it for a restart. One short line, no reply.
            let _ = self.send(&Request::Ack).await;
        }
        outcome
    }

    async fn run(
        &mut self,
        id: u64,
        request: &Request<'_>,
        started: Instant,
        limits: &ExecLimits,
        cancel: &CancellationToken,
        progress: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<Outcome, ReplError> {
        if let Err(e) = self.send(request).await {
            return Err(self.lost(Gone::CodeNotSent(e), started).await);
        }
        let interrupt = tokio::select! {
            reply = self.reply(id, progress) => return match reply {
                Some(reply) => Ok(Outcome::Completed(reply)),
                None => Err(self.lost(Gone::ExitedDuringCall, started).await),
            },
            _ = tokio::time::sleep(limits.timeout) => Interrupt::Timeout(limits.timeout),
            _ = cancel.cancelled() => Interrupt::Cancelled,
        };
        tracing::info!(container = %self.name, %interrupt, "interrupting the code");
        // In-band, over the channel the code came by: every backend has one, not every
        // backend has a signal API. The grace period covers writing the request too: a
        // helper that does not even read it (native code holding the GIL) is killed.
        let stopped = async {
            if let Err(e) = self.send(&Request::Interrupt { id }).await {
                // The helper's stdin is gone: so is the helper, and its output ends.
                tracing::warn!(container = %self.name, error = %e, "could not send the interrupt");
            }
            self.reply(id, progress).await
        };
        match tokio::time::timeout(INTERRUPT_GRACE, stopped).await {
            Ok(Some(reply)) => Ok(Outcome::Interrupted(reply, interrupt)),
            Ok(None) => Err(self.lost(Gone::ExitedWhenInterrupted, started).await),
            Err(_) => {
                self.kill().await;
                Err(ReplError::Killed(interrupt))
            }
        }
    }

    /// The reply to request `id`, passing its streamed output on. Anything else still
    /// queued (left over from an abandoned call) is skipped.
    async fn reply(
        &mut self,
        id: u64,
        progress: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Option<Reply> {
        loop {
            match self.replies.recv().await? {
                Incoming::Reply(reply) if reply.id == Some(id) => {
                    self.acked = id;
                    return Some(*reply);
                }
                Incoming::Output(chunk) if chunk.id == id => {
                    if let Some(tx) = progress {
                        let _ = tx.try_send(chunk);
                    }
                }
                _ => {}
            }
        }
    }

    /// Forget every variable and import of the session (the sandbox and its files stay).
    pub async fn reset(&mut self, within: Duration) -> Result<(), ReplError> {
        let id = self.next_id();
        self.control(Request::Reset { id }, id, within)
            .await
            .map(|_| ())
    }

    /// The session's variables: name, type and a short repr each.
    pub async fn variables(&mut self, within: Duration) -> Result<Vec<Variable>, ReplError> {
        let id = self.next_id();
        let data = self
            .control(
                Request::Vars {
                    id,
                    list_cap: LIST_CAP,
                },
                id,
                within,
            )
            .await?;
        serde_json::from_value(data).map_err(unreadable("variable list"))
    }

    /// The distributions this sandbox can import: its own installs, shared ones, the image's.
    pub async fn packages(&mut self, within: Duration) -> Result<Vec<Package>, ReplError> {
        let id = self.next_id();
        let data = self
            .control(
                Request::Packages {
                    id,
                    list_cap: LIST_CAP,
                },
                id,
                within,
            )
            .await?;
        serde_json::from_value(data).map_err(unreadable("package list"))
    }

    /// Give the sandbox a way out through the egress proxy: the helper starts its forwarder
    /// (connections to it go to `socket` after a `PDM1 key secret` line) and points the
    /// proxy variables at it; `None` stops it and removes the variables. Returns the
    /// forwarder's port (0 when stopped).
    pub async fn network(
        &mut self,
        grant: Option<(&str, &str, &str)>,
        within: Duration,
    ) -> Result<u16, ReplError> {
        let id = self.next_id();
        let (socket, key, secret) = match grant {
            Some((socket, key, secret)) => (Some(socket), Some(key), Some(secret)),
            None => (None, None, None),
        };
        let request = Request::Network {
            id,
            socket,
            key,
            secret,
        };
        let data = self.control(request, id, within).await?;
        #[derive(Deserialize)]
        struct Answer {
            port: Option<u16>,
            message: Option<String>,
        }
        let answer: Answer = serde_json::from_value(data).map_err(unreadable("network answer"))?;
        match (answer.port, answer.message) {
            (_, Some(message)) => Err(ReplError::Died(Died::Forwarder(message))),
            (port, None) => Ok(port.unwrap_or(0)),
        }
    }

    /// Write `data` (base64, at most [`crate::files::CHUNK`] bytes decoded) to `path`,
    /// truncating it first unless `append`; the file's size after.
    pub async fn put_file(
        &mut self,
        path: &str,
        data: &str,
        append: bool,
        limit: u64,
        within: Duration,
    ) -> Result<Result<u64, FileRefusal>, ReplError> {
        let id = self.next_id();
        let request = Request::Put {
            id,
            path,
            data,
            append,
            limit,
        };
        #[derive(Deserialize)]
        struct Size {
            size: u64,
        }
        Ok(self
            .file_request(request, id, within)
            .await?
            .map(|s: Size| s.size))
    }

    /// Read up to `length` bytes of `path` from `offset`.
    pub async fn get_file(
        &mut self,
        path: &str,
        offset: u64,
        length: u64,
        limit: u64,
        within: Duration,
    ) -> Result<Result<FileChunk, FileRefusal>, ReplError> {
        let id = self.next_id();
        let request = Request::Get {
            id,
            path,
            offset,
            length,
            limit,
        };
        self.file_request(request, id, within).await
    }

    /// List the directory `path` (or describe the one file).
    pub async fn list_files(
        &mut self,
        path: &str,
        within: Duration,
    ) -> Result<Result<Listing, FileRefusal>, ReplError> {
        let id = self.next_id();
        self.file_request(
            Request::Ls {
                id,
                path,
                list_cap: LIST_CAP,
            },
            id,
            within,
        )
        .await
    }

    async fn file_request<T: serde::de::DeserializeOwned>(
        &mut self,
        request: Request<'_>,
        id: u64,
        within: Duration,
    ) -> Result<Result<T, FileRefusal>, ReplError> {
        let data = self.control(request, id, within).await?;
        let unreadable = unreadable("file answer");
        match serde_json::from_value::<FileAnswer>(data).map_err(unreadable)? {
            FileAnswer::Refused {
                error,
                size: Some(size),
                ..
            } if error == "too_large" => Ok(Err(FileRefusal::TooLarge(size))),
            FileAnswer::Refused { message, .. } => Ok(Err(FileRefusal::Other(message))),
            FileAnswer::Ok(value) => serde_json::from_value(value).map(Ok).map_err(unreadable),
        }
    }

    async fn control(
        &mut self,
        request: Request<'_>,
        id: u64,
        within: Duration,
    ) -> Result<serde_json::Value, ReplError> {
        let started = Instant::now();
        self.expect(id, false);
        let answer = self.control_answer(request, id, within, started).await;
        self.expect(0, false);
        answer
    }

    async fn control_answer(
        &mut self,
        request: Request<'_>,
        id: u64,
        within: Duration,
        started: Instant,
    ) -> Result<serde_json::Value, ReplError> {
        if let Err(e) = self.send(&request).await {
            return Err(self.lost(Gone::Unreachable(e), started).await);
        }
        let done = async {
            loop {
                match self.replies.recv().await {
                    Some(Incoming::Done(d, data)) if d == id => {
                        self.acked = id;
                        return Some(data);
                    }
                    Some(_) => continue,
                    None => return None,
                }
            }
        };
        match tokio::time::timeout(within, done).await {
            Ok(Some(data)) => Ok(data),
            Ok(None) => Err(self.lost(Gone::Exited, started).await),
            Err(_) => Err(ReplError::Died(Died::NoAnswer(within))),
        }
    }

    /// Whether the helper answers a ping within `within`: the container runs and the
    /// helper is idle and reading. A sandbox that fails this is never handed out.
    pub async fn ping(&mut self, within: Duration) -> bool {
        if self.reader.is_finished() {
            return false;
        }
        let id = self.next_id();
        self.expect(id, false);
        let answered = self.pong(id, within).await;
        self.expect(0, false);
        answered
    }

    async fn pong(&mut self, id: u64, within: Duration) -> bool {
        if self.send(&Request::Ping { id }).await.is_err() {
            return false;
        }
        let pong = async {
            loop {
                match self.replies.recv().await {
                    Some(Incoming::Pong(p)) if p == id => return true,
                    Some(_) => continue,
                    None => return false,
                }
            }
        };
        tokio::time::timeout(within, pong).await.unwrap_or(false)
    }

    fn crash_report(&self) -> LastWords {
        LastWords(
            self.stderr_tail
                .lock()
                .expect("stderr tail lock")
                .trim()
                .to_string(),
        )
    }

    /// Why the sandbox is gone, as certain as the engine lets us be: the reader ended it
    /// for breaking the protocol, or the kernel killed it for memory (the engine reports
    /// OOM kills), or its Python exited.
    async fn lost(&mut self, how: Gone, since: Instant) -> ReplError {
        if let Some(violation) = self.broken() {
            return ReplError::Ended(violation);
        }
        if self
            .backend
            .oom_killed(&self.id, since, OOM_REPORT_WAIT)
            .await
        {
            return ReplError::OutOfMemory;
        }
        ReplError::Died(Died::Gone {
            how,
            last_words: self.crash_report(),
        })
    }

    /// Kill and remove the container now.
    pub async fn kill(&mut self) {
        self.backend.remove(&self.id).await;
    }
}

/// Owns the attach stream: enforces the protocol on stdout, keeps a tail of stderr.
struct Reader {
    backend: Backend,
    container: String,
    name: String,
    ready: Option<tokio::sync::oneshot::Sender<Hello>>,
    replies: mpsc::Sender<Incoming>,
    expect: Arc<Mutex<Expect>>,
    broken: Arc<Mutex<Option<Violation>>>,
    stderr_tail: Arc<Mutex<String>>,
    /// Bytes of stderr logged so far (capped at `STDERR_LOGGED`).
    stderr_logged: usize,
    /// Frames nobody asked for, and malformed lines, so far.
    stray: u32,
    malformed: u32,
    /// The streamed-output token bucket.
    tokens: f64,
    refilled: Instant,
}

/// What to do with one frame.
enum Verdict {
    Pass(Incoming),
    Ready(Hello),
    Stray,
}

impl Reader {
    async fn run(mut self, mut output: Pin<Box<dyn futures::Stream<Item = Output> + Send>>) {
        let mut frames = FrameDecoder::new(MAX_FRAME);
        while let Some(chunk) = output.next().await {
            let violation = match chunk {
                Output::Stdout(bytes) => match frames.push(&bytes) {
                    Ok(lines) => self.lines(lines).await,
                    Err(FrameTooLarge) => Some(Violation::FrameTooLarge),
                },
                Output::Stderr(bytes) => {
                    self.stderr(&bytes);
                    None
                }
            };
            if let Some(why) = violation {
                tracing::warn!(container = %self.name, stray = self.stray, malformed = self.malformed,
                    "ending a sandbox that broke the protocol: {why}");
                *self.broken.lock().expect("broken lock") = Some(why);
                // The caller hears of it now (its queue closes). Keep reading, discarding
                // everything, until the container is gone: the engine cannot finish a
                // container whose output it is still trying to hand to a reader that
                // stopped reading, and half of the connection (our stdin) is still open.
                drop(self.replies);
                let drain = async { while output.next().await.is_some() {} };
                tokio::join!(self.backend.remove(&self.container), drain);
                return;
            }
        }
        tracing::debug!(container = %self.name, "sandbox output ended");
    }

    /// Handle complete lines; returns why the sandbox must end, if it must.
    async fn lines(&mut self, lines: Vec<Vec<u8>>) -> Option<Violation> {
        for line in lines {
            let frame = match serde_json::from_slice::<Frame>(&line) {
                Ok(frame) => frame,
                Err(e) => {
                    self.malformed += 1;
                    if self.malformed == 1 {
                        // One line per sandbox; the rest are counted, and end it.
                        tracing::warn!(container = %self.name, error = %e,
                            line = %String::from_utf8_lossy(&line[..line.len().min(100)]),
                            "a malformed frame from the sandbox");
                    }
                    if self.malformed > MAX_MALFORMED_FRAMES {
                        return Some(Violation::Malformed(self.malformed));
                    }
                    continue;
                }
            };
            let is_output = matches!(frame, Frame::Output(_));
            if is_output && line.len() > MAX_OUTPUT_FRAME {
                return Some(Violation::OutputFrameTooLarge);
            }
            match self.judge(frame) {
                Verdict::Pass(incoming) => {
                    if self.replies.send(incoming).await.is_err() {
                        return None; // the REPL is gone; the stream ends with it
                    }
                }
                Verdict::Ready(hello) => {
                    if let Some(tx) = self.ready.take() {
                        let _ = tx.send(hello);
                    }
                }
                Verdict::Stray => {
                    self.stray += 1;
                    if self.stray > MAX_STRAY_FRAMES {
                        return Some(Violation::Stray(self.stray));
                    }
                }
            }
            if is_output && !self.take_token() {
                return Some(Violation::OutputTooFast);
            }
        }
        None
    }

    /// Accept a frame only if it answers the request in flight (strictly by id).
    fn judge(&mut self, frame: Frame) -> Verdict {
        let mut expect = self.expect.lock().expect("expect lock");
        let awaited = |id: u64| expect.id != 0 && id == expect.id && !expect.answered;
        match frame {
            // The first `ready` at start; after a `hello`, only the one answering it.
            Frame::Ready {
                id,
                python,
                preload_failed,
                running,
                kept,
                claimed_by,
            } if self.ready.is_some() && id.is_none_or(awaited) => Verdict::Ready(Hello {
                python,
                preload_failed,
                resumed: Resumed { running, kept },
                claimed_by,
            }),
            Frame::Ready { .. } => Verdict::Stray,
            Frame::Output(chunk) if awaited(chunk.id) && expect.stream => {
                Verdict::Pass(Incoming::Output(chunk))
            }
            Frame::Output(_) => Verdict::Stray,
            Frame::Result(reply) if reply.id.is_some_and(awaited) => {
                expect.answered = true;
                Verdict::Pass(Incoming::Reply(reply))
            }
            Frame::Pong { id } if awaited(id) => {
                expect.answered = true;
                Verdict::Pass(Incoming::Pong(id))
            }
            Frame::Done { id, data } if awaited(id) => {
                expect.answered = true;
                Verdict::Pass(Incoming::Done(id, data))
            }
            Frame::Result(_) | Frame::Pong { .. } | Frame::Done { .. } => Verdict::Stray,
        }
    }

    /// One streamed-output frame from the bucket; false when the run streams too fast.
    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f64() * OUTPUT_RATE;
        self.tokens = (self.tokens + refill).min(OUTPUT_BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Keep a tail of the container's own stderr, and log a bounded amount of it.
    fn stderr(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        if self.stderr_logged < STDERR_LOGGED {
            let room = STDERR_LOGGED - self.stderr_logged;
            let mut cut = room.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.stderr_logged += text.len().min(room);
            tracing::debug!(container = %self.name, stderr = %text[..cut].trim_end(), "sandbox stderr");
            if self.stderr_logged >= STDERR_LOGGED {
                tracing::debug!(container = %self.name, "further stderr of this sandbox is not logged");
            }
        }
        let mut tail = self.stderr_tail.lock().expect("stderr tail lock");
        let mut start = text.len().saturating_sub(STDERR_TAIL);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        tail.push_str(&text[start..]);
        if tail.len() > STDERR_TAIL {
            let mut cut = tail.len() - STDERR_TAIL;
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail.drain(..cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_reassembles_lines_across_chunks() {
        let mut s = FrameDecoder::new(100);
        assert!(s.push(b"{\"a\":").unwrap().is_empty());
        assert_eq!(s.push(b"1}\n{\"b\"").unwrap(), vec![b"{\"a\":1}".to_vec()]);
        assert_eq!(
            s.push(b":2}\n\n").unwrap(),
            vec![b"{\"b\":2}".to_vec(), b"".to_vec()]
        );
        assert!(s.push(b"").unwrap().is_empty());
    }

    #[test]
    fn decoder_refuses_a_line_over_the_cap_without_buffering_it() {
        let mut s = FrameDecoder::new(10);
        assert_eq!(
            s.push(b"0123456789\n").unwrap(),
            vec![b"0123456789".to_vec()]
        );
        assert!(s.push(b"01234").unwrap().is_empty());
        assert_eq!(s.push(b"567890"), Err(FrameTooLarge));
        let mut s = FrameDecoder::new(10);
        assert_eq!(s.push(&[b'x'; 11]), Err(FrameTooLarge));
        assert_eq!(s.pending(), 0, "nothing over the cap is held");
        let mut s = FrameDecoder::new(10);
        assert_eq!(s.push(b"ok\n0123456789x\n"), Err(FrameTooLarge));
    }

    proptest::proptest! {
        /// However the bytes are chunked, the decoder yields exactly the lines of the
        /// stream while each fits the cap, fails as soon as one does not, and never holds
        /// more than the cap.
        #[test]
        fn decoder_matches_a_reference_split_under_any_chunking(
            lines in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..40), 0..20),
            cuts in proptest::collection::vec(0usize..64, 0..30),
            max in 0usize..48,
        ) {
            let mut stream = Vec::new();
            for l in &lines {
                stream.extend(l.iter().map(|&b| if b == b'\n' { b'n' } else { b }));
                stream.push(b'\n');
            }
            let expected: Vec<Vec<u8>> = stream
                .split(|&b| b == b'\n')
                .take(lines.len())
                .map(<[u8]>::to_vec)
                .collect();
            let first_too_long = expected.iter().position(|l| l.len() > max);
            let mut d = FrameDecoder::new(max);
            let mut got = Vec::new();
            let mut failed = false;
            let mut rest = &stream[..];
            let mut cuts = cuts.into_iter();
            while !rest.is_empty() {
                let n = cuts.next().unwrap_or(rest.len()).clamp(1, rest.len());
                match d.push(&rest[..n]) {
                    Ok(lines) => got.extend(lines),
                    Err(FrameTooLarge) => { failed = true; break; }
                }
                proptest::prop_assert!(d.pending() <= max);
                rest = &rest[n..];
            }
            match first_too_long {
                None => {
                    proptest::prop_assert!(!failed);
                    proptest::prop_assert_eq!(got, expected);
                }
                Some(i) => {
                    proptest::prop_assert!(failed);
                    proptest::prop_assert!(got.len() <= i);
                    proptest::prop_assert_eq!(&got[..], &expected[..got.len()]);
                }
            }
        }
    }

    #[test]
    fn frames_parse() {
        let f: Frame = serde_json::from_str(r#"{"op":"ready","python":"3.11.2"}"#).unwrap();
        assert!(matches!(f, Frame::Ready { python, .. } if python == "3.11.2"));
        let f: Frame = serde_json::from_str(r#"{"op":"pong","id":7}"#).unwrap();
        assert!(matches!(f, Frame::Pong { id: 7 }));
        let f: Frame = serde_json::from_str(
            r#"{"op":"result","id":3,"stdout":"hi\n","stderr":"","stdout_dropped":0,"stderr_dropped":0,
                "value":"2","error":{"type":"ValueError","message":"m","traceback":"t"},
                "interrupted":false,"duration_ms":1.5}"#,
        )
        .unwrap();
        let Frame::Result(r) = f else { panic!() };
        assert_eq!(r.id, Some(3));
        assert_eq!(r.error.unwrap().kind, "ValueError");
    }

    #[test]
    fn an_interrupt_names_the_execution_and_is_short() {
        let line = serde_json::to_string(&Request::Interrupt { id: 12 }).unwrap();
        assert_eq!(line, r#"{"op":"interrupt","id":12}"#);
        // The helper's reader only parses lines this short (INTERRUPT_LINE_MAX).
        let longest_claim = crate::durable::ClaimedName::new(&crate::durable::Holder {
            host: "ffffff".into(),
            pid: u32::MAX,
            start: u64::MAX,
        })
        .render();
        for request in [
            Request::Interrupt { id: u64::MAX },
            Request::Hello {
                id: u64::MAX,
                claim: Some(longest_claim.clone()),
                over: Some(longest_claim.clone()),
            },
            Request::Ack,
        ] {
            let longest = serde_json::to_string(&Envelope {
                request: &request,
                ack: u64::MAX,
            })
            .unwrap();
            assert!(longest.len() < 256, "{longest}");
            assert!(
                longest.contains(r#""ack":18446744073709551615"#),
                "{longest}"
            );
        }
    }

    #[test]
    fn requests_are_one_line() {
        let line = serde_json::to_string(&Request::Exec {
            id: 1,
            max_frame: MAX_FRAME,
            code: "print('a')\nprint('b')",
            state: None,
            want_state: false,
            output_limit: 10,
            stream: false,
            max_figures: 4,
            max_figure_bytes: 1,
            track_files: true,
            list_cap: LIST_CAP,
            stop_after: 34.0,
            lease: Some(WireLease {
                idle: 1.5,
                until: 2e9,
            }),
        })
        .unwrap();
        assert!(!line.contains('\n'));
        assert!(
            line.contains(r#""lease":{"idle":1.5,"until":2000000000.0}"#),
            "{line}"
        );
        assert!(line.contains(r#""op":"exec""#));
    }

    #[test]
    fn every_request_that_lists_carries_the_one_list_cap() {
        let cap = format!(r#""list_cap":{LIST_CAP}"#);
        for request in [
            Request::Vars {
                id: 1,
                list_cap: LIST_CAP,
            },
            Request::Packages {
                id: 1,
                list_cap: LIST_CAP,
            },
            Request::Ls {
                id: 1,
                path: ".",
                list_cap: LIST_CAP,
            },
        ] {
            let line = serde_json::to_string(&request).unwrap();
            assert!(line.contains(&cap), "{line}");
        }
        // The helper keeps no number of its own.
        assert!(!crate::sandbox::HELPER.contains("LIST_CAP = "));
    }

    #[test]
    fn typed_causes_read_as_the_words_callers_and_tests_know() {
        let violation = ReplError::Ended(Violation::Stray(17));
        assert_eq!(
            violation.to_string(),
            "the sandbox sent 17 protocol frames nobody asked for; it was ended"
        );
        assert_eq!(
            Violation::FrameTooLarge.to_string(),
            "wrote a protocol frame larger than 16 MiB"
        );
        assert_eq!(
            Violation::OutputFrameTooLarge.to_string(),
            "sent a streamed-output frame larger than 1024 KiB"
        );
        assert_eq!(
            Violation::Malformed(9).to_string(),
            "wrote 9 malformed protocol frames"
        );
        let exited = ReplError::NoStart(NoStart::Exited {
            broke: Some(Violation::Malformed(9)),
            last_words: LastWords("ignored".into()),
        });
        assert_eq!(
            exited.to_string(),
            "the sandbox's Python did not start: the container exited before the helper was \
             ready. The sandbox wrote 9 malformed protocol frames. Check that the image has \
             `python3` on its PATH and that docker.user may run it"
        );
        let died = ReplError::Died(Died::Gone {
            how: Gone::ExitedDuringCall,
            last_words: LastWords("Segmentation fault".into()),
        });
        assert_eq!(
            died.to_string(),
            "the sandbox's Python process exited during the call. Its last words: Segmentation \
             fault\nThe code ended the interpreter (os._exit, a signal, a crash in native code), \
             or the sandbox's container was removed"
        );
        let silent = Died::Gone {
            how: Gone::Exited,
            last_words: LastWords::default(),
        };
        assert!(
            silent
                .to_string()
                .starts_with("the sandbox's Python process exited. The code ended"),
            "{silent}"
        );
    }
}
