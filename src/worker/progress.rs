//! The progress writer: every agent's progress reports (plug-ins and commands through their
//! `Reporter`, HTTP agents through the admin server's callback) go into one channel; the
//! writer keeps the latest report per item and writes, in one statement per tick, those
//! whose item was not written in the last second (`db::runs::write_progress`, fenced by
//! attempt). A report is never lost to the throttle while its attempt runs: the latest one
//! waits for the end of its item's second.

use crate::agent::ProgressUpdate;
use crate::db;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OnceCell, mpsc};
use tokio::time::Instant;
use uuid::Uuid;

/// At most one write per item this often.
pub const THROTTLE: Duration = Duration::from_secs(1);
/// How often the writer looks for reports due.
const TICK: Duration = Duration::from_millis(100);
/// Reports waiting in the channel at most (a flood is dropped, the latest of each item kept
/// as far as it got in).
const QUEUE: usize = 10_000;

/// What the runners and the admin server share: the writer's channel, the key that signs
/// progress callbacks (read once from `orderly_keys`), and the callback's URL.
#[derive(Clone)]
pub struct ProgressHub {
    pub sink: mpsc::Sender<ProgressUpdate>,
    pool: PgPool,
    key: Arc<OnceCell<Vec<u8>>>,
    callback: Arc<std::sync::OnceLock<String>>,
}

impl ProgressHub {
    /// Starts the writer on `pool`; it stops when the last hub is dropped.
    pub fn start(pool: PgPool) -> ProgressHub {
        let (sink, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write(pool.clone(), rx));
        ProgressHub { sink, pool, key: Default::default(), callback: Default::default() }
    }

    /// The key progress tokens are signed with, the same on every replica.
    pub async fn key(&self) -> Result<&[u8], sqlx::Error> {
        self.key.get_or_try_init(|| db::runs::progress_key(&self.pool)).await.map(Vec::as_slice)
    }

    /// Where HTTP agents post progress: `admin.public_url` if set, else the admin server's
    /// own address. Set once the admin server listens.
    pub fn set_callback_base(&self, base: &str) {
        let _ = self.callback.set(format!("{}/api/v1/progress", base.trim_end_matches('/')));
    }

    /// The callback's base: `admin.public_url` when set, else the address the admin server
    /// listens on (loopback when it listens on every address).
    pub fn set_callback_for(&self, public_url: Option<&reqwest::Url>, listening: std::net::SocketAddr) {
        let base = match public_url {
            Some(url) => url.to_string(),
            None if listening.ip().is_unspecified() => format!("http://127.0.0.1:{}", listening.port()),
            None => format!("http://{listening}"),
        };
        self.set_callback_base(&base);
    }

    pub fn callback_url(&self) -> Option<&str> {
        self.callback.get().map(String::as_str)
    }
}

async fn write(pool: PgPool, mut rx: mpsc::Receiver<ProgressUpdate>) {
    let mut pending: HashMap<Uuid, ProgressUpdate> = HashMap::new();
    let mut written: HashMap<Uuid, Instant> = HashMap::new();
    let mut topology: Option<db::distributed::Topology> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            update = rx.recv() => match update {
                Some(update) => {
                    // A later attempt's report replaces an earlier one's, never the reverse.
                    if pending.get(&update.item).is_none_or(|p| p.attempt <= update.attempt) {
                        pending.insert(update.item, update);
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let due: Vec<ProgressUpdate> = pending
                    .values()
                    .filter(|u| written.get(&u.item).is_none_or(|at| now.duration_since(*at) >= THROTTLE))
                    .cloned()
                    .collect();
                if due.is_empty() {
                    continue;
                }
                // The layout, read once (before the first write, the database may not be up).
                let layout = match topology {
                    Some(layout) => Ok(layout),
                    None => db::distributed::topology(&pool).await,
                };
                let written_now = match layout {
                    Ok(layout) => {
                        topology = Some(layout);
                        db::runs::write_progress(&pool, layout, &due).await
                    }
                    Err(e) => Err(e),
                };
                match written_now {
                    Ok(_) => {
                        for u in &due {
                            pending.remove(&u.item);
                            written.insert(u.item, now);
                        }
                    }
                    // Kept for the next tick: the latest report still wins.
                    Err(e) => crate::telemetry::warn_limited("progress", "writing progress failed", &e),
                }
                written.retain(|_, at| now.duration_since(*at) < THROTTLE);
            }
        }
    }
}
