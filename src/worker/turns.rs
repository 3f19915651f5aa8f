//! When the dispatcher's claims take turns among tenants (docs/limits.md, "Tenants take
//! turns"). The oldest-first claim is the fast path and stays the only one while no tenant
//! crowds the others out. Once a full claim came from one or two tenants, every other claim
//! is a turns claim (`db::claim::claim_turns`): the tenants with runnable work at the top
//! priority each get a share, so a tenant with a few items behind another's backlog waits
//! one claim, not the backlog. Pure state: the dispatcher asks, claims, and reports.

use crate::db::claim::ClaimedItem;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The most tenants one turns claim visits (never more than the items it asks for): its
/// share per tenant is the claim's size over the tenants it found (8 each at a claim of 256).
pub const MAX_TENANTS: usize = 32;

/// The claimed items whose tenants say whether the queue is crowded.
const WINDOW: usize = 64;

/// Fewer claimed items than this say nothing yet.
const MIN_SEEN: usize = 8;

/// The queue is crowded when at least this share of the last claimed items came from their
/// two largest tenants while claims came back full.
const CROWDED_SHARE: f64 = 0.9;

/// After a turns claim found a single tenant, the next turns claim waits this long: with one
/// tenant there is no one to take turns with, and a newcomer waits at most this.
const ALONE_PAUSE: Duration = Duration::from_millis(20);

/// Which claim comes next, from what the last ones found.
#[derive(Debug, Default)]
pub struct Turns {
    /// The tenants of the last claimed items (oldest-first claims only), at most WINDOW.
    recent: VecDeque<Uuid>,
    /// The last oldest-first claim got all it asked for: more may be waiting.
    full: bool,
    /// The next claim is a turns claim (they alternate with oldest-first ones).
    turn_next: bool,
    /// The last turns claim took from tenants up to this one; the next starts after it.
    after: Option<Uuid>,
    /// No turns claim before this (the last one found a single tenant).
    quiet_until: Option<Instant>,
}

/// The claim to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Oldest,
    /// A turns claim starting after this tenant (`None`: from the first).
    Turns {
        after: Option<Uuid>,
    },
}

impl Turns {
    pub fn next(&self, now: Instant) -> Claim {
        if self.crowded() && self.turn_next && self.quiet_until.is_none_or(|t| now >= t) {
            Claim::Turns { after: self.after }
        } else {
            Claim::Oldest
        }
    }

    /// Claims come back full and one or two tenants own nearly all of what they bring.
    fn crowded(&self) -> bool {
        if !self.full || self.recent.len() < MIN_SEEN {
            return false;
        }
        let mut per_tenant: HashMap<Uuid, usize> = HashMap::new();
        for tenant in &self.recent {
            *per_tenant.entry(*tenant).or_default() += 1;
        }
        let mut counts: Vec<usize> = per_tenant.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts.iter().take(2).sum::<usize>() as f64 >= CROWDED_SHARE * self.recent.len() as f64
    }

    /// What a claim of `want` items found.
    pub fn claimed(&mut self, claim: Claim, want: usize, items: &[ClaimedItem], now: Instant) {
        match claim {
            Claim::Oldest => {
                self.full = !items.is_empty() && items.len() == want;
                for item in items.iter().rev().take(WINDOW).rev() {
                    if self.recent.len() == WINDOW {
                        self.recent.pop_front();
                    }
                    self.recent.push_back(item.tenant_id);
                }
                self.turn_next = true;
            }
            Claim::Turns { .. } => {
                self.turn_next = false;
                let mut tenants: Vec<Uuid> = items.iter().map(|i| i.tenant_id).collect();
                tenants.sort_unstable();
                tenants.dedup();
                if items.is_empty() || (tenants.len() == 1 && want > 1 && items.len() > want / 2) {
                    self.quiet_until = Some(now + ALONE_PAUSE);
                }
                // The tenants were visited in order: the next turn starts after the last one
                // taken from, or from the first when this one did not fill (it reached the end).
                self.after = if items.len() == want { tenants.last().copied() } else { None };
            }
        }
    }

    /// The most tenants a turns claim of `want` items visits.
    pub fn max_tenants(want: usize) -> i32 {
        want.clamp(1, MAX_TENANTS) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(tenants: &[(u128, usize)]) -> Vec<ClaimedItem> {
        let template = ClaimedItem {
            id: Uuid::nil(),
            work_order_id: Uuid::nil(),
            item_type: "TICKET".into(),
            priority: crate::model::Priority::Medium,
            attempt: 1,
            attempt_base: 0,
            max_attempts: None,
            rescues: 0,
            created_at: chrono::Utc::now(),
            run_at: chrono::Utc::now(),
            has_dependencies: false,
            review_pending: false,
            content_bytes: 2,
            content: Some("{}".into()),
            workflow_id: "default".into(),
            tenant_id: Uuid::nil(),
            created_by: Uuid::nil(),
            order_priority: crate::model::Priority::Medium,
            order_metadata: "{}".into(),
            claimed_at: chrono::Utc::now(),
            order_unmarked: false,
        };
        tenants
            .iter()
            .flat_map(|(t, n)| {
                std::iter::repeat_n(ClaimedItem { tenant_id: Uuid::from_u128(*t), ..template.clone() }, *n)
            })
            .collect()
    }

    #[test]
    fn turns_start_when_one_or_two_tenants_fill_the_claims_and_alternate() {
        let now = Instant::now();
        let mut turns = Turns::default();
        assert_eq!(turns.next(now), Claim::Oldest);
        // Many tenants in full claims (orders of 100, each its own tenant): no turns.
        turns.claimed(Claim::Oldest, 256, &items(&[(1, 100), (2, 100), (3, 56)]), now);
        turns.claimed(Claim::Oldest, 64, &items(&[(3, 20), (4, 22), (5, 22)]), now);
        assert_eq!(turns.next(now), Claim::Oldest);
        // One tenant fills the claims: the next claim takes turns, then oldest-first again.
        turns.claimed(Claim::Oldest, 64, &items(&[(1, 62), (2, 2)]), now);
        assert_eq!(turns.next(now), Claim::Turns { after: None });
        turns.claimed(Claim::Turns { after: None }, 256, &items(&[(1, 128), (2, 3)]), now);
        assert_eq!(turns.next(now), Claim::Oldest);
        // A claim that was not full: the queue is short, nobody waits behind anybody.
        turns.claimed(Claim::Oldest, 256, &items(&[(1, 30)]), now);
        assert_eq!(turns.next(now), Claim::Oldest);
        // Claims of one item each (a slow agent frees one slot at a time) count too.
        for _ in 0..8 {
            turns.claimed(Claim::Oldest, 1, &items(&[(1, 1)]), now);
        }
        assert_eq!(turns.next(now), Claim::Turns { after: None });
        turns.claimed(Claim::Turns { after: None }, 1, &items(&[(2, 1)]), now);
        turns.claimed(Claim::Oldest, 1, &items(&[(1, 1)]), now);
        assert_eq!(turns.next(now), Claim::Turns { after: Some(Uuid::from_u128(2)) }, "round robin, one at a time");
    }

    #[test]
    fn a_turns_claim_that_finds_one_tenant_pauses_turns_and_many_tenants_move_the_cursor() {
        let now = Instant::now();
        let mut turns = Turns::default();
        turns.claimed(Claim::Oldest, 256, &items(&[(7, 256)]), now);
        turns.claimed(Claim::Turns { after: None }, 256, &items(&[(7, 256)]), now);
        turns.claimed(Claim::Oldest, 256, &items(&[(7, 256)]), now);
        assert_eq!(turns.next(now), Claim::Oldest, "alone: no turns for a moment");
        assert_eq!(turns.next(now + ALONE_PAUSE), Claim::Turns { after: Some(Uuid::from_u128(7)) });
        let many: Vec<(u128, usize)> = (1..=MAX_TENANTS as u128).map(|t| (t, 8)).collect();
        turns.claimed(Claim::Turns { after: None }, 256, &items(&many), now + ALONE_PAUSE);
        turns.claimed(Claim::Oldest, 256, &items(&[(7, 256)]), now + ALONE_PAUSE);
        assert_eq!(turns.next(now + ALONE_PAUSE), Claim::Turns { after: Some(Uuid::from_u128(MAX_TENANTS as u128)) });
        assert_eq!(Turns::max_tenants(1), 1);
        assert_eq!(Turns::max_tenants(256), MAX_TENANTS as i32);
    }
}
