//! Turning engine results and errors into what a tool answers: readable text for the model,
//! `structuredContent` under the tool's published `outputSchema`, images, resource links
//! and embedded files. Every text a tool sends is written here; a failure is an `isError`
//! result whose text begins `Error: `.

use std::fmt::Display;

use rmcp::model::{CallToolResult, ContentBlock as Content, Resource, ResourceContents};
use schemars::JsonSchema;
use serde::Serialize;

use crate::engine::{ExecResult, FileList, InstallResult, SessionInfo};
use crate::files::{self, FileData, FileEntry};
use crate::repl::{Package, PeakScope, Variable};

/// The structured result of `list-packages`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PackageList {
    /// Installed distributions, sorted by name.
    pub packages: Vec<Package>,
}

/// The structured result of `cleanup-session`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CleanupResult {
    /// The session that was ended.
    pub session_id: String,
    /// True when the session existed and its container was removed.
    pub removed: bool,
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

/// A tool's answer to what the engine gave: `ok` renders a success, an error is [`error`].
pub fn reply<T, E: Display>(
    result: Result<T, E>,
    ok: impl FnOnce(T) -> CallToolResult,
) -> CallToolResult {
    match result {
        Ok(done) => ok(done),
        Err(e) => error(e),
    }
}

/// A failed call, for the model: `Error: ` and what failed, with the fix.
pub fn error(message: impl Display) -> CallToolResult {
    CallToolResult::error(vec![Content::text(format!("Error: {message}"))])
}

/// A successful result: `text` for the model, `data` as structured content.
pub fn structured(text: String, data: &impl Serialize) -> CallToolResult {
    let mut result = CallToolResult::success(vec![Content::text(text)]);
    result.structured_content = Some(serde_json::to_value(data).expect("results serialise"));
    result
}

/// An execution's answer: its text, images, links to a session's changed files, the
/// structured result, and a transient run's changed files embedded.
pub fn exec(r: ExecResult) -> CallToolResult {
    let mut content = vec![Content::text(exec_text(&r))];
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

/// Render an execution for the model: output first, then what went wrong.
pub fn exec_text(r: &ExecResult) -> String {
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
        parts.push(changes(r));
    }
    if let Some(skipped) = &r.state_skipped {
        let list: Vec<String> = skipped.iter().map(|(k, t)| format!("{k} ({t})")).collect();
        parts.push(format!(
            "Not carried in state (not JSON-serialisable): {}",
            list.join(", ")
        ));
    }
    if let Some(cost) = cost(r) {
        parts.push(cost);
    }
    parts.join("\n\n")
}

/// What the run cost, on one line; nothing when the sandbox never answered.
fn cost(r: &ExecResult) -> Option<String> {
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
fn changes(r: &ExecResult) -> String {
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
pub fn resource_contents(uri: String, data: FileData) -> ResourceContents {
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

/// An install: what went where, with which installer, and how fast.
pub fn install(r: InstallResult) -> CallToolResult {
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
    structured(text, &r)
}

/// A session was reset.
pub fn reset(session_id: &str) -> CallToolResult {
    let text = format!("Session {session_id} was reset: no variables or imports remain; files and packages are kept.");
    let session_id = session_id.to_string();
    structured(text, &SessionAck { session_id })
}

/// A session's variables, one per line.
pub fn variables(session_id: &str, variables: Vec<Variable>) -> CallToolResult {
    let text = if variables.is_empty() {
        format!("Session {session_id} has no variables.")
    } else {
        let lines: Vec<String> = variables
            .iter()
            .map(|v| format!("{}: {} = {}", v.name, v.kind, v.repr))
            .collect();
        format!("Session {session_id} variables:\n{}", lines.join("\n"))
    };
    let session_id = session_id.to_string();
    structured(
        text,
        &VariableList {
            session_id,
            variables,
        },
    )
}

/// Installed distributions, one per line.
pub fn packages(packages: Vec<Package>) -> CallToolResult {
    let lines: Vec<String> = packages
        .iter()
        .map(|p| format!("{} {} ({})", p.name, p.version, p.location))
        .collect();
    let text = format!("{} packages:\n{}", packages.len(), lines.join("\n"));
    structured(text, &PackageList { packages })
}

/// A file written into a session; its link names it relative to the working directory.
pub fn uploaded(
    session_id: &str,
    working_dir: &str,
    (path, size): (String, u64),
) -> CallToolResult {
    let rel = files::relative(working_dir, &path).unwrap_or(&path);
    let r = Uploaded {
        uri: files::session_uri(session_id, rel),
        session_id: session_id.to_string(),
        path,
        size,
    };
    structured(format!("Wrote {} ({} bytes).", r.path, r.size), &r)
}

/// A file read from a session, embedded as a resource.
pub fn downloaded(session_id: &str, data: FileData) -> CallToolResult {
    let uri = files::session_uri(session_id, &data.path);
    let r = Downloaded {
        session_id: session_id.to_string(),
        path: data.path.clone(),
        size: data.bytes.len() as u64,
        mime_type: files::mime_type(&data.path).to_string(),
        uri: uri.clone(),
    };
    let text = format!("{} ({} bytes, {}):", r.path, r.size, r.mime_type);
    let mut result = structured(text, &r);
    result
        .content
        .push(Content::resource(resource_contents(uri, data)));
    result
}

/// A directory of a session, one entry per line.
pub fn listed(session_id: &str, list: FileList) -> CallToolResult {
    let FileList {
        path,
        entries,
        truncated,
    } = list;
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
        session_id: session_id.to_string(),
        path,
        entries,
        truncated,
    };
    structured(lines.join("\n"), &r)
}

/// The caller's sessions, one per line.
pub fn sessions(sessions: Vec<SessionInfo>) -> CallToolResult {
    let text = if sessions.is_empty() {
        "You have no sessions. execute-persistent without session_id starts one.".to_string()
    } else {
        let lines: Vec<String> = sessions.iter().map(session_line).collect();
        format!("Your sessions:\n{}", lines.join("\n"))
    };
    structured(text, &SessionList { sessions })
}

fn session_line(i: &SessionInfo) -> String {
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
}

/// A session was ended.
pub fn cleaned(session_id: &str) -> CallToolResult {
    let r = CleanupResult {
        session_id: session_id.to_string(),
        removed: true,
    };
    structured(format!("Session {session_id} cleaned up successfully"), &r)
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
            exec_text(&r),
            "Session ID: abc\n\nExecution Result:\n\nhi\n\nResult: 2"
        );
    }

    #[test]
    fn empty_output_and_truncation_are_said_plainly() {
        let mut r = result();
        assert_eq!(exec_text(&r), "Execution Result: (no output)");
        r.stdout = "x".into();
        r.stdout_dropped = 10;
        r.stderr = "warn".into();
        let text = exec_text(&r);
        assert!(
            text.contains("[stdout truncated: 10 more bytes dropped]"),
            "{text}"
        );
        assert!(text.contains("Standard Error:\nwarn"), "{text}");
    }

    #[test]
    fn the_cost_line_names_wall_cpu_and_peak_with_its_scope() {
        let mut r = result();
        assert!(!exec_text(&r).contains("Cost:"), "no cost without a reply");
        r.duration_ms = 1500.0;
        r.cpu_seconds = 1.25;
        r.peak_memory_bytes = Some(42_000_000);
        r.peak_memory_scope = Some(PeakScope::Run);
        let text = exec_text(&r);
        assert!(
            text.ends_with("Cost: 1.50 s wall, 1.25 s CPU, peak memory 42.0 MB (this run)"),
            "{text}"
        );
        r.peak_memory_scope = Some(PeakScope::Session);
        assert!(exec_text(&r).ends_with("(session so far)"));
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
        assert!(exec_text(&r)
            .contains("Not carried in state (not JSON-serialisable): f (function), s (set)"));
    }
}
