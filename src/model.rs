//! The vocabulary shared by every layer: statuses, error codes and the records that flow
//! from the runner to the completer. Types only, no I/O; everything else depends on this.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

/// Declares a closed set of database enum labels with their exact spelling.
macro_rules! labels {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = UnknownLabel;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownLabel { kind: stringify!($name), label: other.to_owned() }),
                }
            }
        }
    };
}

#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} `{label}`")]
pub struct UnknownLabel {
    pub kind: &'static str,
    pub label: String,
}

labels!(
    /// `priority`: claim order is URGENT, HIGH, MEDIUM, LOW.
    Priority { Low = "LOW", Medium = "MEDIUM", High = "HIGH", Urgent = "URGENT" }
);
labels!(
    /// `work_items.status` (docs/states.md).
    ItemStatus {
        Queued = "QUEUED",
        Processing = "PROCESSING",
        Completed = "COMPLETED",
        Failed = "FAILED",
        AwaitingApproval = "AWAITING_APPROVAL",
        Cancelled = "CANCELLED",
    }
);
labels!(
    /// `work_orders.status`, rolled up from the order's items.
    OrderStatus {
        Pending = "PENDING",
        Processing = "PROCESSING",
        Completed = "COMPLETED",
        Failed = "FAILED",
        Cancelled = "CANCELLED",
    }
);
labels!(
    /// `attempts.status`. LOST: the worker vanished and the rescuer closed the attempt.
    /// INTERRUPTED: released by a clean shutdown; not counted against max_attempts.
    AttemptStatus {
        Started = "STARTED",
        Completed = "COMPLETED",
        Failed = "FAILED",
        Timeout = "TIMEOUT",
        Lost = "LOST",
        Interrupted = "INTERRUPTED",
    }
);
labels!(
    /// `approval_events.decision`.
    Decision { Approved = "APPROVED", Rejected = "REJECTED", Escalated = "ESCALATED" }
);
labels!(
    /// Why an item was dead-lettered.
    DeadLetterReason {
        Permanent = "PERMANENT",
        RetriesExhausted = "RETRIES_EXHAUSTED",
        CrashLoop = "CRASH_LOOP",
    }
);
labels!(
    /// Stable error codes written to `attempts.error_code`, `work_items.last_error_code` and
    /// `dead_letters.error_code`. Scripts and dashboards match on these; never rename one.
    ErrorCode {
        NoRoute = "NO_ROUTE",
        UnknownAgent = "UNKNOWN_AGENT",
        WorkflowInvalid = "WORKFLOW_INVALID",
        ContentEmpty = "CONTENT_EMPTY",
        ContentTooLarge = "CONTENT_TOO_LARGE",
        ContentInvalidJson = "CONTENT_INVALID_JSON",
        AgentTimeout = "AGENT_TIMEOUT",
        AgentUnavailable = "AGENT_UNAVAILABLE",
        AgentRateLimited = "AGENT_RATE_LIMITED",
        AgentConnection = "AGENT_CONNECTION",
        AgentRejected = "AGENT_REJECTED",
        AgentRedirect = "AGENT_REDIRECT_REFUSED",
        AgentAddressRefused = "AGENT_ADDRESS_REFUSED",
        AgentBadOutput = "AGENT_BAD_OUTPUT",
        AgentError = "AGENT_ERROR",
        OutputTooLarge = "OUTPUT_TOO_LARGE",
        CommandSpawnFailed = "COMMAND_SPAWN_FAILED",
        CommandRetryable = "COMMAND_RETRYABLE",
        CommandKilled = "COMMAND_KILLED",
        CommandFailed = "COMMAND_FAILED",
        ApprovalRejected = "APPROVAL_REJECTED",
        WorkerLost = "WORKER_LOST",
        Interrupted = "INTERRUPTED",
        ResultRefused = "RESULT_REFUSED",
        DatabaseUnavailable = "DATABASE_UNAVAILABLE",
        HostResourcesExhausted = "HOST_RESOURCES_EXHAUSTED",
        AgentPanicked = "AGENT_PANICKED",
        ContextInvalid = "CONTEXT_INVALID",
        Cancelled = "CANCELLED",
        EvaluatorFailed = "EVALUATOR_FAILED",
        LlmRefused = "LLM_REFUSED",
        LlmTruncated = "LLM_TRUNCATED",
        PromptInvalid = "PROMPT_INVALID",
    }
);

/// Upper bound of every interval, timeout and grace period in the configuration, and of an
/// agent's or a workflow step's `timeout`: one day.
pub const MAX_INTERVAL: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Parses a duration option (an agent's or a connector's `timeout = "30s"`), naming the key
/// on error. It must be greater than zero and at most [`MAX_INTERVAL`].
pub fn parse_duration(key: &str, value: &str) -> Result<std::time::Duration, ConfigError> {
    let duration =
        humantime::parse_duration(value).map_err(|e| ConfigError::invalid(key, format!("`{value}`: {e}")))?;
    if duration.is_zero() || duration > MAX_INTERVAL {
        return Err(ConfigError::invalid(
            key,
            format!("must be greater than 0 and at most {}, not {value}", humantime::format_duration(MAX_INTERVAL)),
        ));
    }
    Ok(duration)
}

/// A configuration the operator must fix: the key and what is wrong with it (exit code 2).
/// Shared by the configuration and the agent kinds that validate their own options.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration: `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), message: message.into() }
    }
}

/// An error as recorded on an attempt: a stable code and a human message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
}

/// Text as PostgreSQL's `text` can hold it and an operator can read it: NUL characters
/// (which `text` refuses) become U+FFFD, and anything past `max_chars` is cut, marked `…`.
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut out: String = text.chars().take(max_chars).map(|c| if c == '\0' { '\u{FFFD}' } else { c }).collect();
    if text.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

/// One row of `eval_results`, produced by an evaluator for one attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRecord {
    pub evaluation_type: String,
    /// 0..=1, stored as DECIMAL(3,2).
    pub score: f64,
    pub passed: bool,
    pub metrics: Value,
}

/// One row of `approval_events`, produced by the approval policy for one attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalRecord {
    pub approver_id: String,
    pub decision: Decision,
    pub reason: Option<String>,
    pub policy_version: String,
}

/// What happens to the item after an attempt (decided by `rules::decision`).
#[derive(Debug, Clone, PartialEq)]
pub enum NextState {
    /// Approved output: the item is COMPLETED with this result.
    Completed,
    /// Output held for a human: AWAITING_APPROVAL.
    AwaitingApproval,
    /// Back to QUEUED, runnable after `delay_ms` (database clock).
    Retry { delay_ms: i64 },
    /// Back to QUEUED after `delay_ms`, the attempt not counted: a clean shutdown (at once),
    /// or a run that could not be prepared because the database was unavailable (a backoff).
    Released { delay_ms: i64 },
    /// FAILED with a dead letter.
    DeadLetter { reason: DeadLetterReason },
    /// Back to QUEUED at once, the attempt not counted: the output waits for the step's
    /// agent evaluators, which the next run calls instead of the agent (docs/review.md).
    Evaluate,
    /// Back to QUEUED at once with a fresh attempt budget: the output was sent back to the
    /// agent with feedback, a revision (docs/review.md).
    Revise,
}

/// What a completion writes to the item's review (`item_reviews`), beside the item.
#[derive(Debug, Clone, PartialEq)]
pub enum ReviewWrite {
    /// The completion's output waits for evaluation (stage EVALUATE).
    Evaluate,
    /// The completion's output goes back to the agent as revision `revision`, with this
    /// feedback (stage REVISE).
    Revise { revision: i32, feedback: Value },
    /// The review decided: nothing pending (the revision count is kept).
    Settled,
}

/// Everything the completer writes for one finished execution, in one transaction with the
/// rest of its batch. Guarded by (`item_id`, `attempt`): if that is no longer the item's
/// current attempt, nothing of this is written.
#[derive(Debug, Clone)]
pub struct Completion {
    pub item_id: Uuid,
    pub order_id: Uuid,
    /// The order's tenant: in distributed mode every write of the result names it.
    pub tenant_id: Uuid,
    pub item_type: String,
    pub attempt: i32,
    pub attempt_id: Uuid,
    /// Attempts used in the current budget, this one included (`dead_letters.retry_count`).
    pub attempts_used: i32,
    pub agent: String,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub input: Value,
    pub attempt_status: AttemptStatus,
    pub output: Option<Value>,
    pub usage: Option<Value>,
    /// What the attempt cost (from `usage` and the price table), its log and its artifacts,
    /// written with it.
    pub report: crate::policy::report::RunReport,
    pub error: Option<ErrorInfo>,
    pub evals: Vec<EvalRecord>,
    pub approval: Option<ApprovalRecord>,
    pub next: NextState,
    /// What the item's review records, when the step reviews with agents or revisions.
    pub review: Option<ReviewWrite>,
}

impl NextState {
    /// The item status this transition writes.
    pub fn item_status(&self) -> ItemStatus {
        match self {
            NextState::Completed => ItemStatus::Completed,
            NextState::AwaitingApproval => ItemStatus::AwaitingApproval,
            NextState::Retry { .. } | NextState::Released { .. } | NextState::Evaluate | NextState::Revise => {
                ItemStatus::Queued
            }
            NextState::DeadLetter { .. } => ItemStatus::Failed,
        }
    }
}

/// The item's attempt budget: attempts used in the current budget (this one included) and
/// the ceiling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub used: i32,
    pub max: i32,
}

impl Budget {
    /// The one rule for an item's ceiling, used by the runner, the rescuer and operators'
    /// decisions: the item's own `max_attempts`, else its workflow step's, else the
    /// configured `retry.max_attempts`.
    pub fn ceiling(item: Option<i32>, step: Option<i32>, default: i32) -> i32 {
        item.or(step).unwrap_or(default)
    }

    pub fn exhausted(self) -> bool {
        self.used >= self.max
    }
}

/// Retry timing: exponential from `base`, capped at `max`, with jitter in [50%, 100%].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before the next attempt after `used` attempts; `jitter` is uniform in [0, 1).
    pub fn delay(self, used: i32, jitter: f64) -> Duration {
        let exponent = used.saturating_sub(1).clamp(0, 30) as u32;
        let raw = self.base.saturating_mul(1u32 << exponent).min(self.max);
        raw.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// An agent's Retry-After replaces the computed delay, clamped to `max`.
    pub fn honour(self, used: i32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        match retry_after {
            Some(hint) => hint.min(self.max),
            None => self.delay(used, jitter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_their_database_spelling() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>().unwrap(), *code);
        }
        for status in ItemStatus::ALL {
            assert_eq!(status.as_str().parse::<ItemStatus>().unwrap(), *status);
        }
        assert!("queued".parse::<ItemStatus>().is_err());
    }

    #[test]
    fn priorities_order_like_the_database_enum() {
        assert!(Priority::Urgent > Priority::High && Priority::High > Priority::Medium);
        assert!(Priority::Medium > Priority::Low);
    }
}
