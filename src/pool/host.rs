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
//! - a daemon that needs a sandbox renames a warm one to `pdm-t.<holder>.<nonce>`
//!   (the claim: of two daemons, one wins), attaches, and says `hello`.
//!
//! A warm sandbox nobody claims ends itself (the helper's idle timer, `pool_max_age`
//! plus [`crate::sandbox::WARM_EXIT_SLACK`]), and the sweep of any daemon removes one
//! that outlived that by the engine's own creation time.

use std::time::{Duration, Instant};

use crate::durable::{self, ClaimedName, Holder, WarmName};
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

    pub fn filling_name(&self, slot: u32) -> String {
        format!("{FILLING_PREFIX}{}.{slot}", self.fingerprint)
    }

    /// The slot a filling container's name reserves, if it is one of this pool's.
    pub fn filling_slot(&self, name: &str) -> Option<u32> {
        let rest = name.strip_prefix(FILLING_PREFIX)?;
        let (fp, slot) = rest.split_once('.')?;
        (fp == self.fingerprint).then(|| slot.parse().ok())?
    }

    /// The warm and free slots of this fingerprint on the engine.
    pub async fn census(&self, backend: &Backend) -> Result<Census, RuntimeError> {
        let now = durable::now();
        let mut taken = vec![false; self.slots as usize];
        let mut warm = Vec::new();
        for c in backend.named(&format!(".{}.", self.fingerprint)).await? {
            if let Some(w) = WarmName::parse(&c.name).filter(|w| w.fingerprint == self.fingerprint)
            {
                mark(&mut taken, w.slot);
                let margin = CLAIM_MARGIN.min(self.max_age / 4);
                let young = c.created + self.max_age.saturating_sub(margin).as_secs() > now;
                if c.running && young {
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

    /// Claim one of `warm` for `holder`: rename it (the claim), attach and say `hello`
    /// (at once, so the claim costs one engine round trip), and find its package volume.
    /// `None` when every one was taken by someone else first or would not answer.
    pub async fn claim(
        &self,
        backend: &Backend,
        holder: &Holder,
        warm: &[Named],
        target: &str,
    ) -> Option<(Repl, String, Instant)> {
        for c in warm {
            let to = ClaimedName::new(holder).render();
            let (renamed, attached, volume) = tokio::join!(
                backend.rename(&c.name, &to),
                backend.attach(&c.id, &to),
                backend.volume_at(&c.id, target),
            );
            if !matches!(renamed, Ok(true)) {
                continue; // another daemon was first; our attach goes unused
            }
            let started = async {
                let (repl, _) = Repl::resume(backend, attached?, HELLO_TIMEOUT).await?;
                Ok::<_, ReplError>(repl)
            };
            match started.await {
                Ok(repl) => {
                    let age = durable::now().saturating_sub(c.created);
                    let created = Instant::now()
                        .checked_sub(Duration::from_secs(age))
                        .unwrap_or_else(Instant::now);
                    return Some((repl, volume.ok().flatten().unwrap_or_default(), created));
                }
                Err(e) => {
                    tracing::warn!(container = %to, error = %e, "a claimed warm sandbox did not answer; removing it");
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
