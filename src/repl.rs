//! The REPL: the wire protocol with the helper (`repl/helper.py`) and one live helper
//! process in an attached container.
//!
//! Frames are single JSON lines; [`LineSplitter`] reassembles them from attach chunks,
//! which do not align with lines. [`Repl::execute`] sends one request and waits for its
//! reply; on a time-out it interrupts the code (SIGINT becomes `KeyboardInterrupt` inside
//! user code only) and, if the code does not stop within a grace period, kills the
//! container and reports the sandbox lost.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::docker::{Docker, DockerError, Output};
use crate::sandbox::ContainerSpec;

/// How long an interrupted execution gets to stop before its container is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// How long a new helper may take to say it is ready (a cold image start can be slow).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of the container's own stderr is kept to explain a crash.
const STDERR_TAIL: usize = 4096;

/// A request to the helper.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request<'a> {
    Exec {
        id: u64,
        code: &'a str,
        state: Option<&'a serde_json::Map<String, serde_json::Value>>,
        want_state: bool,
        output_limit: u64,
        stream: bool,
        max_figures: u64,
        max_figure_bytes: u64,
    },
    Ping {
        id: u64,
    },
    Reset {
        id: u64,
    },
    Vars {
        id: u64,
    },
    Packages {
        id: u64,
    },
}

/// A message from the helper.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Frame {
    Ready {
        python: String,
        #[serde(default)]
        preload_failed: BTreeMap<String, String>,
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
}

/// Why running code was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// It ran past the time-out.
    Timeout(Duration),
    /// The client cancelled the call.
    Cancelled,
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
    Docker(#[from] DockerError),
    /// The helper never said it was ready.
    #[error("the sandbox's Python did not start: {0}")]
    NoStart(String),
    /// The helper went away in the middle of a call.
    #[error("{0}")]
    Died(String),
    /// The code was interrupted, ignored it, and the container was killed.
    #[error(
        "the code {0} and did not stop when interrupted (it ignores KeyboardInterrupt or is \
         stuck in native code), so its sandbox was killed"
    )]
    Killed(Interrupt),
}

/// Reassembles newline-terminated frames from arbitrary chunks.
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Feed a chunk; returns every line it completed (without the newline).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.buf);
            line.extend_from_slice(&rest[..pos]);
            lines.push(line);
            rest = &rest[pos + 1..];
        }
        self.buf.extend_from_slice(rest);
        lines
    }
}

/// One live helper in one container. Dropping it closes the helper's stdin, which makes
/// the helper exit and Docker remove the container.
pub struct Repl {
    docker: Docker,
    /// Container id, for signals and removal.
    pub id: String,
    /// Container name, for logs.
    pub name: String,
    /// Python version the helper reported.
    pub python: String,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    /// Replies parsed by the reader task; closed when the container's output ends.
    replies: mpsc::UnboundedReceiver<Incoming>,
    /// The last few KB the container wrote to stderr outside executions (crash reports).
    stderr_tail: Arc<Mutex<String>>,
    next_id: u64,
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
    pub async fn start(docker: &Docker, spec: &ContainerSpec) -> Result<Repl, ReplError> {
        let attached = docker.start_attached(spec).await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (reply_tx, replies) = mpsc::unbounded_channel();
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        let reader = tokio::spawn(read_frames(
            attached.output,
            attached.name.clone(),
            ready_tx,
            reply_tx,
            stderr_tail.clone(),
        ));
        let mut repl = Repl {
            docker: docker.clone(),
            id: attached.id,
            name: attached.name,
            python: String::new(),
            input: attached.input,
            replies,
            stderr_tail,
            next_id: 0,
            reader,
        };
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok((python, preload_failed))) => {
                for (module, error) in preload_failed {
                    tracing::warn!(%module, %error, "warm import failed (docker.warm_imports)");
                }
                repl.python = python;
                Ok(repl)
            }
            Ok(Err(_)) => {
                let why = repl.crash_report();
                repl.kill().await;
                Err(ReplError::NoStart(format!(
                    "the container exited before the helper was ready. {why}Check that the image has \
                     `python3` on its PATH and that docker.user may run it"
                )))
            }
            Err(_) => {
                repl.kill().await;
                Err(ReplError::NoStart(format!(
                    "the helper was not ready within {READY_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Send one request line; an error means the helper is gone.
    async fn send(&mut self, request: &Request<'_>) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        self.input.write_all(&line).await?;
        self.input.flush().await
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Run code. `state` and `want_state` are for transient runs. The run is interrupted
    /// when it passes `limits.timeout` or when `cancel` fires; output produced meanwhile
    /// goes to `progress`, if given.
    pub async fn execute(
        &mut self,
        code: &str,
        state: Option<&serde_json::Map<String, serde_json::Value>>,
        want_state: bool,
        limits: &ExecLimits,
        cancel: &CancellationToken,
        progress: Option<&mpsc::UnboundedSender<OutputChunk>>,
    ) -> Result<Outcome, ReplError> {
        let id = self.next_id();
        let request = Request::Exec {
            id,
            code,
            state,
            want_state,
            output_limit: limits.output_limit,
            stream: progress.is_some(),
            max_figures: limits.max_figures,
            max_figure_bytes: limits.max_figure_bytes,
        };
        if let Err(e) = self.send(&request).await {
            return Err(self.died(&format!("could not send the code to the sandbox ({e})")));
        }

        let interrupt = tokio::select! {
            reply = self.reply(id, progress) => return match reply {
                Some(reply) => Ok(Outcome::Completed(reply)),
                None => Err(self.died("the sandbox's Python process exited during the call")),
            },
            _ = tokio::time::sleep(limits.timeout) => Interrupt::Timeout(limits.timeout),
            _ = cancel.cancelled() => Interrupt::Cancelled,
        };
        tracing::info!(container = %self.name, %interrupt, "interrupting the code");
        if let Err(e) = self.docker.signal(&self.id, "SIGINT").await {
            tracing::warn!(container = %self.name, error = %e, "could not interrupt");
        }
        match tokio::time::timeout(INTERRUPT_GRACE, self.reply(id, progress)).await {
            Ok(Some(reply)) => Ok(Outcome::Interrupted(reply, interrupt)),
            Ok(None) => Err(self.died("the sandbox's Python process exited when interrupted")),
            Err(_) => {
                self.kill().await;
                Err(ReplError::Killed(interrupt))
            }
        }
    }

    /// The reply to request `id`, passing its streamed output on; anything else (a stale
    /// reply to an abandoned call, say) is skipped.
    async fn reply(
        &mut self,
        id: u64,
        progress: Option<&mpsc::UnboundedSender<OutputChunk>>,
    ) -> Option<Reply> {
        loop {
            match self.replies.recv().await? {
                Incoming::Reply(reply) if reply.id == Some(id) || reply.id.is_none() => {
                    return Some(*reply)
                }
                Incoming::Output(chunk) if chunk.id == id => {
                    if let Some(tx) = progress {
                        let _ = tx.send(chunk);
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
        let data = self.control(Request::Vars { id }, id, within).await?;
        serde_json::from_value(data).map_err(|e| {
            ReplError::Died(format!("the helper sent an unreadable variable list: {e}"))
        })
    }

    /// The distributions this sandbox can import: its own installs, shared ones, the image's.
    pub async fn packages(&mut self, within: Duration) -> Result<Vec<Package>, ReplError> {
        let id = self.next_id();
        let data = self.control(Request::Packages { id }, id, within).await?;
        serde_json::from_value(data).map_err(|e| {
            ReplError::Died(format!("the helper sent an unreadable package list: {e}"))
        })
    }

    async fn control(
        &mut self,
        request: Request<'_>,
        id: u64,
        within: Duration,
    ) -> Result<serde_json::Value, ReplError> {
        if let Err(e) = self.send(&request).await {
            return Err(self.died(&format!("could not reach the sandbox ({e})")));
        }
        let done = async {
            loop {
                match self.replies.recv().await {
                    Some(Incoming::Done(d, data)) if d == id => return Some(data),
                    Some(_) => continue,
                    None => return None,
                }
            }
        };
        match tokio::time::timeout(within, done).await {
            Ok(Some(data)) => Ok(data),
            Ok(None) => Err(self.died("the sandbox's Python process exited")),
            Err(_) => Err(ReplError::Died(format!(
                "the sandbox did not answer within {within:?}"
            ))),
        }
    }

    /// Whether the helper answers a ping within `within`: the container runs and the
    /// helper is idle and reading. A sandbox that fails this is never handed out.
    pub async fn ping(&mut self, within: Duration) -> bool {
        if self.reader.is_finished() {
            return false;
        }
        let id = self.next_id();
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

    fn crash_report(&self) -> String {
        let tail = self
            .stderr_tail
            .lock()
            .expect("stderr tail lock")
            .trim()
            .to_string();
        if tail.is_empty() {
            String::new()
        } else {
            format!("Its last words: {tail}\n")
        }
    }

    fn died(&self, what: &str) -> ReplError {
        ReplError::Died(format!(
            "{what}. {}It was most likely killed for exceeding its memory limit, or the code ended \
             the interpreter (os._exit, a crash in native code)",
            self.crash_report()
        ))
    }

    /// Kill and remove the container now.
    pub async fn kill(&mut self) {
        self.docker.remove(&self.id).await;
    }
}

/// Owns the attach stream: splits stdout into frames, keeps a tail of stderr.
async fn read_frames(
    mut output: Pin<Box<dyn futures::Stream<Item = Output> + Send>>,
    name: String,
    ready: tokio::sync::oneshot::Sender<(String, BTreeMap<String, String>)>,
    replies: mpsc::UnboundedSender<Incoming>,
    stderr_tail: Arc<Mutex<String>>,
) {
    let mut ready = Some(ready);
    let mut lines = LineSplitter::default();
    while let Some(chunk) = output.next().await {
        match chunk {
            Output::Stdout(bytes) => {
                for line in lines.push(&bytes) {
                    match serde_json::from_slice::<Frame>(&line) {
                        Ok(Frame::Ready {
                            python,
                            preload_failed,
                        }) => {
                            if let Some(tx) = ready.take() {
                                let _ = tx.send((python, preload_failed));
                            }
                        }
                        Ok(Frame::Result(reply)) => {
                            let _ = replies.send(Incoming::Reply(reply));
                        }
                        Ok(Frame::Pong { id }) => {
                            let _ = replies.send(Incoming::Pong(id));
                        }
                        Ok(Frame::Output(chunk)) => {
                            let _ = replies.send(Incoming::Output(chunk));
                        }
                        Ok(Frame::Done { id, data }) => {
                            let _ = replies.send(Incoming::Done(id, data));
                        }
                        Err(e) => tracing::warn!(
                            container = %name, error = %e,
                            line = %String::from_utf8_lossy(&line[..line.len().min(200)]),
                            "ignoring a malformed frame from the helper"
                        ),
                    }
                }
            }
            Output::Stderr(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                tracing::debug!(container = %name, stderr = %text.trim_end(), "sandbox stderr");
                let mut tail = stderr_tail.lock().expect("stderr tail lock");
                tail.push_str(&text);
                if tail.len() > STDERR_TAIL {
                    let mut cut = tail.len() - STDERR_TAIL;
                    while !tail.is_char_boundary(cut) {
                        cut += 1;
                    }
                    tail.drain(..cut);
                }
            }
        }
    }
    tracing::debug!(container = %name, "sandbox output ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_reassembles_lines_across_chunks() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"{\"a\":").is_empty());
        assert_eq!(s.push(b"1}\n{\"b\""), vec![b"{\"a\":1}".to_vec()]);
        assert_eq!(
            s.push(b":2}\n\n"),
            vec![b"{\"b\":2}".to_vec(), b"".to_vec()]
        );
        assert!(s.push(b"").is_empty());
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
    fn requests_are_one_line() {
        let line = serde_json::to_string(&Request::Exec {
            id: 1,
            code: "print('a')\nprint('b')",
            state: None,
            want_state: false,
            output_limit: 10,
            stream: false,
            max_figures: 4,
            max_figure_bytes: 1,
        })
        .unwrap();
        assert!(!line.contains('\n'));
        assert!(line.contains(r#""op":"exec""#));
    }
}
