//! The tools' arguments, as rmcp deserialises them. Their doc comments become the input
//! schemas the model reads, so they are written for the model; the few helpers here turn
//! what the model wrote into what the engine takes (an empty id or path is no id or path).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::files::{self, FileError, FileInput};

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
    pub fn into_vec(self) -> Vec<String> {
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

/// Arguments of `cleanup-session`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CleanupArgs {
    /// The session to end.
    pub session_id: String,
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

/// Arguments of the tools that act on one session.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SessionArgs {
    /// The session, as returned by execute-persistent.
    pub session_id: String,
}

/// An optional id, path or name the model may also send empty: empty is none.
pub fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

impl TransientArgs {
    /// The `files` to write before the run, as bytes (base64 decoded).
    pub fn inputs(&mut self) -> Result<BTreeMap<String, Vec<u8>>, FileError> {
        let files = self.files.take().unwrap_or_default();
        files
            .into_iter()
            .map(|(path, content)| Ok((path, content.into_bytes()?)))
            .collect()
    }
}

impl UploadArgs {
    /// The file's bytes, decoded as `encoding` says.
    pub fn bytes(&mut self) -> Result<Vec<u8>, FileError> {
        let content = std::mem::take(&mut self.content);
        match self.encoding {
            Encoding::Text => Ok(content.into_bytes()),
            Encoding::Base64 => files::decode_base64(&content),
        }
    }
}

/// What an execute tool's arguments ask of the run beyond its code: its time-out, its
/// `network` list (as written) and its sandbox profile (an empty name is none).
#[derive(Default)]
pub struct RunSettings {
    pub timeout: Option<f64>,
    pub network: Option<Vec<String>>,
    pub profile: Option<String>,
}

impl RunSettings {
    fn take(
        timeout: Option<f64>,
        network: &mut Option<Vec<String>>,
        profile: &mut Option<String>,
    ) -> RunSettings {
        RunSettings {
            timeout,
            network: network.take(),
            profile: profile.take().filter(|p| !p.is_empty()),
        }
    }
}

impl TransientArgs {
    pub fn settings(&mut self) -> RunSettings {
        RunSettings::take(self.timeout, &mut self.network, &mut self.profile)
    }
}

impl PersistentArgs {
    pub fn settings(&mut self) -> RunSettings {
        RunSettings::take(self.timeout, &mut self.network, &mut self.profile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_ids_and_profiles_are_none_and_file_contents_decode() {
        assert_eq!(given(&Some(String::new())), None);
        assert_eq!(given(&Some("s1".into())), Some("s1"));
        let mut args: TransientArgs = serde_json::from_value(serde_json::json!({
            "code": "1",
            "profile": "",
            "network": [],
            "files": {"a.txt": "hi", "b.bin": {"base64": "AAE="}},
        }))
        .unwrap();
        let inputs = args.inputs().unwrap();
        assert_eq!(inputs["a.txt"], b"hi");
        assert_eq!(inputs["b.bin"], [0, 1]);
        let settings = args.settings();
        assert_eq!(settings.profile, None);
        assert_eq!(
            settings.network,
            Some(vec![]),
            "an empty list is kept as written"
        );

        let mut bad: TransientArgs = serde_json::from_value(serde_json::json!({
            "code": "1", "files": {"c.bin": {"base64": "not base64!"}},
        }))
        .unwrap();
        assert!(bad.inputs().is_err());
        let mut upload: UploadArgs = serde_json::from_value(serde_json::json!({
            "session_id": "s", "path": "p", "content": "AAE=", "encoding": "base64",
        }))
        .unwrap();
        assert_eq!(upload.bytes().unwrap(), [0, 1]);
    }
}
