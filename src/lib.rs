//! orderly: a durable work-order daemon on PostgreSQL.
//!
//! Data flows one way: a row inserted by an upstream → claimed (`worker::dispatcher`) →
//! executed by an agent (`agent`, `worker::runner`) → evaluated and approved
//! (`worker::review`) → recorded by the only writer after a run (`worker::completer`). `daemon`
//! composes the pieces; `db` holds every SQL statement; `model` is the shared vocabulary;
//! `policy` (routing catalog, content formats, state rules) is read by the hot path, the rescuer and operators
//! alike; `cmd` holds the subcommands and `actions` what operators do through any surface.

pub mod actions;
pub mod admin;
pub mod agent;
pub mod bench;
pub mod calendar;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod db;
pub mod demo;
pub mod failpoint;
pub mod leadership;
pub mod maintenance;
pub mod metrics;
pub mod model;
pub mod net;
pub mod panic;
pub mod periodic;
pub mod policy;
pub mod sdnotify;
pub mod sla;
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
        Command::Migrate(args) => cmd::migrate::run(&settings, &args).await,
        Command::Run => {
            if settings.database.migrate_on_start {
                db::ensure_database(&settings.database.url)
                    .await
                    .map_err(|e| cmd::unreachable_hint(&settings.database.url, e))?;
            }
            daemon::run(settings, &registry).await
        }
        Command::Demo(args) => demo::run(settings, args).await,
        Command::Enqueue(args) => cmd::enqueue::run(&settings, args).await,
        Command::Status { json } => cmd::status::run(&settings, json).await,
        Command::Costs { by, since, json } => cmd::costs::run(&settings, by, since, json).await,
        Command::DeadLetters(command) => cmd::dead_letters::run(&settings, command).await,
        Command::Approve(args) => cmd::decide::run(&settings, model::Decision::Approved, args).await,
        Command::Reject(args) => cmd::decide::run(&settings, model::Decision::Rejected, args).await,
        Command::Escalations(command) => cmd::escalations::run(&settings, command).await,
        Command::Sla(command) => cmd::escalations::sla(&settings, command).await,
        Command::Schedules(command) => cmd::schedules::run(&settings, command).await,
        Command::Budgets(command) => cmd::budgets::run(&settings, command).await,
        Command::Approvals(command) => cmd::items::approvals(&settings, command).await,
        Command::Items(command) => cmd::items::run(&settings, command).await,
        Command::Cancel(args) => cmd::cancel::run(&settings, args).await,
        Command::AdminToken(args) => cmd::admin_token::run(args),
        Command::CheckConfig => cmd::check_config::run(&settings, &registry),
        Command::Health { timeout } => cmd::health::run(&settings, timeout).await,
        Command::Roles { prefix, print } => cmd::roles::run(&settings, &prefix, print).await,
        Command::Bench(args) => bench::run(settings, args).await,
    }
}
