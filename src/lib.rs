//! orderly: a durable work-order daemon on PostgreSQL.
//!
//! Data flows one way: a row inserted by an upstream → claimed (`worker::dispatcher`) →
//! executed by an agent (`agent`, `worker::runner`) → evaluated and approved
//! (`worker::review`) → recorded by the only writer after a run (`worker::completer`). `daemon`
//! composes the pieces; `db` holds every SQL statement; `model` is the shared vocabulary.

pub mod agent;
pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod demo;
pub mod failpoint;
pub mod maintenance;
pub mod model;
pub mod ops;
pub mod telemetry;
pub mod worker;

/// Runs one subcommand. A Rust user embedding orderly with their own agent kinds calls this
/// from their own `main` with a [`agent::Registry`] they extended.
pub async fn run_command(
    command: cli::Command,
    settings: config::Settings,
    registry: agent::Registry,
) -> anyhow::Result<()> {
    use cli::Command;
    match command {
        Command::Migrate => ops::migrate(&settings).await,
        Command::Run => {
            if settings.database.migrate_on_start {
                db::ensure_database(&settings.database.url)
                    .await
                    .map_err(|e| ops::unreachable_hint(&settings.database.url, e))?;
            }
            daemon::run(settings, &registry).await
        }
        Command::Demo(args) => demo::run(settings, args).await,
        Command::Enqueue(args) => ops::enqueue(&settings, args).await,
        Command::Status { json } => ops::status(&settings, json).await,
        Command::DeadLetters(command) => ops::dead_letters(&settings, command).await,
        Command::Approve(args) => ops::decide(&settings, model::Decision::Approved, args).await,
        Command::Reject(args) => ops::decide(&settings, model::Decision::Rejected, args).await,
        Command::CheckConfig => ops::check_config(&settings, &registry),
        Command::Bench(args) => bench::run(settings, args).await,
    }
}
