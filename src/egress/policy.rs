//! Host patterns and allow-lists, pure: parsing and printing a [`Pattern`], a [`List`] of
//! them, whether a ceiling [`covers`] a pattern, narrowing a session's list, matching a
//! request's [`Target`], and the private address classes the proxy refuses ([`first_refused`]).
//!
//! A pattern is `example.com` (that name), `*.example.com` (its subdomains at any depth, not
//! the apex), an IP address (`192.0.2.7`, `[2001:db8::1]`) or a CIDR (`10.1.0.0/16`,
//! `[fc00::/7]`), each optionally with `:port`; without a port it means 80 and 443. Names
//! are ASCII, case-insensitive, and a trailing dot is ignored. A name pattern never matches
//! an address, nor an address pattern a name: addresses are reached only when written.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::text::clip;

/// The ports a pattern without `:port` stands for.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// The most patterns one list may hold: a list travels in one control line (64 KiB) and is
/// scanned for every connection.
pub const MAX_PATTERNS: usize = 1024;

/// A pattern that could not be parsed; each message names the pattern as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Nothing but white space.
    #[error("an empty network pattern: write a host name (example.com), *.example.com, an IP address or a CIDR, optionally with :port")]
    Empty,
    /// The part after the last `:` is not a port.
    #[error("network pattern `{pattern}`: `{port}` is not a port (1 to 65535)")]
    Port { pattern: String, port: String },
    /// The host part is neither a name, `*.name`, an address nor a CIDR.
    #[error("network pattern `{pattern}` is not a host name, *.name, IP address or CIDR (names are ASCII letters, digits, '-', '_' and '.', at most 253 characters; an IPv6 address with a port is written [2001:db8::1]:8080)")]
    Host { pattern: String },
    /// A CIDR whose address or prefix length does not parse.
    #[error("network pattern `{pattern}`: {source}")]
    Cidr { pattern: String, source: CidrError },
}

/// A list that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// One of its patterns.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// More patterns than [`MAX_PATTERNS`].
    #[error("{count} network patterns is too many: at most {max} (use *.example.com or a CIDR to cover many hosts)", max = MAX_PATTERNS)]
    TooMany { count: usize },
}

/// A CIDR that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `ADDRESS/PREFIX`, or the address does not parse.
    #[error("`{text}` is not a CIDR: write ADDRESS/PREFIX, e.g. 10.1.0.0/16 or fc00::/7")]
    Syntax { text: String },
    /// A prefix longer than the address.
    #[error("`{text}`: the prefix length is at most 32 for IPv4 and 128 for IPv6")]
    Prefix { text: String },
}

/// A list that may not be set: a pattern the ceiling or the session's list does not cover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarrowError {
    /// The operator allows no network at all.
    #[error("network pattern `{pattern}` was asked for, but this daemon gives sandboxes no network (network.allow is empty); the operator sets network.allow (env PYTHON_DOCKER_MCP_NETWORK_ALLOW) to the hosts sandboxes may reach")]
    NoCeiling { pattern: String },
    /// Outside the operator's ceiling.
    #[error("network pattern `{pattern}` is outside the operator's ceiling (network.allow: {ceiling}); ask only for hosts it covers")]
    BeyondCeiling { pattern: String, ceiling: String },
    /// A later call that would widen the session's list.
    #[error("network pattern `{pattern}` is not within this session's list ({list}): a later call may narrow the list, never widen it; start a new session to reach other hosts")]
    Widens { pattern: String, list: String },
}

/// An address block: the network address (host bits zero) and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    /// The block of `len` leading bits of `addr` (its host bits cleared), or `None` when
    /// `len` is longer than the address.
    pub fn new(addr: IpAddr, len: u8) -> Option<Cidr> {
        let addr = addr.to_canonical();
        let net = match addr {
            IpAddr::V4(a) if len <= 32 => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(len))),
            IpAddr::V6(a) if len <= 128 => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(len))),
            _ => return None,
        };
        Some(Cidr { net, len })
    }

    /// `ADDRESS/PREFIX`, host bits allowed and cleared (`10.1.2.3/16` is `10.1.0.0/16`).
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax {
            text: clip(text).into_owned(),
        };
        let (addr, len) = text.trim().split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let len: u8 = len.parse().map_err(|_| syntax())?;
        Cidr::new(addr, len).ok_or_else(|| CidrError::Prefix {
            text: clip(text).into_owned(),
        })
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address) is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => u32::from(a) & mask32(self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask128(self.len) == u128::from(net)
            }
            _ => false,
        }
    }

    /// Whether every address of `other` is in this block.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.net)
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.net
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether the block is a single address (`/32`, `/128`).
    fn is_single(&self) -> bool {
        self.len == if self.net.is_ipv4() { 32 } else { 128 }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// What a pattern's host part matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// Exactly this name (lower case, no trailing dot).
    Name(String),
    /// Any name below this one, at any depth, not the name itself (`*.example.com`).
    Subdomains(String),
    /// Exactly this address (IPv4-mapped IPv6 stored as IPv4).
    Addr(IpAddr),
    /// Any address in this block.
    Net(Cidr),
}

/// One host pattern with its port; see the module doc for the forms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    host: Host,
    /// `None`: the [`DEFAULT_PORTS`].
    port: Option<u16>,
}

impl Pattern {
    /// Parse a pattern as written by the operator or the model.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(PatternError::Empty);
        }
        let bad_host = || PatternError::Host {
            pattern: clip(t).into_owned(),
        };
        let (host, port, bracketed) = if let Some(rest) = t.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(bad_host)?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(bad_host)?),
            };
            (inner, port, true)
        } else if t.matches(':').count() >= 2 {
            // A bare IPv6 address or CIDR: it cannot carry a port.
            (t, None, false)
        } else {
            match t.rsplit_once(':') {
                Some((h, p)) => (h, Some(p), false),
                None => (t, None, false),
            }
        };
        let port = match port {
            None => None,
            Some(p) => Some(parse_port(p).ok_or_else(|| PatternError::Port {
                pattern: clip(t).into_owned(),
                port: clip(p).into_owned(),
            })?),
        };
        let host = if host.contains('/') {
            let cidr = Cidr::parse(host).map_err(|source| PatternError::Cidr {
                pattern: clip(t).into_owned(),
                source,
            })?;
            if bracketed && cidr.net.is_ipv4() {
                return Err(bad_host());
            }
            Host::Net(cidr)
        } else if let Ok(addr) = host.parse::<IpAddr>() {
            if bracketed && addr.is_ipv4() {
                return Err(bad_host());
            }
            Host::Addr(addr.to_canonical())
        } else if bracketed {
            return Err(bad_host());
        } else if let Some(suffix) = host.strip_prefix("*.") {
            Host::Subdomains(normalize_name(suffix).ok_or_else(bad_host)?)
        } else {
            Host::Name(normalize_name(host).ok_or_else(bad_host)?)
        };
        Ok(Pattern { host, port })
    }

    /// The pattern that matches exactly this target (what a user's approval adds).
    pub fn exact(target: &Target) -> Pattern {
        let host = match &target.host {
            TargetHost::Name(n) => Host::Name(n.clone()),
            TargetHost::Addr(a) => Host::Addr(*a),
        };
        Pattern {
            host,
            port: Some(target.port),
        }
    }

    /// The host part.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port, `None` for the [`DEFAULT_PORTS`].
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether this pattern matches `target`.
    pub fn allows(&self, target: &Target) -> bool {
        self.allows_port(target.port)
            && match (&self.host, &target.host) {
                (Host::Name(n), TargetHost::Name(t)) => n == t,
                (Host::Subdomains(s), TargetHost::Name(t)) => is_below(t, s),
                (Host::Addr(a), TargetHost::Addr(t)) => a == t,
                (Host::Net(c), TargetHost::Addr(t)) => c.contains(*t),
                _ => false,
            }
    }

    fn allows_port(&self, port: u16) -> bool {
        match self.port {
            Some(p) => p == port,
            None => DEFAULT_PORTS.contains(&port),
        }
    }

    /// The ports this pattern can match.
    fn ports(&self) -> Vec<u16> {
        match self.port {
            Some(p) => vec![p],
            None => DEFAULT_PORTS.to_vec(),
        }
    }
}

impl fmt::Display for Pattern {
    /// The written form, which parses back to the same pattern.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(n) => write!(f, "{n}")?,
            Host::Subdomains(s) => write!(f, "*.{s}")?,
            Host::Addr(IpAddr::V4(a)) => write!(f, "{a}")?,
            Host::Addr(IpAddr::V6(a)) => write!(f, "[{a}]")?,
            Host::Net(c) if c.net.is_ipv4() => write!(f, "{c}")?,
            Host::Net(c) => write!(f, "[{c}]")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Pattern, PatternError> {
        Pattern::parse(s)
    }
}

/// A connection's destination as a client asked for it: a name or an address, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    host: TargetHost,
    port: u16,
}

/// A [`Target`]'s host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetHost {
    /// A DNS name, lower case, no trailing dot.
    Name(String),
    /// An IP address (IPv4-mapped IPv6 as IPv4).
    Addr(IpAddr),
}

impl Target {
    /// `host` (a name, an IPv4 address, an IPv6 address with or without brackets) and
    /// `port`; `None` when the host is none of those or the port is 0.
    pub fn new(host: &str, port: u16) -> Option<Target> {
        if port == 0 {
            return None;
        }
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = match bare.parse::<IpAddr>() {
            Ok(addr) => TargetHost::Addr(addr.to_canonical()),
            Err(_) if bare.len() == host.len() => TargetHost::Name(normalize_name(host)?),
            Err(_) => return None,
        };
        Some(Target { host, port })
    }

    /// An authority as in a request: `host:port`, `[v6]:port`, or a bare host when
    /// `default_port` is given (absolute-form HTTP; CONNECT needs the port).
    pub fn from_authority(authority: &str, default_port: Option<u16>) -> Option<Target> {
        let (host, port) = if authority.starts_with('[') {
            let end = authority.find(']')?;
            match &authority[end + 1..] {
                "" => (&authority[..=end], default_port?),
                rest => (&authority[..=end], parse_port(rest.strip_prefix(':')?)?),
            }
        } else {
            match authority.rsplit_once(':') {
                // An IPv6 address needs its brackets here.
                Some((h, _)) if h.contains(':') => return None,
                Some((h, p)) => (h, parse_port(p)?),
                None => (authority, default_port?),
            }
        };
        Target::new(host, port)
    }

    /// The host as events carry it: the name, or the address without brackets.
    pub fn host(&self) -> String {
        match &self.host {
            TargetHost::Name(n) => n.clone(),
            TargetHost::Addr(a) => a.to_string(),
        }
    }

    /// The host, typed.
    pub fn host_kind(&self) -> &TargetHost {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Target {
    /// `host:port`, an IPv6 address in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            TargetHost::Name(n) => write!(f, "{n}:{}", self.port),
            TargetHost::Addr(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
            TargetHost::Addr(a) => write!(f, "{a}:{}", self.port),
        }
    }
}

/// A list of patterns: the operator's ceiling, a session's list, a grant's `ask` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List {
    patterns: Vec<Pattern>,
}

impl List {
    /// Parse each item; the first that fails is the error. Exact duplicates are dropped.
    pub fn parse<I, S>(items: I) -> Result<List, ListError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = List::default();
        let mut count = 0;
        for item in items {
            count += 1;
            if count > MAX_PATTERNS {
                continue;
            }
            list.add(Pattern::parse(item.as_ref())?);
        }
        if count > MAX_PATTERNS {
            return Err(ListError::TooMany { count });
        }
        Ok(list)
    }

    /// The patterns, in the order given.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// The patterns in their written form (what a `grant` control message carries).
    pub fn to_strings(&self) -> Vec<String> {
        self.patterns.iter().map(Pattern::to_string).collect()
    }

    /// Whether the list has no pattern (no network).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Add `pattern` unless the list has it already.
    pub fn add(&mut self, pattern: Pattern) {
        if !self.patterns.contains(&pattern) {
            self.patterns.push(pattern);
        }
    }

    /// Whether some pattern matches `target`.
    pub fn allows(&self, target: &Target) -> bool {
        self.patterns.iter().any(|p| p.allows(target))
    }

    /// Whether some pattern matches `host:port` (`host` as in [`Target::new`]).
    pub fn matches(&self, host: &str, port: u16) -> bool {
        Target::new(host, port).is_some_and(|t| self.allows(&t))
    }

    /// A session's first list, `asked`, held to the operator's `ceiling`: every pattern must
    /// be covered by it.
    pub fn admit(ceiling: &List, asked: List) -> Result<List, NarrowError> {
        for pattern in &asked.patterns {
            if ceiling.is_empty() {
                return Err(NarrowError::NoCeiling {
                    pattern: clip(&pattern.to_string()).into_owned(),
                });
            }
            if !covers(ceiling, pattern) {
                return Err(NarrowError::BeyondCeiling {
                    pattern: clip(&pattern.to_string()).into_owned(),
                    ceiling: ceiling.summary(),
                });
            }
        }
        Ok(asked)
    }

    /// A later list for a session whose list is `current`: it may only narrow it.
    pub fn narrow(current: &List, asked: List) -> Result<List, NarrowError> {
        match asked.patterns.iter().find(|p| !covers(current, p)) {
            Some(pattern) => Err(NarrowError::Widens {
                pattern: clip(&pattern.to_string()).into_owned(),
                list: current.summary(),
            }),
            None => Ok(asked),
        }
    }

    /// The list for a message: at most 10 patterns, then how many more; `no network` when
    /// empty.
    pub fn summary(&self) -> String {
        const SHOWN: usize = 10;
        if self.is_empty() {
            return "no network".into();
        }
        let mut out = self
            .patterns
            .iter()
            .take(SHOWN)
            .map(|p| clip(&p.to_string()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        if self.patterns.len() > SHOWN {
            out.push_str(&format!(" and {} more", self.patterns.len() - SHOWN));
        }
        out
    }
}

impl fmt::Display for List {
    /// The patterns, comma-separated (the form `PYTHON_DOCKER_MCP_NETWORK_ALLOW` takes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.patterns.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Whether every `host:port` that `pattern` can match is matched by one pattern of
/// `ceiling` (per port: a portless pattern needs 80 and 443 each covered). A pattern that
/// only a union of ceiling patterns covers (two halves of a CIDR) is not covered: stricter,
/// never wider.
pub fn covers(ceiling: &List, pattern: &Pattern) -> bool {
    pattern.ports().into_iter().all(|port| {
        ceiling
            .patterns
            .iter()
            .any(|c| c.allows_port(port) && host_covers(&c.host, &pattern.host))
    })
}

/// Whether every host `inner` matches is matched by `outer`.
fn host_covers(outer: &Host, inner: &Host) -> bool {
    match (outer, inner) {
        (Host::Name(a), Host::Name(b)) => a == b,
        (Host::Subdomains(s), Host::Name(n)) => is_below(n, s),
        (Host::Subdomains(s), Host::Subdomains(t)) => t == s || is_below(t, s),
        (Host::Addr(a), Host::Addr(b)) => a == b,
        (Host::Addr(a), Host::Net(n)) => n.is_single() && n.net == *a,
        (Host::Net(c), Host::Addr(a)) => c.contains(*a),
        (Host::Net(c), Host::Net(d)) => c.contains_cidr(d),
        _ => false,
    }
}

/// Whether `name` is a subdomain (any depth) of `parent`.
fn is_below(name: &str, parent: &str) -> bool {
    name.len() > parent.len() + 1
        && name.ends_with(parent)
        && name.as_bytes()[name.len() - parent.len() - 1] == b'.'
}

/// `1` to `65535`, digits only.
fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok().filter(|&p| p != 0)
}

/// A DNS name in lower case without its trailing dot, or `None`: ASCII letters, digits,
/// `-` and `_`, labels of 1 to 63 characters not starting or ending with `-`, at most 253
/// characters, and not all digits in the last label (that would be a mistyped address).
fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !name.split('.').all(valid_label) {
        return None;
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// Whether the proxy refuses to connect to `ip` unless a `private` CIDR allows it:
/// unspecified, "this network" (0/8), loopback, link-local, private (10/8, 172.16/12,
/// 192.168/16, fc00::/7, and the old site-local fec0::/10), CGNAT (100.64/10), multicast,
/// broadcast and reserved (240/4), and IPv6 forms that embed an IPv4 address (mapped,
/// compatible ::/96, NAT64 64:ff9b::/96) when that address is one of these.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 0
                || a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || a.is_multicast()
                || o[0] >= 240
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            let embedded = Ipv4Addr::from((u128::from(a) & 0xffff_ffff) as u32);
            u128::from(a) >> 32 == 0
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] & 0xfe00) == 0xfc00
                || a.is_multicast()
                || (u128::from(a) >> 32 == 0x0064_ff9b_0000_0000_0000_0000
                    && is_private(IpAddr::V4(embedded)))
        }
    }
}

/// The first of `addrs` that is private ([`is_private`]) and in none of `allowed`: the
/// reason to refuse a name that resolves to them all.
pub fn first_refused(addrs: &[IpAddr], allowed: &[Cidr]) -> Option<IpAddr> {
    addrs
        .iter()
        .map(|a| a.to_canonical())
        .find(|&a| is_private(a) && !allowed.iter().any(|c| c.contains(a)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn list(items: &[&str]) -> List {
        List::parse(items).expect("parses")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn every_written_form_parses_and_prints_back() {
        for s in [
            "example.com",
            "example.com:8443",
            "*.example.com",
            "*.example.com:80",
            "192.0.2.7",
            "192.0.2.7:8080",
            "[2001:db8::1]",
            "[2001:db8::1]:8080",
            "10.1.0.0/16",
            "10.1.0.0/16:5432",
            "[fc00::/7]",
            "[fc00::/7]:443",
            "localhost:3000",
            "_srv.example.com",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        // Normal forms: case, trailing dot, bare IPv6, host bits, mapped addresses.
        assert_eq!(p(" Example.COM. ").to_string(), "example.com");
        assert_eq!(p("*.Example.com.:443").to_string(), "*.example.com:443");
        assert_eq!(p("2001:db8::1").to_string(), "[2001:db8::1]");
        assert_eq!(p("fc00::/7").to_string(), "[fc00::/7]");
        assert_eq!(p("10.1.2.3/16").to_string(), "10.1.0.0/16");
        assert_eq!(p("[::ffff:192.0.2.7]:80").to_string(), "192.0.2.7:80");
        assert_eq!(p("a.b").port(), None);
        assert_eq!(p("a.b:1").port(), Some(1));
    }

    #[test]
    fn malformed_patterns_are_errors_naming_the_pattern() {
        assert_eq!(Pattern::parse("  "), Err(PatternError::Empty));
        let long_label = "a".repeat(64);
        for bad in [
            "*",
            "*.",
            "a.*.com",
            "ex ample.com",
            "exämple.com",
            "-a.com",
            "a..com",
            "1.2.3",
            "300.1.1.1",
            "[192.0.2.7]",
            "[2001:db8::1",
            "[2001:db8::1]8080",
            "http://example.com",
            "example.com/path",
            long_label.as_str(),
        ] {
            let e = Pattern::parse(bad).expect_err(bad);
            assert!(
                e.to_string().contains(&clip(bad).into_owned()),
                "{bad}: {e}"
            );
        }
        for bad in [
            "example.com:0",
            "example.com:65536",
            "example.com:",
            "a.com:x",
        ] {
            assert!(
                matches!(Pattern::parse(bad), Err(PatternError::Port { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Pattern::parse("10.0.0.0/33"),
            Err(PatternError::Cidr {
                source: CidrError::Prefix { .. },
                ..
            })
        ));
        assert!(matches!(
            Pattern::parse("10.0.0.0/x"),
            Err(PatternError::Cidr { .. })
        ));
        let long = "x".repeat(100_000);
        assert!(Pattern::parse(&long).unwrap_err().to_string().len() < 500);
    }

    #[test]
    fn names_match_exactly_and_wildcards_match_subdomains_only() {
        let l = list(&["example.com", "*.example.org", "api.test:8080"]);
        assert!(l.matches("example.com", 443));
        assert!(l.matches("EXAMPLE.com.", 80));
        assert!(!l.matches("example.com", 8443));
        assert!(!l.matches("www.example.com", 443));
        assert!(l.matches("a.example.org", 443));
        assert!(l.matches("a.b.example.org", 80));
        assert!(!l.matches("example.org", 443));
        assert!(!l.matches("badexample.org", 443));
        assert!(l.matches("api.test", 8080));
        assert!(!l.matches("api.test", 443));
        assert!(!l.matches("not a host", 443));
    }

    #[test]
    fn addresses_match_only_address_patterns() {
        let l = list(&["192.0.2.7:8080", "10.1.0.0/16", "[2001:db8::/32]:443"]);
        assert!(l.matches("192.0.2.7", 8080));
        assert!(l.matches("::ffff:192.0.2.7", 8080));
        assert!(!l.matches("192.0.2.8", 8080));
        assert!(l.matches("10.1.200.3", 443));
        assert!(!l.matches("10.2.0.1", 443));
        assert!(l.matches("[2001:db8::5]", 443));
        assert!(l.matches("2001:db8::5", 443));
        assert!(!l.matches("2001:db9::5", 443));
        // A name is never matched by an address pattern, whatever it resolves to.
        let names = list(&["localhost"]);
        assert!(!names.matches("127.0.0.1", 443));
        assert!(!list(&["127.0.0.1"]).matches("localhost", 443));
    }

    #[test]
    fn coverage_follows_hosts_and_ports() {
        let ceiling = list(&["*.example.com", "api.test:8080", "10.0.0.0/8:5432"]);
        let c = |s: &str| covers(&ceiling, &p(s));
        assert!(c("a.example.com"));
        assert!(c("*.a.example.com"));
        assert!(c("*.example.com"));
        assert!(c("a.example.com:443"));
        assert!(!c("example.com"));
        assert!(!c("a.example.com:8443"));
        assert!(c("api.test:8080"));
        assert!(!c("api.test"));
        assert!(c("10.1.2.3:5432"));
        assert!(c("10.1.0.0/16:5432"));
        assert!(!c("10.1.0.0/16"));
        assert!(!c("11.0.0.0/16:5432"));
        // A portless pattern needs both default ports.
        let only_443 = list(&["example.com:443"]);
        assert!(!covers(&only_443, &p("example.com")));
        let both = list(&["example.com:443", "example.com:80"]);
        assert!(covers(&both, &p("example.com")));
        // An address covers itself as a /32.
        assert!(covers(&list(&["192.0.2.7"]), &p("192.0.2.7/32")));
        assert!(!covers(&list(&["192.0.2.7"]), &p("192.0.2.6/31")));
    }

    #[test]
    fn a_first_list_is_held_to_the_ceiling_and_a_later_one_may_only_narrow() {
        let ceiling = list(&["*.example.com", "api.test"]);
        let first = List::admit(&ceiling, list(&["a.example.com", "*.b.example.com"]))
            .expect("inside the ceiling");
        let e = List::admit(&ceiling, list(&["a.example.com", "other.test"])).unwrap_err();
        assert_eq!(
            e,
            NarrowError::BeyondCeiling {
                pattern: "other.test".into(),
                ceiling: "*.example.com, api.test".into()
            }
        );
        assert!(e.to_string().contains("`other.test`"), "{e}");
        assert!(e
            .to_string()
            .contains("network.allow: *.example.com, api.test"));
        let e = List::admit(&List::default(), list(&["a.test"])).unwrap_err();
        assert!(e.to_string().contains("network.allow is empty"), "{e}");
        assert_eq!(
            List::admit(&List::default(), List::default()),
            Ok(List::default())
        );

        let narrower = List::narrow(&first, list(&["x.b.example.com"])).expect("narrower");
        assert_eq!(narrower.to_string(), "x.b.example.com");
        assert_eq!(first.to_strings(), ["a.example.com", "*.b.example.com"]);
        let e = List::narrow(&first, list(&["c.example.com"])).unwrap_err();
        assert_eq!(
            e,
            NarrowError::Widens {
                pattern: "c.example.com".into(),
                list: "a.example.com, *.b.example.com".into()
            }
        );
        assert!(e.to_string().contains("never widen"), "{e}");
        let e = List::narrow(&List::default(), list(&["a.example.com"])).unwrap_err();
        assert!(e.to_string().contains("(no network)"), "{e}");
    }

    #[test]
    fn lists_are_bounded_and_deduplicated() {
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("h{i}.test")).collect();
        assert_eq!(
            List::parse(&many),
            Err(ListError::TooMany {
                count: MAX_PATTERNS + 1
            })
        );
        assert_eq!(
            list(&["a.test", "A.test.", "a.test:443"]).patterns().len(),
            2
        );
        let long: Vec<String> = (0..15).map(|i| format!("h{i}.test")).collect();
        assert!(List::parse(&long)
            .unwrap()
            .summary()
            .ends_with("h9.test and 5 more"));
    }

    #[test]
    fn targets_parse_from_authorities() {
        let t = |a: &str, d| Target::from_authority(a, d).map(|t| t.to_string());
        assert_eq!(
            t("Example.com:443", None).as_deref(),
            Some("example.com:443")
        );
        assert_eq!(
            t("example.com", Some(80)).as_deref(),
            Some("example.com:80")
        );
        assert_eq!(t("example.com", None), None);
        assert_eq!(t("[::1]:8080", None).as_deref(), Some("[::1]:8080"));
        assert_eq!(t("[::1]", Some(80)).as_deref(), Some("[::1]:80"));
        assert_eq!(t("192.0.2.1:0", None), None);
        assert_eq!(t("a b:80", None), None);
        assert_eq!(t("user@example.com:80", None), None);
        assert_eq!(t("::1:80", None), None);
        let v6 = Target::from_authority("[2001:db8::1]:443", None).unwrap();
        assert_eq!(v6.host(), "2001:db8::1");
        assert_eq!(
            Pattern::exact(&v6).to_string(),
            "[2001:db8::1]:443",
            "an approval adds exactly host:port"
        );
    }

    #[test]
    fn private_addresses_are_classified() {
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "10.9.8.7",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::10.0.0.1",
        ] {
            assert!(is_private(ip(a)), "{a}");
        }
        for a in [
            "192.0.2.1",
            "198.51.100.1",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "64:ff9b::c000:201",
            "::ffff:192.0.2.1",
        ] {
            assert!(!is_private(ip(a)), "{a}");
        }
    }

    #[test]
    fn allowed_cidrs_lift_the_refusal_for_their_addresses_only() {
        let allowed = [Cidr::parse("172.18.0.0/16").unwrap()];
        assert_eq!(first_refused(&[ip("172.18.0.3")], &allowed), None);
        assert_eq!(first_refused(&[ip("::ffff:172.18.0.3")], &allowed), None);
        assert_eq!(first_refused(&[ip("192.0.2.1")], &[]), None);
        assert_eq!(
            first_refused(&[ip("172.18.0.3"), ip("127.0.0.1")], &allowed),
            Some(ip("127.0.0.1")),
            "one private address is enough to refuse"
        );
        assert_eq!(
            first_refused(&[ip("::ffff:127.0.0.1")], &[]),
            Some(ip("127.0.0.1"))
        );
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let c = Cidr::parse("10.1.2.3/16").unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert_eq!((c.network(), c.prefix_len()), (ip("10.1.0.0"), 16));
        assert!(c.contains(ip("10.1.255.255")));
        assert!(!c.contains(ip("10.2.0.0")));
        assert!(!c.contains(ip("::1")));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("203.0.113.1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("fe80::/10").unwrap().contains(ip("febf::1")));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "x/8",
            "10.0.0.0/129",
            "::/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    fn label() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from)
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
    }

    fn host() -> impl Strategy<Value = Host> {
        prop_oneof![
            name().prop_map(Host::Name),
            name().prop_map(Host::Subdomains),
            (0u32..8).prop_map(|i| Host::Addr(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))),
            (0u32..8, 28u8..=32).prop_map(|(i, len)| Host::Net(
                Cidr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), len).unwrap()
            )),
            (0u128..4, 124u8..=128).prop_map(|(i, len)| Host::Net(
                Cidr::new(IpAddr::V6(Ipv6Addr::from((0xfd00u128 << 112) | i)), len).unwrap()
            )),
        ]
    }

    fn pattern() -> impl Strategy<Value = Pattern> {
        (
            host(),
            prop::option::of(prop::sample::select(vec![80u16, 443, 8080])),
        )
            .prop_map(|(host, port)| Pattern { host, port })
    }

    fn target() -> impl Strategy<Value = Target> {
        let host = prop_oneof![
            name().prop_map(TargetHost::Name),
            (0u32..8).prop_map(|i| TargetHost::Addr(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))),
            (0u128..4).prop_map(|i| TargetHost::Addr(IpAddr::V6(Ipv6Addr::from(
                (0xfd00u128 << 112) | i
            )))),
        ];
        (host, prop::sample::select(vec![80u16, 443, 8080]))
            .prop_map(|(host, port)| Target { host, port })
    }

    proptest! {
        #[test]
        fn printing_and_parsing_round_trip(pattern in pattern()) {
            prop_assert_eq!(Pattern::parse(&pattern.to_string()), Ok(pattern));
        }

        /// Coverage is sound: whatever a covered pattern matches, the ceiling matches.
        #[test]
        fn a_covered_pattern_never_matches_beyond_its_ceiling(
            ceiling in prop::collection::vec(pattern(), 0..4),
            inner in pattern(),
            target in target(),
        ) {
            let ceiling = List { patterns: ceiling };
            if covers(&ceiling, &inner) && inner.allows(&target) {
                prop_assert!(ceiling.allows(&target), "{ceiling} covers {inner} but not {target}");
            }
            let itself = List { patterns: vec![inner.clone()] };
            prop_assert!(covers(&itself, &inner), "{inner} does not cover itself");
        }
    }
}
