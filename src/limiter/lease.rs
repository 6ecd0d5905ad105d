//! This replica's leases of the shared store's capacity, one per scope (a user's: one per access
//! token), and the one ask of the store each scope may have in flight from here.
//!
//! A request spends from its scope's lease without a store round trip. When the lease runs low
//! (a quarter of `lease.requests` left) the request that sees it starts the next ask in the
//! background ([`Spent::Here`] with a [`Refill`]), so the scope's other requests keep spending
//! and never wait for the store. When there is nothing to spend, one request asks and the
//! scope's other requests from this replica wait for its answer ([`Spent::Wait`]) instead of
//! asking too: without that, every connection of a busy scope asks at once each time a lease
//! runs out, and on a store that locks the scope's row (PostgreSQL) they queue behind each other.
//!
//! A lease's size adapts to its scope's rate: `lease.requests` at first; a lease spent in under a
//! quarter of `lease.ms` asks for twice as many next time, up to [`GROWTH`] times
//! `lease.requests`; one that lasted more than half of `lease.ms` asks for half (never below
//! `lease.requests`). So a busy scope costs the store one ask per a few hundred requests, and a
//! quiet one holds little. The store still grants at most a quarter of the smallest room left,
//! so near a limit every request asks again whatever the size.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::ratelimit::{Decision, Lease, Windows};
use crate::store::Take;
use crate::util::FastMap;

/// How long a request waits for another's ask of its scope at most: that ask is bounded by the
/// store's budget and wakes its waiters when it ends however it ends, so this only bounds the
/// unforeseen.
const WAIT_AT_MOST: Duration = Duration::from_secs(2);

/// How many times `lease.requests` a busy scope's lease may grow to.
pub const GROWTH: u64 = 16;

/// Capacity this replica took from the store for one scope (a user's: for one access token).
pub(super) struct Held {
    /// The scope's store key, where unused requests go back.
    pub scope: String,
    pub limits: Windows,
    /// Requests left to spend.
    pub left: u64,
    /// Spendable before this time (ms).
    pub until: u64,
    /// When it was taken (ms): calendar counts go back only within the same UTC day.
    pub taken_at: u64,
    /// The store's answer: `remaining` is what the store had left after the lease.
    pub decision: Decision,
    /// Whether running low starts a refill: not after the store refused one (the next ask is
    /// the request's own, when the lease is spent).
    pub refills: bool,
    /// How many requests the last ask wanted, and when its grant came (ms): the next ask's
    /// size follows how fast they were spent.
    pub size: u64,
    pub filled_at: u64,
}

impl Held {
    /// Whether it can no longer be spent at `now`.
    pub fn ended(&self, now: u64) -> bool {
        self.until <= now
    }

    /// The ask that gives its unused requests back and takes none; `None` when all were spent.
    pub fn give_back(&self, now: u64) -> Option<Take> {
        (self.left > 0).then(|| self.returned(now, 0))
    }

    /// The size of the next ask: doubled when this lease went in under a quarter of its time,
    /// halved when it lasted over half of it, within `lease.requests` and `GROWTH` times it.
    pub fn next_size(&self, now: u64, lease: Lease) -> u64 {
        let lasted = now.saturating_sub(self.filled_at);
        let size = if lasted.saturating_mul(4) < lease.ms {
            self.size.saturating_mul(2)
        } else if lasted.saturating_mul(2) > lease.ms {
            self.size / 2
        } else {
            self.size
        };
        size.clamp(lease.requests, lease.requests.saturating_mul(GROWTH))
    }

    /// The ask that returns this lease's unused requests, taking `want` more.
    pub fn returned(&self, now: u64, want: u64) -> Take {
        let same_day = now / 86_400_000 == self.taken_at / 86_400_000;
        Take {
            want,
            back: self.left,
            back_calendar: if same_day { self.left } else { 0 },
        }
    }
}

/// What this replica's leases say of one request.
pub(super) enum Spent {
    /// Admitted from a lease: no store round trip. With a refill: the lease runs low and this
    /// request starts the scope's next ask, in the background.
    Here(Decision, Option<Refill>),
    /// Ask the store; `Asking` holds the scope's place as the one ask in flight.
    Ask(Take, Asking),
    /// Another request is asking the store for this scope: wait for its answer, then spend.
    Wait(Arc<Notify>),
}

/// The next lease of a scope, asked for while the current one is still being spent.
pub(super) struct Refill {
    pub take: Take,
    pub asking: Asking,
}

/// The one ask of a scope in flight from this replica. However it ends (answered, failed, or
/// its request cancelled), dropping it lets the scope's waiting requests go on.
pub(super) struct Asking {
    leases: Arc<Leases>,
    key: String,
    done: Arc<Notify>,
}

impl Drop for Asking {
    fn drop(&mut self) {
        self.leases
            .asking
            .remove_if(&self.key, |_, n| Arc::ptr_eq(n, &self.done));
        self.done.notify_waiters();
    }
}

/// Leases held, by scope key (a user's: scope key, NUL, the token's id), and the asks in flight.
/// Lock order: a `held` entry may be held while `asking` is touched, never the other way round.
#[derive(Default)]
pub(super) struct Leases {
    pub held: FastMap<String, Held>,
    asking: FastMap<String, Arc<Notify>>,
}

impl Leases {
    /// One request of `key` at `now`: spent from the lease if there is one to spend, else the
    /// ask to make (with an ended lease's unused requests to return), or the ask to wait for.
    pub fn spend(self: &Arc<Self>, key: &str, now: u64, lease: Lease) -> Spent {
        if let Some(mut held) = self.held.get_mut(key) {
            if now < held.until && held.left > 0 {
                held.left -= 1;
                let mut d = held.decision;
                d.headers.remaining = d.headers.remaining.saturating_add(held.left);
                let low = held.left <= held.size / 4;
                let refill = if low && held.refills {
                    let size = held.next_size(now, lease);
                    self.start_asking(key).ok().map(|asking| Refill {
                        take: Take::lease(size),
                        asking,
                    })
                } else {
                    None
                };
                return Spent::Here(d, refill);
            }
        }
        let asking = match self.start_asking(key) {
            Ok(asking) => asking,
            Err(wait) => return Spent::Wait(wait),
        };
        let take = match self.held.remove(key) {
            Some((_, held)) => held.returned(now, held.next_size(now, lease)),
            None => Take::lease(lease.requests),
        };
        Spent::Ask(take, asking)
    }

    /// This replica's place as the one ask of `key`, or what to wait on when another has it.
    fn start_asking(self: &Arc<Self>, key: &str) -> Result<Asking, Arc<Notify>> {
        match self.asking.entry(key.to_owned()) {
            dashmap::Entry::Occupied(e) => Err(e.get().clone()),
            dashmap::Entry::Vacant(e) => {
                let done = Arc::new(Notify::new());
                e.insert(done.clone());
                Ok(Asking {
                    leases: self.clone(),
                    key: key.to_owned(),
                    done,
                })
            }
        }
    }

    /// Wait until the ask of `key` that `done` belongs to has ended (at most `WAIT_AT_MOST`).
    pub async fn wait(&self, key: &str, done: Arc<Notify>) {
        let ended = done.notified();
        tokio::pin!(ended);
        // Registered before looking: an ask ending after the look wakes it.
        ended.as_mut().enable();
        let still = self.asking.get(key).is_some_and(|n| Arc::ptr_eq(&n, &done));
        if still {
            let _ = tokio::time::timeout(WAIT_AT_MOST, ended).await;
        }
    }

    /// Keep what the store granted for the ask `take`, to spend until `lease.ms` from now:
    /// `used` of them by the request that asked (1, or 0 for a refill). Added to a lease
    /// already held for the scope (a refill, or asks made side by side), which then ends with
    /// the newest grant; a lease of another day is replaced (its calendar counts cannot go
    /// back any more).
    #[allow(clippy::too_many_arguments)]
    pub fn hold(
        &self,
        key: String,
        scope: String,
        limits: Windows,
        decision: Decision,
        (granted, wanted): (u64, u64),
        used: u64,
        now: u64,
        lease: Lease,
    ) {
        if !decision.allowed() || granted <= used {
            return;
        }
        let size = wanted.max(lease.requests);
        let left = granted - used;
        let fresh = Held {
            scope,
            limits,
            left,
            until: now.saturating_add(lease.ms),
            taken_at: now,
            decision,
            refills: true,
            size,
            filled_at: now,
        };
        match self.held.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                let held = e.get_mut();
                if held.taken_at / 86_400_000 == now / 86_400_000 {
                    held.left = held.left.saturating_add(left);
                    held.until = held.until.max(fresh.until);
                    held.limits = fresh.limits;
                    held.decision = decision;
                    held.refills = true;
                    held.size = size;
                    held.filled_at = now;
                } else {
                    *held = fresh;
                }
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(fresh);
            }
        }
    }

    /// The store refused a refill of `key` (or could not answer): spend what is left, then ask.
    pub fn refill_refused(&self, key: &str) {
        if let Some(mut held) = self.held.get_mut(key) {
            held.refills = false;
        }
    }

    /// End the lease of `key` now: its next request asks the store.
    pub fn end(&self, key: &str) {
        if let Some(mut held) = self.held.get_mut(key) {
            held.until = 0;
        }
    }

    /// End every lease whose key starts with `prefix`.
    pub fn end_prefixed(&self, prefix: &str) {
        for mut held in self.held.iter_mut() {
            if held.key().starts_with(prefix) {
                held.until = 0;
            }
        }
    }

    /// Take out the leases that ended (every lease at `all`), to give back what they left.
    pub fn take_ended(&self, now: u64, all: bool) -> Vec<Held> {
        let ended: Vec<String> = self
            .held
            .iter()
            .filter(|h| all || h.ended(now))
            .map(|h| h.key().clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|key| self.held.remove_if(&key, |_, h| all || h.ended(now)))
            .map(|(_, held)| held)
            .collect()
    }
}
