//! The claim in distributed mode (docs/distributed.md): a claim names one tenant, so the
//! dispatcher walks a ring of the tenants listed with queued work (`db::distributed`), takes
//! a share of its free slots from each in turn, and drops a tenant from the list once a
//! claim finds it empty. The ring is read again from the database every [`REREAD`], or when
//! it runs out, so that new tenants join it.

use crate::db;
use crate::db::claim::ClaimedItem;
use sqlx::PgPool;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How often the list of tenants is read again while the ring still has some.
pub const REREAD: Duration = Duration::from_secs(1);
/// Most tenants the ring holds (the oldest listed first).
const MAX_TENANTS: i64 = 1024;
/// Most tenants one claim visits: a claim of 128 slots takes at least 16 from each.
const MAX_VISITS: usize = 8;

#[derive(Default)]
pub struct TenantRing {
    inner: tokio::sync::Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    queue: VecDeque<Uuid>,
    read_at: Option<Instant>,
    /// The tenant visited last: a fresh read starts after it, so every tenant gets its turn.
    last: Option<Uuid>,
}

impl Ring {
    fn reread(&mut self, listed: Vec<Uuid>) {
        let start = self.last.and_then(|last| listed.iter().position(|t| *t == last)).map_or(0, |at| at + 1);
        let mut queue: VecDeque<Uuid> = listed.into();
        queue.rotate_left(start.min(queue.len()));
        self.queue = queue;
        self.read_at = Some(Instant::now());
    }
}

/// What to claim with: the claim's parameters, as the single-node claim takes them.
pub struct Ask<'a> {
    pub worker: &'a str,
    pub want: usize,
    pub lease: Duration,
    pub max_content: i32,
}

impl TenantRing {
    /// Claims up to `ask.want` items, a share from each of up to [`MAX_VISITS`] tenants.
    pub async fn claim(&self, pool: &PgPool, ask: Ask<'_>) -> Result<Vec<ClaimedItem>, sqlx::Error> {
        let mut ring = self.inner.lock().await;
        if ring.queue.is_empty() || ring.read_at.is_none_or(|at| at.elapsed() >= REREAD) {
            let listed = db::distributed::listed_tenants(pool, MAX_TENANTS).await?;
            ring.reread(listed);
        }
        let visits = ring.queue.len().min(MAX_VISITS);
        let share = ask.want.div_ceil(visits.max(1));
        let mut items = Vec::new();
        for _ in 0..visits {
            let Some(tenant) = ring.queue.pop_front() else { break };
            if items.len() >= ask.want {
                ring.queue.push_front(tenant);
                break;
            }
            let asked = share.min(ask.want - items.len());
            let got = db::distributed::claim_tenant(pool, ask.worker, asked as i64, ask.lease, ask.max_content, tenant)
                .await?;
            let short = got.len() < asked;
            items.extend(got);
            ring.last = Some(tenant);
            // Short: nothing runnable is left, unless another claimer holds it or it waits
            // for its time; the list keeps the tenant while it has any queued item.
            if !(short && db::distributed::forget_tenant(pool, tenant).await?) {
                ring.queue.push_back(tenant);
            }
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_read_starts_after_the_tenant_visited_last() {
        let t = |n: u128| Uuid::from_u128(n);
        let mut ring = Ring { last: Some(t(2)), ..Default::default() };
        ring.reread(vec![t(1), t(2), t(3)]);
        assert_eq!(ring.queue, [t(3), t(1), t(2)]);
        ring.last = Some(t(9));
        ring.reread(vec![t(1), t(2)]);
        assert_eq!(ring.queue, [t(1), t(2)]);
    }
}
