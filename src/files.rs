//! Files in and out of a sandbox: the path rule, resource URIs, mime types, and the
//! errors of `upload-file`, `download-file`, `list-files` and `resources/read`.
//!
//! Everything here is pure. The bytes move through the helper's protocol (`repl.rs`:
//! `put`, `get` and `ls` requests, in chunks of at most [`CHUNK`] bytes, so every frame
//! stays far under the protocol's 16 MiB), never through the engine's copy API, which
//! misbehaves on a tmpfs under a read-only root.
//!
//! **The path rule.** A path is relative to the working directory (`docker.working_dir`),
//! or absolute inside it or inside `/tmp`. [`resolve`] applies it lexically here, so a
//! `..` that climbs out or an absolute path elsewhere is refused before the sandbox is
//! asked; the helper then applies it again to the real path (symlinks followed) and is
//! the authority: a symlink the code made that points out is refused there.

use std::fmt;

use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::human_bytes;

/// Raw bytes per protocol chunk: 3 MiB, 4 MiB once in base64.
pub const CHUNK: usize = 3 * 1024 * 1024;
/// Where the helper may read and write besides the working directory.
pub const TMP: &str = "/tmp";
/// The scheme of the URIs under which session files are resources.
pub const SCHEME: &str = "sandbox://";

/// Why a file could not be moved or listed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path breaks the path rule (see the module doc).
    #[error("{0}")]
    Path(#[from] PathError),
    /// Bigger than `docker.file_limit`.
    #[error("`{path}` is {} ({size} bytes), over the file limit of {} (docker.file_limit). Move a smaller file, split it, or ask the operator to raise docker.file_limit", human_bytes_approx(*size), human_bytes(*limit))]
    TooLarge { path: String, size: u64, limit: u64 },
    /// The helper refused (no such file, a directory, a symlink out, a full disk).
    #[error("{0}")]
    Refused(String),
    /// Base64 content that does not decode.
    #[error("`content` is not valid base64 ({0}); send text with encoding \"text\", or encode the bytes as standard base64")]
    Base64(String),
    /// A resource URI this server did not make.
    #[error("`{0}` is not a file of a session: expected sandbox://sessions/SESSION_ID/files/PATH")]
    BadUri(String),
}

/// A path refused by the lexical rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty: name a file relative to the working directory, e.g. `data.csv`")]
    Empty,
    #[error("the path contains a NUL byte")]
    Nul,
    #[error("`{path}` is outside the sandbox's files: paths are relative to the working directory ({working_dir}), or absolute inside it or /tmp, and `..` may not climb out")]
    Outside { path: String, working_dir: String },
}

/// One file's content as an argument: text, or `{"base64": "..."}` for bytes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "a file's content is a string (text) or an object {\"base64\": \"...\"} (bytes)"
)]
pub enum FileInput {
    /// Text, written as UTF-8.
    Text(String),
    /// Bytes, as standard base64.
    Bytes {
        /// The file's bytes in standard base64.
        base64: String,
    },
}

impl FileInput {
    pub fn into_bytes(self) -> Result<Vec<u8>, FileError> {
        match self {
            FileInput::Text(text) => Ok(text.into_bytes()),
            FileInput::Bytes { base64 } => decode_base64(&base64),
        }
    }
}

/// Standard base64, with or without padding; whitespace (line breaks) is ignored.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, FileError> {
    let compact: String;
    let text = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        compact = text.split_ascii_whitespace().collect();
        &compact
    } else {
        text
    };
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(text)
        .map_err(|e| FileError::Base64(e.to_string()))
}

pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What a run did to a file of the working directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Modified,
}

/// A file the run created or modified in the working directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileChange {
    /// Relative to the working directory.
    pub path: String,
    /// Its size in bytes after the run.
    pub size: u64,
    /// `created` or `modified`.
    pub change: Change,
    /// Where to read it: for a session a `sandbox://sessions/...` resource (resources/read,
    /// or download-file with the path); for a transient run the URI of the embedded copy
    /// in this result, absent when it did not fit in docker.file_limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// One entry of `list-files`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FileEntry {
    /// Its name inside the listed directory.
    pub name: String,
    /// `file`, `dir`, `link` or `other`.
    #[schemars(with = "String")]
    pub kind: FileKind,
    /// Size in bytes (of the link itself for a link).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: f64,
}

/// What a directory entry is, as the helper says (`lstat`: a link is not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Link,
    /// Anything else (a socket, a device, a FIFO), or a word this daemon does not know.
    #[serde(other)]
    Other,
}

/// A file's bytes, fetched from a sandbox.
#[derive(Debug, Clone)]
pub struct FileData {
    /// The path as asked (relative to the working directory when it is inside it).
    pub path: String,
    pub bytes: Vec<u8>,
}

/// Apply the path rule lexically: the absolute path `path` names, `.` and `..` folded,
/// or why it is refused. `working_dir` is absolute.
pub fn resolve(working_dir: &str, path: &str) -> Result<String, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", working_dir.trim_end_matches('/'))
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(outside(path, working_dir));
                }
            }
            p => parts.push(p),
        }
    }
    let full = format!("/{}", parts.join("/"));
    if within(&full, working_dir) || within(&full, TMP) {
        Ok(full)
    } else {
        Err(outside(path, working_dir))
    }
}

fn outside(path: &str, working_dir: &str) -> PathError {
    PathError::Outside {
        path: crate::text::clip(path).to_string(),
        working_dir: working_dir.to_string(),
    }
}

/// Whether `full` is `root` or below it (both absolute, folded).
fn within(full: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    full == root || full.strip_prefix(root).is_some_and(|r| r.starts_with('/'))
}

/// The name a file has relative to the working directory, if it is inside it.
pub fn relative<'a>(working_dir: &str, full: &'a str) -> Option<&'a str> {
    let root = working_dir.trim_end_matches('/');
    full.strip_prefix(root)?.strip_prefix('/')
}

/// `sandbox://sessions/{id}/files/{path}`, the path percent-encoded per segment.
pub fn session_uri(session_id: &str, path: &str) -> String {
    format!(
        "{SCHEME}sessions/{}/files/{}",
        encode_segment(session_id),
        encode_path(path)
    )
}

/// The URI of a transient run's file, embedded in its result (nothing serves it later:
/// the sandbox is gone).
pub fn transient_uri(path: &str) -> String {
    format!("{SCHEME}transient/files/{}", encode_path(path))
}

/// The session and path a [`session_uri`] names.
pub fn parse_session_uri(uri: &str) -> Result<(String, String), FileError> {
    let bad = || FileError::BadUri(crate::text::clip(uri).to_string());
    let rest = uri
        .strip_prefix(SCHEME)
        .and_then(|r| r.strip_prefix("sessions/"))
        .ok_or_else(bad)?;
    let (id, path) = rest.split_once("/files/").ok_or_else(bad)?;
    let (id, path) = (decode(id).ok_or_else(bad)?, decode(path).ok_or_else(bad)?);
    if id.is_empty() || path.is_empty() {
        return Err(bad());
    }
    Ok((id, path))
}

fn encode_path(path: &str) -> String {
    path.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A mime type guessed from the file's name; `application/octet-stream` when unknown.
pub fn mime_type(path: &str) -> &'static str {
    let ext = path
        .rsplit('/')
        .next()
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" | "text" => "text/plain",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "py" => "text/x-python",
        "js" => "text/javascript",
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "xml" => "application/xml",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "parquet" => "application/vnd.apache.parquet",
        "npy" | "npz" | "pkl" | "pickle" | "feather" | "h5" | "hdf5" => "application/octet-stream",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}

/// Whether content of this mime type goes back as text (when it is valid UTF-8).
pub fn is_textual(mime: &str) -> bool {
    mime.starts_with("text/")
        || matches!(
            mime,
            "application/json"
                | "application/x-ndjson"
                | "application/xml"
                | "application/yaml"
                | "application/toml"
                | "image/svg+xml"
        )
}

/// The MCP message size that lets a file of `file_limit` bytes through in base64, with
/// room for the JSON around it.
pub fn max_message(file_limit: u64) -> usize {
    let base64 = file_limit.saturating_mul(4) / 3 + 4;
    let with_envelope = base64.saturating_add(1 << 20);
    usize::try_from(with_envelope).unwrap_or(usize::MAX)
}

/// The largest message a client may send: `server.max_message`, raised if need be so that
/// a file of `docker.file_limit` fits in one message as base64.
pub fn message_limit(config: &crate::config::Config) -> u64 {
    config
        .server
        .max_message
        .max(max_message(config.docker.file_limit) as u64)
}

/// "16.0 MiB"-style size for messages.
fn human_bytes_approx(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Modified => "modified",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WD: &str = "/app";

    #[test]
    fn relative_and_absolute_paths_inside_are_accepted() {
        assert_eq!(resolve(WD, "data.csv").unwrap(), "/app/data.csv");
        assert_eq!(resolve(WD, "out/./fig.png").unwrap(), "/app/out/fig.png");
        assert_eq!(resolve(WD, "a/../b.txt").unwrap(), "/app/b.txt");
        assert_eq!(resolve(WD, "/app/x").unwrap(), "/app/x");
        assert_eq!(resolve(WD, "/tmp/scratch/y").unwrap(), "/tmp/scratch/y");
        assert_eq!(resolve(WD, ".").unwrap(), "/app");
        assert_eq!(resolve("/app/", "x").unwrap(), "/app/x");
        assert_eq!(resolve(WD, "../app/z").unwrap(), "/app/z");
    }

    #[test]
    fn escapes_are_refused_with_the_rule_in_the_message() {
        for bad in [
            "../../etc/passwd",
            "..",
            "/etc/passwd",
            "/",
            "/application/x",
            "/tmpfoo",
            "/app/../etc",
            "a/../../b",
        ] {
            let e = resolve(WD, bad).expect_err(bad);
            assert!(matches!(e, PathError::Outside { .. }), "{bad}: {e}");
            let text = e.to_string();
            assert!(text.contains("/app") && text.contains("/tmp"), "{text}");
        }
        assert_eq!(resolve(WD, ""), Err(PathError::Empty));
        assert_eq!(resolve(WD, "a\0b"), Err(PathError::Nul));
    }

    #[test]
    fn session_uris_round_trip_with_odd_names() {
        for path in ["plot.png", "out/my data #1.csv", "ü/ç%.txt"] {
            let uri = session_uri("abc-123", path);
            assert!(
                uri.starts_with("sandbox://sessions/abc-123/files/"),
                "{uri}"
            );
            assert!(!uri.contains(' ') && !uri.contains('#'), "{uri}");
            assert_eq!(
                parse_session_uri(&uri).unwrap(),
                ("abc-123".into(), path.into())
            );
        }
        for bad in [
            "file:///etc/passwd",
            "sandbox://sessions/abc",
            "sandbox://sessions//files/x",
            "sandbox://sessions/a/files/",
            "sandbox://sessions/a/files/%zz",
        ] {
            assert!(parse_session_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mime_types_are_guessed_from_the_name() {
        assert_eq!(mime_type("a/plot.PNG"), "image/png");
        assert_eq!(mime_type("table.csv"), "text/csv");
        assert_eq!(mime_type("noext"), "application/octet-stream");
        assert_eq!(mime_type("dir.d/noext"), "application/octet-stream");
        assert!(is_textual("text/csv") && is_textual("application/json"));
        assert!(!is_textual("image/png"));
    }

    #[test]
    fn base64_input_decodes_with_or_without_padding_and_line_breaks() {
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aGk").unwrap(), b"hi");
        assert_eq!(decode_base64("aG\nk=").unwrap(), b"hi");
        let e = decode_base64("not base64!").unwrap_err().to_string();
        assert!(e.contains("base64"), "{e}");
        let t: FileInput = serde_json::from_str(r#"{"base64":"aGk="}"#).unwrap();
        assert_eq!(t.into_bytes().unwrap(), b"hi");
        let t: FileInput = serde_json::from_str(r#""plain""#).unwrap();
        assert_eq!(t.into_bytes().unwrap(), b"plain");
    }

    #[test]
    fn a_file_at_the_limit_fits_in_one_message() {
        let limit = 16u64 << 20;
        assert!(max_message(limit) as u64 > limit * 4 / 3 + 64 * 1024);
        assert_eq!(max_message(3 << 10), (4 << 10) + 4 + (1 << 20));
        let e = FileError::TooLarge {
            path: "big.bin".into(),
            size: 20 << 20,
            limit,
        }
        .to_string();
        assert!(e.contains("docker.file_limit") && e.contains("16m"), "{e}");
    }

    #[test]
    fn relative_names_are_inside_the_working_directory_only() {
        assert_eq!(relative(WD, "/app/out/x.csv"), Some("out/x.csv"));
        assert_eq!(relative(WD, "/tmp/x"), None);
        assert_eq!(relative(WD, "/application"), None);
    }

    #[test]
    fn an_entry_kind_is_the_helpers_word_on_the_wire_and_a_string_in_the_schema() {
        let entry: FileEntry =
            serde_json::from_str(r#"{"name": "data", "kind": "dir", "size": 4096, "mtime": 1.5}"#)
                .unwrap();
        assert_eq!(entry.kind, FileKind::Dir);
        assert_eq!(serde_json::to_value(&entry).unwrap()["kind"], "dir");
        let odd: FileEntry =
            serde_json::from_str(r#"{"name": "s", "kind": "socket", "size": 0, "mtime": 0}"#)
                .unwrap();
        assert_eq!(odd.kind, FileKind::Other);
        let schema = serde_json::to_value(schemars::schema_for!(FileEntry)).unwrap();
        assert_eq!(schema["properties"]["kind"]["type"], "string");
    }
}
