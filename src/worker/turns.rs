//! When the dispatcher's claims take turns among tenants (docs/limits.md, "Tenants take
//! turns"). The oldest-first claim is the fast path and stays the only one while no tenant
//! crowds the others out. Once full claims come from one or two tenants (the crowd), every
//! other claim is a turn (`db::claim::claim_turns`): the other tenants with runnable work at
//! the top priority get a few items each, and the oldest-first claim takes the rest for the
//! crowd. So a tenant with a few items behind another's backlog waits one claim, not the
//! backlog, and the backlog loses nothing. Pure state: the dispatcher asks, claims, reports.

use crate::db::claim::ClaimedItem;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The most tenants one turn visits (never more than the items it asks for).
pub const MAX_TENANTS: usize = 32;

/// The most items a turn takes from one tenant: enough for a newcomer's few, little enough
/// that a turn among several backlogs does not scatter the claim over their orders.
pub const SHARE: i32 = 8;

/// The last claimed items whose tenants say whether there is a crowd: more than one claim's
/// worth (256 by default), so that the orders of a few tenants that happen to be next in line
/// (orders of 100, each its own tenant) do not look like one.
const WINDOW: usize = 512;

/// Fewer claimed items than this say nothing yet.
const MIN_SEEN: usize = 8;

/// There is a crowd when its one or two tenants own at least this share of the last claimed
/// items while claims come back full.
const CROWDED_SHARE: f64 = 0.9;

/// After a turn found nobody beside the crowd, the next turn waits this long, doubling while
/// turns keep finding nobody up to [`MAX_PAUSE`]: a lone backlog pays for a turn at most every
/// 200 ms then, and a newcomer waits at most that for its first turn.
const ALONE_PAUSE: Duration = Duration::from_millis(20);

/// The longest pause between turns.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// While turns find only other backlogs (every tenant visited filled its share), they come
/// less and less often, from this pause doubling up to [`MAX_PAUSE`]: those tenants
/// still move, and the crowd keeps most claims. A turn that finds a tenant with fewer items
/// than its share (a newcomer) brings turns back to every other claim.
const BACKLOG_PAUSE: Duration = Duration::from_millis(10);

/// Which claim comes next, from what the last ones found.
#[derive(Debug, Default)]
pub struct Turns {
    /// The tenants of the last claimed items (oldest-first claims only), at most WINDOW, and
    /// how many of them each tenant has.
    recent: VecDeque<Uuid>,
    counts: HashMap<Uuid, usize>,
    /// The last oldest-first claim got all it asked for: more may be waiting.
    full: bool,
    /// The next claim is a turn (turns alternate with oldest-first claims).
    turn_next: bool,
    /// The last turn took from tenants up to this one; the next starts after it.
    after: Option<Uuid>,
    /// No turn before this (the last one found nobody beside the crowd, or only backlogs).
    quiet_until: Option<Instant>,
    /// The pause after a turn that found nobody or only backlogs (doubling, see
    /// [`ALONE_PAUSE`] and [`BACKLOG_PAUSE`]).
    pause: Option<Duration>,
}

/// The claim to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Oldest,
    /// A turn: where it starts (`None`: from the first tenant), and the crowd it leaves to
    /// the oldest-first claims.
    Turns {
        after: Option<Uuid>,
        crowd: Vec<Uuid>,
    },
}

impl Turns {
    pub fn next(&self, now: Instant) -> Claim {
        match self.crowd() {
            Some(crowd) if self.turn_next && self.quiet_until.is_none_or(|t| now >= t) => {
                Claim::Turns { after: self.after, crowd }
            }
            _ => Claim::Oldest,
        }
    }

    /// The one or two tenants that own nearly all of what full claims bring, if there are.
    fn crowd(&self) -> Option<Vec<Uuid>> {
        if !self.full || self.recent.len() < MIN_SEEN {
            return None;
        }
        let (mut first, mut second) = ((Uuid::nil(), 0), (Uuid::nil(), 0));
        for (&tenant, &n) in &self.counts {
            if n > first.1 {
                (first, second) = ((tenant, n), first);
            } else if n > second.1 {
                second = (tenant, n);
            }
        }
        let crowded = (first.1 + second.1) as f64 >= CROWDED_SHARE * self.recent.len() as f64;
        crowded.then(|| [first, second].iter().filter(|(_, n)| *n > 0).map(|(t, _)| *t).collect())
    }

    /// What a claim of `want` items found (a turn's own items, before the oldest-first claim
    /// that takes what it left).
    pub fn claimed(&mut self, claim: &Claim, want: usize, items: &[ClaimedItem], now: Instant) {
        match claim {
            Claim::Oldest => {
                self.full = !items.is_empty() && items.len() == want;
                for item in items.iter().rev().take(WINDOW).rev() {
                    if self.recent.len() == WINDOW
                        && let Some(gone) = self.recent.pop_front()
                        && let Some(n) = self.counts.get_mut(&gone)
                    {
                        *n -= 1;
                        if *n == 0 {
                            self.counts.remove(&gone);
                        }
                    }
                    self.recent.push_back(item.tenant_id);
                    *self.counts.entry(item.tenant_id).or_default() += 1;
                }
                self.turn_next = true;
            }
            Claim::Turns { .. } => {
                self.turn_next = false;
                let mut per_tenant: HashMap<Uuid, i32> = HashMap::new();
                for item in items {
                    *per_tenant.entry(item.tenant_id).or_default() += 1;
                }
                let first = if items.is_empty() {
                    Some(ALONE_PAUSE)
                } else if want > items.len() && per_tenant.values().all(|n| *n >= SHARE) {
                    Some(BACKLOG_PAUSE)
                } else {
                    None
                };
                self.pause = first.map(|first| self.pause.map_or(first, |p| (p * 2).clamp(first, MAX_PAUSE)));
                self.quiet_until = self.pause.map(|p| now + p);
                // The tenants were visited in order: the next turn starts after the last one
                // taken from (past the last tenant, the claim starts again from the first).
                self.after = items.iter().map(|i| i.tenant_id).max().or(self.after);
            }
        }
    }

    /// The most tenants a turn of `want` items visits.
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

    fn t(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn turns_start_when_one_or_two_tenants_fill_the_claims_and_alternate() {
        let now = Instant::now();
        let mut turns = Turns::default();
        assert_eq!(turns.next(now), Claim::Oldest);
        // Many tenants in full claims (orders of 100, each its own tenant): no turns, even
        // when the last claim came from two of them.
        turns.claimed(&Claim::Oldest, 256, &items(&[(1, 100), (2, 100), (3, 56)]), now);
        turns.claimed(&Claim::Oldest, 256, &items(&[(3, 44), (4, 100), (5, 100), (6, 12)]), now);
        turns.claimed(&Claim::Oldest, 100, &items(&[(6, 88), (7, 12)]), now);
        assert_eq!(turns.next(now), Claim::Oldest);
        // One tenant fills the claims: the next claim is a turn that leaves it out, then
        // oldest-first again.
        turns.claimed(&Claim::Oldest, 256, &items(&[(1, 250), (2, 6)]), now);
        turns.claimed(&Claim::Oldest, 256, &items(&[(1, 256)]), now);
        let Claim::Turns { after: None, crowd } = turns.next(now) else { panic!("{:?}", turns.next(now)) };
        assert_eq!(crowd[0], t(1), "the crowd is the tenant that filled the claims");
        turns.claimed(&turns.next(now), 256, &items(&[(9, 3)]), now);
        assert_eq!(turns.next(now), Claim::Oldest);
        // A claim that was not full: the queue is short, nobody waits behind anybody.
        turns.claimed(&Claim::Oldest, 256, &items(&[(1, 30)]), now);
        assert_eq!(turns.next(now), Claim::Oldest);
        // Claims of one item each (a slow agent frees one slot at a time) count too, and
        // the next turn starts after the tenant the last one took from.
        for _ in 0..8 {
            turns.claimed(&Claim::Oldest, 1, &items(&[(1, 1)]), now);
        }
        assert!(matches!(turns.next(now), Claim::Turns { after: Some(a), .. } if a == t(9)));
    }

    #[test]
    fn turns_that_find_only_backlogs_come_less_often_until_a_newcomer_shows() {
        let now = Instant::now();
        let mut turns = Turns::default();
        turns.claimed(&Claim::Oldest, 256, &items(&[(1, 256)]), now);
        let backlogs = items(&[(2, SHARE as usize), (3, SHARE as usize)]);
        let turn = turns.next(now);
        turns.claimed(&turn, 256, &backlogs, now);
        turns.claimed(&Claim::Oldest, 256, &items(&[(1, 256)]), now);
        assert_eq!(turns.next(now), Claim::Oldest, "only backlogs: a pause");
        let later = now + BACKLOG_PAUSE;
        let turn = turns.next(later);
        assert!(matches!(turn, Claim::Turns { .. }));
        turns.claimed(&turn, 256, &backlogs, later);
        turns.claimed(&Claim::Oldest, 256, &items(&[(1, 256)]), later);
        assert_eq!(turns.next(later + BACKLOG_PAUSE), Claim::Oldest, "the pause doubles");
        let later = later + BACKLOG_PAUSE * 2;
        let turn = turns.next(later);
        // A newcomer with fewer items than its share: turns every other claim again.
        turns.claimed(&turn, 256, &items(&[(2, SHARE as usize), (9, 1)]), later);
        turns.claimed(&Claim::Oldest, 256, &items(&[(1, 256)]), later);
        assert!(matches!(turns.next(later), Claim::Turns { .. }));
    }

    #[test]
    fn a_turn_that_finds_nobody_beside_the_crowd_pauses_the_turns() {
        let now = Instant::now();
        let mut turns = Turns::default();
        turns.claimed(&Claim::Oldest, 256, &items(&[(7, 256)]), now);
        let turn = turns.next(now);
        assert!(matches!(turn, Claim::Turns { .. }));
        turns.claimed(&turn, 256, &[], now);
        turns.claimed(&Claim::Oldest, 256, &items(&[(7, 256)]), now);
        assert_eq!(turns.next(now), Claim::Oldest, "alone: no turn for a moment");
        assert!(matches!(turns.next(now + ALONE_PAUSE), Claim::Turns { .. }));
        assert_eq!(Turns::max_tenants(1), 1);
        assert_eq!(Turns::max_tenants(256), MAX_TENANTS as i32);
    }
}
