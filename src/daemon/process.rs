//! The process around the engine: systemd's notify protocol (READY, WATCHDOG, STOPPING) and
//! the signals that start and hurry the drain; the open-file limit.

use super::*;

/// `orderly run`'s side of systemd's notify protocol (`crate::sdnotify`): nothing at all
/// outside systemd, and a warning, never a failure, when the socket cannot be used.
pub(super) struct SystemdNotify(Option<Arc<crate::sdnotify::SystemdSocket>>);

impl SystemdNotify {
    pub(super) fn from_env() -> SystemdNotify {
        match crate::sdnotify::SystemdSocket::from_env() {
            Ok(notifier) => SystemdNotify(notifier.map(Arc::new)),
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET is set but unusable; not notifying systemd");
                SystemdNotify(None)
            }
        }
    }

    pub(super) fn send(&self, state: &str) {
        if let Some(notifier) = &self.0
            && let Err(e) = notifier.notify(state)
        {
            tracing::warn!(error = %e, state, "cannot notify systemd");
        }
    }

    /// When systemd set a watchdog (`WatchdogSec=`): pings `WATCHDOG=1` every half period
    /// while the engine is healthy, and withholds them (logging why, once) while it is not,
    /// so that systemd kills and restarts a wedged process.
    pub(super) fn watchdog(&self, health: crate::worker::liveness::Health) -> Option<JoinHandle<()>> {
        let notifier = self.0.clone()?;
        let every = crate::sdnotify::watchdog_interval()?;
        tracing::debug!(every = %humantime::format_duration(every), "systemd watchdog enabled");
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut was_healthy = true;
            loop {
                ticks.tick().await;
                match health.check() {
                    Ok(()) => {
                        if !was_healthy {
                            tracing::info!("engine healthy again; resuming watchdog pings");
                        }
                        was_healthy = true;
                        if let Err(e) = notifier.notify("WATCHDOG=1") {
                            tracing::warn!(error = %e, "cannot send the watchdog ping to systemd");
                        }
                    }
                    Err(why) => {
                        if was_healthy {
                            tracing::error!(reason = %why, "engine unhealthy; withholding systemd watchdog pings");
                        }
                        was_healthy = false;
                    }
                }
            }
        }))
    }
}

/// SIGTERM and SIGINT (stop), SIGHUP (ignored), installed once.
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).expect("installing SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("installing SIGINT handler"),
            hup: signal(SignalKind::hangup()).expect("installing SIGHUP handler"),
        }
    }

    /// Waits for SIGTERM or SIGINT. SIGHUP's default action would kill the process at once
    /// and orphan running agents; it is logged instead.
    pub(super) async fn recv(&mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP ignored: the configuration is read at start; restart to apply changes");
                }
            }
        }
    }
}

/// Raises this process's soft limit of open files (`RLIMIT_NOFILE`) to its hard limit, and
/// returns the soft limit before and after. Every `http` agent execution in flight holds a
/// socket (a `command` agent's, three pipes), so `worker.concurrency` in the thousands needs
/// more than the soft limit of 1,024 that systemd and most shells give; the hard limit is
/// what the administrator allows (systemd's default is 524,288, `LimitNOFILE=` sets it).
pub fn raise_open_files_limit() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, getrlimit(Resource::RLIMIT_NOFILE)?.0))
}

/// `orderly run`'s start: the open-file limit raised ([`raise_open_files_limit`]), and a
/// warning when it is still below what the configured concurrency may hold at once.
pub(super) fn open_files_for(settings: &Settings) {
    match raise_open_files_limit() {
        Ok((before, now)) => {
            if now > before {
                tracing::info!(from = before, to = now, "raised the open-file limit (RLIMIT_NOFILE) to its hard limit");
            }
            // One descriptor per execution in flight, the pools' connections, and a margin.
            let wanted = (settings.worker.concurrency + settings.database.max_connections as usize + 128) as u64;
            if now < wanted {
                tracing::warn!(
                    limit = now,
                    wanted,
                    "the open-file limit is below worker.concurrency plus the pools; \
                    agents may fail with \"too many open files\": raise the hard limit (systemd: LimitNOFILE=)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)"),
    }
}
