//! The composition root: pool, migrations, agents, listener, dispatcher, heartbeat,
//! completer, and the two-phase shutdown. `orderly run`, the demo, the bench and the tests
//! all start the engine through [`Engine::start`], so they exercise the same code path.

use crate::agent::Registry;
use crate::config::Settings;
use crate::db;
use crate::maintenance::{leader, pruner::Pruner, rescuer::Rescuer};
use crate::policy::catalog::Catalog;
use crate::worker::liveness::Health;
use crate::worker::runner::RunContext;
use crate::worker::{InFlight, Metrics, completer::Completer, dispatcher::Dispatcher, heartbeat, listener};
use anyhow::Context;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown may take past `worker.shutdown_grace`: interrupted runs hand over their
/// results and the completers write them. Past it, what is unwritten is left to the rescuer
/// (the items stay PROCESSING under leases that expire) and the process exits anyway.
mod process;
pub use process::raise_open_files_limit;
use process::{Signals, SystemdNotify};

pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

/// A running engine.
pub struct Engine {
    /// Whether this process is the elected leader (runs the rescuer, the SLA sweeper and the
    /// pruner).
    pub leadership: crate::leadership::Leadership,
    /// Counters of this process since start (tests, the bench, health checks).
    pub metrics: Arc<Metrics>,
    /// Names this process in `locked_by` and attempt rows: host, pid and a random suffix.
    pub worker_id: String,
    pub pool: PgPool,
    /// Leases this process holds; shutdown interrupts them past the grace period.
    in_flight: InFlight,
    /// First phase of shutdown: the dispatcher and the listener stop.
    stop_claiming: CancellationToken,
    /// Last phase: heartbeat, leader and the leader's services stop once results are written.
    stop_background: CancellationToken,
    /// The runners, waited for during the grace period.
    runners: TaskTracker,
    dispatcher: JoinHandle<()>,
    completers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    shutdown_grace: Duration,
    /// Tells the completers to stop retrying and leave unwritten results to the rescuer.
    abandon: CancellationToken,
    /// Fired when an engine task panicked or ended on its own (see [`Engine::failed`]).
    failed: CancellationToken,
    /// The admin HTTP server (`admin.listen`), stopped at the end of [`Engine::shutdown`].
    admin: Option<crate::admin::AdminServer>,
    /// Liveness: `failed` plus the progress of the dispatcher and completers.
    health: Health,
}

impl Engine {
    /// Connects (or uses `pool`), migrates when configured, builds the agents and starts
    /// every loop.
    pub async fn start(settings: Settings, registry: &Registry, pool: Option<PgPool>) -> anyhow::Result<Engine> {
        let agents = registry.build(&settings.agents, settings.agent_limits())?;
        let pool = match pool {
            Some(pool) => pool,
            None => db::connect_engine(&settings.database.pool())
                .await
                .with_context(|| format!("connecting to {}", crate::net::redact_url(&settings.database.url)))?,
        };
        let settings = Arc::new(settings);
        let worker_id =
            format!("{}-{}-{}", hostname(), std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..6]);
        let metrics = Arc::new(Metrics::new(settings.agents.keys()));
        let in_flight = InFlight::default();
        let wake = Arc::new(Notify::new());
        let stop_claiming = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let runners = TaskTracker::new();
        let abandon = CancellationToken::new();
        let failed = CancellationToken::new();
        let (term_tx, leadership) = crate::leadership::Leadership::new(&worker_id, pool.clone());
        // The admin server (src/admin) comes up before migrations and before any engine task:
        // /healthz answers at once, /readyz says what is not ready yet (migrations, LISTEN).
        // Draining is `stop_claiming`, cancelled when shutdown starts.
        let ops = db::connect_lazy(&db::PoolOptions {
            max_connections: crate::admin::OPS_POOL_CONNECTIONS,
            ..settings.database.pool()
        })
        .context("the admin server's database pool")?;
        let catalog = Arc::new(Catalog::new(pool.clone(), settings.clone()));
        // Progress reports of every runner and of the admin server's callback: one writer.
        let progress = crate::worker::progress::ProgressHub::start(pool.clone());
        let admin = crate::admin::start(crate::admin::AdminState {
            progress: progress.clone(),
            catalog: Arc::new(Catalog::new(ops.clone(), settings.clone())),
            tokens: Arc::new(crate::admin::auth::Tokens::new(&settings.admin.tokens)),
            sessions: Default::default(),
            failed_auth: Default::default(),
            ops,
            pool: pool.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            gauges: Default::default(),
            failed: failed.clone(),
            draining: stop_claiming.clone(),
            leadership: leadership.clone(),
            in_flight: in_flight.clone(),
            worker_id: worker_id.clone(),
        })
        .await?;
        if let Some(server) = &admin {
            progress.set_callback_for(settings.admin.public_url.as_ref(), server.local_addr());
        }
        if settings.database.migrate_on_start {
            db::migrate(&pool).await.context("applying migrations")?;
        }
        let topology = db::distributed::topology(&pool).await.context("reading the database's topology")?;
        let health = Health::new(settings.worker.stall_timeout, failed.clone());
        // On a Citus cluster the loops whose statements are not routed by tenant yet do not
        // start (docs/distributed.md, "Status"): their tasks wait for the shutdown instead.
        let off = db::distributed::loops_off(topology);
        if topology == db::distributed::Topology::Distributed {
            let limited = crate::worker::limits::configured_keys(&agents, &settings);
            if let Some((key, _)) = limited.first() {
                anyhow::bail!(
                    "agent limits are not supported in distributed mode yet (docs/distributed.md): `{key}` has one; \
                     remove max_in_flight, rate and circuit settings of agents and tenants to run on a Citus cluster"
                );
            }
        }
        if !off.is_empty() {
            tracing::warn!(loops = ?off, "distributed mode: these loops do not run on a Citus cluster yet");
        }
        let watched = |name: &'static str, until: &CancellationToken, task: Task| {
            let (until_off, task) = (until.clone(), task);
            let task: Task =
                if off.contains(&name) { Box::pin(async move { until_off.cancelled().await }) } else { task };
            tokio::spawn(watch_task(name, until.clone(), failed.clone(), task))
        };
        let (tx, rx) = mpsc::channel(settings.worker.concurrency.max(settings.worker.completer_batch) * 2);

        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        // Agent limits: completers nudge the waker after a limited agent's batch.
        let limits_nudge = Arc::new(crate::worker::limits::Nudge::default());
        let steps_limited = crate::worker::limits::steps_limited_at_start(&pool).await;
        let completers = (0..settings.worker.completers)
            .map(|_| {
                // Completers end when the dispatcher and every runner are gone (shutdown).
                watched(
                    "completer",
                    &stop_claiming,
                    Box::pin(
                        Completer {
                            pool: pool.clone(),
                            in_flight: in_flight.clone(),
                            metrics: metrics.clone(),
                            batch_size: settings.worker.completer_batch,
                            wake: wake.clone(),
                            abandon: abandon.clone(),
                            beat: health.beat("completer"),
                            agents: agents.clone(),
                            limits_nudge: limits_nudge.clone(),
                            topology,
                        }
                        .run(rx.clone()),
                    ),
                )
            })
            .collect();
        let rescuer = Rescuer {
            pool: pool.clone(),
            catalog: catalog.clone(),
            settings: settings.clone(),
            worker_id: worker_id.clone(),
            metrics: metrics.clone(),
            sweeps_since_heal: Default::default(),
            topology,
        };
        // Delivers the SLA notifications outbox; on every replica (claims with SKIP LOCKED).
        let notifier = crate::sla::notifier::Notifier::new(pool.clone(), settings.notifier.clone())
            .context("building the notifier's HTTP client")?
            .on(topology)
            .with_metrics(metrics.clone());
        // The dispatcher says when it waits for work; the listener then holds the wake lock.
        let (waiting_tx, waiting_rx) = tokio::sync::watch::channel(false);
        let background = vec![
            watched(
                "listener",
                &stop_claiming,
                Box::pin(listener::run(pool.clone(), wake.clone(), waiting_rx, metrics.clone(), stop_claiming.clone())),
            ),
            watched(
                "heartbeat",
                &stop_background,
                Box::pin(heartbeat::run(
                    pool.clone(),
                    in_flight.clone(),
                    settings.worker.lease,
                    topology,
                    stop_background.clone(),
                )),
            ),
            watched(
                "leader",
                &stop_background,
                Box::pin(leader::run(
                    settings.database.url.clone(),
                    worker_id.clone(),
                    settings.worker.leader_lease,
                    term_tx,
                    stop_background.clone(),
                )),
            ),
            watched("rescuer", &stop_background, Box::pin(rescuer.run(leadership.clone(), stop_background.clone()))),
            watched(
                "sla-sweeper",
                &stop_background,
                Box::pin(
                    crate::sla::sweeper::Sweeper {
                        pool: pool.clone(),
                        settings: settings.clone(),
                        metrics: metrics.clone(),
                        topology,
                    }
                    .run(leadership.clone(), stop_background.clone()),
                ),
            ),
            watched("notifier", &stop_background, Box::pin(notifier.run(stop_background.clone()))),
            watched(
                "activity",
                &stop_background,
                Box::pin(crate::worker::activity::run(
                    pool.clone(),
                    worker_id.clone(),
                    metrics.clone(),
                    crate::worker::activity::interval(settings.worker.poll_interval),
                    stop_background.clone(),
                )),
            ),
            watched(
                "scheduler",
                &stop_background,
                Box::pin(
                    crate::maintenance::scheduler::Scheduler {
                        pool: pool.clone(),
                        settings: settings.clone(),
                        metrics: metrics.clone(),
                    }
                    .run(leadership.clone(), stop_background.clone()),
                ),
            ),
            watched(
                "pruner",
                &stop_background,
                Box::pin(
                    Pruner { pool: pool.clone(), settings: settings.clone(), topology }
                        .run(leadership.clone(), stop_background.clone()),
                ),
            ),
            // Lets items waiting for a slot (an agent's, a tenant's, a step's) run as slots
            // free, on every replica.
            watched(
                "limits_waker",
                &stop_background,
                Box::pin(crate::worker::limits::waker(
                    pool.clone(),
                    crate::worker::limits::configured_keys(&agents, &settings),
                    steps_limited.clone(),
                    limits_nudge.clone(),
                    wake.clone(),
                    stop_background.clone(),
                )),
            ),
        ];
        let ctx = Arc::new(RunContext {
            agents,
            catalog,
            settings: settings.clone(),
            worker_id: worker_id.clone(),
            progress: Some(progress),
            topology,
        });
        let dispatcher = watched(
            "dispatcher",
            &stop_claiming,
            Box::pin(
                Dispatcher {
                    pool: pool.clone(),
                    ctx,
                    slots: Arc::new(Semaphore::new(settings.worker.concurrency)),
                    evaluator_slots: Arc::new(Semaphore::new(settings.worker.evaluator_concurrency)),
                    wake,
                    waiting: waiting_tx,
                    in_flight: in_flight.clone(),
                    metrics: metrics.clone(),
                    completions: tx,
                    tasks: runners.clone(),
                    stop: stop_claiming.clone(),
                    beat: health.beat("dispatcher"),
                    budgets: Default::default(),
                    limits: crate::worker::limits::LimitGate::new(steps_limited),
                    turns: Default::default(),
                    ring: Default::default(),
                }
                .run(),
            ),
        );
        tracing::info!(worker = %worker_id, concurrency = settings.worker.concurrency, "engine started");
        Ok(Engine {
            leadership,
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
            abandon,
            failed,
            admin,
            health,
        })
    }

    /// Where the admin server listens (`None` when `admin.listen` is off; port 0: the chosen one).
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(|admin| admin.local_addr())
    }

    /// Healthy (alive): no engine task died, and neither the dispatcher nor a completer has
    /// been stuck in one step for longer than `worker.stall_timeout` (`worker::liveness`).
    /// A database outage alone does not make the engine unhealthy (it waits it out), unless
    /// a completer cannot write one batch for that long. The systemd watchdog pings only
    /// while this holds.
    pub fn healthy(&self) -> bool {
        self.health.healthy()
    }

    /// The same check as [`Engine::healthy`], as a handle that outlives a borrow of the engine
    /// (a watchdog task), with the reason when it fails.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Ready: healthy, and the last claim reached the database (for a readiness probe).
    pub fn ready(&self) -> bool {
        self.healthy() && self.metrics.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fires when an engine task panicked or ended while it should have been running. The
    /// process can no longer do its work: `orderly run` then shuts down and exits non-zero,
    /// so systemd or the container runtime starts a fresh one.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Items this process is executing or about to record.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Two-phase shutdown: stop claiming; let in-flight items finish within the grace
    /// period (or until `interrupt` fires); interrupt the rest, which are released to the
    /// queue as INTERRUPTED; wait until the completer has written every result.
    ///
    /// Bounded: [`SHUTDOWN_BOUND`] after the grace period, the completers stop retrying a
    /// database that does not answer and leave what is unwritten to the rescuer.
    pub async fn shutdown(self, interrupt: CancellationToken) {
        let abandon = self.abandon.clone();
        let bound = self.shutdown_grace + SHUTDOWN_BOUND;
        let deadline = tokio::spawn(async move {
            tokio::time::sleep(bound).await;
            tracing::error!("shutdown bound reached; results not yet written are left to the rescuer");
            abandon.cancel();
        });
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
        deadline.abort();
        // Last: /readyz said "draining" throughout; the probes and /metrics stop with the drain.
        if let Some(admin) = self.admin {
            admin.shutdown().await;
        }
        tracing::info!(worker = %self.worker_id, "engine stopped");
    }
}

/// Runs the engine until SIGTERM/SIGINT (`orderly run`). A second signal interrupts
/// in-flight work at once. SIGHUP is logged and ignored (the configuration is read at start).
/// An engine task that dies makes the process drain what it can and exit non-zero.
pub async fn run(settings: Settings, registry: &Registry) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while the engine starts is handled gracefully.
    let mut signals = Signals::install();
    process::open_files_for(&settings);
    let systemd = SystemdNotify::from_env();
    let engine = Engine::start(settings, registry, None).await?;
    // Migrations are applied and every loop runs (the listener connects on its own).
    systemd.send("READY=1\nSTATUS=processing work items");
    let watchdog = systemd.watchdog(engine.health());
    let failed = engine.failed();
    let died = tokio::select! {
        _ = signals.recv() => false,
        _ = failed.cancelled() => true,
    };
    systemd.send("STOPPING=1\nSTATUS=draining in-flight items");
    if let Some(watchdog) = &watchdog {
        watchdog.abort(); // no pings during the drain: TimeoutStopSec bounds it
    }
    if died {
        tracing::error!("an engine task died; shutting down so the service manager restarts the process");
    } else {
        tracing::info!("shutting down: no new claims; waiting for in-flight items");
    }
    let interrupt = CancellationToken::new();
    let second = interrupt.clone();
    tokio::spawn(async move {
        signals.recv().await;
        second.cancel();
    });
    // The engine bounds its own drain; this is the backstop for a task that died holding
    // what the drain waits for (results in a channel no completer reads any more).
    let backstop = engine.shutdown_grace + SHUTDOWN_BOUND + Duration::from_secs(5);
    if tokio::time::timeout(backstop, engine.shutdown(interrupt)).await.is_err() {
        anyhow::bail!("shutdown did not finish within {}; exiting", humantime::format_duration(backstop));
    }
    if died {
        anyhow::bail!("an engine task died (see the log above); exiting so that the process is restarted");
    }
    Ok(())
}

/// Runs one of the engine's long-lived tasks. A panic, or an end before `until` was
/// cancelled, is logged with the task's name and fires `failed`.
/// One of the engine's long-lived tasks, as [`watch_task`] runs it.
type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn watch_task(name: &'static str, until: CancellationToken, failed: CancellationToken, task: Task) {
    match crate::panic::CatchUnwind(task).await {
        Err(panic) => {
            tracing::error!(task = name, panic = %panic, "engine task panicked");
            failed.cancel();
        }
        Ok(()) if !until.is_cancelled() => {
            tracing::error!(task = name, "engine task ended unexpectedly");
            failed.cancel();
        }
        Ok(()) => {}
    }
}

/// The host's name from gethostname(2), not /proc/sys, which the systemd unit hides
/// (`ProcSubset=pid`).
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "orderly".into())
}
