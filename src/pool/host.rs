//! The host pool: warm sandboxes that belong to no daemon (durable mode).
//!
//! With `session.durable` on, a pool keeps its warm sandboxes on the engine, not in its
//! own memory: every daemon of this host whose sandboxes would be the same (the same
//! [`fingerprint`](crate::durable::fingerprint) of the whole sandbox spec, the image's id,
//! the scope and the OS user) draws from and refills one pool. The engine's names carry
//! it (see [`crate::durable`]):
//!
//! - a creation reserves a slot by its name, `pdm-f.<fingerprint>.<slot>` (filling);
//!   the engine refuses a second container by that name, so any number of daemons
//!   together keep at most `pool_size` warm or warming;
//! - once its helper is ready, the daemon lets go of its attach and renames it
//!   `pdm-w.<fingerprint>.<slot>`: warm, anyone's;
//! - or, while it holds none ready, it keeps the attach and names it
//!   `pdm-h.<fingerprint>.<slot>.<holder>`: held ready, its next call's at once (a rename
//!   to `pdm-t.` marks it used); others claim it only once its holder is gone, and at
//!   exit the holder parks it as `pdm-w.`;
//! - a daemon that needs a sandbox attaches to a warm one and says `hello` with a claim
//!   (the name it will give it); the helper takes the first claim it hears and names the
//!   winner in every answer, so of racing daemons exactly one wins. The winner renames it
//!   `pdm-t.<holder>.<nonce>`. (The engine's rename alone cannot decide: Docker renames
//!   whatever name the container has once it gets the container's lock, so two racing
//!   renames of one old name both succeed.)
//!
//! A warm sandbox nobody claims ends itself (the helper's idle timer, `pool_max_age`
//! plus [`crate::sandbox::WARM_EXIT_SLACK`]), and the sweep of any daemon removes one
//! that outlived that by the engine's own creation time.

use std::time::{Duration, Instant};

use crate::durable::{self, ClaimedName, HeldName, Holder, WarmName};
use crate::repl::{Repl, ReplError};
use crate::runtime::{Backend, Named, RuntimeError};

/// Every container filling a slot of the host pool.
pub const FILLING_PREFIX: &str = "pdm-f.";
/// How long a claimed warm sandbox's helper may take to answer `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A warm sandbox this close to its own end is not claimed (its helper may exit): at
/// most this, and at most a quarter of `pool_max_age`.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);

/// One pool's share of the host pool: its fingerprint and how to find its sandboxes.
#[derive(Debug, Clone)]
pub struct HostPool {
    pub fingerprint: String,
    pub slots: u32,
    /// Warm sandboxes older than this are left to end themselves.
    pub max_age: Duration,
}

/// What the engine holds for one fingerprint now.
#[derive(Debug, Default)]
pub struct Census {
    /// Warm sandboxes that may be claimed, in random order.
    pub warm: Vec<Named>,
    /// Slots neither warm nor filling.
    pub free: Vec<u32>,
}

impl HostPool {
    pub fn warm_name(&self, slot: u32) -> String {
        WarmName {
            fingerprint: self.fingerprint.clone(),
            slot,
        }
        .render()
    }

    pub fn held_name(&self, slot: u32, holder: &Holder) -> String {
        HeldName {
            fingerprint: self.fingerprint.clone(),
            slot,
            holder: holder.clone(),
        }
        .render()
    }

    /// The slot a filling or held container's name keeps, if it is one of this pool's.
    pub fn slot_of(&self, name: &str) -> Option<u32> {
        match HeldName::parse(name) {
            Some(h) if h.fingerprint == self.fingerprint => Some(h.slot),
            Some(_) => None,
            None => self.filling_slot(name),
        }
    }

    pub fn filling_name(&self, slot: u32) -> String {
        format!("{FILLING_PREFIX}{}.{slot}", self.fingerprint)
    }

    /// The slot a filling container's name reserves, if it is one of this pool's.
    pub fn filling_slot(&self, name: &str) -> Option<u32> {
        let rest = name.strip_prefix(FILLING_PREFIX)?;
        let (fp, slot) = rest.split_once('.')?;
        (fp == self.fingerprint).then(|| slot.parse().ok())?
    }

    /// Whether a warm sandbox is young enough to claim: it would not end itself (or be
    /// swept) in the claimer's hands.
    fn claimable(&self, c: &Named) -> bool {
        let margin = CLAIM_MARGIN.min(self.max_age / 4);
        c.created + self.max_age.saturating_sub(margin).as_secs() > durable::now()
    }

    /// The warm and free slots of this fingerprint on the engine.
    pub async fn census(&self, backend: &Backend, me: &Holder) -> Result<Census, RuntimeError> {
        let young = |c: &Named| self.claimable(c);
        let mut taken = vec![false; self.slots as usize];
        let mut warm = Vec::new();
        for c in backend.named(&format!(".{}.", self.fingerprint)).await? {
            if let Some(w) = WarmName::parse(&c.name).filter(|w| w.fingerprint == self.fingerprint)
            {
                mark(&mut taken, w.slot);
                if c.running && young(&c) {
                    warm.push(c);
                }
            } else if let Some(h) =
                HeldName::parse(&c.name).filter(|h| h.fingerprint == self.fingerprint)
            {
                mark(&mut taken, h.slot);
                // Its holder is gone: warm, anyone's.
                if c.running && young(&c) && !h.holder.alive(me) {
                    warm.push(c);
                }
            } else if let Some(slot) = self.filling_slot(&c.name) {
                mark(&mut taken, slot);
            }
        }
        shuffle(&mut warm);
        let mut free: Vec<u32> = (0..self.slots).filter(|s| !taken[*s as usize]).collect();
        shuffle(&mut free);
        Ok(Census { warm, free })
    }

    /// Claim one of `warm` for `holder`: attach (and find its package volume at the same
    /// time) and claim it in the `hello`; won, it comes with its old name (the pool
    /// renames it `pdm-t.`, off the reply path). `None` when every one was
    /// taken by someone else first or would not answer.
    pub async fn claim(
        &self,
        backend: &Backend,
        holder: &Holder,
        warm: &mut Vec<Named>,
        target: &str,
    ) -> Option<(super::Sandbox, String)> {
        while let Some(c) = warm.pop() {
            if !self.claimable(&c) {
                continue;
            }
            let to = ClaimedName::new(holder).render();
            let (taken, volume) = tokio::join!(
                // A warm sandbox claimed by a daemon that is gone may have run its code
                // (its rename is off the reply path): never claimed over.
                Repl::take(backend, &c.id, &to, HELLO_TIMEOUT, |_| false),
                backend.volume_at(&c.id, target)
            );
            match taken {
                // Won: the caller renames it `to` (for the sweep and the other daemons).
                Ok((repl, _)) => {
                    let age = durable::now().saturating_sub(c.created);
                    let created = Instant::now()
                        .checked_sub(Duration::from_secs(age))
                        .unwrap_or_else(Instant::now);
                    let sandbox = super::Sandbox {
                        repl,
                        volume: volume.ok().flatten().unwrap_or_default(),
                        created,
                        renamed: None,
                    };
                    return Some((sandbox, c.name));
                }
                // Another daemon's now: its attach goes unused, and it stays.
                Err(ReplError::Claimed(_)) => continue,
                Err(e) => {
                    tracing::warn!(container = %c.name, error = %e, "a claimed warm sandbox did not answer; removing it");
                    backend.remove(&c.id).await;
                }
            }
        }
        None
    }
}

/// Random order, so racing daemons try different sandboxes and slots first.
fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let r = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().expect("8"));
        items.swap(i, (r % (i as u64 + 1)) as usize);
    }
}

fn mark(taken: &mut [bool], slot: u32) {
    if let Some(t) = taken.get_mut(slot as usize) {
        *t = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_one_pool_are_told_from_anothers() {
        let h = HostPool {
            fingerprint: durable::fingerprint(["a"]),
            slots: 4,
            max_age: Duration::from_secs(60),
        };
        assert_eq!(h.filling_slot(&h.filling_name(3)), Some(3));
        let other = HostPool {
            fingerprint: durable::fingerprint(["b"]),
            ..h.clone()
        };
        assert_eq!(h.filling_slot(&other.filling_name(3)), None);
        assert_eq!(WarmName::parse(&h.warm_name(2)).map(|w| w.slot), Some(2));
        let mut taken = vec![false; 2];
        mark(&mut taken, 1);
        mark(&mut taken, 7); // a slot beyond pool_size (it shrank) is ignored
        assert_eq!(taken, [false, true]);
    }
}
