//! Durable sessions: what the engine records about a session that outlives its daemon.
//!
//! A session's sandbox keeps running when its daemon exits or dies, and a later daemon of
//! the same owner adopts it when a call names its id. Labels cannot change after a
//! container is created, so what must change (who holds the session, until when it may
//! live) is carried by the container's **name**. The name is not the claim: two concurrent
//! renames of one old name both succeed on Docker. The sandbox's helper decides who
//! claimed it (see `Repl::take`), and the winner's rename then says so to everyone.
//!
//! ```text
//! pdm-s.<session id>.<owner>.<holder>.<until>
//!   owner   16 hex digits of SHA-256(scope, OS uid, client): who may adopt it
//!   holder  <host>x<pid>x<start> of the daemon holding it now, or `free`
//!   until   epoch second after which the backstop sweep may remove it
//! pdm-w.<fingerprint>.<slot>
//!   a warm sandbox of the host pool, no daemon's: any daemon whose sandboxes have the
//!   same fingerprint (16 hex digits) may claim it. Slots run from 0 to pool_size - 1, so
//!   the engine's refusal of a second container by the same name bounds the pool.
//!   Expires `pool_max_age` (plus slack) after the engine created it.
//! pdm-h.<fingerprint>.<slot>.<holder>
//!   a warm sandbox one daemon holds ready, attached, in its slot: claimable by others
//!   (like `pdm-w.`) once that daemon is gone; the same expiry.
//! pdm-t.<holder>.<nonce>
//!   a sandbox claimed from the pool for one transient run (or on its way to becoming a
//!   session): an orphan as soon as its holder is gone.
//! ```
//!
//! Everything here is pure (names in, names out) but for reading `/proc` to tell a live
//! holder from a dead one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::client::Client;

/// Every durable session's container name starts with this.
pub const PREFIX: &str = "pdm-s.";
/// Every warm sandbox of the host pool.
pub const WARM_PREFIX: &str = "pdm-w.";
/// A warm sandbox of the host pool that one daemon holds ready (attached): still in its
/// slot, claimable by others only once that daemon is gone.
pub const HELD_PREFIX: &str = "pdm-h.";
/// Every sandbox claimed from the host pool that is not (yet) a session.
pub const CLAIMED_PREFIX: &str = "pdm-t.";
/// The holder part of a session no daemon holds (its daemon exited cleanly).
const FREE: &str = "free";
/// Added to a session's idle deadline (beyond the quarter of `idle_timeout` a stamp may
/// lag the last use) before the backstop may remove it: stamps are whole seconds.
const BACKSTOP_SLACK: Duration = Duration::from_secs(2);

/// Who may adopt a session: a digest of the scope, the OS user and the client's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerKey(String);

impl OwnerKey {
    pub fn new(scope: &str, uid: u32, client: &Client) -> OwnerKey {
        let mut h = Sha256::new();
        for part in [scope, &uid.to_string(), client.name()] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let digest = h.finalize();
        OwnerKey(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A daemon process, as a session's holder: the host it runs on (a digest), its pid, and
/// its start time in clock ticks since boot (so a reused pid is not taken for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub start: u64,
}

impl Holder {
    /// This process.
    pub fn me() -> Holder {
        let pid = std::process::id();
        Holder {
            host: host_tag(&crate::sandbox::hostname()),
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    pub fn render(&self) -> String {
        format!("{}x{}x{}", self.host, self.pid, self.start)
    }

    pub fn parse(s: &str) -> Option<Holder> {
        let mut it = s.split('x');
        let (host, pid, start) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || host.len() != 6 || !host.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Holder {
            host: host.into(),
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
        })
    }

    /// Whether this holder still runs, as far as `me` can tell: on this host, the same
    /// process (pid and start time) running python-docker-mcp; on another host it cannot
    /// be checked, so it counts as alive (until the session's own expiry).
    pub fn alive(&self, me: &Holder) -> bool {
        if self.host != me.host {
            return true;
        }
        if self == me {
            return true;
        }
        start_time(self.pid) == Some(self.start)
            && std::fs::read(format!("/proc/{}/cmdline", self.pid))
                .map(|c| String::from_utf8_lossy(&c).contains("python-docker-mcp"))
                .unwrap_or(false)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} ({})", self.pid, self.host)
    }
}

/// What a durable session's container name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionName {
    pub session: String,
    pub owner: String,
    /// `None`: free (its last daemon exited cleanly).
    pub holder: Option<Holder>,
    /// Epoch seconds after which the backstop may remove it.
    pub until: u64,
}

impl SessionName {
    pub fn render(&self) -> String {
        let holder = self
            .holder
            .as_ref()
            .map_or_else(|| FREE.to_string(), Holder::render);
        format!(
            "{PREFIX}{}.{}.{holder}.{}",
            self.session, self.owner, self.until
        )
    }

    /// A container name, if it is a durable session's (Docker lists names with a `/`).
    pub fn parse(name: &str) -> Option<SessionName> {
        let rest = name.trim_start_matches('/').strip_prefix(PREFIX)?;
        let mut it = rest.split('.');
        let (session, owner, holder, until) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || !is_session_id(session) || owner.len() != 16 {
            return None;
        }
        Some(SessionName {
            session: session.into(),
            owner: owner.into(),
            holder: match holder {
                FREE => None,
                h => Some(Holder::parse(h)?),
            },
            until: until.parse().ok()?,
        })
    }

    /// The same session held by `holder` (None: released).
    pub fn held_by(&self, holder: Option<Holder>) -> SessionName {
        SessionName {
            holder,
            ..self.clone()
        }
    }

    /// Whether the backstop may remove it now: past its deadline, or older than the
    /// hard lifetime, and not held by a live daemon (a live holder ends its own).
    pub fn expired(&self, created: u64, max_lifetime: Duration, now: u64, me: &Holder) -> bool {
        if self.holder.as_ref().is_some_and(|h| h.alive(me)) {
            return false;
        }
        now > self.until || now > created.saturating_add(max_lifetime.as_secs())
    }
}

/// A warm sandbox of the host pool, by name: its fingerprint and slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmName {
    /// 16 hex digits: what makes two sandboxes interchangeable ([`fingerprint`]).
    pub fingerprint: String,
    pub slot: u32,
}

impl WarmName {
    pub fn render(&self) -> String {
        format!("{WARM_PREFIX}{}.{}", self.fingerprint, self.slot)
    }

    pub fn parse(name: &str) -> Option<WarmName> {
        let rest = name.trim_start_matches('/').strip_prefix(WARM_PREFIX)?;
        let (fingerprint, slot) = rest.split_once('.')?;
        if fingerprint.len() != 16 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(WarmName {
            fingerprint: fingerprint.into(),
            slot: slot.parse().ok()?,
        })
    }

    /// Whether the backstop may remove it: older than `max_age` (the pool's age limit
    /// plus the slack its own timer has), whoever made it.
    pub fn expired(created: u64, max_age: Duration, now: u64) -> bool {
        now > created.saturating_add(max_age.as_secs())
    }
}

/// A warm sandbox of the host pool held ready by one daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldName {
    pub fingerprint: String,
    pub slot: u32,
    pub holder: Holder,
}

impl HeldName {
    pub fn render(&self) -> String {
        format!(
            "{HELD_PREFIX}{}.{}.{}",
            self.fingerprint,
            self.slot,
            self.holder.render()
        )
    }

    pub fn parse(name: &str) -> Option<HeldName> {
        let rest = name.trim_start_matches('/').strip_prefix(HELD_PREFIX)?;
        let mut it = rest.split('.');
        let (fingerprint, slot, holder) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || fingerprint.len() != 16 {
            return None;
        }
        Some(HeldName {
            fingerprint: fingerprint.into(),
            slot: slot.parse().ok()?,
            holder: Holder::parse(holder)?,
        })
    }
}

/// A sandbox claimed from the host pool by `holder`, not a session (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedName {
    pub holder: Holder,
    pub nonce: String,
}

impl ClaimedName {
    /// A new, unique name for a sandbox `holder` claims.
    pub fn new(holder: &Holder) -> ClaimedName {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        ClaimedName {
            holder: holder.clone(),
            nonce: nonce[..12].into(),
        }
    }

    pub fn render(&self) -> String {
        format!("{CLAIMED_PREFIX}{}.{}", self.holder.render(), self.nonce)
    }

    pub fn parse(name: &str) -> Option<ClaimedName> {
        let rest = name.trim_start_matches('/').strip_prefix(CLAIMED_PREFIX)?;
        let (holder, nonce) = rest.split_once('.')?;
        if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        Some(ClaimedName {
            holder: Holder::parse(holder)?,
            nonce: nonce.into(),
        })
    }
}

/// Whether a helper's claim `by` (a [`ClaimedName`]) on a session may be claimed over by
/// `me`: its daemon no longer runs, as far as `me` can tell, or it is `me`'s own (a daemon
/// adopts one session at a time, so its own claim is an attempt it gave up). A claim that
/// names no daemon counts as gone.
pub fn claim_gone(by: &str, me: &Holder) -> bool {
    ClaimedName::parse(by).is_none_or(|c| c.holder == *me || !c.holder.alive(me))
}

/// Whether a container called `name` belongs to no daemon or to another than `me`: a
/// warm sandbox of the host pool, a durable session, or a sandbox another daemon claimed.
/// Such a container stays when the daemon that made it exits.
pub fn claimed_by_other(name: &str, me: &Holder) -> bool {
    if WarmName::parse(name).is_some()
        || HeldName::parse(name).is_some()
        || SessionName::parse(name).is_some()
    {
        return true;
    }
    ClaimedName::parse(name).is_some_and(|c| c.holder != *me)
}

/// 16 hex digits of SHA-256 over `parts`, each ended by a NUL so no two lists collide.
pub fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The backstop deadline of a session last stamped at `now`: its idle deadline plus the
/// stamp's lag, never past its hard end (`created` + `max_lifetime`).
pub fn until(now: u64, idle: Duration, created: u64, max_lifetime: Duration) -> u64 {
    let idle_end = now + idle.as_secs() + idle.as_secs() / 4 + BACKSTOP_SLACK.as_secs();
    idle_end.min(created.saturating_add(max_lifetime.as_secs()))
}

/// Whether a stamp made at `stamped` (epoch seconds) should be renewed at `now`.
pub fn stale(stamped: u64, now: u64, idle: Duration) -> bool {
    now.saturating_sub(stamped) >= (idle.as_secs() / 4).max(1)
}

/// A session id as this daemon makes them: a hyphenated uuid.
pub fn is_session_id(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

/// Now, in epoch seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Six hex digits standing for a host name in a container name.
fn host_tag(host: &str) -> String {
    let digest = Sha256::digest(host.as_bytes());
    digest[..3].iter().map(|b| format!("{b:02x}")).collect()
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`, field 22).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last `)`.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// This process's OS user id (`/proc/self/status`), part of a session's owner on stdio.
pub fn uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0f0e0d0c-0b0a-4999-8888-777766665555";

    fn name(holder: Option<Holder>) -> SessionName {
        SessionName {
            session: ID.into(),
            owner: OwnerKey::new("default", 1000, &Client::new("local"))
                .as_str()
                .into(),
            holder,
            until: 1_900_000_000,
        }
    }

    #[test]
    fn a_session_name_round_trips_and_is_a_valid_container_name() {
        let me = Holder::me();
        for n in [name(None), name(Some(me))] {
            let text = n.render();
            assert!(text.len() < 128, "{text}");
            assert!(text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
            assert_eq!(SessionName::parse(&text), Some(n.clone()));
            assert_eq!(SessionName::parse(&format!("/{text}")), Some(n));
        }
        for bad in [
            "pdm-abc-sandbox-123",
            "pdm-s.not-a-uuid.0123456789abcdef.free.1",
            "pdm-s.0f0e0d0c-0b0a-4999-8888-777766665555.short.free.1",
            "pdm-s.0f0e0d0c-0b0a-4999-8888-777766665555.0123456789abcdef.free.x",
            "pdm-s.0f0e0d0c-0b0a-4999-8888-777766665555.0123456789abcdef.zz.1",
        ] {
            assert_eq!(SessionName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn warm_and_claimed_names_round_trip() {
        let w = WarmName {
            fingerprint: fingerprint(["image", "limits"]),
            slot: 31,
        };
        assert_eq!(
            WarmName::parse(&format!("/{}", w.render())),
            Some(w.clone())
        );
        assert_ne!(w.fingerprint, fingerprint(["imagel", "imits"]));
        for bad in [
            "pdm-w.abc.1",
            "pdm-w.0123456789abcdef.x",
            "pdm-w.0123456789abcdef",
        ] {
            assert_eq!(WarmName::parse(bad), None, "{bad}");
        }
        let c = ClaimedName::new(&Holder::me());
        let text = c.render();
        assert!(text.len() < 64, "{text}");
        assert_eq!(ClaimedName::parse(&text), Some(c.clone()));
        assert_ne!(ClaimedName::new(&Holder::me()), c);
        assert_eq!(ClaimedName::parse("pdm-t.zz.abc"), None);
        let h = HeldName {
            fingerprint: w.fingerprint.clone(),
            slot: 3,
            holder: Holder::me(),
        };
        assert_eq!(HeldName::parse(&h.render()), Some(h.clone()));
        assert!(
            claimed_by_other(&h.render(), &Holder::me()),
            "the host pool's"
        );
        assert!(claimed_by_other(&w.render(), &Holder::me()));
        assert!(!claimed_by_other(&c.render(), &Holder::me()), "mine");
        assert!(!WarmName::expired(100, Duration::from_secs(60), 160));
        assert!(WarmName::expired(100, Duration::from_secs(60), 161));
    }

    #[test]
    fn owners_differ_by_scope_user_and_client() {
        let local = Client::new("local");
        let a = OwnerKey::new("default", 1000, &local);
        assert_eq!(a, OwnerKey::new("default", 1000, &local));
        assert_ne!(a, OwnerKey::new("other", 1000, &local));
        assert_ne!(a, OwnerKey::new("default", 0, &local));
        assert_ne!(a, OwnerKey::new("default", 1000, &Client::new("alice")));
        // No concatenation collisions: the parts are separated.
        assert_ne!(
            OwnerKey::new("ab", 1, &Client::new("c")),
            OwnerKey::new("a", 1, &Client::new("bc"))
        );
        assert_eq!(a.as_str().len(), 16);
    }

    #[test]
    fn this_process_is_alive_and_a_dead_or_reused_pid_is_not() {
        let me = Holder::me();
        assert!(me.start > 0);
        assert!(me.alive(&me));
        let reused = Holder {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(!reused.alive(&me), "same pid, another start time");
        let gone = Holder {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        assert!(!gone.alive(&me));
        let elsewhere = Holder {
            host: "abcdef".into(),
            ..gone
        };
        assert!(
            elsewhere.alive(&me),
            "another host's holder cannot be checked"
        );
    }

    #[test]
    fn the_backstop_removes_only_expired_sessions_nobody_live_holds() {
        let me = Holder::me();
        let day = Duration::from_secs(86_400);
        let n = name(None);
        assert!(!n.expired(n.until - 100, day, n.until, &me));
        assert!(n.expired(n.until - 100, day, n.until + 1, &me));
        // The hard lifetime, however recent the stamp.
        assert!(n.expired(n.until - day.as_secs() - 10, day, n.until - 5, &me));
        // Held by a live daemon (this one): never.
        let held = name(Some(me.clone()));
        assert!(!held.expired(0, day, u64::MAX / 2, &me));
        let dead = name(Some(Holder {
            pid: u32::MAX - 1,
            ..me.clone()
        }));
        assert!(dead.expired(0, day, dead.until + 1, &me));
    }

    #[test]
    fn the_deadline_covers_the_stamps_lag_and_stops_at_the_lifetime() {
        let idle = Duration::from_secs(1800);
        let day = Duration::from_secs(86_400);
        let stamped = 1_000_000;
        let u = until(stamped, idle, stamped, day);
        // The last use may be up to a quarter of idle after the stamp.
        assert!(u >= stamped + idle.as_secs() + idle.as_secs() / 4);
        assert_eq!(
            until(stamped, idle, stamped - day.as_secs() + 10, day),
            stamped + 10
        );
        assert!(!stale(stamped, stamped + 449, idle));
        assert!(stale(stamped, stamped + 450, idle));
        assert!(stale(5, 6, Duration::from_secs(2)));
    }
}
