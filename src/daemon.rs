//! The composition root: pool, migrations, agents, listener, dispatcher, heartbeat,
//! completer, and the two-phase shutdown. `orderly run`, the demo, the bench and the tests
//! all start the engine through [`Engine::start`], so they exercise the same code path.

use crate::agent::Registry;
use crate::config::Settings;
use crate::db;
use crate::maintenance::{leader, pruner::Pruner, rescuer::Rescuer};
use crate::worker::catalog::Catalog;
use crate::worker::completer::Completer;
use crate::worker::dispatcher::Dispatcher;
use crate::worker::runner::RunContext;
use crate::worker::{InFlight, Metrics, heartbeat, listener};
use anyhow::Context;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running engine.
pub struct Engine {
    /// Whether this process is the elected leader (runs the rescuer and the pruner).
    pub leading: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    pub worker_id: String,
    pub pool: PgPool,
    in_flight: InFlight,
    stop_claiming: CancellationToken,
    stop_background: CancellationToken,
    runners: TaskTracker,
    dispatcher: JoinHandle<()>,
    completers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    shutdown_grace: Duration,
}

impl Engine {
    /// Connects (or uses `pool`), migrates when configured, builds the agents and starts
    /// every loop.
    pub async fn start(settings: Settings, registry: &Registry, pool: Option<PgPool>) -> anyhow::Result<Engine> {
        let agents = registry.build(&settings)?;
        let pool = match pool {
            Some(pool) => pool,
            None => db::connect_engine(&settings.database)
                .await
                .with_context(|| format!("connecting to {}", crate::config::redact_url(&settings.database.url)))?,
        };
        if settings.database.migrate_on_start {
            db::migrate(&pool).await.context("applying migrations")?;
        }
        let settings = Arc::new(settings);
        let worker_id =
            format!("{}-{}-{}", hostname(), std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..6]);
        let metrics = Arc::new(Metrics::default());
        let in_flight = InFlight::default();
        let wake = Arc::new(Notify::new());
        let stop_claiming = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let runners = TaskTracker::new();
        let (tx, rx) = mpsc::channel(settings.worker.concurrency.max(settings.worker.completer_batch) * 2);

        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let completers = (0..settings.worker.completers)
            .map(|_| {
                tokio::spawn(
                    Completer {
                        pool: pool.clone(),
                        in_flight: in_flight.clone(),
                        metrics: metrics.clone(),
                        batch_size: settings.worker.completer_batch,
                        wake: wake.clone(),
                    }
                    .run(rx.clone()),
                )
            })
            .collect();
        let (leading_tx, leading) = watch::channel(false);
        let rescuer = Rescuer { pool: pool.clone(), settings: settings.clone(), worker_id: worker_id.clone() };
        let background = vec![
            tokio::spawn(listener::run(pool.clone(), wake.clone(), stop_claiming.clone())),
            tokio::spawn(heartbeat::run(
                pool.clone(),
                in_flight.clone(),
                settings.worker.lease,
                stop_background.clone(),
            )),
            tokio::spawn(leader::run(settings.database.url.clone(), leading_tx, stop_background.clone())),
            tokio::spawn(rescuer.run(leading.clone(), stop_background.clone())),
            tokio::spawn(
                Pruner { pool: pool.clone(), settings: settings.clone() }.run(leading.clone(), stop_background.clone()),
            ),
        ];
        let ctx = Arc::new(RunContext {
            agents,
            catalog: Arc::new(Catalog::new(pool.clone(), settings.clone())),
            settings: settings.clone(),
            worker_id: worker_id.clone(),
        });
        let dispatcher = tokio::spawn(
            Dispatcher {
                pool: pool.clone(),
                ctx,
                slots: Arc::new(Semaphore::new(settings.worker.concurrency)),
                wake,
                in_flight: in_flight.clone(),
                metrics: metrics.clone(),
                completions: tx,
                tasks: runners.clone(),
                stop: stop_claiming.clone(),
            }
            .run(),
        );
        tracing::info!(worker = %worker_id, concurrency = settings.worker.concurrency, "engine started");
        Ok(Engine {
            leading,
            metrics,
            worker_id,
            pool,
            in_flight,
            stop_claiming,
            stop_background,
            runners,
            dispatcher,
            completers,
            background,
            shutdown_grace: settings.worker.shutdown_grace,
        })
    }

    /// Ready: the last claim reached the database (used by health checks and systemd).
    pub fn ready(&self) -> bool {
        self.metrics.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Items this process is executing or about to record.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Two-phase shutdown: stop claiming; let in-flight items finish within the grace
    /// period (or until `interrupt` fires); interrupt the rest, which are released to the
    /// queue as INTERRUPTED; wait until the completer has written every result.
    pub async fn shutdown(self, interrupt: CancellationToken) {
        self.stop_claiming.cancel();
        let _ = self.dispatcher.await;
        self.runners.close();
        tokio::select! {
            _ = self.runners.wait() => {}
            _ = tokio::time::sleep(self.shutdown_grace) => {
                tracing::warn!(in_flight = self.in_flight.len(), "shutdown grace period over; interrupting");
                self.in_flight.interrupt_all();
            }
            _ = interrupt.cancelled() => {
                tracing::warn!(in_flight = self.in_flight.len(), "second signal; interrupting");
                self.in_flight.interrupt_all();
            }
        }
        self.runners.wait().await;
        // Every runner has handed over its result; the dispatcher held the last sender.
        for completer in self.completers {
            let _ = completer.await;
        }
        self.stop_background.cancel();
        for task in self.background {
            let _ = task.await;
        }
        tracing::info!(worker = %self.worker_id, "engine stopped");
    }
}

/// Runs the engine until SIGTERM/SIGINT (`orderly run`). A second signal interrupts
/// in-flight work at once.
pub async fn run(settings: Settings, registry: &Registry) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while the engine starts is handled gracefully.
    let mut signals = Signals::install();
    let engine = Engine::start(settings, registry, None).await?;
    signals.recv().await;
    tracing::info!("shutting down: no new claims; waiting for in-flight items");
    let interrupt = CancellationToken::new();
    let second = interrupt.clone();
    tokio::spawn(async move {
        signals.recv().await;
        second.cancel();
    });
    engine.shutdown(interrupt).await;
    Ok(())
}

/// SIGTERM and SIGINT, installed once.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).expect("installing SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("installing SIGINT handler"),
        }
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "orderly".into())
}
