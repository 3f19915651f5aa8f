//! This replica's leadership, as every leader-only loop sees it (rescuer, SLA sweeper,
//! pruner, the leader's gauges). The election (`maintenance::leader`) publishes a [`Term`]
//! when it holds the lease row and `None` when it does not; loops read it through
//! [`Leadership`].
//!
//! A term is valid locally until `valid_until`: the instant the renewal that granted it was
//! sent, plus 90% of the lease. The database set the lease's expiry to its own clock at that
//! statement plus the whole lease, so a replica acting before `valid_until` acts inside its
//! lease whatever happened after (a freeze, a lost connection). Before each round a loop also
//! asks the database whether its epoch still holds an unexpired lease ([`Leadership::confirm`]):
//! a process that wakes from a freeze finds out there, not by believing its own flag.

use crate::db;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// One term as leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    /// The lease's epoch: it grows every time the lease changes hands.
    pub epoch: i64,
    /// When this term began, on the database clock.
    pub since: DateTime<Utc>,
    /// Until when this process may act on the term without a renewal (monotonic clock).
    pub valid_until: Instant,
}

impl Term {
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

/// A read-only view of this replica's leadership, cheap to clone.
#[derive(Debug, Clone)]
pub struct Leadership {
    term: watch::Receiver<Option<Term>>,
    /// This replica's worker id: the lease row's `holder` while it leads.
    holder: Arc<str>,
    pool: PgPool,
}

impl Leadership {
    /// A leadership for `holder` checked through `pool`, and the sender the election
    /// publishes on.
    pub fn new(holder: &str, pool: PgPool) -> (watch::Sender<Option<Term>>, Leadership) {
        let (tx, term) = watch::channel(None);
        (tx, Leadership { term, holder: holder.into(), pool })
    }

    /// The current term, if this replica leads and the term has not run out locally.
    pub fn term(&self) -> Option<Term> {
        (*self.term.borrow()).filter(Term::is_valid)
    }

    /// Whether this replica leads, by the local term alone (gauges, the page).
    pub fn is_leader(&self) -> bool {
        self.term().is_some()
    }

    /// The term, if this replica leads and the database agrees that its epoch holds an
    /// unexpired lease right now: the check before each leader-only round.
    pub async fn confirm(&self) -> Option<Term> {
        let term = self.term()?;
        match db::leader::holds(&self.pool, &self.holder, term.epoch).await {
            Ok(true) => Some(term),
            Ok(false) => {
                tracing::warn!(epoch = term.epoch, "leadership no longer held in the database; round skipped");
                None
            }
            Err(e) => {
                crate::telemetry::warn_limited("leadership", "cannot confirm leadership; round skipped", &e);
                None
            }
        }
    }

    /// Waits until the election publishes a change; `Err` once the election has ended.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.term.changed().await
    }
}
