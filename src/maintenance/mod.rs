//! Leader-only services beside the hot path. One replica is elected through a PostgreSQL
//! advisory lock; its rescuer returns expired leases to the queue and its pruner deletes
//! finished work orders past their retention. Each service has the same
//! shape: `run(shutdown)` on a jittered interval, and `run_once()` that tests call.

pub mod leader;
pub mod pruner;
pub mod rescuer;
pub mod scheduler;

pub use crate::periodic::every_interval_while_leading;
