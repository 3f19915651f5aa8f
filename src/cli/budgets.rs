//! `orderly budgets …` (docs/costs.md#budgets): its subcommands and their flags.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Every budget with its spend in the current period and the items it stops.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Make a budget (audited). Its spend starts at what the scope already spent in the
    /// current period.
    Create {
        name: String,
        /// tenant:UUID, workflow:NAME or order:UUID.
        #[arg(long)]
        scope: String,
        /// The limit, a positive decimal ("100", "12.50").
        #[arg(long)]
        amount: String,
        /// Three letters (ISO 4217); only cost entries in this currency count.
        #[arg(long)]
        currency: String,
        /// total, day or month.
        #[arg(long, default_value = "total")]
        period: String,
        /// The time zone days and months begin in (IANA name).
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// wait (the scope's items wait) or hold (they are held for approval).
        #[arg(long, default_value = "wait")]
        on_exhausted: String,
        /// A connector told at 80% and 100% (repeat for several).
        #[arg(long = "connector")]
        connectors: Vec<String>,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Set a new amount (audited); the items it stopped run if it is no longer exhausted.
    Raise {
        name: String,
        amount: String,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Set the current period's spend back to zero (audited); the items it stopped run.
    Reset {
        name: String,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Remove a budget (audited); the items it stopped run.
    Remove {
        name: String,
        #[arg(long)]
        actor: Option<String>,
    },
}
