//! The stdio transport: one JSON-RPC message per line on stdin and stdout, with a size
//! limit that answers.
//!
//! rmcp's own stdio transport drops a line over its 16 MiB cap with only a log line, so
//! the client waits forever for the answer. Here a line over `server.max_message` is
//! discarded as it streams in (never buffered), and the client gets a JSON-RPC error that
//! names the limit and the fix, under the request's id when it can be found in the first or
//! last few KiB of the line ([`find_id`]), else without an id (as MCP prescribes when the
//! id cannot be read). Everything else follows
//! rmcp: a line that is not JSON is ignored (answering it could start an error storm with a
//! peer that echoes), well-formed JSON that is not a message gets "Invalid request".
//!
//! Each `tools/call` that names a session gets its [`Turn`] here, in the order the lines
//! were read (see [`crate::order`]).
//!
//! Reading is cancel-safe, as rmcp's service loop requires: a partly read line stays in
//! the transport and the next `receive` resumes it.

use std::sync::Arc;

use rmcp::model::{ErrorCode, ErrorData, NumberOrString, RequestId};
use rmcp::service::{RoleServer, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Stdin, Stdout};
use tokio::sync::Mutex;

use crate::order::Arrivals;
use crate::text::size;

/// How much of an oversized line's start and end is kept to find its id.
const KEEP: usize = 4096;

/// The daemon's stdin and stdout as an rmcp transport.
pub struct Stdio {
    read: BufReader<Stdin>,
    write: Arc<Mutex<Stdout>>,
    max: usize,
    line: Vec<u8>,
    /// Set while an oversized line is being skipped.
    skipping: Option<Skipped>,
    arrivals: Arrivals,
}

/// What is kept of an oversized line while it is skipped.
struct Skipped {
    head: Vec<u8>,
    tail: Vec<u8>,
    len: usize,
}

enum Read {
    Line,
    Oversized(Skipped),
    Eof,
}

impl Stdio {
    pub fn new(max_message: u64, arrivals: Arrivals) -> Stdio {
        Stdio {
            read: BufReader::with_capacity(256 * 1024, tokio::io::stdin()),
            write: Arc::new(Mutex::new(tokio::io::stdout())),
            max: usize::try_from(max_message).unwrap_or(usize::MAX),
            line: Vec::new(),
            skipping: None,
            arrivals,
        }
    }

    /// Read one whole line into `self.line`, or skip one over the limit. Cancel-safe:
    /// bytes are consumed only after they were copied or counted.
    async fn read_line(&mut self) -> std::io::Result<Read> {
        loop {
            let buf = self.read.fill_buf().await?;
            if buf.is_empty() {
                return Ok(match self.skipping.take() {
                    Some(skipped) => Read::Oversized(skipped),
                    None => Read::Eof,
                });
            }
            let newline = memchr(buf);
            let take = newline.map_or(buf.len(), |i| i + 1);
            let chunk = &buf[..newline.unwrap_or(buf.len())];
            if let Some(s) = &mut self.skipping {
                s.len += chunk.len();
                s.tail.extend_from_slice(chunk);
                if s.tail.len() > 2 * KEEP {
                    s.tail.drain(..s.tail.len() - KEEP);
                }
            } else if self.line.len() + chunk.len() > self.max {
                let mut head = std::mem::take(&mut self.line);
                let len = head.len() + chunk.len();
                head.extend_from_slice(&chunk[..KEEP.saturating_sub(head.len()).min(chunk.len())]);
                head.truncate(KEEP);
                let tail = chunk[chunk.len().saturating_sub(KEEP)..].to_vec();
                self.skipping = Some(Skipped { head, tail, len });
            } else {
                self.line.extend_from_slice(chunk);
            }
            self.read.consume(take);
            if newline.is_some() {
                return Ok(match self.skipping.take() {
                    Some(skipped) => Read::Oversized(skipped),
                    None => Read::Line,
                });
            }
        }
    }

    async fn answer(&self, message: TxJsonRpcMessage<RoleServer>) -> std::io::Result<()> {
        write_message(&self.write, &message).await
    }
}

fn memchr(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

async fn write_message(
    write: &Mutex<Stdout>,
    message: &TxJsonRpcMessage<RoleServer>,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut out = write.lock().await;
    out.write_all(&line).await?;
    out.flush().await
}

/// The error an oversized message gets.
fn too_large(len: usize, max: usize) -> ErrorData {
    ErrorData::new(
        ErrorCode::INVALID_REQUEST,
        format!(
            "the message is {} long, over the {} limit of one message (server.max_message); it \
             was not read. Send less per call (upload a large file in several parts), or raise \
             server.max_message (PYTHON_DOCKER_MCP_MAX_MESSAGE)",
            size(len as u64),
            size(max as u64),
        ),
        None,
    )
}

impl Transport<RoleServer> for Stdio {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        let write = self.write.clone();
        async move { write_message(&write, &item).await }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            match self.read_line().await {
                Ok(Read::Eof) => return None,
                Err(e) => {
                    tracing::error!(error = %e, "reading stdin failed");
                    return None;
                }
                Ok(Read::Oversized(skipped)) => {
                    let id = find_id(&skipped.head, &skipped.tail);
                    tracing::warn!(
                        bytes = skipped.len,
                        max = self.max,
                        ?id,
                        "a message over server.max_message was discarded; answering with an error"
                    );
                    let reply =
                        TxJsonRpcMessage::<RoleServer>::error(too_large(skipped.len, self.max), id);
                    if self.answer(reply).await.is_err() {
                        return None;
                    }
                }
                Ok(Read::Line) => {
                    let line = std::mem::take(&mut self.line);
                    let text = line.strip_suffix(b"\r").unwrap_or(&line);
                    if text.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(text) {
                        Ok(mut message) => {
                            crate::order::stamp(&self.arrivals, &mut message);
                            return Some(message);
                        }
                        Err(e) if e.is_syntax() || e.is_eof() => {
                            tracing::debug!(error = %e, "ignoring a line that is not JSON");
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "a line that is not a JSON-RPC message");
                            let reply = TxJsonRpcMessage::<RoleServer>::error(
                                ErrorData::invalid_request(format!("Invalid request: {e}"), None),
                                None,
                            );
                            if self.answer(reply).await.is_err() {
                                return None;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.write.lock().await.flush().await
    }
}

/// The top-level `"id"` of a JSON-RPC message of which only the first and last few KiB are
/// known: the first key `"id"` at depth 1 of `head`, else an `"id"` that is the last key
/// of `tail` (`..., "id": 7}`).
pub fn find_id(head: &[u8], tail: &[u8]) -> Option<RequestId> {
    id_in_head(head).or_else(|| id_at_end(tail))
}

fn id_in_head(head: &[u8]) -> Option<RequestId> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < head.len() {
        match head[i] {
            b'"' => {
                let end = string_end(head, i)?;
                if depth == 1 && &head[i..=end] == b"\"id\"" {
                    let mut j = end + 1;
                    j = skip_ws(head, j);
                    if head.get(j) == Some(&b':') {
                        return value_at(head, skip_ws(head, j + 1));
                    }
                }
                i = end + 1;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// `..."id" : VALUE }` at the very end of the line.
fn id_at_end(tail: &[u8]) -> Option<RequestId> {
    let text = std::str::from_utf8(tail).ok().or_else(|| {
        // The tail may start inside a multi-byte character.
        (1..4).find_map(|k| std::str::from_utf8(tail.get(k..)?).ok())
    })?;
    let body = text.trim_end().strip_suffix('}')?.trim_end();
    let at = body.rfind("\"id\"")?;
    let rest = body[at + 4..].trim_start().strip_prefix(':')?.trim_start();
    let value = value_at(rest.as_bytes(), 0)?;
    let consumed = match &value {
        NumberOrString::Number(n) => n.to_string().len(),
        NumberOrString::String(s) => serde_json::to_string(s.as_ref()).ok()?.len(),
    };
    (rest.len() == consumed).then_some(value)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The index of the quote that closes the string opening at `start`.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// A JSON integer or string starting at `i`.
fn value_at(b: &[u8], i: usize) -> Option<RequestId> {
    match b.get(i)? {
        b'"' => {
            let end = string_end(b, i)?;
            let s: String = serde_json::from_slice(&b[i..=end]).ok()?;
            Some(NumberOrString::String(s.into()))
        }
        b'-' | b'0'..=b'9' => {
            let end = (i + 1..=b.len())
                .find(|&j| !b.get(j).is_some_and(u8::is_ascii_digit))
                .unwrap_or(b.len());
            let n: i64 = std::str::from_utf8(&b[i..end]).ok()?.parse().ok()?;
            Some(NumberOrString::Number(n))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: i64) -> Option<RequestId> {
        Some(NumberOrString::Number(n))
    }

    #[test]
    fn the_id_is_found_at_the_top_level_of_the_head() {
        let head = br#"{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"arguments":{"code":"x = 'aaaa"#;
        assert_eq!(find_id(head, b"aaaa'\"}}}"), num(17));
        let head = br#"{"jsonrpc": "2.0", "id" : "call-9", "method": "tools/call"#;
        assert_eq!(
            find_id(head, b""),
            Some(NumberOrString::String("call-9".into()))
        );
    }

    #[test]
    fn an_id_inside_the_params_is_not_the_messages() {
        let head =
            br#"{"method":"tools/call","params":{"arguments":{"id":5,"code":"\"id\": 6 aaaa"#;
        assert_eq!(
            find_id(head, b"aaaa\"}},\"jsonrpc\":\"2.0\",\"id\":8}"),
            num(8)
        );
        assert_eq!(find_id(head, b"aaaa\"}},\"jsonrpc\":\"2.0\"}"), None);
    }

    #[test]
    fn an_id_at_the_end_must_close_the_message() {
        assert_eq!(find_id(b"", br#"aaa"}}, "id": 42 }"#), num(42));
        assert_eq!(find_id(b"", br#"aaa"}}, "id": 42, "x": 1}"#), None);
        assert_eq!(find_id(b"", br#"aaa "id": 42 aaa"#), None);
    }
}
