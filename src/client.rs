//! Who is calling: the [`Client`] every engine operation acts for, and the tokens file that
//! maps bearer tokens to client names.
//!
//! Over stdio there is one client, [`Client::local`]. Over HTTP the client is the name its
//! bearer token maps to in `server.tokens_file` (or `local` on loopback without tokens).
//! Parsing the file is a pure function ([`Tokens::parse`]); looking a token up compares it
//! against every entry in constant time, and tokens never appear in `Debug` output or logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;

/// The name of the one client of a stdio daemon, and of a loopback HTTP daemon without
/// tokens.
pub const LOCAL: &str = "local";

/// A client's name: what owns sessions and what logs show. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Client(Arc<str>);

impl Client {
    pub fn new(name: &str) -> Client {
        Client(Arc::from(name))
    }

    /// The one client of a daemon without identities (stdio, or loopback without tokens).
    pub fn local() -> Client {
        Client::new(LOCAL)
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Client({})", self.0)
    }
}

/// The clients of a tokens file: `(name, token)` pairs. `Debug` shows names only.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<(Client, Vec<u8>)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(c, _)| c.name()))
            .finish()
    }
}

/// Why a tokens file was refused. A message names the file and the line, never a token.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file {path} (server.tokens_file): {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "tokens file {path}, line {line}: {why}. Each line is `NAME TOKEN`; `#` starts a comment"
    )]
    Malformed {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("tokens file {path} names no client. Add a line `NAME TOKEN`, for example `alice` and a token from `openssl rand -hex 32`")]
    Empty { path: PathBuf },
}

/// Tokens shorter than this are refused: a bearer token must not be guessable.
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Read and parse a tokens file.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Tokens::parse(path, &text)
    }

    /// Parse a tokens file's text: one client per line, `NAME TOKEN`; `#` starts a comment;
    /// blank lines are skipped. Names are letters, digits, `-`, `_`, `.` and `@`; a token is
    /// at least [`MIN_TOKEN_LEN`] visible characters. Names and tokens must be unique.
    pub fn parse(path: &Path, text: &str) -> Result<Tokens, TokensError> {
        let mut entries: Vec<(Client, Vec<u8>)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| TokensError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                why: why.to_string(),
            };
            let mut words = line.split_whitespace();
            let (Some(name), Some(token)) = (words.next(), words.next()) else {
                return Err(bad("expected a name and a token, found one word"));
            };
            if words.next().is_some() {
                return Err(bad("expected a name and a token, found more words"));
            }
            let name_ok = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
            if !name_ok || name.len() > 64 {
                return Err(bad(
                    "the name may only hold letters, digits, `-`, `_`, `.` and `@` (at most 64)",
                ));
            }
            if token.len() < MIN_TOKEN_LEN || !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err(bad(&format!(
                    "the token must be at least {MIN_TOKEN_LEN} visible ASCII characters"
                )));
            }
            if entries.iter().any(|(c, _)| c.name() == name) {
                return Err(bad(&format!("client `{name}` is named twice")));
            }
            // Compared in constant time like every lookup: this runs at start-up only.
            if entries
                .iter()
                .any(|(_, t)| bool::from(t.as_slice().ct_eq(token.as_bytes())))
            {
                return Err(bad("this token is already another client's"));
            }
            entries.push((Client::new(name), token.as_bytes().to_vec()));
        }
        if entries.is_empty() {
            return Err(TokensError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Tokens { entries })
    }

    /// The client a presented token belongs to. Every entry is compared, in constant time
    /// for equal lengths, so the time taken does not say which entry or how much matched.
    pub fn client(&self, presented: &[u8]) -> Option<Client> {
        let mut found = None;
        for (client, token) in &self.entries {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(client.clone());
            }
        }
        found
    }

    /// The clients' names, in file order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|(c, _)| c.name()).collect()
    }
}

/// The token of an `Authorization: Bearer TOKEN` header value, if it is one.
pub fn bearer(header: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, token) = text.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbb";

    fn parse(text: &str) -> Result<Tokens, TokensError> {
        Tokens::parse(Path::new("/etc/pdm/tokens"), text)
    }

    #[test]
    fn names_tokens_comments_and_blank_lines() {
        let t = parse(&format!("# the team\n\nalice {A}   # laptop\n  bob\t{B}\n")).unwrap();
        assert_eq!(t.names(), ["alice", "bob"]);
        assert_eq!(t.client(A.as_bytes()), Some(Client::new("alice")));
        assert_eq!(t.client(B.as_bytes()), Some(Client::new("bob")));
        assert_eq!(t.client(b"aaaaaaaaaaaaaaaaaaaaaaab"), None);
        assert_eq!(t.client(b""), None);
        assert_eq!(t.client(&A.as_bytes()[..20]), None);
    }

    #[test]
    fn a_malformed_line_is_named_and_its_token_never_shown() {
        let cases = [
            (format!("alice {A}\nbob\n"), 2, "one word"),
            (format!("alice {A} extra\n"), 1, "more words"),
            ("# c\nalice short\n".to_string(), 2, "at least 16"),
            (format!("al ice {A}\n"), 1, "more words"),
            (format!("al/ice {A}\n"), 1, "only hold"),
            (format!("alice {A}\nalice {B}\n"), 2, "named twice"),
            (format!("alice {A}\nbob {A}\n"), 2, "already another"),
        ];
        for (text, line, why) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(&format!("line {line}:")), "{text:?}: {e}");
            assert!(e.contains(why), "{text:?}: {e}");
            assert!(e.contains("/etc/pdm/tokens"), "{e}");
            assert!(!e.contains(A) && !e.contains(B), "a token leaked: {e}");
        }
    }

    #[test]
    fn a_file_without_clients_is_refused() {
        let e = parse("# nobody yet\n\n").unwrap_err().to_string();
        assert!(e.contains("names no client"), "{e}");
    }

    #[test]
    fn debug_shows_names_not_tokens() {
        let t = parse(&format!("alice {A}\n")).unwrap();
        let shown = format!("{t:?}");
        assert!(shown.contains("alice") && !shown.contains(A), "{shown}");
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"\xff\xfe"), None);
    }
}
