//! The `orderly` binary: parse the command line, load the configuration, start logging,
//! run the subcommand. Everything else lives in the library.

use clap::Parser;
use orderly::agent::Registry;
use orderly::cli::{Cli, Command};
use orderly::config::Settings;
use std::process::ExitCode;

/// jemalloc instead of glibc's malloc: with thousands of HTTP requests in flight, glibc's
/// allocator (consolidating and unlinking free chunks across threads) took about a quarter of
/// the daemon's CPU. Measured in docs/performance.md ("Real agents (HTTP)").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status of a command whose reader went away (`orderly escalations list | head -1`):
/// what a shell reports for a process ended by SIGPIPE.
const BROKEN_PIPE_EXIT: i32 = 128 + 13;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing to a closed pipe panics. A reader that stopped reading
    // is not an error of ours: end quietly, as a program killed by SIGPIPE would.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default_hook(info);
    }));
    let cli = Cli::parse();
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Command::Demo(_)) {
        // The demo talks to its reader through progress and a summary, not logs.
        settings.log.level = "warn,sqlx=error".into();
    }
    orderly::telemetry::init(&settings.log);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("starting the runtime");
    match runtime.block_on(orderly::run_command(cli.command, settings, Registry::builtin())) {
        Ok(()) => ExitCode::SUCCESS,
        // Exit codes: 2 for what the operator must fix in the configuration (as at load),
        // 1 for everything that failed at run time.
        Err(e) if e.downcast_ref::<orderly::model::ConfigError>().is_some() => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
