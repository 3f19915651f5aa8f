//! What a running agent reports beside its result, whatever its kind: progress (sent at once
//! to the engine's throttled progress writer, `worker::progress`), log lines and the compute
//! it used (kept for the attempt's record, bounded). Plug-ins reach it as `request.report`;
//! the command kind feeds it from the child's progress descriptor, stderr and rusage; HTTP
//! agents report progress through the callback in their envelope instead.

use crate::policy::progress::Progress;
use crate::policy::report::{LogLine, MAX_LOG_LINES};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use uuid::Uuid;

/// One progress report of one attempt, on its way to the progress writer.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressUpdate {
    pub item: Uuid,
    pub attempt: i32,
    pub progress: Progress,
}

/// What a child process used, from its rusage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compute {
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    /// Peak resident set size.
    pub peak_memory_kib: i64,
}

/// The handle an agent reports through; cheap to clone. The default reports nowhere (an
/// envelope built outside the engine, in tests or by a plug-in's own caller).
#[derive(Clone, Default)]
pub struct Reporter {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    item: Uuid,
    attempt: i32,
    progress: Option<mpsc::Sender<ProgressUpdate>>,
    logs: Mutex<(Vec<LogLine>, usize)>,
    compute: Mutex<Option<Compute>>,
    usage: Mutex<Option<serde_json::Value>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

impl Reporter {
    /// The reporter of one attempt; progress goes to `progress` when given.
    pub fn for_attempt(item: Uuid, attempt: i32, progress: Option<mpsc::Sender<ProgressUpdate>>) -> Reporter {
        Reporter {
            inner: Some(Arc::new(Inner {
                item,
                attempt,
                progress,
                logs: Mutex::new((Vec::new(), 0)),
                compute: Mutex::new(None),
                usage: Mutex::new(None),
            })),
        }
    }

    /// How far the work is: a percent (clamped to 0..=100) and an optional message. Never
    /// blocks: the writer keeps the latest report per item and writes at most one a second.
    pub fn progress(&self, percent: f64, message: Option<&str>) {
        let (Some(inner), Some(progress)) = (&self.inner, Progress::new(percent, message)) else { return };
        if let Some(sink) = &inner.progress {
            let _ = sink.try_send(ProgressUpdate { item: inner.item, attempt: inner.attempt, progress });
        }
    }

    /// A log line for the attempt's record (`level`: TRACE, DEBUG, INFO, WARN or ERROR).
    /// Past [`MAX_LOG_LINES`] lines are counted, not kept; the record says how many.
    pub fn log(&self, level: &str, message: &str) {
        let Some(inner) = &self.inner else { return };
        let mut logs = inner.logs.lock().expect("reporter logs");
        if logs.0.len() < MAX_LOG_LINES {
            let level = crate::policy::report::level_of(level);
            logs.0.push(LogLine { level, at: Some(chrono::Utc::now()), message: message.to_owned() });
        } else {
            logs.1 += 1;
        }
    }

    /// What the agent's process used (the command kind sets it from the child's rusage).
    pub fn compute(&self, compute: Compute) {
        if let Some(inner) = &self.inner {
            *inner.compute.lock().expect("reporter compute") = Some(compute);
        }
    }

    /// What a call that failed still used (the `usage` of an HTTP agent's error body): it
    /// costs like a successful answer's.
    pub fn usage(&self, usage: serde_json::Value) {
        if let Some(inner) = &self.inner {
            *inner.usage.lock().expect("reporter usage") = Some(usage);
        }
    }

    /// What the attempt reported beside its output.
    pub fn take(&self) -> Reported {
        let Some(inner) = &self.inner else { return Reported::default() };
        let (logs, dropped) = std::mem::take(&mut *inner.logs.lock().expect("reporter logs"));
        Reported {
            logs,
            dropped,
            compute: inner.compute.lock().expect("reporter compute").take(),
            usage: inner.usage.lock().expect("reporter usage").take(),
        }
    }
}

/// What a [`Reporter`] gathered during one attempt.
#[derive(Debug, Default)]
pub struct Reported {
    pub logs: Vec<LogLine>,
    /// Log lines left out past the cap.
    pub dropped: usize,
    pub compute: Option<Compute>,
    /// Usage reported beside a failure (a successful output carries its own).
    pub usage: Option<serde_json::Value>,
}
