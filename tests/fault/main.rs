//! Fault injection against real `orderly run` processes and the real PostgreSQL: kill -9,
//! PostgreSQL restarts (also while workflow templates are being read), terminated backends,
//! SIGSTOP of the leader and of a follower past the lease, a frozen network path between
//! the leader and PostgreSQL, SIGTERM under load, SIGHUP, engine tasks that panic
//! (`ORDERLY_FAILPOINTS`), stubborn command agents, four replicas' first start on a missing
//! database, kill -9 of the replica holding a limited agent's slots, kill -9 while agent evaluators judge
//! recorded outputs, an in-place migration under working daemons; and, with `ORDERLY_CITUS_URL`, kill -9 and node
//! restarts against a Citus cluster. After each scenario an oracle checks the
//! guarantees (docs/guarantees.md).
//!
//! These tests restart PostgreSQL and kill processes: `scripts/test` runs this binary alone,
//! one test at a time, after the main suite. `ORDERLY_FAULT_LONG=1` runs the long mode.

#[path = "../engine/citus.rs"]
#[allow(dead_code)]
mod citus;
#[path = "../engine/common.rs"]
#[allow(dead_code)]
mod common;
mod distributed;
mod harness;
mod judges;
mod leadership;
mod limits;
mod scenarios;
mod upgrade;
