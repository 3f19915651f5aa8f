//! Command-line definitions (clap). `main.rs` dispatches them.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use uuid::Uuid;

mod budgets;
pub use budgets::BudgetCommand;

#[derive(Debug, Parser)]
#[command(name = "orderly", version, about = "A durable work-order daemon on PostgreSQL")]
pub struct Cli {
    /// A TOML file layered over config/default.toml.
    #[arg(long, global = true, env = "ORDERLY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if missing and apply pending migrations (idempotent).
    Migrate(MigrateArgs),
    /// Run the engine until SIGTERM/SIGINT.
    Run,
    /// Run a self-contained demonstration against a scratch database.
    Demo(DemoArgs),
    /// Enqueue a work order with one or more items.
    Enqueue(EnqueueArgs),
    /// Show queue counts, the oldest queued item, and what is in flight.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// What the agents' attempts cost since a time ago, grouped (docs/costs.md).
    Costs {
        /// Group by tenant, agent, workflow or model.
        #[arg(long, value_enum, default_value = "tenant")]
        by: crate::db::costs::By,
        /// How far back: "24h", "7d", "30d".
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        since: std::time::Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Spending budgets per tenant, workflow or order: list, create, raise, reset, remove
    /// (docs/costs.md).
    #[command(subcommand)]
    Budgets(BudgetCommand),
    /// The items held for a human decision (approve or reject them with `approve`/`reject`).
    #[command(subcommand)]
    Approvals(ApprovalCommand),
    /// One item with its attempts, evals, approvals, escalations, dead letters and why it waits.
    #[command(subcommand)]
    Items(ItemCommand),
    /// Inspect, replay and discard dead letters.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLetterCommand),
    /// Approve the output of an item held in AWAITING_APPROVAL: the item is COMPLETED.
    Approve(DecisionArgs),
    /// Reject the output of an item held in AWAITING_APPROVAL: the attempt fails, and the
    /// item is retried while its budget lasts, then dead-lettered.
    Reject(DecisionArgs),
    /// List, show, acknowledge and resolve SLA escalations.
    #[command(subcommand)]
    Escalations(EscalationCommand),
    /// List the SLA rules with their escalation chains, and check them.
    #[command(subcommand)]
    Sla(SlaCommand),
    /// List, show, check, pause and resume schedules; make a slot's order now.
    #[command(subcommand)]
    Schedules(ScheduleCommand),
    /// Cancel a work item (QUEUED, AWAITING_APPROVAL, or PROCESSING: its running attempt is
    /// recorded as interrupted and its result will be discarded), or every such item of an
    /// order with --order.
    Cancel(CancelArgs),
    /// Make a token for the admin JSON API and web page: prints the token (once) and the
    /// [[admin.tokens]] entry, with its SHA-256, to add to the configuration.
    #[command(name = "admin-token")]
    AdminToken(AdminTokenArgs),
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// Create or update the least-privilege database roles (PREFIX_owner, _daemon, _producer,
    /// _oncall), their grants and row-level security; run as a superuser after `migrate`.
    Roles {
        /// Role names are PREFIX_owner, PREFIX_daemon, PREFIX_producer, PREFIX_oncall.
        #[arg(long, default_value = "orderly")]
        prefix: String,
        /// Print the SQL instead of running it.
        #[arg(long)]
        print: bool,
    },
    /// Check that the database answers and every migration is applied: exit 0 if so, 1 if
    /// not (container HEALTHCHECK).
    Health {
        /// Give up after this long (e.g. "3s").
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Measure throughput and latency against a scratch database with `orderly run`.
    Bench(BenchArgs),
}

/// How `orderly bench` enqueues its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchShape {
    Orders,
    Bulk,
    Priorities,
    Delayed,
    /// As `orders`, 10% of the items failing their first attempt and retried (after 10 ms).
    Retried,
    /// Each order a chain: item k needs item k-1.
    Chain,
    /// Each order a fan-out and fan-in: one root, every middle item needs it, one last item
    /// needs every middle one.
    Fanout,
    /// Each order a square lattice (side √items-per-order): item (i, j) needs (i-1, j) and
    /// (i, j-1).
    Lattice,
    /// One tenant's backlog (as `orders`, every order the same tenant) drains while another
    /// tenant inserts `--newcomer-rate` items a second, each its own order.
    Flood,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Items to enqueue and process.
    #[arg(long, default_value_t = 100_000)]
    pub items: usize,
    /// The daemon's worker.concurrency.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 100)]
    pub items_per_order: usize,
    /// How the upstream shapes its work: `orders` (one order per transaction), `bulk` (every
    /// order in one transaction, rows of different orders interleaved), `priorities` (as
    /// `orders`, each order a random priority), `delayed` (as `orders`, 10% of the items
    /// with a run_at up to 1 s ahead), `retried` (as `orders`, 10% of the items failing their
    /// first attempt and retried after 10 ms), and the dependency shapes `chain`, `fanout` and
    /// `lattice` (each order one graph of `items-per-order` items, docs/dependencies.md), and
    /// `flood` (one tenant's backlog and a newcomer tenant, docs/limits.md).
    #[arg(long, value_enum, default_value = "orders")]
    pub shape: BenchShape,
    /// With `--shape flood`: the newcomer tenant's items per second (0: the backlog alone).
    #[arg(long, default_value_t = 20.0)]
    pub newcomer_rate: f64,
    /// The daemon's worker.tenant_turns = false: claims always take the oldest.
    #[arg(long)]
    pub no_tenant_turns: bool,
    /// Measure processing only (skip the pickup and end-to-end latency phases).
    #[arg(long)]
    pub throughput_only: bool,
    /// Pre-fill this many finished items (with attempts) to show cost stays flat.
    #[arg(long, default_value_t = 0)]
    pub history: usize,
    /// Single inserts timed on an idle engine for the pickup latency.
    #[arg(long, default_value_t = 300)]
    pub pickup_samples: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Keep the scratch database afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Route the items to an `http` agent that the bench serves itself on loopback and that
    /// answers every request after this long (e.g. "100ms"), instead of the `echo` agent.
    #[arg(long, value_parser = agent_latency)]
    pub agent_latency: Option<std::time::Duration>,
    /// With --agent-latency: every answer reports token usage of a priced model (what a paid
    /// agent's answer carries), so the run measures writing cost entries in the completions
    /// (docs/costs.md).
    #[arg(long, requires = "agent_latency")]
    pub usage: bool,
    /// The scratch database, dropped before and after the run: another name lets two benches
    /// share a server. It must start with `orderly_bench` (the bench never drops anything
    /// else), then lower-case letters, digits and `_`.
    #[arg(long, default_value = "orderly_bench", value_parser = scratch_database_name)]
    pub database_name: String,
}

/// A command-line value refused by its parser (clap prints it with the flag's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(String);

/// A duration above zero and at most an hour (the bench's agent timeout is 30 s more).
fn agent_latency(text: &str) -> Result<std::time::Duration, BadValue> {
    let latency = humantime::parse_duration(text).map_err(|e| BadValue(e.to_string()))?;
    if latency.is_zero() || latency > std::time::Duration::from_secs(3600) {
        return Err(BadValue("give a latency above 0 and at most 1h".into()));
    }
    Ok(latency)
}

/// `orderly_bench` and names that extend it: the bench drops the database it is given, so it
/// must never be one that holds anything but the bench's own items.
fn scratch_database_name(name: &str) -> Result<String, BadValue> {
    let plain = name.len() <= 63 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain && name.starts_with("orderly_bench") {
        Ok(name.to_owned())
    } else {
        Err(BadValue(
            "the bench drops this database: name it orderly_bench or orderly_bench_SUFFIX \
             (lower-case letters, digits and `_`, at most 63)"
                .into(),
        ))
    }
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Then distribute the tables by tenant over a Citus cluster (docs/distributed.md): run
    /// once, on the coordinator, with the workers added.
    #[arg(long)]
    pub distributed: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Work orders to enqueue.
    #[arg(long, default_value_t = 250)]
    pub orders: usize,
    /// Keep the scratch database afterwards (for inspection with psql).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// A JSON file: {"workflow_id", "tenant_id", "created_by", "priority"?, "metadata"?,
    /// "items": [{"type", "content"}]}. Replaces the flags below.
    #[arg(long, conflicts_with_all = ["item", "workflow"])]
    pub file: Option<PathBuf>,
    /// The order's workflow_id (selects a workflow template).
    #[arg(long, default_value = "default")]
    pub workflow: String,
    #[arg(long)]
    pub tenant: Option<Uuid>,
    #[arg(long)]
    pub created_by: Option<Uuid>,
    /// LOW, MEDIUM, HIGH or URGENT.
    #[arg(long, default_value = "MEDIUM")]
    pub priority: String,
    /// An item as TYPE=CONTENT (repeatable), e.g. --item 'TICKET={"subject":"help"}'.
    #[arg(long = "item", value_name = "TYPE=CONTENT")]
    pub item: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["item", "order"])))]
pub struct CancelArgs {
    /// The work item's id.
    pub item: Option<Uuid>,
    /// Cancel every QUEUED, PROCESSING and AWAITING_APPROVAL item of this work order.
    #[arg(long, conflicts_with = "item")]
    pub order: Option<Uuid>,
    /// Why (kept in the audit log and the item's last_error).
    #[arg(long)]
    pub reason: Option<String>,
    /// Who cancels (audit log); defaults to $USER.
    #[arg(long)]
    pub actor: Option<String>,
}

#[derive(Debug, Args)]
pub struct AdminTokenArgs {
    /// The token's name: written to audit_logs for every action taken with it.
    pub name: String,
    /// read: every GET; operate: also replay, discard, approve, reject, acknowledge, resolve,
    /// cancel.
    #[arg(long, value_parser = ["read", "operate"], default_value = "read")]
    pub scope: String,
}

#[derive(Debug, Args)]
pub struct DecisionArgs {
    /// The work item's id.
    pub item: Uuid,
    /// Why (kept with the approval event and the audit log).
    #[arg(long)]
    pub reason: Option<String>,
    /// Who decides (approval event and audit log); defaults to $USER.
    #[arg(long)]
    pub actor: Option<String>,
    /// With `reject`: send the output back to its agent with the reason as the feedback (a
    /// revision), instead of retrying or dead-lettering it.
    #[arg(long)]
    pub revise: bool,
}

/// The options of every `list` subcommand.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Include the closed ones.
    #[arg(long)]
    pub all: bool,
    /// Most rows shown.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List open dead letters, newest first (`--all`: replayed and discarded ones too).
    List(ListArgs),
    /// Show a dead letter: the item, its attempts with errors, eval results, payload.
    Show {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Re-queue the item with a fresh attempt budget.
    Replay {
        id: Uuid,
        /// Replace the item's content with this file's before replaying.
        #[arg(long)]
        content: Option<PathBuf>,
        /// Who does it (audit log); defaults to $USER.
        #[arg(long)]
        actor: Option<String>,
    },
    /// Replay every open letter a filter takes (as the API's bulk-replay), oldest first.
    BulkReplay(BulkArgs),
    /// Discard every open letter a filter takes (a reason is required), oldest first.
    BulkDiscard {
        #[command(flatten)]
        filter: BulkArgs,
        #[arg(long)]
        reason: String,
    },
    /// Close the dead letter without replaying; the item stays FAILED.
    Discard {
        id: Uuid,
        /// Why the letter is discarded (required, as on the API and the page).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EscalationCommand {
    /// List unresolved escalations, newest first (`--all`: resolved ones too).
    List(ListArgs),
    /// Show an escalation and the notifications sent for it.
    Show {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge: stops the rule's later levels for this item.
    Ack {
        id: Uuid,
        #[arg(long)]
        reason: Option<String>,
        /// Who does it (audit log); defaults to $USER.
        #[arg(long)]
        actor: Option<String>,
    },
    /// Resolve by hand (the sweeper resolves by itself when the clock stops).
    Resolve {
        id: Uuid,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SlaCommand {
    /// Every rule with its selector, clock and levels.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check the active rules: exits 1 when a rule cannot fire, and prints every problem.
    Check,
    /// Run one sweep now (what the leader does every `sla.sweep_interval`) and print what it
    /// did. Safe beside running daemons: each level still fires once.
    Sweep,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Every schedule with its next run (in its zone and in UTC) and its last error.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One schedule: its definition, its next three runs and the orders of its last slots.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// The next runs of a schedule, in its zone and in UTC.
    Next {
        name: String,
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
        count: u16,
    },
    /// Make the order of the current minute's slot now (once per minute, whoever asks).
    RunNow {
        name: String,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Stop making orders (audited).
    Pause {
        name: String,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Make orders again from the next slot after now; the paused time is not caught up
    /// (audited).
    Resume {
        name: String,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Check every schedule's time zone and cron expression; exit 1 when one cannot run.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    /// The held items, oldest first, with the policy's reason and the failed evals.
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ItemCommand {
    /// One item: its state and why it waits, its route, attempts, evals, approvals,
    /// escalations and dead letters (the same view as `GET /api/v1/items/ID`).
    Show {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// What the item's agents logged, attempt by attempt (the last 200 lines), and the
    /// artifacts they named.
    Logs {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
}

/// Which open dead letters a bulk action takes: at least one filter, or `--all`.
#[derive(Debug, Args)]
pub struct BulkArgs {
    #[arg(long)]
    pub error_code: Option<String>,
    #[arg(long = "type")]
    pub item_type: Option<String>,
    /// Created at least this long ago (e.g. 1h).
    #[arg(long)]
    pub older_than: Option<humantime::Duration>,
    /// Created at most this long ago.
    #[arg(long)]
    pub newer_than: Option<humantime::Duration>,
    /// Every open letter (when no filter is given).
    #[arg(long)]
    pub all: bool,
    /// Most letters taken (at most the server's cap).
    #[arg(long)]
    pub limit: Option<i64>,
    #[arg(long)]
    pub actor: Option<String>,
}
