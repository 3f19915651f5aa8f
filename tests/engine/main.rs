//! Integration tests of the engine against the real PostgreSQL: each test creates its own
//! database, so they run in parallel. Fault-injection tests (restarting PostgreSQL, killing
//! processes) live in their own binary and run serially.

mod citus;
mod common;

mod admin;
mod admin_port;
mod agents;
mod api;
mod browser;
mod budgets;
mod cli;
mod clients;
mod command_agent;
mod connectors;
mod costs;
mod dead_letters;
mod dependencies;
mod deploy;
mod distributed;
mod distributed_oncall;
mod distributed_records;
mod docs;
mod durability;
mod flow;
mod http_addresses;
mod input;
mod judges;
mod limits;
mod llm;
mod notify;
mod plans;
mod poison;
mod progress;
mod pruner;
mod review;
mod roles;
mod schedules;
mod scoped_limits;
mod secrets;
mod sla;
mod systemd;
mod turns;
mod web;
