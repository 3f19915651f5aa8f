//! Pure state rules: what an execution's outcome means for the item. No I/O, table-tested.

use crate::model::{AttemptStatus, DeadLetterReason, Decision, NextState};
pub use crate::model::{Backoff, Budget};
use std::time::Duration;

/// How an execution ended, before the item's next state is decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The agent answered and the approval policy decided.
    Succeeded(Decision),
    /// The agent failed; `retryable` says whether trying again can help.
    Failed { retryable: bool, retry_after: Option<Duration> },
    /// The run-time limit passed and the work was stopped.
    TimedOut,
    /// A clean shutdown interrupted the work; it is released, not counted.
    Interrupted,
}

/// The attempt's recorded status and the item's next state.
pub fn next_state(outcome: &Outcome, budget: Budget, backoff: Backoff, jitter: f64) -> (AttemptStatus, NextState) {
    let retry_or_dead = |retry_after: Option<Duration>| {
        if budget.exhausted() {
            NextState::DeadLetter { reason: DeadLetterReason::RetriesExhausted }
        } else {
            let delay = backoff.honour(budget.used, retry_after, jitter);
            NextState::Retry { delay_ms: delay.as_millis() as i64 }
        }
    };
    match outcome {
        Outcome::Succeeded(Decision::Approved) => (AttemptStatus::Completed, NextState::Completed),
        Outcome::Succeeded(Decision::Escalated) => (AttemptStatus::Completed, NextState::AwaitingApproval),
        Outcome::Succeeded(Decision::Rejected) => (AttemptStatus::Failed, retry_or_dead(None)),
        Outcome::Failed { retryable: true, retry_after } => (AttemptStatus::Failed, retry_or_dead(*retry_after)),
        Outcome::Failed { retryable: false, .. } => {
            (AttemptStatus::Failed, NextState::DeadLetter { reason: DeadLetterReason::Permanent })
        }
        Outcome::TimedOut => (AttemptStatus::Timeout, retry_or_dead(None)),
        Outcome::Interrupted => (AttemptStatus::Interrupted, NextState::Released { delay_ms: 0 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(60) };

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let cases = [
            (1, 1.0, 1_000),
            (2, 1.0, 2_000),
            (3, 1.0, 4_000),
            (7, 1.0, 60_000),
            (40, 1.0, 60_000),
            (1, 0.0, 500),
            (3, 0.0, 2_000),
            (0, 1.0, 1_000),
        ];
        for (used, jitter, expected_ms) in cases {
            assert_eq!(BACKOFF.delay(used, jitter).as_millis(), expected_ms, "used={used} jitter={jitter}");
        }
    }

    #[test]
    fn retry_after_replaces_backoff_and_is_clamped() {
        assert_eq!(BACKOFF.honour(1, Some(Duration::from_secs(7)), 0.3), Duration::from_secs(7));
        assert_eq!(BACKOFF.honour(1, Some(Duration::from_secs(3600)), 0.3), Duration::from_secs(60));
    }

    #[test]
    fn outcomes_map_to_states() {
        let fresh = Budget { used: 1, max: 3 };
        let last = Budget { used: 3, max: 3 };
        let retryable = Outcome::Failed { retryable: true, retry_after: None };
        let permanent = Outcome::Failed { retryable: false, retry_after: None };
        let table: Vec<(Outcome, Budget, AttemptStatus, &str)> = vec![
            (Outcome::Succeeded(Decision::Approved), last, AttemptStatus::Completed, "completed"),
            (Outcome::Succeeded(Decision::Escalated), fresh, AttemptStatus::Completed, "awaiting"),
            (Outcome::Succeeded(Decision::Rejected), fresh, AttemptStatus::Failed, "retry"),
            (Outcome::Succeeded(Decision::Rejected), last, AttemptStatus::Failed, "exhausted"),
            (retryable.clone(), fresh, AttemptStatus::Failed, "retry"),
            (retryable, last, AttemptStatus::Failed, "exhausted"),
            (permanent.clone(), fresh, AttemptStatus::Failed, "permanent"),
            (permanent, last, AttemptStatus::Failed, "permanent"),
            (Outcome::TimedOut, fresh, AttemptStatus::Timeout, "retry"),
            (Outcome::TimedOut, last, AttemptStatus::Timeout, "exhausted"),
            (Outcome::Interrupted, last, AttemptStatus::Interrupted, "released"),
        ];
        for (outcome, budget, status, expected) in table {
            let (got_status, next) = next_state(&outcome, budget, BACKOFF, 0.5);
            assert_eq!(got_status, status, "{outcome:?}");
            let kind = match next {
                NextState::Completed => "completed",
                NextState::AwaitingApproval => "awaiting",
                NextState::Retry { .. } => "retry",
                NextState::Released { .. } => "released",
                NextState::DeadLetter { reason: DeadLetterReason::RetriesExhausted } => "exhausted",
                NextState::DeadLetter { reason: DeadLetterReason::Permanent } => "permanent",
                NextState::DeadLetter { .. } | NextState::Evaluate | NextState::Revise => "other",
            };
            assert_eq!(kind, expected, "{outcome:?} with {budget:?}");
        }
    }
}
