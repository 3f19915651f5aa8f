//! SLA rules, escalation chains and durable notifications (migration 0013). Rules are rows
//! (`sla_rules` with their `sla_levels`); the leader's `sweeper` fires each level once when
//! its threshold passes on the rule's clock, writes the group's notifications in the same
//! transaction, and resolves what no longer runs late; `rules` checks rules and builds their
//! messages; the `notifier` delivers the outbox through the connectors' `channels` on every
//! replica.

pub mod channels;
pub mod notifier;
pub mod rules;
pub mod sweeper;
