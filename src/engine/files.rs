//! The file operations behind `upload-file`, `download-file`, `list-files` and
//! `resources/read`, and the files of transient runs. Bytes move through the helper's
//! protocol in chunks of [`files::CHUNK`]; the path rule is checked here lexically
//! ([`files::resolve`]) and again by the helper on the real path.

use std::collections::BTreeMap;

use super::{Engine, ExecError, ExecResult, CONTROL_TIMEOUT};
use crate::calls::Operation;
use crate::client::Client;
use crate::files::{self, FileData, FileEntry, FileError, PathError};
use crate::repl::{Died, FileRefusal, Repl, ReplError};
use crate::text::clip;

/// A transient run's input file: the path as given, the path resolved, the bytes.
pub(super) type Input<'f> = (String, String, &'f [u8]);

/// Why a file operation on a session failed: the file itself, or the session it names.
/// (`files.rs` stays pure: its [`FileError`] knows nothing of sessions.)
#[derive(Debug, thiserror::Error)]
pub enum FileOpError {
    /// The path, the size, the helper's refusal, bad base64.
    #[error(transparent)]
    File(#[from] FileError),
    /// The session is unknown, ended, or broken; or the server is shutting down.
    #[error(transparent)]
    Session(#[from] ExecError),
}

impl From<PathError> for FileOpError {
    fn from(e: PathError) -> FileOpError {
        FileOpError::File(e.into())
    }
}

/// A directory listing of a session.
#[derive(Debug, Clone)]
pub struct FileList {
    /// The directory listed (its real path in the sandbox).
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// More entries than a listing holds ([`crate::repl::LIST_CAP`]).
    pub truncated: bool,
}

impl Engine {
    /// Write `bytes` to `path` in a session (created with its directories, or replaced).
    /// Returns the file's path as resolved and its size.
    pub async fn upload_file(
        &self,
        id: &str,
        path: &str,
        bytes: &[u8],
        client: &Client,
    ) -> Result<(String, u64), FileOpError> {
        let _call = self
            .admit(Operation::PutFile, Some(id), client)
            .map_err(ExecError::from)?;
        let full = files::resolve(&self.shared.config.docker.working_dir, path)?;
        self.check_size(path, bytes.len() as u64)?;
        let session = self.session(id, client).await?;
        let mut guard = session.lock().await;
        let repl = self.live(&session, &mut guard)?;
        let size = write_file(repl, &full, bytes, self.file_limit())
            .await
            .map_err(|e| broken(e, id, path, self.file_limit()))?;
        Ok((full, size))
    }

    /// Read `path` from a session, whole, if it is within `docker.file_limit`.
    pub async fn download_file(
        &self,
        id: &str,
        path: &str,
        client: &Client,
    ) -> Result<FileData, FileOpError> {
        let _call = self
            .admit(Operation::GetFile, Some(id), client)
            .map_err(ExecError::from)?;
        let full = files::resolve(&self.shared.config.docker.working_dir, path)?;
        let session = self.session(id, client).await?;
        let mut guard = session.lock().await;
        let repl = self.live(&session, &mut guard)?;
        let bytes = read_file(repl, &full, self.file_limit())
            .await
            .map_err(|e| broken(e, id, path, self.file_limit()))?;
        Ok(FileData {
            path: self.display_path(&full),
            bytes,
        })
    }

    /// List a directory of a session (the working directory when `path` is `None`).
    pub async fn list_files(
        &self,
        id: &str,
        path: Option<&str>,
        client: &Client,
    ) -> Result<FileList, FileOpError> {
        let _call = self
            .admit(Operation::ListFiles, Some(id), client)
            .map_err(ExecError::from)?;
        let full = files::resolve(&self.shared.config.docker.working_dir, path.unwrap_or("."))?;
        let session = self.session(id, client).await?;
        let mut guard = session.lock().await;
        let repl = self.live(&session, &mut guard)?;
        match repl.list_files(&full, CONTROL_TIMEOUT).await {
            Ok(Ok(listing)) => Ok(FileList {
                path: listing.path,
                entries: listing.entries,
                truncated: listing.truncated,
            }),
            Ok(Err(refusal)) => {
                Err(refused(refusal, path.unwrap_or("."), self.file_limit()).into())
            }
            Err(e) => Err(ExecError::Broken {
                id: clip(id).into(),
                why: e,
            }
            .into()),
        }
    }

    /// Resolve and decode a transient run's `files` before a sandbox is taken: a bad path
    /// or an oversized file refuses the call at once.
    pub(super) fn transient_inputs<'f>(
        &self,
        files: &'f BTreeMap<String, Vec<u8>>,
    ) -> Result<Vec<Input<'f>>, FileError> {
        let wd = &self.shared.config.docker.working_dir;
        files
            .iter()
            .map(|(path, bytes)| {
                let full = files::resolve(wd, path)?;
                self.check_size(path, bytes.len() as u64)?;
                Ok((path.clone(), full, bytes.as_slice()))
            })
            .collect()
    }

    /// Write a transient run's files into its sandbox.
    pub(super) async fn write_inputs(
        &self,
        repl: &mut Repl,
        inputs: &[Input<'_>],
    ) -> Result<(), FileOpError> {
        for (path, full, bytes) in inputs {
            write_file(repl, full, bytes, self.file_limit())
                .await
                .map_err(|e| broken(e, "(transient run)", path, self.file_limit()))?;
        }
        Ok(())
    }

    /// Fetch the files a transient run changed, while its sandbox still exists, up to
    /// `docker.file_limit` in total; each one returned gets its embedded URI.
    pub(super) async fn collect_outputs(&self, repl: &mut Repl, result: &mut ExecResult) {
        let mut budget = self.file_limit();
        let wd = self.shared.config.docker.working_dir.clone();
        for change in &mut result.files_changed {
            if change.size > budget {
                continue;
            }
            let full = format!("{}/{}", wd.trim_end_matches('/'), change.path);
            match read_file(repl, &full, budget).await {
                Ok(bytes) => {
                    budget -= bytes.len() as u64;
                    change.uri = Some(files::transient_uri(&change.path));
                    result.files.push(FileData {
                        path: change.path.clone(),
                        bytes,
                    });
                }
                Err(e) => {
                    tracing::debug!(path = %change.path, error = ?e, "a changed file was not returned");
                }
            }
        }
    }

    fn file_limit(&self) -> u64 {
        self.shared.config.docker.file_limit
    }

    fn check_size(&self, path: &str, size: u64) -> Result<(), FileError> {
        let limit = self.file_limit();
        if size > limit {
            return Err(FileError::TooLarge {
                path: clip(path).into(),
                size,
                limit,
            });
        }
        Ok(())
    }

    /// A path relative to the working directory when it is inside it, else absolute.
    fn display_path(&self, full: &str) -> String {
        files::relative(&self.shared.config.docker.working_dir, full)
            .unwrap_or(full)
            .to_string()
    }
}

/// What went wrong moving a file: the helper refused, or the sandbox failed.
#[derive(Debug)]
enum Moved {
    Refused(FileRefusal),
    Repl(ReplError),
}

fn broken(e: Moved, id: &str, path: &str, limit: u64) -> FileOpError {
    match e {
        Moved::Refused(r) => refused(r, path, limit).into(),
        Moved::Repl(e) => ExecError::Broken {
            id: clip(id).into(),
            why: e,
        }
        .into(),
    }
}

fn refused(r: FileRefusal, path: &str, limit: u64) -> FileError {
    match r {
        FileRefusal::TooLarge(size) => FileError::TooLarge {
            path: clip(path).into(),
            size,
            limit,
        },
        FileRefusal::Other(message) => FileError::Refused(message),
    }
}

/// Write a file in chunks: the first replaces it, the rest append.
async fn write_file(repl: &mut Repl, full: &str, bytes: &[u8], limit: u64) -> Result<u64, Moved> {
    let mut size = 0;
    let mut chunks = bytes.chunks(files::CHUNK).peekable();
    if chunks.peek().is_none() {
        return put(repl, full, &[], false, limit).await;
    }
    for (i, chunk) in chunks.enumerate() {
        size = put(repl, full, chunk, i > 0, limit).await?;
    }
    Ok(size)
}

async fn put(
    repl: &mut Repl,
    full: &str,
    chunk: &[u8],
    append: bool,
    limit: u64,
) -> Result<u64, Moved> {
    let data = files::encode_base64(chunk);
    match repl
        .put_file(full, &data, append, limit, CONTROL_TIMEOUT)
        .await
    {
        Ok(Ok(size)) => Ok(size),
        Ok(Err(r)) => Err(Moved::Refused(r)),
        Err(e) => Err(Moved::Repl(e)),
    }
}

/// Read a whole file in chunks, refusing one over `limit` (the size seen at the first
/// chunk; a file that grows meanwhile is read up to that size).
async fn read_file(repl: &mut Repl, full: &str, limit: u64) -> Result<Vec<u8>, Moved> {
    let mut bytes = Vec::new();
    let mut size = None;
    loop {
        let offset = bytes.len() as u64;
        let chunk = match repl
            .get_file(full, offset, files::CHUNK as u64, limit, CONTROL_TIMEOUT)
            .await
        {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(r)) => return Err(Moved::Refused(r)),
            Err(e) => return Err(Moved::Repl(e)),
        };
        let total = *size.get_or_insert(chunk.size);
        let data = files::decode_base64(&chunk.data)
            .map_err(|e| Moved::Repl(ReplError::Died(Died::NotBase64(e))))?;
        if data.is_empty() {
            break;
        }
        bytes.extend_from_slice(&data);
        if bytes.len() as u64 >= total {
            bytes.truncate(total as usize);
            break;
        }
    }
    Ok(bytes)
}
